//! The dashboard in a real browser (Debian's headless Chromium over the DevTools protocol),
//! on a 3-peer lab running a service: what a person would check, with screenshots in
//! `target/screenshots/`.

use shoal_testkit::browser::{Browser, screenshot_dir};
use shoal_testkit::lab::TestLab;
use shoal_testkit::registry::http_request;
use shoal_testkit::{Dashboard, KillOnDrop};
use shoal_types::{PeerState, ReplicaInfo, ServiceInfo};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_the_cluster_live_and_scales_a_service() -> anyhow::Result<()> {
    let lab = TestLab::up("dash", 3, &["--peer-memory", "512m", "--peer-cpus", "1"])?;
    lab.wait_states(&[0, 1, 2], &[0, 1, 2], PeerState::Alive, Duration::from_secs(20)).await?;
    let archive = lab.root.path().join("busybox.tar");
    shoal_testkit::images::write_busybox_image(&archive, "busybox:svc", &[], serde_json::json!({"Env": ["PATH=/bin"]}));
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &archive.display().to_string()])?;
    lab.ok(&[
        "exec",
        "0",
        "--",
        "shoal",
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "busybox:svc",
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ])?;
    let peers = lab.peers(0).await?;
    let victim = peers.iter().find(|p| !p.is_self).map(|p| p.name.clone()).expect("another peer");
    let victim_index =
        lab.ids()?.iter().position(|id| peers.iter().any(|p| &p.id == id && p.name == victim)).expect("its index");

    // `shoal dashboard` on the host, talking to peer 0's API socket.
    let dash = Dashboard::start(&lab.socket(0))?;
    let (url, port) = (dash.url.clone(), dash.port);

    let mut b = Browser::start().await?;
    let t = Instant::now();
    b.goto(&url).await?;
    // Every peer and the service, live (no reload from here on).
    b.wait_for("document.querySelectorAll('[data-peer][data-state=alive]').length === 3", Duration::from_secs(10))
        .await?;
    b.wait_for("document.querySelector('[data-service=web]')?.dataset.running === '2'", Duration::from_secs(60))
        .await?;
    let first_render = t.elapsed();
    let dir = screenshot_dir();
    b.screenshot(&dir.join("dashboard-1-cluster.png")).await?;
    let weight = b.eval("document.documentElement.outerHTML.length").await?;

    // The token was spent: the same URL, or no cookie, opens nothing.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let path = dash.path();
    assert_eq!(http_request(addr, "GET", path, &[], b"")?.status, 401, "a spent token");
    assert_eq!(http_request(addr, "GET", "/api/state", &[], b"")?.status, 401, "no session");

    // Content in flight: the page draws who sends to whom.
    let receiver = (1..3).find(|i| *i != victim_index).expect("a third peer");
    lab.ok(&["link", &receiver.to_string(), "--bandwidth", "8mbit"])?;
    let file = lab.root.path().join("payload");
    std::fs::write(&file, shoal_testkit::noise::random_bytes(6 << 20, 9))?;
    let id = lab.ok(&["exec", "0", "--", "shoal", "share", &file.display().to_string()])?.trim().to_string();
    let got = lab.root.path().join("got");
    let get = KillOnDrop(lab.spawn(&[
        "exec",
        &receiver.to_string(),
        "--",
        "shoal",
        "get",
        &id,
        "-o",
        &got.display().to_string(),
    ]));
    let receiver_id = lab.ids()?[receiver].clone();
    let receiver_name = peers.iter().find(|p| p.id == receiver_id).map(|p| p.name.clone()).expect("receiver name");
    let edge = format!("document.querySelector('[data-edge=\"peer-0>{receiver_name}\"]') !== null");
    b.wait_for(&edge, Duration::from_secs(10)).await?;
    b.screenshot(&dir.join("dashboard-2-transfer.png")).await?;
    drop(get);
    lab.ok(&["link", &receiver.to_string(), "--bandwidth", "none"])?;

    // A peer dies: the page says so without a reload, soon after the cluster decides.
    let killed = Instant::now();
    lab.ok(&["kill", "--all", &victim_index.to_string()])?;
    let client = lab.client(0);
    let mut decided = None;
    let mut shown = None;
    while shown.is_none() || decided.is_none() {
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(30), "no death seen (api {decided:?}, page {shown:?})");
        if decided.is_none() {
            let list: Vec<shoal_types::PeerInfo> = client.get("/v1/peers").await?;
            if list.iter().any(|p| p.name == victim && p.state == PeerState::Dead) {
                decided = Some(killed.elapsed());
            }
        }
        if shown.is_none() {
            let q = format!("document.querySelector('[data-peer=\"{victim}\"]')?.dataset.state === 'dead'");
            if b.eval(&q).await? == true {
                shown = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (decided, shown) = (decided.unwrap_or_default(), shown.unwrap_or_default());
    eprintln!(
        "dashboard: first render {first_render:?}, page {weight} bytes of HTML; peer dead in the API after {decided:?}, on the page after {shown:?}"
    );
    // The page polls every 0.5 s; on a busy 2-core machine allow for a slow round or two.
    assert!(shown <= decided + Duration::from_secs(3), "the page lagged: api {decided:?}, page {shown:?}");

    // Scale from the page: 2 → 3 replicas.
    b.eval(
        "(() => { const i = document.querySelector('[data-scale-input=web]'); i.value = 3; \
          document.querySelector('[data-scale=web]').click(); return true; })()",
    )
    .await?;
    b.wait_for("document.querySelector('[data-service=web]')?.dataset.desired === '3'", Duration::from_secs(10))
        .await?;
    b.wait_for("document.querySelector('[data-service=web]')?.dataset.running === '3'", Duration::from_secs(60))
        .await?;
    let info: ServiceInfo = client.get("/v1/services/web").await?;
    assert_eq!(info.spec.replicas, 3, "the page's scale went through the API");
    b.screenshot(&dir.join("dashboard-3-dead-peer-and-scaled.png")).await?;
    // The death in the page's event list (refreshed every 2 s).
    b.wait_for("document.querySelectorAll('[data-event=\"peer.dead\"]').length > 0", Duration::from_secs(10)).await?;

    // Restart a replica that runs on the other survivor (the dashboard talks to peer 0): a
    // fresh container replaces it there.
    let replicas: Vec<ReplicaInfo> = client.get("/v1/services/web/replicas").await?;
    let me = &lab.ids()?[0];
    let r = replicas.iter().find(|r| &r.peer != me && r.state == "running").expect("a replica on another peer");
    let (slot, old) = (r.slot.to_string(), r.container.clone());
    b.eval(&format!("(() => {{ document.querySelector('[data-restart=\"web.{slot}\"]').click(); return true; }})()"))
        .await?;
    let restarted = Instant::now();
    loop {
        anyhow::ensure!(restarted.elapsed() < Duration::from_secs(60), "replica web.{slot} was not restarted");
        let now: Vec<ReplicaInfo> = client.get("/v1/services/web/replicas").await?;
        if now.iter().any(|n| n.slot.to_string() == slot && n.container != old && n.state == "running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.wait_for(
        &format!(
            "(c => !!c && c !== '{old}')(document.querySelector('[data-replica=\"web.{slot}\"]')?.dataset.container)"
        ),
        Duration::from_secs(5),
    )
    .await?;
    b.wait_for("document.querySelectorAll('[data-event=\"replica.restarted\"]').length > 0", Duration::from_secs(10))
        .await?;

    // Roll back from the page. Nothing to roll back to before an update (409, no button).
    assert_eq!(client.raw(hyper::Method::POST, "/v1/services/web/rollback", None).await?.0, 409);
    assert_eq!(b.eval("document.querySelector('[data-rollback=web]') === null").await?, true);
    let first = info.spec.image.clone();
    let v2 = lab.root.path().join("busybox-v2.tar");
    shoal_testkit::images::write_busybox_image(
        &v2,
        "busybox:v2",
        &[],
        serde_json::json!({"Env": ["PATH=/bin", "V=2"]}),
    );
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &v2.display().to_string()])?;
    lab.ok(&["exec", "0", "--", "shoal", "service", "update", "--image", "busybox:v2", "web"])?;
    b.wait_for("document.querySelector('[data-rollback=web]') !== null", Duration::from_secs(10)).await?;
    // Twice: the first click only arms the button.
    let click = "(() => { document.querySelector('[data-rollback=web]').click(); return true; })()";
    b.eval(click).await?;
    b.wait_for("document.querySelector('[data-rollback=web]')?.textContent.includes('sure')", Duration::from_secs(2))
        .await?;
    b.eval(click).await?;
    let asked = Instant::now();
    loop {
        anyhow::ensure!(asked.elapsed() < Duration::from_secs(10), "the page's rollback did not reach the service");
        let now: ServiceInfo = client.get("/v1/services/web").await?;
        if now.spec.image == first {
            assert!(now.rollback_image.is_some_and(|i| i.contains("busybox:v2")), "v2 is the one to go back to now");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.wait_for("document.querySelector('[data-service=web]')?.dataset.running === '3'", Duration::from_secs(90))
        .await?;
    b.wait_for("document.querySelectorAll('[data-event=\"rollout.rolled_back\"]').length > 0", Duration::from_secs(10))
        .await?;
    b.screenshot(&dir.join("dashboard-4-restarted-and-rolled-back.png")).await?;
    // A replica that does not exist: 404 with what to do.
    let (status, body) = client.raw(hyper::Method::POST, "/v1/services/web/replicas/9/restart", None).await?;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));

    // A partition between the two peers left: peer 0's page and events keep working (the
    // other side is first unreachable, then suspect and dead), and it heals.
    let other = receiver.to_string();
    lab.ok(&["partition", "0", &other])?;
    let cut = Instant::now();
    let q = format!("document.querySelector('[data-peer=\"{receiver_name}\"]')?.dataset.state !== 'alive'");
    b.wait_for(&q, Duration::from_secs(20)).await?;
    for _ in 0..3 {
        let asked = Instant::now();
        let (status, _) = client.raw(hyper::Method::GET, "/v1/events?limit=100", None).await?;
        assert_eq!(status, 200);
        assert!(asked.elapsed() < Duration::from_secs(5), "events took {:?} across a partition", asked.elapsed());
    }
    // The page goes on following: the cut-off peer turns dead there too.
    let q = format!("document.querySelector('[data-peer=\"{receiver_name}\"]')?.dataset.state === 'dead'");
    b.wait_for(&q, Duration::from_secs(20)).await?;
    assert_eq!(b.eval("document.getElementById('live').className").await?, "on");
    b.screenshot(&dir.join("dashboard-5-partitioned.png")).await?;
    lab.ok(&["heal"])?;
    let q = format!("document.querySelector('[data-peer=\"{receiver_name}\"]')?.dataset.state === 'alive'");
    b.wait_for(&q, Duration::from_secs(30)).await?;
    eprintln!("dashboard: partitioned peer shown not alive and back alive, {:?} after the cut", cut.elapsed());
    Ok(())
}
