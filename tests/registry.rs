//! Images from a real OCI registry (Debian's docker-registry on loopback, images pushed with
//! skopeo): pull by tag and digest, once per cluster, offline from peers, and the errors.

#![allow(clippy::unwrap_used)]

use shoal_testkit::registry::{Registry, inspect_digest, push_docker_archive, push_two_platform_index};
use shoal_testkit::{Cluster, KillOnDrop};
use shoal_types::{ImageInfo, PullRequest};

async fn pull(c: &shoal_api::client::Client, reference: &str) -> Result<ImageInfo, String> {
    c.send_json::<_, ImageInfo>(hyper::Method::POST, "/v1/images/pull", &PullRequest { reference: reference.into() })
        .await
        .map_err(|e| e.to_string())
}

/// The config and layer digests of `repo:tag`, read with a HEAD-free GET of the manifest
/// (counted in the manifest log only).
fn blob_digests(reg: &Registry, repo: &str, reference: &str) -> anyhow::Result<Vec<String>> {
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";
    let m = reg.request("GET", &format!("/v2/{repo}/manifests/{reference}"), &[("Accept", accept)], b"")?.json()?;
    let mut out = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    out.extend(m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
    Ok(out)
}

/// `registry login` as alice at `host`: a wrong password is refused (403) and not saved, the
/// right one (`s3cret`) is (204); returns the logins file of the agent with data dir `dir`.
async fn log_in_as_alice(
    cl: &shoal_api::client::Client,
    host: &str,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let login = |pw: &str| shoal_types::RegistryLogin {
        registry: host.to_string(),
        username: "alice".into(),
        password: pw.into(),
    };
    let (status, body) =
        cl.raw(hyper::Method::POST, "/v1/registries/login", Some(serde_json::to_vec(&login("wrong"))?)).await?;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("refused the credentials"));
    let logins = dir.join("registry-logins.json");
    assert!(!logins.exists(), "a refused login is not saved");
    let (status, body) =
        cl.raw(hyper::Method::POST, "/v1/registries/login", Some(serde_json::to_vec(&login("s3cret"))?)).await?;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    Ok(logins)
}

/// Pushes `team/app:v1` (busybox with `layers`, its archive written in `dir`) to `reg` as
/// alice; its digest.
fn push_app_as_alice(reg: &Registry, dir: &std::path::Path, layers: &[Vec<u8>]) -> anyhow::Result<String> {
    let archive = dir.join("app.tar");
    shoal_testkit::images::write_busybox_image(&archive, "app:v1", layers, serde_json::json!({}));
    push_docker_archive(reg, &archive, "team/app:v1", Some(("alice", "s3cret")))
}

fn random_layer(len: usize, seed: u64) -> Vec<u8> {
    shoal_testkit::images::layer(&[("data/blob", &shoal_testkit::noise::random_bytes(len, seed))])
}

#[tokio::test(flavor = "multi_thread")]
async fn three_peers_pulling_at_once_fetch_each_blob_from_the_registry_once() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut reg = Registry::start(&scratch.path().join("reg"), None)?;
    let archive = scratch.path().join("app.tar");
    shoal_testkit::images::write_busybox_image(
        &archive,
        "app:v1",
        &[random_layer(6 << 20, 1)],
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let pushed = push_docker_archive(&reg, &archive, "team/app:v1", None)?;
    let blobs = blob_digests(&reg, "team/app", "v1")?;
    let reference = format!("{}/team/app:v1", reg.host());

    let mut c = Cluster::start(3, true).await?;
    let clients: Vec<_> = c.agents.iter().map(|a| a.client()).collect();
    // Every peer sees the same membership, so all pick the same owner for each blob (while
    // views differ, two owners may each fetch: the cost of no coordinator).
    for a in &c.agents {
        shoal_testkit::eventually(std::time::Duration::from_secs(20), "all peers alive", async || {
            let peers = a.peers().await.ok()?;
            (peers.iter().filter(|p| p.state == shoal_types::PeerState::Alive).count() == 3).then_some(())
        })
        .await?;
    }
    let pulls = futures::future::join_all(clients.iter().map(|cl| pull(cl, &reference))).await;
    for (i, p) in pulls.iter().enumerate() {
        let img = p.as_ref().map_err(|e| anyhow::anyhow!("peer {i}: {e}\n{}", c.logs()))?;
        assert_eq!(img.digest, pushed, "the manifest is kept byte for byte: its digest is the registry's");
        assert_eq!(img.reference, reference);
    }
    // skopeo agrees on the digest.
    assert_eq!(inspect_digest(&reg, "team/app:v1")?, pushed);
    let counts: Vec<usize> = blobs.iter().map(|b| reg.blob_gets(b)).collect();
    // skopeo inspect fetched the config once more.
    let want: Vec<usize> = (0..blobs.len()).map(|i| if i == 0 { 2 } else { 1 }).collect();
    assert_eq!(counts, want, "each blob must come from the registry once for the whole cluster\n{}", c.logs());

    // By digest too (nothing fetched again).
    let by_digest = format!("{}/team/app@{pushed}", reg.host());
    let img = pull(&clients[1], &by_digest).await.map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    assert_eq!(img.digest, pushed);
    for b in &blobs[1..] {
        assert_eq!(reg.blob_gets(b), 1, "a pull by digest reuses the cluster's blobs");
    }

    // Registry down: a new peer still gets the image by name, from the peers.
    reg.stop();
    c.add("late").await?;
    let late = c.agents[3].client();
    let img = pull(&late, &reference).await.map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    assert_eq!(img.digest, pushed);
    Ok(())
}

/// With no `shoal registry login`, the agent takes a registry's credentials from the user's
/// Docker config: inline `auths`, and a credential helper (`credsStore`) on the PATH.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_come_from_the_users_docker_config_and_its_helper() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let reg = Registry::start(&scratch.path().join("reg"), Some(("alice", "s3cret")))?;
    let pushed = push_app_as_alice(&reg, scratch.path(), &[])?;
    let host = reg.host();

    // Inline: {"auths": {HOST: {"auth": base64("user:password")}}}.
    let inline = scratch.path().join("docker-inline");
    std::fs::create_dir_all(&inline)?;
    let basic = shoal_testkit::registry::basic_auth("alice", "s3cret");
    let auth = basic.trim_start_matches("Basic ");
    std::fs::write(inline.join("config.json"), serde_json::json!({"auths": {&host: {"auth": auth}}}).to_string())?;
    // A helper: {"credsStore": "shoaltest"} runs docker-credential-shoaltest get, HOST on stdin.
    let helper = scratch.path().join("docker-helper");
    let bin = scratch.path().join("bin");
    std::fs::create_dir_all(&helper)?;
    std::fs::create_dir_all(&bin)?;
    std::fs::write(helper.join("config.json"), r#"{"credsStore": "shoaltest"}"#)?;
    let script = bin.join("docker-credential-shoaltest");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nread host\n[ \"$1\" = get ] && [ \"$host\" = \"{host}\" ] || exit 1\n\
             echo '{{\"ServerURL\":\"{host}\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}}'\n"
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    for (name, config, path) in [("inline", &inline, None), ("helper", &helper, Some(path))] {
        let mut spec = shoal_testkit::AgentSpec::new(name);
        spec.env.push(("DOCKER_CONFIG".into(), config.display().to_string()));
        if let Some(p) = path {
            spec.env.push(("PATH".into(), p));
        }
        let mut agent = shoal_testkit::Agent::start(scratch.path(), spec)?;
        agent.ready().await?;
        let img = pull(&agent.client(), &format!("{host}/team/app:v1"))
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}\n{}", agent.log_text()))?;
        assert_eq!(img.digest, pushed, "{name}");
        assert!(!agent.dir.join("registry-logins.json").exists(), "{name}: nothing saved on the peer");
    }
    // And with neither, the registry refuses (the credentials did come from the config).
    let mut spec = shoal_testkit::AgentSpec::new("none");
    spec.env.push(("DOCKER_CONFIG".into(), scratch.path().join("empty").display().to_string()));
    let mut agent = shoal_testkit::Agent::start(scratch.path(), spec)?;
    agent.ready().await?;
    let e = pull(&agent.client(), &format!("{host}/team/app:v1")).await.unwrap_err();
    assert!(e.contains("shoal registry login"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_errors_are_clear_and_store_nothing() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let reg = Registry::start(&scratch.path().join("reg"), Some(("alice", "s3cret")))?;
    let pushed = push_app_as_alice(&reg, scratch.path(), &[])?;
    let host = reg.host();
    let c = Cluster::start(1, true).await?;
    let cl = c.agents[0].client();

    // Without a login: the registry refuses, and the error says how to log in.
    let e = pull(&cl, &format!("{host}/team/app:v1")).await.unwrap_err();
    assert!(e.contains("shoal registry login"), "{e}");
    // A wrong password is refused at login, not saved.
    let logins = log_in_as_alice(&cl, &host, &c.agents[0].dir).await?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&logins)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    let img = pull(&cl, &format!("{host}/team/app:v1")).await.map_err(anyhow::Error::msg)?;
    assert_eq!(img.digest, pushed);

    // An unknown tag: 404 that names it.
    let (status, body) = cl
        .raw(
            hyper::Method::POST,
            "/v1/images/pull",
            Some(serde_json::to_vec(&PullRequest { reference: format!("{host}/team/app:nope") })?),
        )
        .await?;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("has no"), "{}", String::from_utf8_lossy(&body));

    // A corrupted blob in the registry: a digest error, and no image stored.
    let archive2 = scratch.path().join("app2.tar");
    shoal_testkit::images::write_busybox_image(&archive2, "app:v2", &[random_layer(1 << 20, 7)], serde_json::json!({}));
    push_docker_archive(&reg, &archive2, "team/app:v2", Some(("alice", "s3cret")))?;
    let blobs = blob_digests(&reg, "team/app", "v2")?;
    let last = blobs.last().unwrap().trim_start_matches("sha256:").to_string();
    let data = scratch.path().join(format!("reg/storage/docker/registry/v2/blobs/sha256/{}/{last}/data", &last[..2]));
    let mut bytes = std::fs::read(&data)?;
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&data, &bytes)?;
    let (status, body) = cl
        .raw(
            hyper::Method::POST,
            "/v1/images/pull",
            Some(serde_json::to_vec(&PullRequest { reference: format!("{host}/team/app:v2") })?),
        )
        .await?;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("digest") && text.contains("nothing was stored"), "{text}");
    let images: Vec<ImageInfo> = cl.get("/v1/images").await?;
    assert!(!images.iter().any(|i| i.reference.ends_with(":v2")), "{images:?}");
    // The agent is fine and still serves.
    cl.get::<serde_json::Value>("/v1/status").await?;
    Ok(())
}

/// A registry with bearer-token auth (the Docker token flow, as Docker Hub or Harbor run it):
/// the agent's login is checked against the token service, and its pull fetches a token with
/// the saved credentials and uses it.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_with_bearer_tokens_is_pulled_after_login() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let reg = Registry::start_token(&scratch.path().join("reg"), ("alice", "s3cret"))?;
    let pushed = push_app_as_alice(&reg, scratch.path(), &[random_layer(1 << 20, 5)])?;
    assert!(!reg.issued_tokens().is_empty(), "skopeo pushed with a token");
    // Basic auth is not what this registry takes: a token is.
    let alice = shoal_testkit::registry::basic_auth("alice", "s3cret");
    let basic = shoal_testkit::registry::http_request(reg.addr(), "GET", "/v2/", &[("Authorization", &alice)], b"")?;
    assert_eq!(basic.status, 401);
    assert!(basic.header("www-authenticate").unwrap_or_default().starts_with("Bearer "), "{:?}", basic.headers);
    let host = reg.host();
    let c = Cluster::start(1, true).await?;
    let cl = c.agents[0].client();
    let from_agent = |reg: &Registry| {
        reg.issued_tokens().into_iter().filter(|t| t.user_agent.starts_with("shoal/")).collect::<Vec<_>>()
    };

    // Without a login: the token grants nothing, the registry refuses, the error says how to log in.
    let e = pull(&cl, &format!("{host}/team/app:v1")).await.unwrap_err();
    assert!(e.contains("shoal registry login"), "{e}");
    let anonymous = from_agent(&reg);
    assert!(
        !anonymous.is_empty() && anonymous.iter().all(|t| t.user.is_empty() && t.access.is_empty()),
        "the agent asked for a token, anonymously, and got one granting nothing: {anonymous:?}"
    );
    // A wrong password is refused by the token service at login, and not saved.
    log_in_as_alice(&cl, &host, &c.agents[0].dir).await?;

    let img = pull(&cl, &format!("{host}/team/app:v1")).await.map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    assert_eq!(img.digest, pushed);
    let granted = from_agent(&reg);
    assert!(
        granted.iter().any(|t| t.user == "alice"
            && t.access.iter().any(|(kind, name, actions)| kind == "repository"
                && name == "team/app"
                && actions.iter().any(|a| a == "pull"))),
        "the agent pulled with a token for team/app: {granted:?}"
    );
    // Every blob came through the token: the registry served them to the agent.
    for b in blob_digests(&reg, "team/app", "v1")?.iter().skip(1) {
        assert_eq!(reg.blob_gets(b), 1, "layer {b}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_platform_index_resolves_to_this_platform_and_is_kept() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let reg = Registry::start(&scratch.path().join("reg"), None)?;
    let pushed = push_two_platform_index(&reg, "team/multi", "v1")?;
    let c = Cluster::start(1, true).await?;
    let cl = c.agents[0].client();
    let img = pull(&cl, &format!("{}/team/multi:v1", reg.host())).await.map_err(anyhow::Error::msg)?;
    let amd64 = &pushed.platforms[0];
    assert_eq!(amd64.platform, "linux/amd64");
    assert_eq!(img.digest, amd64.manifest, "this peer's platform's manifest");
    assert_eq!(reg.blob_gets(&amd64.layer), 1);
    assert_eq!(reg.blob_gets(&pushed.platforms[1].layer), 0, "the other platform is not fetched");
    // The index is kept: its bytes are in the content store under its digest.
    let content: Vec<serde_json::Value> = cl.get("/v1/content").await?;
    let text = serde_json::to_string(&content)?;
    assert!(text.contains(pushed.digest.trim_start_matches("sha256:")), "index {} not stored: {text}", pushed.digest);
    Ok(())
}

/// containerd (ctr, hosts.toml), Podman and skopeo (registries.conf) pull an image through a
/// peer's mirror while the registry is down: the peer has it from another peer.
#[tokio::test(flavor = "multi_thread")]
async fn real_clients_pull_through_a_peers_mirror_with_the_registry_down() -> anyhow::Result<()> {
    use std::process::Command;
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    let mut reg = Registry::start(&dir.join("reg"), None)?;
    let archive = dir.join("app.tar");
    shoal_testkit::images::write_busybox_image(&archive, "app:v1", &[random_layer(2 << 20, 3)], serde_json::json!({}));
    let pushed = push_docker_archive(&reg, &archive, "team/app:v1", None)?;
    let host = reg.host();
    let reference = format!("{host}/team/app:v1");

    let port = shoal_testkit::free_port()?;
    let mirror = format!("127.0.0.1:{port}");
    let mut c = Cluster::start(1, true).await?;
    c.add_with("mirror", &["--mirror-listen", &mirror, "--mirror-registry", &host]).await?;
    for a in &c.agents {
        shoal_testkit::eventually(std::time::Duration::from_secs(20), "both peers alive", async || {
            let peers = a.peers().await.ok()?;
            (peers.iter().filter(|p| p.state == shoal_types::PeerState::Alive).count() == 2).then_some(())
        })
        .await?;
    }
    // Peer 0 pulls from the registry; then the registry goes away.
    pull(&c.agents[0].client(), &reference).await.map_err(anyhow::Error::msg)?;
    reg.stop();

    // The mirror speaks the distribution API: ping, HEAD and GET with the exact digest, 404s.
    let get = |path: &str, method: &str| -> anyhow::Result<shoal_testkit::registry::HttpResponse> {
        shoal_testkit::registry::http_request(format!("127.0.0.1:{port}").parse()?, method, path, &[], b"")
    };
    assert_eq!(get("/v2/", "GET")?.status, 200);
    let head = get(&format!("/v2/team/app/manifests/v1?ns={host}"), "HEAD")?;
    assert_eq!(head.status, 200, "{}", c.logs());
    assert_eq!(head.header("docker-content-digest"), Some(pushed.as_str()));
    let m = get(&format!("/v2/team/app/manifests/{pushed}?ns={host}"), "GET")?;
    assert_eq!(m.status, 200);
    assert_eq!(shoal_testkit::registry::sha256_digest(&m.body), pushed, "the manifest's exact bytes");
    let layer = m.json()?["layers"][0]["digest"].as_str().unwrap().to_string();
    let part = shoal_testkit::registry::http_request(
        format!("127.0.0.1:{port}").parse()?,
        "GET",
        &format!("/v2/team/app/blobs/{layer}"),
        &[("Range", "bytes=10-19")],
        b"",
    )?;
    assert_eq!(part.status, 206);
    assert_eq!(part.body.len(), 10);
    let missing = get(&format!("/v2/team/app/manifests/nope?ns={host}"), "GET")?;
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("MANIFEST_UNKNOWN"), "{}", missing.text());

    // skopeo and Podman: a registries.conf mirror (no ?ns=: the mirror's default registry).
    let conf = dir.join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{host}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
        ),
    )?;
    let out = Command::new("skopeo")
        .arg("--registries-conf")
        .arg(&conf)
        .args(["copy", "--quiet", &format!("docker://{reference}")])
        .arg(format!("oci:{}:v1", dir.join("oci").display()))
        .output()?;
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("podman")
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .arg("--root")
        .arg(dir.join("podman-root"))
        .arg("--runroot")
        .arg(dir.join("podman-run"))
        .args(["--storage-driver", "vfs", "--events-backend", "none", "pull", "-q", &reference])
        .output()?;
    assert!(out.status.success(), "podman: {}", String::from_utf8_lossy(&out.stderr));

    // containerd 1.6: its own daemon, a hosts.toml naming the mirror (it sends ?ns=).
    let cd = dir.join("containerd");
    std::fs::create_dir_all(cd.join(format!("hosts/{host}")))?;
    let sock = cd.join("containerd.sock");
    std::fs::write(
        cd.join("config.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            cd.display(),
            sock.display()
        ),
    )?;
    std::fs::write(
        cd.join(format!("hosts/{host}/hosts.toml")),
        format!("server = \"http://{host}\"\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )?;
    let log = std::fs::File::create(cd.join("containerd.log"))?;
    let mut daemon = KillOnDrop(
        Command::new("containerd")
            .arg("--config")
            .arg(cd.join("config.toml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    shoal_testkit::eventually(std::time::Duration::from_secs(20), "containerd up", async || {
        sock.exists().then_some(())
    })
    .await?;
    let ctr = |args: &[&str]| Command::new("ctr").arg("--address").arg(&sock).args(args).output();
    let out = ctr(&["images", "pull", "--hosts-dir", &cd.join("hosts").display().to_string(), &reference])?;
    assert!(
        out.status.success(),
        "ctr: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = String::from_utf8(ctr(&["images", "ls"])?.stdout)?;
    assert!(ls.contains(&pushed), "{ls}");
    let _ = ctr(&["images", "rm", "--sync", &reference]);
    daemon.0.kill()?;
    let _ = daemon.0.wait();
    Ok(())
}

/// `shoal run` pulls a registry image as `docker run` does; a service pins the digest its tag
/// names, and its replicas start from the cluster's copy with the registry down, even after
/// the tag moved.
#[tokio::test(flavor = "multi_thread")]
async fn run_pulls_and_a_service_pins_its_images_digest() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut reg = Registry::start(&scratch.path().join("reg"), None)?;
    let host = shoal_testkit::containers::ContainerHost::start("reg-run").await?;
    let archive = scratch.path().join("app.tar");
    shoal_testkit::images::write_busybox_image(
        &archive,
        "app:v1",
        &[shoal_testkit::images::layer(&[("etc/version", b"one\n")])],
        shoal_testkit::containers::ContainerHost::default_config(),
    );
    let pushed = push_docker_archive(&reg, &archive, "team/app:v1", None)?;
    let reference = format!("{}/team/app:v1", reg.host());

    let out = host.ok(&["run", "--rm", "--network", "none", &reference, "cat", "/etc/version"])?;
    assert_eq!(out.trim(), "one");

    let spec = serde_json::json!({"name": "pinned", "image": reference, "replicas": 1, "cmd": ["sleep", "600"]});
    let client = host.agent.client();
    let info: serde_json::Value = client.send_json(hyper::Method::POST, "/v1/services", &spec).await?;
    assert_eq!(info["spec"]["image"], format!("{reference}@{pushed}"), "the tag is pinned to its digest");

    // The tag moves in the registry; then the registry goes away. The service still runs the
    // pinned bytes, from this peer's copy.
    let archive2 = scratch.path().join("app2.tar");
    shoal_testkit::images::write_busybox_image(
        &archive2,
        "app:v1",
        &[shoal_testkit::images::layer(&[("etc/version", b"two\n")])],
        shoal_testkit::containers::ContainerHost::default_config(),
    );
    let moved = push_docker_archive(&reg, &archive2, "team/app:v1", None)?;
    assert_ne!(moved, pushed);
    reg.stop();
    host.ok(&["service", "scale", "pinned", "2"])?;
    let running = shoal_testkit::eventually(std::time::Duration::from_secs(60), "2 replicas running", async || {
        let r: Vec<serde_json::Value> = client.get("/v1/services/pinned/replicas").await.ok()?;
        (r.iter().filter(|x| x["state"] == "running").count() == 2).then_some(r)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", host.agent.log_text()))?;
    for r in &running {
        let id = r["container"].as_str().unwrap_or_default();
        let v = host.ok(&["exec", id, "cat", "/etc/version"])?;
        assert_eq!(v.trim(), "one", "every replica runs the pinned bytes");
    }
    host.ok(&["service", "rm", "pinned"])?;
    Ok(())
}

/// A blob download that breaks midway resumes where it stopped: a proxy between the agent and
/// the registry holds the first long response after 4 MiB (the pull's progress shows the layer
/// part-way, from the registry), then cuts it; the pull still succeeds, the layer
/// is asked for again with a Range (the registry answers 206), and the bytes check out.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_blob_download_resumes_with_a_range() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scratch = tempfile::tempdir()?;
    let reg = Registry::start(&scratch.path().join("reg"), None)?;
    let archive = scratch.path().join("app.tar");
    shoal_testkit::images::write_busybox_image(&archive, "app:v1", &[random_layer(8 << 20, 3)], serde_json::json!({}));
    let pushed = push_docker_archive(&reg, &archive, "team/app:v1", None)?;
    let layer = blob_digests(&reg, "team/app", "v1")?.pop().expect("a layer");

    // The proxy: every connection relayed both ways; the first connection to carry more than
    // 4 MiB is cut there (both directions closed), once: only the 8 MiB layer is that long (the
    // base layer is about 2 MiB).
    const CUT: usize = 4 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?;
    let (armed, cuts) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
    let upstream = reg.addr();
    let (armed2, cuts2) = (armed.clone(), cuts.clone());
    let relay = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
            let (armed, cuts) = (armed2.clone(), cuts2.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut buf = vec![0u8; 64 << 10];
                let mut sent = 0usize;
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sent + n > CUT && armed.swap(false, Ordering::SeqCst) {
                        let _ = cw.write_all(&buf[..CUT - sent]).await;
                        // Held there a while first: the pull's progress shows it mid-layer.
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                        cuts.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                up.abort();
            });
        }
    });

    let c = Cluster::start(1, true).await?;
    let cl = c.agents[0].client();
    let reference = format!("{proxy}/team/app:v1");
    let pulling = {
        let (cl, reference) = (cl.clone(), reference.clone());
        tokio::spawn(async move { pull(&cl, &reference).await })
    };
    // While it runs, the pull's progress (what `shoal image pull` draws its bars from) shows the
    // layer part-way, coming from the registry.
    let seen = shoal_testkit::eventually(
        std::time::Duration::from_secs(20),
        "the layer mid-way in the pull's progress",
        async || {
            let pulls: Vec<shoal_types::PullStatus> = cl.get("/v1/images/pulls").await.ok()?;
            let p = pulls.into_iter().find(|p| p.reference == reference)?;
            let b = p.blobs.into_iter().find(|b| b.digest == layer)?;
            (b.done > 0 && b.done < b.size && !b.finished).then_some(b)
        },
    )
    .await?;
    assert_eq!(seen.source.as_deref(), Some("registry"), "{seen:?}");
    let img = pulling.await?.map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    relay.abort();
    assert_eq!(img.digest, pushed);
    assert_eq!(cuts.load(Ordering::SeqCst), 1, "the proxy cut one download");
    let gets: Vec<u16> = reg
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/blobs/{layer}")))
        .map(|r| r.status)
        .collect();
    assert!(gets.contains(&206), "the layer was asked for again from where it broke: {gets:?}");
    // The image is stored (its blobs were checked against their digests on the way in).
    let images: Vec<shoal_types::ImageInfo> = cl.get("/v1/images").await?;
    assert!(images.iter().any(|i| i.digest == pushed), "{images:?}");
    Ok(())
}
