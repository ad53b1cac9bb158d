//! A real OCI registry on loopback for end-to-end tests of registry clients.
//!
//! [`Registry::start`] runs Debian's `docker-registry` (the Docker distribution v2 registry;
//! `scripts/deps.sh` installs it) as a child process with a config of its own under the given
//! directory: filesystem storage in `<dir>/storage`, plain HTTP on a free `127.0.0.1` port, deletes
//! enabled, optional htpasswd (bcrypt) basic auth, and the access log on, written with the rest of
//! its output to `<dir>/registry.log`. [`Registry::start_token`] runs it with bearer-token auth
//! instead, against a token service of the testkit's own ([`token`]). Tests count what a client
//! fetched from that log ([`Registry::blob_gets`], [`Registry::manifest_gets`],
//! [`Registry::requests`]).
//!
//! Images go in with `skopeo` ([`push_oci_archive`], [`push_docker_archive`], [`push_with`]) or
//! directly through the registry API ([`Registry::push_blob`], [`Registry::put_manifest`],
//! [`push_two_platform_index`]); [`Registry::request`] is a tiny HTTP/1.1 client for anything else.
//! Dropping a [`Registry`] kills the process.

use anyhow::{Context, bail, ensure};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod token;

pub use token::IssuedToken;

/// The registry binary of Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long [`Registry::start`] waits for `GET /v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every manifest media type, for `Accept` headers.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A running (or stopped) `docker-registry` on `127.0.0.1`.
pub struct Registry {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    auth: Option<(String, String)>,
    /// The token service, in bearer-token mode.
    token: Option<token::TokenServer>,
    child: Option<Child>,
    /// Where the log stood when the registry was last launched.
    launch_offset: u64,
}

impl Registry {
    /// Starts a registry with its config, storage and log under `dir`; with `auth`, it accepts only
    /// that user and password (HTTP basic auth against a bcrypt htpasswd file).
    pub fn start(dir: &Path, auth: Option<(&str, &str)>) -> anyhow::Result<Registry> {
        Registry::start_with(dir, auth, None)
    }

    /// Starts a registry with bearer-token auth (the Docker token flow): it sends clients to a
    /// token service ([`token::TokenServer`], on another free port) that gives `user` with
    /// `password` a token for whatever it asks, anyone else nothing. [`Registry::issued_tokens`]
    /// says who got tokens.
    pub fn start_token(dir: &Path, (user, password): (&str, &str)) -> anyhow::Result<Registry> {
        let server = token::TokenServer::start(user, password)?;
        Registry::start_with(dir, Some((user, password)), Some(server))
    }

    fn start_with(
        dir: &Path,
        auth: Option<(&str, &str)>,
        token: Option<token::TokenServer>,
    ) -> anyhow::Result<Registry> {
        std::fs::create_dir_all(dir.join("storage")).with_context(|| format!("creating {}", dir.display()))?;
        ensure!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing (apt-get install docker-registry, or run scripts/deps.sh)"
        );
        let mut reg = Registry {
            dir: dir.to_path_buf(),
            config: dir.join("config.yml"),
            log: dir.join("registry.log"),
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            token,
            child: None,
            launch_offset: 0,
        };
        match (&reg.token, auth) {
            (Some(t), _) => {
                let path = dir.join("token-cert.pem");
                std::fs::write(&path, t.cert_pem()).with_context(|| format!("writing {}", path.display()))?;
            }
            (None, Some((user, password))) => write_htpasswd(&dir.join("htpasswd"), user, password)?,
            (None, None) => {}
        }
        // A free port can be taken between probing it and the registry binding it: retry on
        // another one.
        let mut last = None;
        for _ in 0..5 {
            reg.addr = free_port()?;
            reg.write_config()?;
            match reg.launch() {
                Ok(()) => return Ok(reg),
                Err(e) if reg.bind_failed() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt")).context("no free port for the registry after 5 attempts")
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the registry host in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The directory holding its config, storage and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The user and password it was started with.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The tokens its token service gave out, oldest first (none without bearer-token auth).
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.token.as_ref().map(token::TokenServer::issued).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the registry (clients then get connection refused); [`Registry::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same storage (stops it first if it runs).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        // The port was ours a moment ago; a client's connection in TIME_WAIT does not block the
        // listener (Go sets SO_REUSEADDR), but retry briefly in case someone grabbed it.
        let mut last = None;
        for _ in 0..5 {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if self.bind_failed() => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt")).with_context(|| format!("restarting the registry on {}", self.addr))
    }

    /// Everything the registry wrote (application log and access log, across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The access-log lines so far, oldest first.
    pub fn requests(&self) -> Vec<AccessLine> {
        self.sync_log();
        self.log().lines().filter_map(AccessLine::parse).collect()
    }

    /// How many successful (200/206) `GET /v2/<repo>/blobs/<digest>` the registry served, in any
    /// repository; `HEAD`s and failed or redirected requests do not count.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.requests().iter().filter(|r| r.method == "GET" && r.ok() && r.path.ends_with(&suffix)).count()
    }

    /// How many successful `GET /v2/<repo>/manifests/<reference>` the registry served, by tag or
    /// digest, in any repository (`HEAD`s do not count).
    pub fn manifest_gets(&self) -> usize {
        self.requests().iter().filter(|r| r.method == "GET" && r.ok() && r.path.contains("/manifests/")).count()
    }

    /// [`Registry::manifest_gets`] of one `reference` (a tag or digest) in `repo`.
    pub fn manifest_gets_of(&self, repo: &str, reference: &str) -> usize {
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.requests().iter().filter(|r| r.method == "GET" && r.ok() && r.path == path).count()
    }

    /// An HTTP/1.1 request to the registry with its own credentials (if it has any). `path` starts
    /// with `/v2/`; the body is sent with a `Content-Length`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<HttpResponse> {
        self.request_as(self.credentials(), method, path, headers, body)
    }

    /// [`Registry::request`] as `auth` (`None`: anonymous). With bearer-token auth, a `401` that
    /// challenges for a token is answered as a client would: a token for the challenge's scope
    /// from the token service with `auth`, and the request again with it (unless `headers`
    /// already carry an `Authorization`).
    pub fn request_as(
        &self,
        auth: Option<(&str, &str)>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<HttpResponse> {
        let basic = auth.map(|(u, p)| basic_auth(u, p));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(b) = &basic
            && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            all.push(("Authorization", b));
        }
        let r = http_request(self.addr, method, path, &all, body)?;
        let (Some(server), Some((user, password)), 401) = (&self.token, auth, r.status) else { return Ok(r) };
        if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
            return Ok(r);
        }
        let Some(params) = r.header("www-authenticate").and_then(token::bearer_params) else { return Ok(r) };
        let scope = params.iter().find(|(k, _)| k == "scope").map_or("", |(_, v)| v.as_str());
        let bearer = format!("Bearer {}", server.fetch(scope, user, password)?);
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("Authorization", &bearer));
        http_request(self.addr, method, path, &all, body)
    }

    /// The digest of `repo`'s manifest `reference` from a `HEAD` (so it counts in no GET counter).
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> anyhow::Result<String> {
        let r =
            self.request("HEAD", &format!("/v2/{repo}/manifests/{reference}"), &[("Accept", MANIFEST_ACCEPT)], b"")?;
        ensure!(r.status == 200, "HEAD manifest {repo}:{reference}: HTTP {}", r.status);
        r.header("docker-content-digest").map(str::to_string).context("no Docker-Content-Digest")
    }

    /// Uploads `data` as a blob of `repo` (monolithic: `POST` then `PUT ?digest=`); returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_digest(data);
        let r = self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"")?;
        ensure!(r.status == 202, "starting a blob upload to {repo}: HTTP {} {}", r.status, r.text());
        let location = r.header("location").context("blob upload without Location")?;
        let path = match location.find("://") {
            Some(i) => location[i + 3..].find('/').map_or("/", |j| &location[i + 3 + j..]),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = self.request(
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            data,
        )?;
        ensure!(r.status == 201, "uploading blob {digest} to {repo}: HTTP {} {}", r.status, r.text());
        Ok(digest)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` (a tag or the manifest's digest); returns the digest
    /// the registry reports, checked against the body's.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> anyhow::Result<String> {
        let r =
            self.request("PUT", &format!("/v2/{repo}/manifests/{reference}"), &[("Content-Type", media_type)], body)?;
        ensure!(r.status == 201, "PUT manifest {repo}:{reference}: HTTP {} {}", r.status, r.text());
        let digest = sha256_digest(body);
        if let Some(d) = r.header("docker-content-digest") {
            ensure!(d == digest, "registry says the manifest is {d}, its body hashes to {digest}");
        }
        Ok(digest)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let q = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("json string");
        let mut cfg = format!(
            "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: shoal-testkit-registry
",
            storage = q(&self.dir.join("storage")),
            addr = self.addr,
        );
        if let Some(t) = &self.token {
            cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                serde_json::to_string(&t.realm())?,
                token::SERVICE,
                token::ISSUER,
                q(&self.dir.join("token-cert.pem"))
            ));
        } else if self.auth.is_some() {
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                q(&self.dir.join("htpasswd"))
            ));
        }
        std::fs::write(&self.config, cfg).with_context(|| format!("writing {}", self.config.display()))
    }

    /// Spawns the registry and waits until `GET /v2/` answers; kills it on failure.
    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let start_offset = log.metadata()?.len();
        self.launch_offset = start_offset;
        self.child = Some(
            Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {REGISTRY_BIN}"))?,
        );
        let want = if self.auth.is_some() { 401 } else { 200 };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                self.child = None;
                bail!("docker-registry exited with {status}; log:\n{}", self.log_tail(start_offset));
            }
            // "listening on" is logged once the registry holds the port: the answer is its own,
            // not that of whoever may have taken the port in between.
            let listening = format!("listening on {}", self.addr);
            if self.log_since(start_offset).contains(&listening)
                && let Ok(r) = http_request(self.addr, "GET", "/v2/", &[], b"")
            {
                if r.status == want {
                    return Ok(());
                }
                self.stop();
                bail!("GET /v2/ answered {} (expected {want}); log:\n{}", r.status, self.log_tail(start_offset));
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "docker-registry did not answer on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.addr,
                    self.log_tail(start_offset)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the last launch failed because the port was taken.
    fn bind_failed(&self) -> bool {
        self.log_since(self.launch_offset).contains("address already in use")
    }

    /// The log written since byte `offset`.
    fn log_since(&self, offset: u64) -> String {
        let text = self.log();
        text.get(offset as usize..).unwrap_or(&text).to_string()
    }

    /// The log written since `offset`, at most its last 40 lines.
    fn log_tail(&self, offset: u64) -> String {
        let text = self.log_since(offset);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The access log is written when a request's handler returns, in the registry's own time:
    /// send a marker request and wait (briefly) until its line is in the file, so every request a
    /// client has already seen answered is logged too.
    fn sync_log(&self) {
        if self.child.is_none() {
            return;
        }
        let marker = format!("/v2/?testkit-log-sync={}", rand_token());
        if http_request(self.addr, "GET", &marker, &[], b"").is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.log().contains(&marker) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One access-log line (Apache combined format, written by the registry for every request):
/// `127.0.0.1 - - [28/Nov/2026:17:22:22 +0000] "GET /v2/a/b/blobs/sha256:… HTTP/1.1" 200 151 "" "skopeo/1.9.3"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    /// The request path without its query.
    pub path: String,
    /// The query (without `?`), empty if none.
    pub query: String,
    pub status: u16,
    /// Response body bytes.
    pub size: u64,
    pub user_agent: String,
}

impl AccessLine {
    /// Parses an access-log line; `None` for anything else (the application log's `time=…` lines).
    pub fn parse(line: &str) -> Option<AccessLine> {
        if line.starts_with("time=") {
            return None;
        }
        let (_, rest) = line.split_once("] \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let mut req = request.split(' ');
        let (method, uri) = (req.next()?, req.next()?);
        if !uri.starts_with('/') || !method.chars().all(|c| c.is_ascii_uppercase()) {
            return None;
        }
        let mut fields = rest.split(' ');
        let status = fields.next()?.parse().ok()?;
        let size = fields.next()?.parse().unwrap_or(0);
        let user_agent =
            rest.rsplit_once(" \"").map(|(_, ua)| ua.trim_end_matches('"').to_string()).unwrap_or_default();
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        Some(AccessLine {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            status,
            size,
            user_agent,
        })
    }

    /// 200 or 206.
    pub fn ok(&self) -> bool {
        self.status == 200 || self.status == 206
    }
}

/// An HTTP response read to the end.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names as sent; look them up with [`HttpResponse::header`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {}", self.status, self.text()))
    }
}

/// `Basic <base64(user:password)>`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A one-shot HTTP/1.1 request (`Connection: close`) to `addr`, read to EOF.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    ensure!(addr.ip().is_loopback(), "testkit HTTP goes to loopback only, not {addr}");
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connecting {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: shoal-testkit\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(|| format!("reading the answer to {method} {path}"))?;
    parse_response(&raw).with_context(|| format!("{method} {path}"))
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of HTTP head")?;
    let head = std::str::from_utf8(&raw[..end]).context("HTTP head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut r = HttpResponse { status, headers, body: raw[end + 4..].to_vec() };
    if r.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        r.body = dechunk(&r.body)?;
    } else if let Some(n) = r.header("content-length").and_then(|n| n.parse::<usize>().ok())
        && r.body.len() > n
    {
        r.body.truncate(n);
    }
    Ok(r)
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size = std::str::from_utf8(&b[..eol])?.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).context("bad chunk size")?;
        b = &b[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        ensure!(b.len() >= n + 2, "truncated chunk");
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn rand_token() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    hex::encode(&Sha256::digest(format!("{t:?}{}", std::process::id()))[..8])
}

/// Writes an htpasswd file with one bcrypt entry (`htpasswd -B` of apache2-utils).
fn write_htpasswd(path: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    let out = Command::new("htpasswd")
        .args(["-B", "-C", "5", "-b", "-n", user, password])
        .stdin(Stdio::null())
        .output()
        .context("running htpasswd (apt-get install apache2-utils, or run scripts/deps.sh)")?;
    ensure!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout)?.trim().to_string();
    ensure!(line.starts_with(&format!("{user}:$2")), "htpasswd wrote no bcrypt entry: {line}");
    std::fs::write(path, format!("{line}\n")).with_context(|| format!("writing {}", path.display()))
}

/// The manifest type skopeo writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ManifestFormat {
    /// The source's type (an OCI archive stays OCI, a Docker archive becomes Docker v2 schema 2).
    #[default]
    Source,
    /// `--format oci`.
    Oci,
    /// `--format v2s2`: Docker v2 schema 2 (layers gzip).
    V2s2,
}

/// What skopeo does with the layers on the way into the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// skopeo's default: uncompressed layers are gzipped on push, so layer and manifest digests
    /// differ from the archive's.
    #[default]
    Gzip,
    /// `--dest-compress-format zstd` (OCI manifests only).
    Zstd,
    /// `--preserve-digests`: the layers go in as they are in the archive (an uncompressed tar
    /// stays uncompressed) and the manifest digest is the archive's. Fails with a format change.
    Preserve,
}

/// Options of [`push_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PushOptions<'a> {
    pub format: ManifestFormat,
    pub compression: Compression,
    /// `--dest-creds user:password` (`None`: anonymous).
    pub auth: Option<(&'a str, &'a str)>,
}

/// `skopeo copy oci-archive:ARCHIVE docker://HOST/REPO:TAG` with skopeo's defaults (layers
/// gzipped, OCI manifest); returns the pushed manifest's digest.
///
/// Note: skopeo's blob-info cache (`/var/lib/containers/cache`) lets it reuse a blob variant
/// already in the same registry (say, one pushed earlier uncompressed) instead of compressing again.
pub fn push_oci_archive(
    reg: &Registry,
    archive: &Path,
    repo_tag: &str,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    push_with(reg, &format!("oci-archive:{}", archive.display()), repo_tag, &PushOptions { auth, ..Default::default() })
}

/// `skopeo copy docker-archive:ARCHIVE docker://HOST/REPO:TAG` (a Docker v2 schema 2 manifest);
/// returns the pushed manifest's digest.
pub fn push_docker_archive(
    reg: &Registry,
    archive: &Path,
    repo_tag: &str,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    push_with(
        reg,
        &format!("docker-archive:{}", archive.display()),
        repo_tag,
        &PushOptions { auth, ..Default::default() },
    )
}

/// `skopeo copy SOURCE docker://HOST/REPO:TAG` with `opts`, `source` being any skopeo image
/// reference (`oci-archive:PATH`, `docker-archive:PATH`, `oci:DIR:TAG`…); returns the pushed
/// manifest's digest. The error carries skopeo's stderr.
pub fn push_with(reg: &Registry, source: &str, repo_tag: &str, opts: &PushOptions<'_>) -> anyhow::Result<String> {
    let scratch = tempfile::Builder::new().prefix("shoal-skopeo-").tempdir()?;
    let digest_file = scratch.path().join("digest");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"]).arg(&digest_file);
    match opts.format {
        ManifestFormat::Source => {}
        ManifestFormat::Oci => {
            cmd.args(["--format", "oci"]);
        }
        ManifestFormat::V2s2 => {
            cmd.args(["--format", "v2s2"]);
        }
    }
    match opts.compression {
        Compression::Gzip => {
            cmd.args(["--dest-compress-format", "gzip"]);
        }
        Compression::Zstd => {
            cmd.args(["--dest-compress-format", "zstd"]);
        }
        Compression::Preserve => {
            cmd.arg("--preserve-digests");
        }
    }
    if let Some((u, p)) = opts.auth {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    } else {
        cmd.arg("--dest-no-creds");
    }
    let dest = format!("docker://{}/{repo_tag}", reg.host());
    cmd.arg(source).arg(&dest);
    let out = skopeo(cmd)?;
    ensure!(
        out.status.success(),
        "skopeo copy {source} {dest} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let digest = std::fs::read_to_string(&digest_file).context("skopeo wrote no --digestfile")?;
    Ok(digest.trim().to_string())
}

/// `skopeo inspect --format {{.Digest}} docker://HOST/REF` with the registry's credentials: the
/// digest of the manifest (or index) `repo_ref` (`repo:tag` or `repo@sha256:…`) names.
///
/// skopeo GETs the manifest and the config blob (an index: the index, the current platform's
/// manifest and its config), which [`Registry::blob_gets`] and [`Registry::manifest_gets`] count;
/// [`Registry::manifest_digest`] asks with a `HEAD` instead.
pub fn inspect_digest(reg: &Registry, repo_ref: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
    match reg.credentials() {
        Some((u, p)) => cmd.arg("--creds").arg(format!("{u}:{p}")),
        None => cmd.arg("--no-creds"),
    };
    let src = format!("docker://{}/{repo_ref}", reg.host());
    cmd.arg(&src);
    let out = skopeo(cmd)?;
    ensure!(
        out.status.success(),
        "skopeo inspect {src} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let digest = String::from_utf8(out.stdout)?.trim().to_string();
    ensure!(digest.starts_with("sha256:"), "skopeo inspect {src} printed {digest:?}, not a digest");
    Ok(digest)
}

/// Runs skopeo without the host's registry auth files.
fn skopeo(mut cmd: Command) -> anyhow::Result<std::process::Output> {
    cmd.env("REGISTRY_AUTH_FILE", "/dev/null").stdin(Stdio::null());
    cmd.output().context("running skopeo (apt-get install skopeo, or run scripts/deps.sh)")
}

/// `gzip -n` of `data` (a gzip layer for [`Registry::push_blob`]).
pub fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
    ensure!(out.status.success(), "gzip failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

/// One platform's image in a [`PushedIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    /// `linux/amd64`, `linux/arm64`.
    pub platform: String,
    /// The platform manifest's digest.
    pub manifest: String,
    pub config: String,
    /// Its one layer (gzip), holding `/etc/platform` with the platform's name and a newline.
    pub layer: String,
}

/// What [`push_two_platform_index`] pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedIndex {
    /// The index's digest (what `repo:tag` resolves to).
    pub digest: String,
    /// amd64 first, then arm64.
    pub platforms: Vec<PlatformImage>,
}

/// Pushes a two-platform image to `repo:tag`: per platform (linux/amd64, linux/arm64/v8) a gzip
/// layer with `/etc/platform`, a config for that architecture and an OCI manifest (by digest), then
/// an OCI image index referencing both (digest, size, mediaType, platform) as `tag`. Uses the
/// registry's credentials.
pub fn push_two_platform_index(reg: &Registry, repo: &str, tag: &str) -> anyhow::Result<PushedIndex> {
    let mut platforms = Vec::new();
    let mut entries = Vec::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let platform = format!("linux/{arch}");
        let tar = crate::images::layer(&[("etc/platform", format!("{platform}\n").as_bytes())]);
        let gz = gzip(&tar)?;
        let layer = reg.push_blob(repo, &gz)?;
        let mut config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&tar)] },
        });
        if let Some(v) = variant {
            config["variant"] = v.into();
        }
        let config = serde_json::to_vec(&config)?;
        let config_digest = reg.push_blob(repo, &config)?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": OCI_LAYER_GZIP, "digest": layer, "size": gz.len() }],
        }))?;
        let digest = reg.put_manifest(repo, &sha256_digest(&manifest), OCI_MANIFEST, &manifest)?;
        let mut p = serde_json::json!({ "architecture": arch, "os": "linux" });
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        entries.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(), "platform": p,
        }));
        platforms.push(PlatformImage { platform, manifest: digest, config: config_digest, layer });
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
    }))?;
    let digest = reg.put_manifest(repo, tag, OCI_INDEX, &index)?;
    Ok(PushedIndex { digest, platforms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_lines() {
        let l = r#"127.0.0.1 - - [28/Nov/2026:17:22:22 +0000] "GET /v2/a/b/blobs/sha256:c1af HTTP/1.1" 200 151 "" "skopeo/1.9.3""#;
        let a = AccessLine::parse(l).unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.status, a.size),
            ("GET", "/v2/a/b/blobs/sha256:c1af", 200, 151)
        );
        assert_eq!(a.user_agent, "skopeo/1.9.3");
        let q = AccessLine::parse(r#"127.0.0.1 - - [x] "HEAD /v2/?x=1 HTTP/1.1" 401 0 "" "c""#).unwrap();
        assert_eq!((q.method.as_str(), q.path.as_str(), q.query.as_str(), q.status), ("HEAD", "/v2/", "x=1", 401));
        assert!(
            AccessLine::parse(r#"time="2026" level=info msg="response completed" http.request.method=GET"#).is_none()
        );
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(basic_auth("alice", "s3cret"), "Basic YWxpY2U6czNjcmV0");
    }

    #[test]
    fn dechunks() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(r.body, b"abcde");
    }
}
