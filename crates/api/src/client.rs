//! The client the CLI (and tests) use to talk to an agent.
//!
//! `addr` is a unix socket path (the default: `<data-dir>/shoal.sock`) or `https://host:port`
//! for an agent started with `--api-listen`: TLS with the agent's certificate pinned by its
//! fingerprint (see [`crate::tls`]), and a bearer token. Every failure becomes a
//! [`ClientError`] whose message says what to do.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::Request;
use hyper::http::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_types::ErrorBody;
use std::path::PathBuf;
use tokio::net::{TcpStream, UnixStream};

/// Where the agent is.
#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tls { authority: String, pin: Option<String> },
}

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent could not be reached
    #[error(
        "cannot reach the Shoal agent at {addr}: {source}. Is `shoal agent` running? Point --addr or SHOAL_ADDR at its API socket or https://host:port"
    )]
    Connect { addr: String, source: std::io::Error },
    /// The socket is root-only
    #[error("permission denied opening {addr}: the agent's API socket is root-only; run this command as root")]
    PermissionDenied { addr: String },
    /// The address is neither a path nor an https URL
    #[error("`{addr}` is not an agent address: use a socket path or https://host:port (the TCP API speaks TLS)")]
    BadAddr { addr: String },
    /// No certificate pin for a TCP agent
    #[error(
        "the agent at {addr} proves itself with its own certificate: set SHOAL_TOKEN_FILE to a copy of its api.token (the token and the certificate's fingerprint), or SHOAL_API_FINGERPRINT"
    )]
    NoPin { addr: String },
    /// The agent wants a token
    #[error("the agent refused the request: set SHOAL_TOKEN to its API token (the file api.token in its data dir)")]
    Unauthorized,
    /// The agent answered with an error
    #[error("{message}")]
    Api { status: u16, message: String },
    /// The HTTP exchange failed
    #[error("talking to the agent failed: {0}")]
    Http(String),
    /// The answer did not decode
    #[error("the agent sent an answer this CLI does not understand ({0}); are CLI and agent the same version?")]
    Decode(String),
}

/// A connection-per-request client (requests are rare and local; keeping it simple keeps the
/// CLI's start-up cheap).
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    token: Option<String>,
    shown: String,
}

impl Client {
    /// `addr`: a socket path or `https://host:port`.
    pub fn new(addr: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::pinned(addr, token, None)
    }

    /// [`Client::new`] with the agent's certificate fingerprint (`sha256:<hex>`) for
    /// `https://` addresses.
    pub fn pinned(addr: &str, token: Option<String>, pin: Option<String>) -> Result<Self, ClientError> {
        let target = if let Some(rest) = addr.strip_prefix("https://") {
            let authority = rest.trim_end_matches('/').to_string();
            if authority.is_empty() || authority.contains('/') {
                return Err(ClientError::BadAddr { addr: addr.to_string() });
            }
            Target::Tls { authority, pin }
        } else if addr.starts_with("http://") || addr.is_empty() {
            return Err(ClientError::BadAddr { addr: addr.to_string() });
        } else {
            Target::Unix(PathBuf::from(addr))
        };
        Ok(Client { target, token, shown: addr.to_string() })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let body =
            body.map(|b| (Full::new(Bytes::from(b)).map_err(|never| match never {}).boxed(), "application/json"));
        let resp = self.request(method, path, body, &[]).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
        Ok((status, bytes))
    }

    /// Sends a request with any body and returns the response, its body unread.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(ReqBody, &str)>,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let connect_err = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                ClientError::PermissionDenied { addr: self.shown.clone() }
            } else {
                ClientError::Connect { addr: self.shown.clone(), source }
            }
        };
        let (host, mut sender) = match &self.target {
            Target::Unix(p) => {
                let s = UnixStream::connect(p).await.map_err(connect_err)?;
                ("localhost".to_string(), handshake(s).await?)
            }
            Target::Tls { authority, pin } => {
                let pin = pin.as_deref().ok_or_else(|| ClientError::NoPin { addr: self.shown.clone() })?;
                let config = crate::tls::pinned_client(pin).map_err(ClientError::Http)?;
                let s = TcpStream::connect(authority.as_str()).await.map_err(connect_err)?;
                let _ = s.set_nodelay(true);
                let name = rustls::pki_types::ServerName::try_from(crate::tls::AGENT_NAME)
                    .map_err(|e| ClientError::Http(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, s)
                    .await
                    .map_err(|source| ClientError::Connect { addr: self.shown.clone(), source })?;
                (authority.clone(), handshake(tls).await?)
            }
        };
        let mut req = Request::builder().method(method).uri(path).header("host", host);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = match body {
            Some((b, ctype)) => req.header("content-type", ctype).body(b),
            None => req.body(Full::new(Bytes::new()).map_err(|never| match never {}).boxed()),
        }
        .map_err(|e| ClientError::Http(e.to_string()))?;
        sender.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))
    }

    /// Streams `file` as the body of `method path` (with `headers`), calling `progress` with the
    /// bytes sent so far; decodes the JSON answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        file: tokio::fs::File,
        headers: &[(&str, String)],
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<T, ClientError> {
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let mut sent = 0u64;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |r| {
            r.map(|b| {
                sent += b.len() as u64;
                progress(sent);
                hyper::body::Frame::data(b)
            })
        });
        let body = BodyExt::boxed(StreamBody::new(stream));
        let mut hs: Vec<(&str, String)> = headers.to_vec();
        hs.push(("content-length", len.to_string()));
        let resp = self.request(method, path, Some((body, "application/octet-stream")), &hs).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
        Self::check(status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// GETs `path` and streams the body into `out`, calling `progress` with the bytes so far and
    /// the total (if the agent said). Returns the bytes written.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        progress: impl Fn(u64, Option<u64>),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let resp = self.request(Method::GET, path, None, &[]).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
            Self::check(status, &bytes)?;
            return Err(ClientError::Api { status: status.as_u16(), message: format!("the agent answered {status}") });
        }
        let total =
            resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await.map_err(|e| ClientError::Http(format!("writing the output: {e}")))?;
                got += data.len() as u64;
                progress(got, total);
            }
        }
        if let Some(t) = total
            && t != got
        {
            return Err(ClientError::Http(format!("the agent sent {got} of {t} bytes; run the command again")));
        }
        out.flush().await.map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(got)
    }

    fn check(status: StatusCode, bytes: &Bytes) -> Result<(), ClientError> {
        if status.is_success() {
            return Ok(());
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized);
        }
        let message = serde_json::from_slice::<ErrorBody>(bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("the agent answered {status}"));
        Err(ClientError::Api { status: status.as_u16(), message })
    }

    /// GET `path`, decoding JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, bytes) = self.send(Method::GET, path, None).await?;
        Self::check(status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Sends `body` as JSON with `method`, decoding the JSON answer.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Http(e.to_string()))?;
        let (status, bytes) = self.send(method, path, Some(body)).await?;
        Self::check(status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Sends `body` (JSON) and reads a newline-delimited JSON answer, handing each item to
    /// `on_item` as it arrives (attached `run`, `logs -f`). Returns when the agent ends it.
    pub async fn stream_lines<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        on_item: impl FnMut(T),
    ) -> Result<(), ClientError> {
        let body = match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b).map_err(|e| ClientError::Http(e.to_string()))?;
                Some((Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed(), "application/json"))
            }
            None => None,
        };
        self.exchange(method, path, body, on_item).await
    }

    /// Streams `input` (e.g. this process's stdin) as the request body while reading the
    /// newline-delimited JSON answer (`exec -i`).
    pub async fn stream_with_input<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        input: impl tokio::io::AsyncRead + Send + Sync + 'static,
        on_item: impl FnMut(T),
    ) -> Result<(), ClientError> {
        let stream = tokio_util::io::ReaderStream::new(input).map(|r| r.map(hyper::body::Frame::data));
        let body = BodyExt::boxed(StreamBody::new(stream));
        self.exchange(method, path, Some((body, "application/octet-stream")), on_item).await
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(ReqBody, &str)>,
        mut on_item: impl FnMut(T),
    ) -> Result<(), ClientError> {
        let resp = self.request(method, path, body, &[]).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
            Self::check(status, &bytes)?;
            return Err(ClientError::Api { status: status.as_u16(), message: format!("the agent answered {status}") });
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let item = serde_json::from_slice(&line).map_err(|e| ClientError::Decode(e.to_string()))?;
                on_item(item);
            }
        }
        Ok(())
    }

    /// A raw request: status and body, no error mapping (for tests of error answers).
    pub async fn raw(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Bytes), ClientError> {
        let (s, b) = self.send(method, path, body).await?;
        Ok((s.as_u16(), b))
    }

    /// GET `path` with `Range: bytes=START-END`: the status and the body.
    pub async fn get_range(&self, path: &str, start: u64, end: u64) -> Result<(u16, Bytes), ClientError> {
        self.get_ranged(path, &format!("bytes={start}-{end}")).await
    }

    /// A GET with this `Range` header (`bytes=-N`, `bytes=S-`, …): the status and the body.
    pub async fn get_ranged(&self, path: &str, range: &str) -> Result<(u16, Bytes), ClientError> {
        let resp = self.request(Method::GET, path, None, &[("range", range.to_string())]).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
        Ok((status, body))
    }
}

type ReqBody = BoxBody<Bytes, std::io::Error>;
type Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

async fn handshake<S>(stream: S) -> Result<Sender, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
