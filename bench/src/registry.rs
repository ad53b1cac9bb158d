//! Registry benchmarks (`shoal-bench registry`), in a lab: N pulling peers plus one peer
//! whose namespace runs a real registry (Debian's docker-registry) on a link shaped to B_up;
//! every other link is shaped to B.
//!
//! - all N peers `shoal image pull` at once: upstream bytes (from the registry's access log)
//!   as a multiple of the image, and the time until all have it, beside N `skopeo copy`s
//!   straight from the registry in the same lab, and the bounds S/B_up + S/B + 3 s and
//!   1.25 × max(S/B_up, S/B);
//! - a pull when another peer has the image: time (bound S/B + 1 s) and upstream bytes;
//! - streaming: time to the first byte of `shoal get ID -o -` for a blob another peer holds.

use shoal_testkit::lab::TestLab;
use shoal_testkit::noise::random_bytes;
use shoal_testkit::registry::AccessLine;
use shoal_types::{ImageInfo, PullRequest};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of successful blob GETs the registry sent, from its access log.
fn upstream_bytes(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(AccessLine::parse)
        .filter(|l| l.method == "GET" && l.ok() && l.path.contains("/blobs/"))
        .map(|l| l.size)
        .sum()
}

pub(crate) struct ImageReport {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) shoal_all: f64,
    pub(crate) shoal_upstream: f64,
    pub(crate) skopeo_all: f64,
    pub(crate) skopeo_upstream: f64,
    pub(crate) bound_now: f64,
    pub(crate) bound_aim: f64,
    pub(crate) again: f64,
    pub(crate) again_upstream: u64,
    pub(crate) again_bound: f64,
}

pub(crate) struct Report {
    pub(crate) images: Vec<ImageReport>,
    pub(crate) ttfb: f64,
    pub(crate) stream_all: f64,
}

pub(crate) async fn run(peers: usize, mbit: u64, up_mbit: u64) -> anyhow::Result<Report> {
    let host = peers; // the registry's peer
    let reg_ip = format!("198.18.0.{}", 10 + host);
    let reg_addr = format!("{reg_ip}:5000");
    let lab = TestLab::up(
        "bench-reg",
        peers + 1,
        &[
            "--bandwidth",
            &format!("{mbit}mbit"),
            "--peer-memory",
            "768m",
            "--agent-arg",
            &format!("--insecure-registry={reg_addr}"),
        ],
    )?;
    lab.ok(&["link", &host.to_string(), "--bandwidth", &format!("{up_mbit}mbit")])?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("storage"))?;
    let log = d.join("registry.log");
    std::fs::write(
        d.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {reg_addr}\n",
            d.join("storage").display()
        ),
    )?;
    let log_file = std::fs::File::create(&log)?;
    // nsenter execs the registry itself, so killing this child stops it.
    let mut registry = std::process::Command::new("nsenter")
        .arg(format!("--net={}", lab.netns(host).display()))
        .args(["docker-registry", "serve"])
        .arg(d.join("config.yml"))
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()?;
    let ready = shoal_testkit::eventually(Duration::from_secs(20), "the registry up", async || {
        std::fs::read_to_string(&log).ok()?.contains("listening on").then_some(())
    })
    .await;
    if let Err(e) = ready {
        let _ = registry.kill();
        anyhow::bail!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    // The images: 4 x 64 MiB layers, and one 256 MiB layer (random: gzip cannot shrink them).
    let images: [(&str, Vec<usize>); 2] = [("four", vec![64 << 20; 4]), ("one", vec![256 << 20])];
    let mut out = Vec::new();
    for (n, (name, layers)) in images.iter().enumerate() {
        let archive = d.join(format!("{name}.tar"));
        let data: Vec<Vec<u8>> = layers
            .iter()
            .enumerate()
            .map(|(i, len)| shoal_testkit::images::layer(&[("blob", &random_bytes(*len, (n * 16 + i) as u64 + 1))]))
            .collect();
        shoal_testkit::images::write_oci_archive(&archive, &format!("{name}:v1"), &data);
        drop(data);
        let pushed = lab.cli(&[
            "exec",
            &host.to_string(),
            "--",
            "skopeo",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}", archive.display()),
            &format!("docker://{reg_addr}/bench/{name}:v1"),
        ]);
        anyhow::ensure!(pushed.status.success(), "push: {}", String::from_utf8_lossy(&pushed.stderr));
        let _ = std::fs::remove_file(&archive);
        let reference = format!("{reg_addr}/bench/{name}:v1");

        // Shoal: all N at once.
        let before = upstream_bytes(&log);
        let t0 = Instant::now();
        let pulls = (0..peers).map(|i| {
            let c = lab.client(i);
            let r = reference.clone();
            async move {
                c.send_json::<_, ImageInfo>(hyper::Method::POST, "/v1/images/pull", &PullRequest { reference: r })
                    .await
                    .map(|img| (img, t0.elapsed().as_secs_f64()))
            }
        });
        let mut shoal_all = 0f64;
        let mut size = 0;
        let mut digest = String::new();
        for r in futures::future::join_all(pulls).await {
            let (img, t) = r?;
            size = img.size;
            digest = img.digest;
            shoal_all = shoal_all.max(t);
        }
        let shoal_up = upstream_bytes(&log) - before;

        // The same N straight from the registry with skopeo.
        let before = upstream_bytes(&log);
        let t0 = Instant::now();
        let copies: Vec<_> = (0..peers)
            .map(|i| {
                lab.spawn(&[
                    "exec",
                    &i.to_string(),
                    "--",
                    "skopeo",
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    &format!("docker://{reference}"),
                    &format!("oci:{}:v1", d.join(format!("skopeo-{name}-{i}")).display()),
                ])
            })
            .collect();
        let mut skopeo_all = 0f64;
        for c in copies {
            let o = c.wait_with_output()?;
            anyhow::ensure!(o.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&o.stderr));
            skopeo_all = skopeo_all.max(t0.elapsed().as_secs_f64());
        }
        let skopeo_up = upstream_bytes(&log) - before;
        for i in 0..peers {
            let _ = std::fs::remove_dir_all(d.join(format!("skopeo-{name}-{i}")));
        }

        // A pull when another peer has it: the last peer forgets it and pulls again.
        let last = peers - 1;
        // Both of its names: the tag and the digest (a pull records the image under each).
        lab.ok(&["exec", &last.to_string(), "--", "shoal", "image", "rm", &reference])?;
        let by_digest = format!("{reg_addr}/bench/{name}@{digest}");
        lab.ok(&["exec", &last.to_string(), "--", "shoal", "image", "rm", &by_digest])?;
        let before = upstream_bytes(&log);
        let t0 = Instant::now();
        lab.client(last)
            .send_json::<_, ImageInfo>(
                hyper::Method::POST,
                "/v1/images/pull",
                &PullRequest { reference: reference.clone() },
            )
            .await?;
        let again = t0.elapsed().as_secs_f64();
        let again_up = upstream_bytes(&log) - before;

        let s_bits = size as f64 * 8.0;
        let (t_up, t_b) = (s_bits / (up_mbit as f64 * 1e6), s_bits / (mbit as f64 * 1e6));
        out.push(ImageReport {
            name: format!("{name} ({} x {} MiB)", layers.len(), layers[0] >> 20),
            size,
            shoal_all,
            shoal_upstream: shoal_up as f64 / size as f64,
            skopeo_all,
            skopeo_upstream: skopeo_up as f64 / size as f64,
            bound_now: t_up + t_b + 3.0,
            bound_aim: 1.25 * t_up.max(t_b),
            again,
            again_upstream: again_up,
            again_bound: t_b + 1.0,
        });
    }
    let _ = registry.kill();
    let _ = registry.wait();

    // Streaming: first byte of `shoal get ID -o -` on peer 1 for 256 MiB peer 0 holds.
    let blob = d.join("stream.bin");
    std::fs::write(&blob, random_bytes(256 << 20, 99))?;
    let id = lab.ok(&["exec", "0", "--", "shoal", "share", &blob.display().to_string()])?.trim().to_string();
    let _ = std::fs::remove_file(&blob);
    let t0 = Instant::now();
    let mut get = lab.spawn_piped(&["exec", "1", "--", "shoal", "get", &id, "-o", "-"]);
    let Some(mut stdout) = get.stdout.take() else {
        let _ = get.kill();
        let _ = get.wait();
        anyhow::bail!("no stdout");
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut ttfb = None;
    while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            break;
        }
        ttfb.get_or_insert(t0.elapsed().as_secs_f64());
    }
    let stream_all = t0.elapsed().as_secs_f64();
    let o = get.wait_with_output()?;
    anyhow::ensure!(o.status.success(), "get -o -: {}", String::from_utf8_lossy(&o.stderr));
    Ok(Report { images: out, ttfb: ttfb.unwrap_or(f64::NAN), stream_all })
}
