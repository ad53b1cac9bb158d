//! Content distribution benchmarks.
//!
//! - `swarm`: one seed and N downloaders in a lab, every link shaped to the same rate; all
//!   downloaders start together. Time until all have the blob, side by side in the same lab
//!   with all N fetching it over plain HTTP from the seed (Python's threaded http.server), and
//!   the ratio to the bound S/B.
//! - `loopback`: one seed, one downloader, unshaped, on loopback: throughput as a ratio to a
//!   plain TCP copy of the same file (read from disk, written to disk) in the same run.
//! - resident memory of the agents during a transfer, at two blob sizes.

use crate::stats::{median_f64, proc_usage};
use shoal_api::client::Client;
use shoal_testkit::lab::{TestLab, in_netns};
use shoal_testkit::{Cluster, eventually};
use shoal_types::TransferInfo;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn random_file(path: &Path, len: u64) -> anyhow::Result<()> {
    Ok(shoal_testkit::noise::write_random_file(path, len, 0x2545_F491_4F6C_DD1D)?)
}

/// Polls a transfer until it completes; returns when.
async fn wait_complete(client: &Client, id: &str, within: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(p) = client.get::<TransferInfo>(&format!("/v1/content/{id}/progress")).await {
            match p.state.as_str() {
                "complete" => return Ok(Instant::now()),
                "failed" => anyhow::bail!("transfer failed: {:?}", p.error),
                _ => {}
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "transfer not complete within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) struct SwarmReport {
    pub(crate) shoal_all: f64,
    pub(crate) shoal_median: f64,
    pub(crate) http_all: f64,
    pub(crate) http_median: f64,
    pub(crate) bound: f64,
    pub(crate) seed_uploaded: u64,
}

pub(crate) async fn swarm(peers: usize, size: u64, mbit: u64) -> anyhow::Result<SwarmReport> {
    let lab = TestLab::up("bench-swarm", peers, &["--bandwidth", &format!("{mbit}mbit"), "--peer-memory", "512m"])?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob.bin");
    random_file(&file, size)?;
    let id = lab.ok(&["exec", "0", "--", "shoal", "share", file.to_str().unwrap_or("")])?.trim().to_string();

    // Shoal: everyone starts together.
    let t0 = Instant::now();
    for i in 1..peers {
        let c = lab.client(i);
        c.send_json::<_, TransferInfo>(hyper::Method::POST, &format!("/v1/content/{id}/fetch"), &()).await?;
    }
    let mut done = Vec::new();
    for i in 1..peers {
        let t = wait_complete(&lab.client(i), &id, Duration::from_secs(1800)).await?;
        done.push(t.duration_since(t0).as_secs_f64());
    }
    let seed_uploaded = lab.client(0).get::<shoal_types::AgentStatus>("/v1/status").await?.uploaded_bytes;

    // Plain HTTP from the seed, same lab, same links.
    let mut server = std::process::Command::new(shoal_testkit::shoal_bin())
        .args([
            "lab",
            "--name",
            &lab.name,
            "exec",
            "0",
            "--",
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(dir.path())
        .env("SHOAL_LAB_ROOT", lab.root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let handles: Vec<_> = (1..peers)
        .map(|i| {
            in_netns(&lab.netns(i), move || -> anyhow::Result<f64> {
                let mut s = TcpStream::connect((Ipv4Addr::new(198, 18, 0, 10), 8080))?;
                s.write_all(b"GET /blob.bin HTTP/1.0\r\nHost: seed\r\n\r\n")?;
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0u64;
                loop {
                    let n = s.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                }
                anyhow::ensure!(got >= size, "HTTP download cut short at {got} bytes");
                Ok(t0.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut http = Vec::new();
    for h in handles {
        http.push(h.join().map_err(|_| anyhow::anyhow!("http client panicked"))???);
    }
    let _ = server.kill();
    let _ = server.wait();
    let bound = size as f64 * 8.0 / (mbit as f64 * 1e6);
    Ok(SwarmReport {
        shoal_all: done.iter().cloned().fold(0.0, f64::max),
        shoal_median: median_f64(&done),
        http_all: http.iter().cloned().fold(0.0, f64::max),
        http_median: median_f64(&http),
        bound,
        seed_uploaded,
    })
}

pub(crate) struct LoopbackReport {
    pub(crate) size: u64,
    pub(crate) shoal_mbps: f64,
    pub(crate) tcp_mbps: f64,
    pub(crate) seed_rss_mib: f64,
    pub(crate) downloader_rss_mib: f64,
}

/// A plain TCP copy on loopback: a file read from disk, sent, written to disk.
fn tcp_copy(src: &Path, dst: &Path) -> anyhow::Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let dst = dst.to_path_buf();
    let rx = std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut s, _) = l.accept()?;
        let mut f = std::fs::File::create(&dst)?;
        std::io::copy(&mut s, &mut f)?;
        f.sync_all()?;
        Ok(())
    });
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let mut f = std::fs::File::open(src)?;
    std::io::copy(&mut f, &mut s)?;
    drop(s);
    rx.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(t0.elapsed().as_secs_f64())
}

pub(crate) async fn loopback(size: u64) -> anyhow::Result<LoopbackReport> {
    let c = Cluster::start_with(2, true, "info").await?;
    let file: PathBuf = c.root.path().join("blob.bin");
    random_file(&file, size)?;
    let id = {
        let f = tokio::fs::File::open(&file).await?;
        let r: shoal_types::SharedContent =
            c.agents[0].client().upload(hyper::Method::POST, "/v1/content", f, &[], |_| {}).await?;
        r.id
    };
    // Both peers see each other before timing starts.
    eventually(Duration::from_secs(20), "peers to meet", || async {
        (c.agents[1].peers().await.ok()?.len() == 2).then_some(())
    })
    .await?;
    // Memory: sample both agents while the transfer runs.
    let pids = [c.agents[0].pid().unwrap_or(0), c.agents[1].pid().unwrap_or(0)];
    let peak = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (k, pid) in pids.iter().enumerate() {
                    if let Some((rss, _)) = proc_usage(*pid) {
                        peak[k].fetch_max(rss, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t0 = Instant::now();
    c.agents[1]
        .client()
        .send_json::<_, TransferInfo>(hyper::Method::POST, &format!("/v1/content/{id}/fetch"), &())
        .await?;
    let done = wait_complete(&c.agents[1].client(), &id, Duration::from_secs(600)).await?;
    let shoal_secs = done.duration_since(t0).as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let tcp_secs = tcp_copy(&file, &c.root.path().join("copy.bin"))?;
    Ok(LoopbackReport {
        size,
        shoal_mbps: size as f64 / shoal_secs / 1e6,
        tcp_mbps: size as f64 / tcp_secs / 1e6,
        seed_rss_mib: peak[0].load(Ordering::Relaxed) as f64 / 1024.0,
        downloader_rss_mib: peak[1].load(Ordering::Relaxed) as f64 / 1024.0,
    })
}
