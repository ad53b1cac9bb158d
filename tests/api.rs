//! End-to-end API tests: bad input gets a clear 4xx and the agent keeps running; the CLI's
//! JSON has the documented shape; TCP needs the token.

#![allow(clippy::unwrap_used)]

use shoal_api::client::Client;
use shoal_testkit::{Agent, AgentSpec, Cluster, shoal_bin};
use std::process::Command;

fn cli(agent: &Agent, args: &[&str]) -> std::process::Output {
    Command::new(shoal_bin()).arg("--addr").arg(&agent.socket).args(args).output().expect("run shoal")
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_4xx_with_a_message_and_the_agent_survives() -> anyhow::Result<()> {
    let c = Cluster::start(1, true).await?;
    let a = &c.agents[0];
    let client = a.client();
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/v1/nope", 404),
        ("GET", "/v1/peers?state=sleepy", 400),
        ("GET", "/v1/peers?bogus=1", 400),
        ("GET", "/v1/peers/no-such-peer", 404),
        ("DELETE", "/v1/peers", 405),
        ("POST", "/v1/status", 405),
    ];
    for (method, path, want) in cases {
        let (status, body) = client.raw(method.parse()?, path, Some(b"{not json".to_vec())).await?;
        assert_eq!(status, *want, "{method} {path}: {}", String::from_utf8_lossy(&body));
        if *want != 405 {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: {v}");
        }
    }
    // A control character in the path is refused, not crashed on.
    let (status, _) = client.raw("GET".parse()?, "/v1/peers/%01%02", None).await?;
    assert_eq!(status, 400);
    // Still alive and answering.
    assert_eq!(a.status().await?.cluster_size, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_json_has_the_documented_shape() -> anyhow::Result<()> {
    let mut spec = AgentSpec::new("labelled");
    spec.extra = vec!["--label".into(), "zone=eu-1".into(), "--label".into(), "gpu=none".into()];
    let dir = tempfile::tempdir()?;
    let mut a = Agent::start(dir.path(), spec)?;
    a.ready().await?;
    let out = cli(&a, &["peers", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let p = &v.as_array().expect("an array")[0];
    for field in ["id", "name", "addrs", "state", "capacity", "free", "labels"] {
        assert!(!p[field].is_null(), "missing {field} in {p}");
    }
    assert_eq!(p["state"], "alive");
    assert_eq!(p["capacity"]["cpus"], 1.0);
    assert_eq!(p["capacity"]["memory_bytes"], 1u64 << 30);
    assert!(p["free"]["cpus"].is_number() && p["free"]["memory_bytes"].is_number());
    assert_eq!(p["labels"]["zone"], "eu-1");
    let out = cli(&a, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(s["name"], "labelled");
    assert_eq!(s["cluster_size"], 1);
    // The table form works too.
    let out = cli(&a, &["peers"]);
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("labelled (self)") && text.contains("alive") && text.contains("zone=eu-1"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_errors_say_what_to_do() -> anyhow::Result<()> {
    let out = Command::new(shoal_bin()).args(["--addr", "/nonexistent/shoal.sock", "peers"]).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Is `shoal agent` running?"), "{err}");
    let out =
        Command::new(shoal_bin()).args(["agent", "--join", "not an address", "--data-dir", "/tmp/x-never"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiaddr"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_api_requires_the_token() -> anyhow::Result<()> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut spec = AgentSpec::new("tcp");
    spec.extra = vec!["--api-listen".into(), format!("127.0.0.1:{port}")];
    let dir = tempfile::tempdir()?;
    let mut a = Agent::start(dir.path(), spec)?;
    a.ready().await?;
    let url = format!("https://127.0.0.1:{port}");
    let token_file = a.dir.join("api.token");
    let (token, pin) = shoal_api::auth::parse_token_file(&std::fs::read_to_string(&token_file)?);
    let (token, pin) = (token.expect("a token"), pin.expect("the certificate's fingerprint"));
    // TLS with the pinned certificate; then the token.
    let err = Client::pinned(&url, None, Some(pin.clone()))?.get::<serde_json::Value>("/v1/status").await.unwrap_err();
    assert!(err.to_string().contains("SHOAL_TOKEN"), "{err}");
    let err = Client::pinned(&url, Some("wrong".into()), Some(pin.clone()))?
        .get::<serde_json::Value>("/v1/status")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SHOAL_TOKEN"), "{err}");
    let s: serde_json::Value = Client::pinned(&url, Some(token.clone()), Some(pin.clone()))?.get("/v1/status").await?;
    assert_eq!(s["name"], "tcp");
    // Another certificate's pin: the handshake fails before the token is sent.
    let other = format!("sha256:{}", "0".repeat(64));
    let err = Client::pinned(&url, Some(token.clone()), Some(other))?
        .get::<serde_json::Value>("/v1/status")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pinned"), "{err}");
    // No pin: a clear error; plain HTTP: refused (the agent speaks TLS only).
    let err = Client::new(&url, Some(token.clone()))?.get::<serde_json::Value>("/v1/status").await.unwrap_err();
    assert!(err.to_string().contains("SHOAL_TOKEN_FILE"), "{err}");
    assert!(Client::new(&format!("http://127.0.0.1:{port}"), None).is_err());
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port))?;
    std::io::Write::write_all(&mut plain, b"GET /v1/status HTTP/1.0\r\n\r\n")?;
    plain.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut got);
    assert!(!String::from_utf8_lossy(&got).contains("\"name\""), "plaintext gets no answer");
    // The CLI uses SHOAL_ADDR and SHOAL_TOKEN_FILE (a copy of api.token).
    let out = Command::new(shoal_bin())
        .args(["status", "--json"])
        .env("SHOAL_ADDR", &url)
        .env("SHOAL_TOKEN_FILE", &token_file)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_on_the_same_data_dir_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = Agent::start(dir.path(), AgentSpec::new("one"))?;
    a.ready().await?;
    let out = Command::new(shoal_bin())
        .args(["agent", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(&a.dir)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another agent"), "{err}");
    assert_eq!(a.status().await?.cluster_size, 1, "the first agent is unharmed");
    Ok(())
}

/// `shoal agent` with no flags (data dir from the environment, as root's default would be)
/// listens on the default TCP and QUIC port and forms a one-peer cluster, secured by a
/// cluster key it makes in its data dir (0600) and says how to share.
#[tokio::test(flavor = "multi_thread")]
async fn no_flags_gives_a_working_single_peer_cluster() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("agent.log");
    let mut child = Command::new(shoal_bin())
        .arg("agent")
        .env("SHOAL_DATA_DIR", dir.path())
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let client = Client::new(&dir.path().join("shoal.sock").display().to_string(), None)?;
    let s = shoal_testkit::eventually(std::time::Duration::from_secs(15), "agent to answer", || async {
        client.get::<shoal_types::AgentStatus>("/v1/status").await.ok()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let s = s?;
    assert_eq!(s.cluster_size, 1);
    assert!(s.private_network, "secure by default");
    let key = dir.path().join("cluster.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions()) & 0o777;
    assert_eq!(mode, 0o600, "the key is the owner's only");
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("made an operator key") && text.contains("--cluster-key"), "{text}");
    assert!(std::fs::read_to_string(&key)?.contains("/shoal/operator/1/"), "a new cluster gets an operator key");
    assert!(s.listen_addrs.iter().any(|a| a.contains("/tcp/4100/")), "{:?}", s.listen_addrs);
    // libp2p's QUIC has no pre-shared-key mode: a keyed cluster speaks TCP only.
    assert!(!s.listen_addrs.iter().any(|a| a.contains("quic")), "{:?}", s.listen_addrs);
    Ok(())
}
