//! `shoal-bench`: Shoal's benchmark suite. Each benchmark prints medians, side by side with the
//! reference system measured in the same run where one exists, and the ratio.
//!
//! Build and run with `bash scripts/bench.sh [BENCH...]` (installs the references, e.g. Debian's
//! `serf`), or `cargo run --release -p shoal-bench -- <bench>`.

mod content;
mod failure;
mod idle;
mod lab;
mod network;
mod registry;
mod runtime;
mod serf;
mod services;
mod sim;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Shoal benchmarks (figures, not pass/fail)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// SIGKILL -> every other peer marks it dead; Shoal vs Serf.
    Failure {
        #[arg(long, default_value_t = 5)]
        peers: usize,
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Idle cluster: memory, CPU and false positives; Shoal vs Serf (and vs an older build).
    Idle {
        #[arg(long, default_value_t = 5)]
        peers: usize,
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Also compare with this older build of `shoal` (before/after a change), alternating
        /// `--rounds` windows of each.
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The lab: shaped-link throughput vs setting, `lab up` time, agents' memory.
    Lab {
        #[arg(long, value_delimiter = ',', default_value = "5,20,50,200")]
        rates: Vec<u64>,
        #[arg(long, value_delimiter = ',', default_value = "4,16,32")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Content: 1 seed + N downloaders on shaped links vs plain HTTP from the seed.
    Swarm {
        #[arg(long, default_value_t = 8)]
        peers: usize,
        /// Blob size in MiB.
        #[arg(long, default_value_t = 256)]
        mib: u64,
        #[arg(long, default_value_t = 50)]
        mbit: u64,
    },
    /// Registry pulls in a lab: N peers pulling at once vs N skopeo copies, upstream bytes,
    /// a pull from peers, and streaming's time to first byte.
    Registry {
        #[arg(long, default_value_t = 8)]
        peers: usize,
        /// Every pulling peer's link, Mbit/s (B).
        #[arg(long, default_value_t = 400)]
        mbit: u64,
        /// The registry's link, Mbit/s (B_up).
        #[arg(long, default_value_t = 400)]
        up_mbit: u64,
    },
    /// Content: one seed to one downloader on loopback vs a plain TCP copy; agents' memory.
    Loopback {
        /// Blob sizes in MiB (memory is reported for each).
        #[arg(long, value_delimiter = ',', default_value = "128,1024")]
        mib: Vec<u64>,
    },
    /// Containers: start latency vs runc, CPU and network cost of isolation vs the host.
    Runtime {
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Size of each network transfer in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
    },
    /// Services: failover after a peer's power loss, startup of 20 replicas, placement throughput.
    Services {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// The cluster network per transport: throughput vs the peers' own link, the routing mesh,
    /// DNS under load, convergence, the restart gap.
    Network {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Size of each TCP stream in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        #[arg(long, value_delimiter = ',', default_value = "vxlan,encrypted")]
        transports: Vec<String>,
    },
    /// Membership at scale by simulation.
    Sim {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        peers: Vec<usize>,
    },
}

const SERF_PORT: u16 = 27946;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Failure { peers, runs } => {
            println!(
                "== failure detection: {peers} peers on loopback, SIGKILL one, time until every other marks it dead"
            );
            let s = failure::shoal(peers, runs).await?;
            println!("shoal (default settings):     {s}");
            if let Some(v) = serf::version() {
                let r = tokio::task::spawn_blocking(move || failure::serf(peers, runs, SERF_PORT)).await??;
                println!("{v} (default LAN config): {r}");
                println!("ratio shoal/serf (medians):   {:.2}", s.median.as_secs_f64() / r.median.as_secs_f64());
            } else {
                println!("serf not installed (apt-get install serf): no reference in this run");
            }
        }
        Bench::Idle { peers, secs, baseline, rounds } => {
            println!("== idle cluster: {peers} peers, {secs} s");
            let r = idle::run(peers, secs, serf::version().is_some(), SERF_PORT).await?;
            println!(
                "shoal: median RSS {:.1} MiB, median CPU {:.2} %, peers wrongly marked dead: {} in {} s",
                r.shoal_rss_mib, r.shoal_cpu_pct, r.shoal_false_positives, r.secs
            );
            if let (Some(m), Some(c)) = (r.serf_rss_mib, r.serf_cpu_pct) {
                println!("serf:  median RSS {m:.1} MiB, median CPU {c:.2} %");
                println!("ratio shoal/serf: RSS {:.2}, CPU {:.2}", r.shoal_rss_mib / m, r.shoal_cpu_pct / c.max(1e-9));
            }
            if let Some(d) = &r.dashboard {
                println!(
                    "dashboard on peer 0, {secs} s: agent CPU {:.2} % closed, {:.2} % with a page open; the dashboard process {:.2} % CPU, {:.1} MiB; {} bytes of events sent",
                    d.agent_cpu_closed_pct, d.agent_cpu_open_pct, d.dashboard_cpu_pct, d.dashboard_rss_mib, d.sse_bytes
                );
            }
            if let Some(bin) = baseline {
                println!(
                    "== idle cost before/after: {} vs this build (metrics on and scraped every 15 s, events recorded), {rounds} rounds of {secs} s",
                    bin.display()
                );
                let r = idle::before_after(peers, secs, rounds, bin).await?;
                println!(
                    "median of rounds: before {:.1} MiB {:.2} % CPU, after {:.1} MiB {:.2} % CPU; ratio after/before: RSS {:.3}, CPU {:.3}",
                    r.before.rss_mib,
                    r.before.cpu_pct,
                    r.after.rss_mib,
                    r.after.cpu_pct,
                    r.after.rss_mib / r.before.rss_mib,
                    r.after.cpu_pct / r.before.cpu_pct.max(1e-9)
                );
            }
        }
        Bench::Lab { rates, sizes, runs } => {
            println!("== lab: shaped links (TCP goodput, median of {runs})");
            for (m, r) in lab::link_rates(&rates, runs)? {
                println!(
                    "  {m:>4} mbit setting: {:.1} Mbit/s measured ({:.2} of the setting)",
                    r / 1e6,
                    r / (m as f64 * 1e6)
                );
            }
            println!("== lab up (until every peer sees every other alive), median of {runs}");
            for f in lab::up_times(&sizes, runs)? {
                println!(
                    "  {:>3} peers: {:.2} s; agents' total RSS {:.0} MiB ({:.1} MiB each)",
                    f.peers,
                    f.median_secs,
                    f.total_rss_mib,
                    f.total_rss_mib / f.peers as f64
                );
            }
        }
        Bench::Registry { peers, mbit, up_mbit } => {
            println!(
                "== registry: {peers} peers pull at once from a registry in the lab; registry link {up_mbit} Mbit/s (B_up), every other {mbit} Mbit/s (B)"
            );
            let r = registry::run(peers, mbit, up_mbit).await?;
            for i in &r.images {
                println!("image {} = {:.0} MiB:", i.name, i.size as f64 / (1u64 << 20) as f64);
                println!(
                    "  shoal:  all {peers} have it after {:.1} s; registry sent {:.2} x the image (bound now S/B_up+S/B+3 = {:.1} s, {:.2} x; aim 1.25 x max = {:.1} s)",
                    i.shoal_all,
                    i.shoal_upstream,
                    i.bound_now,
                    i.shoal_all / i.bound_now,
                    i.bound_aim
                );
                println!(
                    "  skopeo: {peers} copies straight from the registry: all done after {:.1} s; registry sent {:.2} x the image; shoal takes {:.2} x skopeo's time",
                    i.skopeo_all,
                    i.skopeo_upstream,
                    i.shoal_all / i.skopeo_all
                );
                println!(
                    "  a pull when another peer has it: {:.1} s (bound S/B+1 = {:.1} s), {} bytes from the registry",
                    i.again, i.again_bound, i.again_upstream
                );
            }
            println!(
                "streaming: `shoal get ID -o -` of 256 MiB another peer holds: first byte after {:.2} s, all after {:.1} s",
                r.ttfb, r.stream_all
            );
        }
        Bench::Swarm { peers, mib, mbit } => {
            println!(
                "== swarm: 1 seed + {} downloaders, {mib} MiB, every link {mbit} Mbit/s, all start together",
                peers - 1
            );
            let r = content::swarm(peers, mib << 20, mbit).await?;
            println!("bound S/B: {:.1} s", r.bound);
            println!(
                "shoal:     all done {:.1} s (median {:.1} s) = {:.2} x S/B; seed uploaded {:.2} x the blob",
                r.shoal_all,
                r.shoal_median,
                r.shoal_all / r.bound,
                r.seed_uploaded as f64 / (mib << 20) as f64
            );
            println!(
                "http:      all done {:.1} s (median {:.1} s) = {:.2} x S/B",
                r.http_all,
                r.http_median,
                r.http_all / r.bound
            );
            println!("ratio shoal/http (all done): {:.2}", r.shoal_all / r.http_all);
        }
        Bench::Loopback { mib } => {
            println!("== loopback: one seed, one downloader, unshaped");
            for m in mib {
                let r = content::loopback(m << 20).await?;
                println!(
                    "{:>5} MiB: shoal {:.0} MB/s, plain TCP copy {:.0} MB/s, ratio {:.2}; peak RSS seed {:.1} MiB, downloader {:.1} MiB",
                    r.size >> 20,
                    r.shoal_mbps,
                    r.tcp_mbps,
                    r.shoal_mbps / r.tcp_mbps,
                    r.seed_rss_mib,
                    r.downloader_rss_mib
                );
            }
        }
        Bench::Runtime { runs, mib } => runtime::run(runs, mib).await?,
        Bench::Services { runs } => services::run(runs).await?,
        Bench::Network { runs, mib, transports } => network::run(runs, mib, &transports).await?,
        Bench::Sim { peers } => {
            println!("== membership by simulation (agent's SWIM settings, 1 ms +/- 0.5 ms links)");
            for n in peers {
                let r = sim::run(n, 42);
                println!(
                    "{:>6} peers: failure seen first {:.2} s, by 99% {:.2} s, by all {}; msgs/peer/s steady {:.1} ({:.0} B/s), during failure {:.1}  [sim took {:.1} s]",
                    r.peers,
                    r.to_first.as_secs_f64(),
                    r.to_99.as_secs_f64(),
                    r.to_all.map_or("not within 60 s".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                    r.steady_msgs_per_peer_s,
                    r.steady_bytes_per_peer_s,
                    r.failure_msgs_per_peer_s,
                    r.wall.as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
