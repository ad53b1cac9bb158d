//! Shoal's HTTP API.
//!
//! [`router`] maps each `/v1/...` request to one call on the agent's [`shoal_node::Node`] and
//! its result (or [`ApiError`]) to JSON. The router knows nothing about sockets: [`serve_unix`]
//! serves it on the root-only unix socket (the default), [`serve_tcp`] on a TCP address behind
//! a bearer token. [`client::Client`] is what the CLI uses to talk to either. The OpenAPI
//! document ([`openapi::ApiDoc`]) is generated from the handlers and checked into
//! `docs/openapi.json`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
pub mod client;
mod error;
pub mod openapi;
mod serve;
pub mod tls;
mod v1;

pub use error::ApiError;
pub use serve::{ServeError, bind_tcp, bind_unix, serve_tcp, serve_unix};

use axum::Router;
use shoal_node::Node;

/// State every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub node: Node,
}

/// The whole API, without any transport.
pub fn router(node: Node) -> Router {
    v1::routes()
        .route("/v1/openapi.json", axum::routing::get(openapi::serve_doc))
        .route_layer(axum::middleware::from_fn(observe))
        .fallback(error::not_found)
        .with_state(AppState { node })
}

/// Times each request into `shoal_api_request_seconds` by its route template (bounded), method
/// and status (a streamed answer: until its headers).
async fn observe(
    path: axum::extract::MatchedPath,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (method, route) = (req.method().to_string(), path.as_str().to_string());
    let t = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    shoal_metrics::get()
        .api_request_seconds
        .get_or_create(&shoal_metrics::RequestLabels { method, route, status })
        .observe(t.elapsed().as_secs_f64());
    resp
}
