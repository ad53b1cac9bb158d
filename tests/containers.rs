//! The container runtime end to end: a real agent, the real CLI, real containers (embedded
//! libcontainer under a shim), a busybox image built by the test.

use shoal_testkit::containers::ContainerHost;
use shoal_testkit::images::layer;
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` every 50 ms for up to `secs` seconds.
fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_streams_env_workdir_user() -> anyhow::Result<()> {
    let files: [(&str, &[u8]); 1] = [("app/hello.txt", b"hi from the image\n")];
    let config = serde_json::json!({
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"], "Cmd": ["sh", "-c", "echo default"],
        "WorkingDir": "/app", "User": "app",
    });
    let h = ContainerHost::start_with_image("rt-basics", &[layer(&files)], config).await?;

    let out = h.shoal(&["run", "--rm", "busybox:test", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "exit code passes through: {}", text(&out.stderr));

    let out = h.shoal(&["run", "--rm", "busybox:test", "sh", "-c", "echo to-out; echo to-err >&2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n");
    assert_eq!(text(&out.stderr), "to-err\n");

    let out = h.shoal(&["run", "--rm", "busybox:test"]);
    assert_eq!(text(&out.stdout), "default\n", "the image's Cmd runs by default: {}", text(&out.stderr));

    let probe = "echo $GREETING; pwd; id -u; id -g; cat hello.txt";
    let out = h.shoal(&["run", "--rm", "busybox:test", "sh", "-c", probe]);
    assert_eq!(text(&out.stdout), "hello\n/app\n1000\n1000\nhi from the image\n", "{}", text(&out.stderr));

    let out =
        h.shoal(&["run", "--rm", "-e", "GREETING=bye", "-w", "/tmp", "-u", "0:50", "busybox:test", "sh", "-c", probe]);
    assert_eq!(text(&out.stdout), "bye\n/tmp\n0\n50\n", "overrides win: {}", text(&out.stderr));

    // Hostname is the container's name; it runs in its own pid namespace as pid 1.
    let out = h.shoal(&["run", "--rm", "--name", "probe-1", "busybox:test", "sh", "-c", "hostname; echo $$"]);
    assert_eq!(text(&out.stdout), "probe-1\n1\n", "{}", text(&out.stderr));

    // Least privilege: no CAP_SYS_ADMIN (mount fails), no-new-privileges, seccomp on.
    let out = h.shoal(&[
        "run",
        "--rm",
        "-u",
        "0",
        "busybox:test",
        "sh",
        "-c",
        "mount -t tmpfs t /mnt 2>&1; grep -E 'NoNewPrivs|Seccomp:' /proc/self/status",
    ]);
    let o = text(&out.stdout);
    assert!(o.contains("NoNewPrivs:\t1") && o.contains("Seccomp:\t2"), "{o}");
    assert!(o.to_lowercase().contains("permission denied") || o.contains("not permitted"), "mount refused: {o}");

    // exec runs as the container's process does: its user, environment, working directory,
    // capabilities, no-new-privileges and seccomp filter (libcontainer's tenant default is
    // root, every capability of the spec and no filter).
    h.ok(&["run", "-d", "--name", "as-app", "busybox:test", "sleep", "1d"])?;
    h.ok(&["run", "-d", "--name", "as-root", "-u", "0", "busybox:test", "sleep", "1d"])?;
    let status = "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status";
    let out = h.ok(&["exec", "as-app", "sh", "-c", &format!("id -u; echo $GREETING; pwd; {status}")])?;
    assert!(out.starts_with("1000\nhello\n/app\n"), "the image's user, env and workdir: {out}");
    assert!(out.contains("Seccomp:\t2") && out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "no capabilities for uid 1000: {out}");
    let out = h.ok(&["exec", "as-root", "sh", "-c", &format!("mount -t tmpfs t /mnt 2>&1; {status}")])?;
    assert!(out.contains("Seccomp:\t2") && out.contains("CapEff:\t00000000a80425fb"), "Docker's capabilities: {out}");
    assert!(out.to_lowercase().contains("permission denied") || out.contains("not permitted"), "mount refused: {out}");
    h.ok(&["rm", "-f", "as-app", "as-root"])?;

    let out = h.shoal(&["run", "--rm", "--read-only", "-u", "0", "busybox:test", "sh", "-c", "touch /x"]);
    assert_ne!(out.status.code(), Some(0), "--read-only refuses writes");
    assert!(text(&out.stderr).contains("Read-only"), "{}", text(&out.stderr));

    let vol = h.root.path().join("vol");
    std::fs::create_dir_all(&vol)?;
    std::fs::write(vol.join("in.txt"), "from the host\n")?;
    let spec = format!("{}:/data:ro", vol.display());
    let out = h.shoal(&["run", "--rm", "-v", &spec, "busybox:test", "sh", "-c", "cat /data/in.txt; touch /data/y"]);
    assert_eq!(text(&out.stdout), "from the host\n");
    assert_ne!(out.status.code(), Some(0), "a :ro volume refuses writes");

    assert!(h.ok(&["ps", "-a", "--json"])?.trim() == "[]", "--rm removed every container");
    assert!(h.leftovers().is_empty(), "left over: {:?}", h.leftovers());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_oom_pids_and_cpu() -> anyhow::Result<()> {
    let h = ContainerHost::start("rt-limits").await?;

    let out = h.shoal(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "16m",
        "busybox:test",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    assert_eq!(out.status.code(), Some(137), "OOM kill is exit 137: {}", text(&out.stderr));
    let info = h.inspect("hog")?;
    assert_eq!(info["reason"], "OOMKilled", "{info}");
    h.ok(&["rm", "hog"])?;

    // A fork bomb stops at the pids limit: the shell cannot fork beyond it (and gives up);
    // the same script without the limit runs to its end.
    let bomb = "for i in $(seq 1 60); do sleep 1 & done; echo all-started";
    let out = h.shoal(&["run", "--rm", "--pids", "20", "busybox:test", "sh", "-c", bomb]);
    assert!(text(&out.stderr).contains("fork"), "fork refused: {:?} {}", out.status, text(&out.stderr));
    assert!(!text(&out.stdout).contains("all-started"));
    let out = h.shoal(&["run", "--rm", "busybox:test", "sh", "-c", bomb]);
    assert_eq!(text(&out.stdout), "all-started\n", "{}", text(&out.stderr));

    // A CPU quota of 0.2 throttles a busy loop to about 20 % of a core.
    let id =
        h.ok(&["run", "-d", "--name", "spin", "--cpus", "0.2", "busybox:test", "sh", "-c", "while :; do :; done"])?;
    assert_eq!(id.trim().len(), 64);
    let out = h.ok(&["stats", "--json"])?;
    let stats: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    let cpu = stats.iter().find(|s| s["name"] == "spin").and_then(|s| s["cpu_percent"].as_f64()).unwrap_or(-1.0);
    assert!((5.0..35.0).contains(&cpu), "busy loop under --cpus 0.2 uses {cpu:.1}% of a core");
    h.ok(&["rm", "-f", "spin"])?;
    assert!(h.leftovers().is_empty(), "left over: {:?}", h.leftovers());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ports_and_container_to_container() -> anyhow::Result<()> {
    let files: [(&str, &[u8]); 1] = [("www/index.html", b"hello over http\n")];
    let h = ContainerHost::start_with_image("rt-net", &[layer(&files)], ContainerHost::default_config()).await?;
    let port = free_port();
    let publish = format!("{port}:8080");
    h.ok(&["run", "-d", "--name", "web", "-p", &publish, "busybox:test", "httpd", "-f", "-p", "8080", "-h", "/www"])?;
    let body = http_get(port)?;
    assert!(body.contains("hello over http"), "{body}");

    // Same host port again: a clear error, and nothing half made.
    let out = h.shoal(&["run", "-d", "--name", "web2", "-p", &publish, "busybox:test", "httpd", "-f", "-p", "8080"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains(&format!("port {port}")), "{}", text(&out.stderr));

    let ip = h.inspect("web")?["ip"].as_str().unwrap_or_default().to_string();
    let url = format!("http://{ip}:8080/index.html");
    let out = h.shoal(&["run", "--rm", "busybox:test", "wget", "-q", "-O-", &url]);
    assert_eq!(text(&out.stdout), "hello over http\n", "container to container: {}", text(&out.stderr));

    // exec: output, exit code, and stdin with -i.
    assert_eq!(h.ok(&["exec", "web", "cat", "/www/index.html"])?, "hello over http\n");
    assert_eq!(h.shoal(&["exec", "web", "sh", "-c", "echo e >&2; exit 4"]).status.code(), Some(4));
    let mut child = std::process::Command::new(shoal_testkit::shoal_bin())
        .args(["exec", "-i", "web", "sh", "-c", "tr a-z A-Z; echo pid=$$"])
        .env("SHOAL_ADDR", &h.agent.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"shout\n")?;
    }
    let out = child.wait_with_output()?;
    let o = text(&out.stdout);
    assert!(o.starts_with("SHOUT\npid=") && !o.contains("pid=1\n"), "exec -i joins the container's pid namespace: {o}");
    assert!(h.shoal(&["exec", "web", "/no/such"]).status.code().is_some_and(|c| c != 0));

    // An exec whose client goes away is killed inside the container, with what it started.
    let mut abandoned = std::process::Command::new(shoal_testkit::shoal_bin())
        .args(["exec", "web", "sh", "-c", "sleep 300 & sleep 301"])
        .env("SHOAL_ADDR", &h.agent.socket)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let sleepers = || h.ok(&["exec", "web", "ps"]).map(|ps| ps.matches("sleep 30").count()).unwrap_or(99);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sleepers() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sleepers(), 2, "the exec's command and its child run");
    abandoned.kill()?;
    abandoned.wait()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sleepers() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sleepers(), 0, "an abandoned exec leaves nothing running: {}", h.ok(&["exec", "web", "ps"])?);

    h.ok(&["rm", "-f", "web"])?;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is released");
    assert!(h.leftovers().is_empty(), "left over: {:?}", h.leftovers());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_ports_host_addresses_and_network_none() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let echo = shoal_testkit::images::udp_echo_layer(scratch.path())?;
    let h = ContainerHost::start_with_image("rt-net2", &[echo], ContainerHost::default_config()).await?;

    // A published UDP port: datagrams reach the container and its answers come back.
    let uport = free_port();
    h.ok(&["run", "-d", "--name", "echo", "-p", &format!("{uport}:7/udp"), "busybox:test", "udp-echo", "7"])?;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut answer = None;
    let mut buf = [0u8; 64];
    for _ in 0..30 {
        sock.send_to(b"ping over udp", ("127.0.0.1", uport))?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            answer = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(answer.as_deref(), Some(&b"ping over udp"[..]), "the UDP port echoes");

    // `-p IP:HOST:CONTAINER` answers on that address only.
    let tport = free_port();
    let publish = format!("127.0.0.1:{tport}:8080");
    let serve = "echo local > /tmp/index.html; exec httpd -f -p 8080 -h /tmp";
    h.ok(&["run", "-d", "--name", "local", "-p", &publish, "busybox:test", "sh", "-c", serve])?;
    http_get(tport)?;
    let gateway: std::net::Ipv4Addr = format!("{}1", h.subnet.trim_end_matches("0/24")).parse()?;
    let other = std::net::TcpStream::connect_timeout(&(gateway, tport).into(), Duration::from_secs(1));
    assert!(other.is_err(), "port {tport} bound to 127.0.0.1 also answers on {gateway}");
    let ps = h.ok(&["ps"])?;
    assert!(ps.contains(&format!("127.0.0.1:{tport}->8080/tcp")), "ps shows the host address: {ps}");
    assert!(ps.contains(&format!("0.0.0.0:{uport}->7/udp")), "ps shows the protocol: {ps}");

    // `--network none`: loopback only; and no port can be published without a network.
    let dev = h.ok(&["run", "--rm", "--network", "none", "busybox:test", "cat", "/proc/net/dev"])?;
    assert!(dev.contains("lo:") && !dev.contains("eth0"), "{dev}");
    let out = h.shoal(&["run", "--rm", "--network", "none", "-p", "1:1", "busybox:test", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("network"), "{}", text(&out.stderr));

    h.ok(&["rm", "-f", "echo", "local"])?;
    assert!(h.leftovers().is_empty(), "left over: {:?}", h.leftovers());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn survives_agent_sigkill_and_stops_gracefully() -> anyhow::Result<()> {
    let mut h = ContainerHost::start("rt-restart").await?;
    let ticker = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    h.ok(&["run", "-d", "--name", "ticker", "busybox:test", "sh", "-c", ticker])?;
    let pid = h.inspect("ticker")?["pid"].as_u64().unwrap_or(0);
    assert!(pid > 0);
    wait_until(10, "first ticks", || h.shoal(&["logs", "ticker"]).stdout.len() > 20);

    h.agent.kill()?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the container outlives its agent");
    h.agent.restart().await?;
    let info = h.inspect("ticker")?;
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["pid"].as_u64(), Some(pid));
    let logs = text(&h.shoal(&["logs", "ticker"]).stdout);
    let ticks: Vec<u64> = logs.lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect();
    assert!(ticks.len() >= 5 && ticks.windows(2).all(|w| w[1] == w[0] + 1), "logs intact across the restart: {logs}");
    let tail = text(&h.shoal(&["logs", "--tail", "2", "ticker"]).stdout);
    assert_eq!(tail.lines().count(), 2);

    // stop -t: SIGTERM first (the trap answers), SIGKILL only for one that ignores it.
    h.ok(&["rm", "-f", "ticker"])?;
    let trap = "trap 'echo got TERM; exit 7' TERM; while true; do sleep 0.1; done";
    h.ok(&["run", "-d", "--name", "polite", "busybox:test", "sh", "-c", trap])?;
    std::thread::sleep(Duration::from_millis(300));
    // The largest grace period neither overflows nor panics anywhere (CLI, agent, shim).
    h.ok(&["stop", "-t", &u64::MAX.to_string(), "polite"])?;
    let info = h.inspect("polite")?;
    assert_eq!(info["exit_code"], 7, "{info}");
    assert!(text(&h.shoal(&["logs", "polite"]).stdout).contains("got TERM"));

    h.ok(&["run", "-d", "--name", "stubborn", "busybox:test", "sleep", "100"])?;
    let t = Instant::now();
    h.ok(&["stop", "-t", "1", "stubborn"])?;
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "{took:?}");
    assert_eq!(h.inspect("stubborn")?["exit_code"], 137);

    // Restart policy: on-failure:2 runs it three times in all, with back-off.
    h.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "busybox:test",
        "sh",
        "-c",
        "echo run; exit 1",
    ])?;
    wait_until(20, "flaky to give up", || {
        h.inspect("flaky").is_ok_and(|i| i["state"] == "exited" && i["restarts"] == 2)
    });
    let runs = text(&h.shoal(&["logs", "flaky"]).stdout).lines().filter(|l| *l == "run").count();
    assert_eq!(runs, 3);

    h.ok(&["rm", "polite", "stubborn", "flaky"])?;
    assert!(h.leftovers().is_empty(), "left over: {:?}", h.leftovers());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_cleanly() -> anyhow::Result<()> {
    let h = ContainerHost::start("rt-bad").await?;
    let cases: [(&[&str], &str); 5] = [
        (&["run", "nosuch:image", "true"], "nosuch:image"),
        (&["run", "busybox:test", "/no/such/command"], "not found"),
        (&["run", "--memory", "lots", "busybox:test", "true"], "--memory"),
        (&["run", "--memory", "1m", "busybox:test", "true"], "6 MiB"),
        (&["run", "-v", "/no/such/dir:/x", "busybox:test", "true"], "does not exist"),
    ];
    for (args, needle) in cases {
        let out = h.shoal(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(needle), "{args:?}: {}", text(&out.stderr));
    }
    h.ok(&["run", "-d", "--name", "dup", "busybox:test", "sleep", "30"])?;
    let out = h.shoal(&["run", "--name", "dup", "busybox:test", "true"]);
    assert!(text(&out.stderr).contains("already used"), "{}", text(&out.stderr));
    let out = h.shoal(&["rm", "dup"]);
    assert!(!out.status.success() && text(&out.stderr).contains("rm -f"), "{}", text(&out.stderr));
    h.ok(&["rm", "-f", "dup"])?;
    assert_eq!(h.ok(&["ps", "-a", "--json"])?.trim(), "[]");
    assert!(h.leftovers().is_empty(), "left over: {:?}", h.leftovers());
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(18080)
}

fn http_get(port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> anyhow::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            anyhow::ensure!(body.contains("200"), "{body}");
            Ok(body)
        })();
        match attempt {
            Ok(b) => return Ok(b),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
