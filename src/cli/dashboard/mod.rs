//! `shoal dashboard`: a live page of the cluster, served by this process.
//!
//! The agent's API stays a root-only unix socket: this process (run by someone who can reach
//! that socket) is the only thing that listens, on loopback by default. It prints a URL with a
//! one-time token; opening it sets a session cookie (HttpOnly, SameSite=Strict) and the token
//! is spent, so a URL copied from a terminal later opens nothing. The page is one embedded
//! file (HTML, CSS and plain JavaScript: no build step, no CDN, works offline); it gets the
//! cluster's state over server-sent events (peers, services and their replicas, transfers,
//! the event stream), refreshed every half second, and its actions (scale a service, roll it
//! back, restart a replica) are the agent's own API calls, with the same permissions as the
//! CLI.

use crate::cli::lifecycle::encode;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use shoal_api::client::Client;
use std::collections::HashMap;
use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PAGE: &str = include_str!("page.html");
/// How often the page's state is refreshed.
const REFRESH: Duration = Duration::from_millis(500);
/// How often the (cluster-wide, so dearer) event list is asked again.
const EVENTS_EVERY: u32 = 4;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where the page listens (loopback unless you mean it).
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: std::net::SocketAddr,
}

struct Dash {
    client: Client,
    /// The one-time login token (gone once used).
    token: Mutex<Option<String>>,
    /// Sessions handed out: the cookie, and the secret the page sends with each action (a
    /// page on another loopback port gets the cookie too, but not this).
    sessions: Mutex<Vec<(String, String)>>,
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) async fn run(args: Args, client: Client) -> anyhow::Result<ExitCode> {
    // The agent must answer before a URL is printed.
    let status: shoal_types::AgentStatus = client.get("/v1/status").await?;
    let token = random_hex(24)?;
    let dash = Arc::new(Dash { client, token: Mutex::new(Some(token.clone())), sessions: Mutex::new(Vec::new()) });
    let app = axum::Router::new()
        .route("/", axum::routing::get(index))
        .route("/api/state", axum::routing::get(state))
        .route("/api/stream", axum::routing::get(stream))
        .route("/api/services/{name}/scale", axum::routing::post(scale))
        .route("/api/services/{name}/rollback", axum::routing::post(rollback))
        .route("/api/services/{name}/replicas/{replica}/restart", axum::routing::post(restart))
        .with_state(dash);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} ({e}): choose another with --listen", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the dashboard listens on {addr}, not loopback: anyone who gets the URL below can act as you"
        );
    }
    println!("dashboard of {} ({} peers): http://{addr}/?token={token}", status.name, status.cluster_size);
    eprintln!("the token works once; ^C stops the dashboard");
    // Not a graceful shutdown: an open page's event stream never ends, and ^C must.
    tokio::select! {
        served = axum::serve(listener, app) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The action secret of the session whose cookie the request carries, if any.
fn session(dash: &Dash, headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok())?;
    let sessions = dash.sessions.lock().unwrap_or_else(|e| e.into_inner());
    cookies.split(';').filter_map(|c| c.trim().strip_prefix("shoal_session=")).find_map(|v| {
        sessions.iter().find(|(s, _)| constant_eq(s.as_bytes(), v.as_bytes())).map(|(_, csrf)| csrf.clone())
    })
}

/// Whether the request carries a session cookie this process handed out.
fn signed_in(dash: &Dash, headers: &HeaderMap) -> bool {
    session(dash, headers).is_some()
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Html("<!doctype html><title>Shoal</title><p>Open the URL that <code>shoal dashboard</code> printed (its token works once; run it again for a new one).</p>"),
    )
        .into_response()
}

async fn index(
    State(dash): State<Arc<Dash>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(given) = q.get("token") {
        let mut token = dash.token.lock().unwrap_or_else(|e| e.into_inner());
        if token.as_deref().is_some_and(|t| constant_eq(t.as_bytes(), given.as_bytes())) {
            *token = None;
            let (Ok(session), Ok(csrf)) = (random_hex(24), random_hex(24)) else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            dash.sessions.lock().unwrap_or_else(|e| e.into_inner()).push((session.clone(), csrf));
            let cookie = format!("shoal_session={session}; HttpOnly; SameSite=Strict; Path=/");
            return ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response();
        }
        return refused();
    }
    let Some(csrf) = session(&dash, &headers) else { return refused() };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::HeaderName::from_static("content-security-policy"),
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; \
                 frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        ],
        PAGE.replace("__SHOAL_CSRF__", &csrf),
    )
        .into_response()
}

/// What the page shows, all read from the agent now.
#[derive(serde::Serialize, Default)]
struct Snapshot {
    at_ms: u64,
    me: Option<shoal_types::AgentStatus>,
    peers: Vec<shoal_types::PeerInfo>,
    services: Vec<ServiceView>,
    transfers: Vec<shoal_types::TransferInfo>,
    events: Option<Vec<shoal_types::ClusterEvent>>,
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct ServiceView {
    info: shoal_types::ServiceInfo,
    replicas: Vec<shoal_types::ReplicaInfo>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn snapshot(client: &Client, with_events: bool) -> Snapshot {
    let mut s = Snapshot { at_ms: now_ms(), ..Default::default() };
    let read = async {
        let mut me: shoal_types::AgentStatus = client.get("/v1/status").await?;
        // What changes every second by itself is not news (the state is sent on changes).
        me.uptime_secs = 0;
        s.me = Some(me);
        s.peers = client.get("/v1/peers").await?;
        let infos: Vec<shoal_types::ServiceInfo> = client.get("/v1/services").await?;
        for info in infos {
            let path = format!("/v1/services/{}/replicas", encode(&info.spec.name));
            let replicas = client.get(&path).await.unwrap_or_default();
            s.services.push(ServiceView { info, replicas });
        }
        if with_events {
            s.events = Some(client.get(&events_path()).await.unwrap_or_default());
        }
        Ok::<(), shoal_api::client::ClientError>(())
    };
    if let Err(e) = read.await {
        s.error = Some(format!("the agent does not answer: {e}"));
    }
    s
}

async fn state(State(dash): State<Arc<Dash>>, headers: HeaderMap) -> Response {
    if !signed_in(&dash, &headers) {
        return refused();
    }
    let mut snap = snapshot(&dash.client, true).await;
    snap.transfers = dash.client.get("/v1/transfers?cluster=true").await.unwrap_or_default();
    axum::Json(snap).into_response()
}

/// The state as server-sent events: a `state` event whenever it changed (checked every half
/// second), and apart from it (a cluster-wide query waits up to 2 s on a peer that is dying)
/// `transfers` (every live peer's downloads, checked every second) and `events` (the event
/// list, checked every 2 s) whenever they changed.
async fn stream(State(dash): State<Arc<Dash>>, headers: HeaderMap) -> Response {
    if !signed_in(&dash, &headers) {
        return refused();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(8);
    let d = dash.clone();
    feed(tx.clone(), "state", REFRESH, move || {
        let d = d.clone();
        async move {
            let mut snap = snapshot(&d.client, false).await;
            let at = snap.at_ms;
            snap.at_ms = 0; // unchanged state is not sent again
            let key = serde_json::to_string(&snap).unwrap_or_default();
            snap.at_ms = at;
            (key, serde_json::to_string(&snap).unwrap_or_default())
        }
    });
    let d = dash.clone();
    feed(tx.clone(), "transfers", REFRESH * 2, move || {
        let d = d.clone();
        async move {
            let list: Vec<shoal_types::TransferInfo> =
                d.client.get("/v1/transfers?cluster=true").await.unwrap_or_default();
            let data = serde_json::to_string(&list).unwrap_or_default();
            (data.clone(), data)
        }
    });
    feed(tx, "events", REFRESH * EVENTS_EVERY, move || {
        let d = dash.clone();
        async move {
            let events: Vec<shoal_types::ClusterEvent> = d.client.get(&events_path()).await.unwrap_or_default();
            let data = serde_json::to_string(&events).unwrap_or_default();
            (data.clone(), data)
        }
    });
    Sse::new(tokio_stream_of(rx)).keep_alive(KeepAlive::default()).into_response()
}

/// The last hour's events, as the page shows them.
fn events_path() -> String {
    format!("/v1/events?since_ms={}&limit=200", now_ms().saturating_sub(3_600_000))
}

/// Sends what `read` gives (its second part) as a `name` event every `every`, whenever its
/// first part (what counts as a change) differs from the last one sent, until the page goes.
fn feed<F, Fut>(tx: tokio::sync::mpsc::Sender<Result<Event, Infallible>>, name: &'static str, every: Duration, read: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (String, String)> + Send,
{
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let (key, data) = read().await;
            if last.as_ref() != Some(&key) {
                if tx.send(Ok(Event::default().event(name).data(data))).await.is_err() {
                    return;
                }
                last = Some(key);
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = tx.closed() => return,
            }
        }
    });
}

fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

#[derive(serde::Deserialize)]
struct ScaleBody {
    replicas: u32,
}

/// Scales a service through the agent's API (the agent decides who may).
async fn scale(
    State(dash): State<Arc<Dash>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<ScaleBody>,
) -> Response {
    let path = format!("/v1/services/{}/scale?replicas={}", encode(&name), body.replicas);
    act(&dash, &headers, hyper::Method::PUT, &path).await
}

/// Rolls a service back to its image before the last update, through the agent's API.
async fn rollback(State(dash): State<Arc<Dash>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    act(&dash, &headers, hyper::Method::POST, &format!("/v1/services/{}/rollback", encode(&name))).await
}

/// Restarts one replica, wherever it runs, through the agent's API.
async fn restart(
    State(dash): State<Arc<Dash>>,
    Path((name, replica)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/services/{}/replicas/{}/restart", encode(&name), encode(&replica));
    act(&dash, &headers, hyper::Method::POST, &path).await
}

/// An action: the agent's API call `method path`, made only for a request that carries the
/// session's cookie and its action secret; the agent's answer goes back as it is.
async fn act(dash: &Dash, headers: &HeaderMap, method: hyper::Method, path: &str) -> Response {
    // The session's secret, which only this process's page knows (a page on another loopback
    // port would send the cookie too).
    let given = headers.get("x-shoal-dashboard").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    if !session(dash, headers).is_some_and(|csrf| constant_eq(csrf.as_bytes(), &given)) {
        return refused();
    }
    match dash.client.raw(method, path, None).await {
        Ok((status, bytes)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("the agent does not answer: {e}")).into_response(),
    }
}
