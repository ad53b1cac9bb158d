//! The Prometheus endpoint of a live agent: what `promtool check metrics` says of it, and
//! that its numbers move with what happens (a peer joining, content fetched, API calls).

use shoal_testkit::Cluster;
use shoal_testkit::registry::http_request;
use shoal_types::PeerState;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The value of the sample `name` (with its labels as written), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_and_count_peers_content_and_requests() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut c = Cluster::start(1, true).await?;
    c.add_with("watched", &["--metrics-listen", &addr.to_string()]).await?;
    for a in &c.agents {
        shoal_testkit::eventually(Duration::from_secs(20), "2 alive", async || {
            (a.peers().await.ok()?.iter().filter(|p| p.state == PeerState::Alive).count() == 2).then_some(())
        })
        .await?;
    }
    // 3 MiB shared on the first peer, fetched by the watched one.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("f");
    std::fs::write(&file, shoal_testkit::noise::random_bytes(3 << 20, 5))?;
    let cli = |a: &shoal_testkit::Agent, args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(shoal_testkit::shoal_bin()).arg("--addr").arg(&a.socket).args(args).output()?;
        anyhow::ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let id = cli(&c.agents[0], &["share", file.to_str().unwrap_or_default()])?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    cli(&c.agents[1], &["get", &id, "-o", dir.path().join("got").to_str().unwrap_or_default()])?;
    let seed = c.agents[0].status().await?.id;

    let page = http_request(addr, "GET", "/metrics", &[], b"")?;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    let text = page.text();
    // promtool reads it as Prometheus does, and lints names, units and help.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running promtool (apt-get install prometheus, or scripts/deps.sh): {e}"))?;
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes())?;
    let out = promtool.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sample(&text, "shoal_peers{state=\"alive\"}"), Some(2.0), "{text}");
    let received = sample(&text, &format!("shoal_content_received_bytes_total{{peer=\"{seed}\"}}")).unwrap_or(0.0);
    assert!(received >= (3 << 20) as f64, "received {received} from the seed\n{text}");
    assert!(sample(&text, "shoal_pieces_verified_total").unwrap_or(0.0) >= 1.0, "{text}");
    assert_eq!(sample(&text, "shoal_pieces_rejected_total"), Some(0.0));
    assert!(sample(&text, "shoal_transfers_completed_total").unwrap_or(0.0) >= 1.0, "{text}");
    assert!(sample(&text, "shoal_events_total{kind=\"peer.joined\"}").unwrap_or(0.0) >= 1.0, "{text}");
    assert!(sample(&text, "shoal_swim_packets_sent_total").unwrap_or(0.0) > 0.0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("shoal_api_request_seconds_count{") && l.contains("route=\"/v1/content/{id}")),
        "the API request was timed by its route:\n{text}"
    );
    assert!(sample(&text, "process_open_fds").unwrap_or(0.0) > 0.0, "{text}");
    assert!(sample(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6, "{text}");

    // Prometheus asks for OpenMetrics and gets it.
    let open =
        http_request(addr, "GET", "/metrics", &[("Accept", "application/openmetrics-text; version=1.0.0")], b"")?;
    assert!(open.header("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")));
    assert!(open.text().ends_with("# EOF\n") && open.text().contains("# TYPE shoal_pieces_verified counter"));
    Ok(())
}
