//! `/v1/containers`: run, list, inspect, stop, kill, remove, logs, wait; `/v1/stats`.
//!
//! An attached run (`POST /v1/containers?attach=true`) answers with newline-delimited JSON
//! [`AttachEvent`]s: `started`, then each line of output as the shim logs it, then `exited`
//! with the exit code. `logs?follow=true` streams [`LogEntry`] lines until the container's run
//! is over. Both poll the log file, starting at 1 ms and backing off to 50 ms while quiet.

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_runtime::logs::{LogFollower, read_tail};
use shoal_types::{AttachEvent, ContainerInfo, ContainerSpec, ContainerStats, ExecEvent, LogEntry};
use std::time::Duration;

/// `?all=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Include exited containers.
    #[serde(default)]
    all: bool,
}

/// `?attach=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunQuery {
    /// Stream the output and the exit (newline-delimited JSON) instead of returning at once.
    #[serde(default)]
    attach: bool,
}

/// `?t=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct StopQuery {
    /// Seconds between SIGTERM and SIGKILL (default 10).
    t: Option<u64>,
}

/// `?signal=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct KillQuery {
    /// Signal name or number (default KILL).
    signal: Option<String>,
}

/// `?force=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveQuery {
    /// Kill it first if it runs.
    #[serde(default)]
    force: bool,
}

/// `?follow=&tail=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    /// Keep streaming until the container's run is over.
    #[serde(default)]
    follow: bool,
    /// Only the last N lines.
    tail: Option<usize>,
}

/// Containers on this peer, newest first.
#[utoipa::path(get, path = "/v1/containers", tag = "containers", params(ListQuery),
    responses((status = 200, body = [ContainerInfo])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<ContainerInfo>>, ApiError> {
    Ok(ApiJson(s.node.containers(q.all).await?))
}

/// Creates and starts a container (pulling its image from peers if needed).
#[utoipa::path(post, path = "/v1/containers", tag = "containers", params(RunQuery), request_body = ContainerSpec,
    responses((status = 201, body = ContainerInfo), (status = 200, description = "attached: newline-delimited AttachEvent", body = AttachEvent),
        (status = 400, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn run(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<RunQuery>,
    ApiJson(spec): ApiJson<ContainerSpec>,
) -> Result<Response, ApiError> {
    let (info, guard) = s.node.run_container_attached(spec, q.attach).await?;
    if !q.attach {
        return Ok((StatusCode::CREATED, ApiJson(info)).into_response());
    }
    let (_, dir) = s.node.container_logs(&info.id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<AttachEvent>(256);
    let node = s.node.clone();
    tokio::spawn(async move {
        let _guard = guard; // dropped last: an auto-remove container goes once we are done
        let id = info.id.clone();
        if tx.send(AttachEvent::Started { container: Box::new(info) }).await.is_err() {
            return;
        }
        if !follow(&node, &id, LogFollower::from_start(&dir), |l| AttachEvent::Output(l.into()), &tx).await {
            return;
        }
        let end = match node.container(&id).await {
            Ok(c) => {
                // Like `docker run --rm`: answer once the container is gone, not just ended.
                if c.spec.auto_remove {
                    let _ = node.wait_shim_gone(&id, Duration::from_secs(10)).await;
                    if let Err(e) = node.remove_container(&id, true).await {
                        tracing::debug!(err = %e, "auto-remove after an attached run");
                    }
                }
                AttachEvent::Exited { container: Box::new(c) }
            }
            Err(e) => AttachEvent::Error { message: e.to_string() },
        };
        let _ = tx.send(end).await;
    });
    Ok(ndjson(rx))
}

/// Sends what the container logs until its run is over; false when the client went away.
async fn follow<T>(
    node: &shoal_node::Node,
    id: &str,
    mut follower: LogFollower,
    map: impl Fn(shoal_runtime::logs::LogLine) -> T,
    tx: &tokio::sync::mpsc::Sender<T>,
) -> bool {
    let mut exits = node.container_exits().await.ok();
    let mut idle = Duration::from_millis(1);
    loop {
        let finished = node.container_finished(id).await.unwrap_or(true);
        let lines = follower.poll();
        let quiet = lines.is_empty();
        for l in lines {
            if tx.send(map(l)).await.is_err() {
                return false;
            }
        }
        if finished {
            return true;
        }
        idle = if quiet { (idle * 2).min(Duration::from_millis(50)) } else { Duration::from_millis(1) };
        // Wake on a container exit, or after `idle`; stop when the client has gone.
        let exit_changed = async {
            match exits.as_mut() {
                Some(rx) => {
                    let _ = rx.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(idle) => {}
            _ = exit_changed => {}
            _ = tx.closed() => return false,
        }
    }
}

pub(crate) fn ndjson<T: serde::Serialize + Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let mut line = serde_json::to_vec(&item).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)), rx))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

/// One container by name or id prefix.
#[utoipa::path(get, path = "/v1/containers/{id}", tag = "containers", params(("id" = String, Path, description = "name or id prefix")),
    responses((status = 200, body = ContainerInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn inspect(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<ContainerInfo>, ApiError> {
    Ok(ApiJson(s.node.container(&id).await?))
}

/// SIGTERM, then SIGKILL after `t` seconds; answers once it has exited.
#[utoipa::path(post, path = "/v1/containers/{id}/stop", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), StopQuery),
    responses((status = 200, body = ContainerInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StopQuery>,
) -> Result<ApiJson<ContainerInfo>, ApiError> {
    Ok(ApiJson(s.node.stop_container(&id, q.t.unwrap_or(10)).await?))
}

/// Sends a signal to the container's init (default KILL).
#[utoipa::path(post, path = "/v1/containers/{id}/kill", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), KillQuery),
    responses((status = 200, body = ContainerInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn kill(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<KillQuery>,
) -> Result<ApiJson<ContainerInfo>, ApiError> {
    Ok(ApiJson(s.node.kill_container(&id, q.signal).await?))
}

/// Removes a container and everything it had (mount, network, cgroups, logs).
#[utoipa::path(delete, path = "/v1/containers/{id}", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), RemoveQuery),
    responses((status = 204), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    s.node.remove_container(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Waits until the container's run is over; answers with its exit.
#[utoipa::path(post, path = "/v1/containers/{id}/wait", tag = "containers", params(("id" = String, Path, description = "name or id prefix")),
    responses((status = 200, body = ContainerInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn wait(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<ContainerInfo>, ApiError> {
    let info = s.node.container(&id).await?;
    Ok(ApiJson(s.node.wait_container(&info.id).await?))
}

/// The container's output (newline-delimited LogEntry).
#[utoipa::path(get, path = "/v1/containers/{id}/logs", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), LogsQuery),
    responses((status = 200, description = "newline-delimited LogEntry", body = LogEntry), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let (id, dir) = s.node.container_logs(&id).await?;
    // Follow from the end first, then read what is there: a line written in between may
    // appear twice, but none is lost.
    let follower = LogFollower::from_end(&dir);
    let d2 = dir.clone();
    let tail = q.tail;
    let past = tokio::task::spawn_blocking(move || read_tail(&d2, tail))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<LogEntry>(256);
    let node = s.node.clone();
    let keep_following = q.follow;
    tokio::spawn(async move {
        for l in past {
            if tx.send(l.into()).await.is_err() {
                return;
            }
        }
        if !keep_following {
            return;
        }
        follow(&node, &id, follower, LogEntry::from, &tx).await;
    });
    Ok(ndjson(rx))
}

/// `?args=` for exec.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecQuery {
    /// The command and its arguments, as a JSON array of strings.
    args: String,
}

/// Runs a command in a running container. The request body is its stdin (streamed); the answer
/// is newline-delimited [`ExecEvent`]s: its output as it comes, then its exit code.
#[utoipa::path(post, path = "/v1/containers/{id}/exec", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), ExecQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "newline-delimited ExecEvent", body = ExecEvent), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ExecQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    use futures::TryStreamExt;
    use tokio::io::AsyncReadExt;
    let args: Vec<String> = serde_json::from_str(&q.args)
        .map_err(|e| ApiError::BadRequest(format!("args must be a JSON array of strings: {e}")))?;
    if args.is_empty() {
        return Err(ApiError::BadRequest("give a command to run".into()));
    }
    let mut child = s.node.exec_container(&id, args).await?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ApiError::Internal("exec child without pipes".into()));
    };
    tokio::spawn(async move {
        let mut r = tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
        let _ = tokio::io::copy(&mut r, &mut stdin).await;
        // Dropping stdin closes it: the command sees end of input.
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecEvent>(256);
    let pump = |mut r: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                stream: &'static str,
                tx: tokio::sync::mpsc::Sender<ExecEvent>| async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let e = LogEntry { stream: stream.into(), text, time_unix_nanos: 0 };
                    if tx.send(ExecEvent::Output(e)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let out = tokio::spawn(pump(Box::new(stdout), "stdout", tx.clone()));
    let err = tokio::spawn(pump(Box::new(stderr), "stderr", tx.clone()));
    tokio::spawn(async move {
        // The output first (so the exit comes after it), then the exit status; watching all
        // along for the client going away, however quiet the command is.
        let finished = tokio::select! {
            s = async {
                let _ = out.await;
                let _ = err.await;
                child.wait().await
            } => Some(s),
            _ = tx.closed() => None,
        };
        let Some(status) = finished else {
            // The client went away: do not leave the command, or what it started, running.
            shoal_node::Node::end_exec(&mut child).await;
            return;
        };
        let code = match status {
            Ok(st) => {
                st.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0))
            }
            Err(_) => 255,
        };
        let _ = tx.send(ExecEvent::Exit { code }).await;
    });
    Ok(ndjson(rx))
}

/// CPU, memory and pids of every running container, from its cgroups.
#[utoipa::path(get, path = "/v1/stats", tag = "containers", responses((status = 200, body = [ContainerStats])))]
pub(crate) async fn stats(State(s): State<AppState>) -> Result<ApiJson<Vec<ContainerStats>>, ApiError> {
    Ok(ApiJson(s.node.container_stats().await?))
}
