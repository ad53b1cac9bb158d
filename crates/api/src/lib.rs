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
        .fallback(error::not_found)
        .with_state(AppState { node })
}
