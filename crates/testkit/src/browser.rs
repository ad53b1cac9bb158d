//! A real browser for tests: Debian's headless Chromium driven over the DevTools protocol
//! (a websocket of JSON commands), enough to load a page, read it with JavaScript, click, and
//! take screenshots. Loopback only.

use anyhow::{Context, bail, ensure};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with one page, killed on drop.
pub struct Browser {
    _child: Chromium,
    ws: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (`apt-get install chromium`) on an empty page.
    pub async fn start() -> anyhow::Result<Browser> {
        let profile = tempfile::Builder::new().prefix("shoal-chromium-").tempdir()?;
        let child = Chromium(
            Command::new("chromium")
                // Its own process group: the renderers and helpers go with it on drop.
                .process_group(0)
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1400,1000",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting chromium (apt-get install chromium, or run scripts/deps.sh)")?,
        );
        // Chromium writes the port it chose to DevToolsActivePort.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next()?.parse().ok()) {
                break p;
            }
            ensure!(Instant::now() < deadline, "chromium did not open its DevTools port in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let list = devtools_get(port, "/json/list")?;
        let page = list
            .as_array()
            .and_then(|l| l.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .context("chromium has no page")?
            .to_string();
        let (ws, _) = tokio_tungstenite::connect_async(&page).await.context("the DevTools websocket")?;
        let mut b = Browser { _child: child, ws, next_id: 0, _profile: profile };
        b.call("Page.enable", json!({})).await?;
        Ok(b)
    }

    /// One DevTools command and its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .with_context(|| format!("{method}: no answer in 30 s"))?
                .context("the DevTools websocket closed")??;
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str())?;
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Loads `url` and waits for its load event.
    pub async fn goto(&mut self, url: &str) -> anyhow::Result<()> {
        ensure!(url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:"), "loopback only: {url}");
        self.call("Page.navigate", json!({"url": url})).await?;
        let start = Instant::now();
        while self.eval("document.readyState").await?.as_str() != Some("complete") {
            ensure!(start.elapsed() < Duration::from_secs(30), "{url} did not load in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The value of a JavaScript expression in the page (awaited if it is a promise).
    pub async fn eval(&mut self, expr: &str) -> anyhow::Result<Value> {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}))
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expr}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` until it is truthy (returned) or `within` passes.
    pub async fn wait_for(&mut self, expr: &str, within: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let v = self.eval(expr).await?;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return Ok(v);
            }
            ensure!(start.elapsed() < within, "not true within {within:?}: {expr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG screenshot of the page, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> anyhow::Result<PathBuf> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"})).await?;
        let data =
            base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().context("no screenshot data")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, data)?;
        Ok(path.to_path_buf())
    }
}

/// The browser's processes, killed (the whole group: renderers, helpers) when dropped, from
/// the moment it is started.
struct Chromium(Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A GET to Chromium's DevTools HTTP endpoint (which keeps the connection open: the body is
/// read by its Content-Length).
fn devtools_get(port: u16, path: &str) -> anyhow::Result<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no Content-Length from DevTools")?;
            if raw.len() >= end + 4 + len {
                return Ok(serde_json::from_slice(&raw[end + 4..end + 4 + len])?);
            }
        }
        let n = s.read(&mut buf)?;
        ensure!(n > 0, "DevTools closed the connection early");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Where tests put screenshots for a person to look at: `target/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots")
}
