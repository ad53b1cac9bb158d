//! `shoal service create|ls|ps|scale|update|rebalance|logs|rm`: leaderless services. Any peer
//! accepts them; every peer learns them and the cluster places the replicas.

use super::lifecycle::encode;
use super::output::{Table, ago, print_json, short_id};
use shoal_api::client::Client;
use shoal_types::{ByteSize, PortMapping, ReplicaInfo, Resources, ServiceInfo, ServiceMode, ServiceSpec};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Service name (unique in the cluster).
    #[arg(long)]
    name: String,
    /// Replicas to run (replicated mode).
    #[arg(long, conflicts_with = "mode")]
    replicas: Option<u32>,
    /// `replicated` (--replicas copies wherever they fit) or `global` (one replica on every
    /// peer that matches the constraints, including peers that join later).
    #[arg(long, default_value = "replicated")]
    mode: ServiceMode,
    /// CPU reserved and enforced per replica, e.g. 0.5.
    #[arg(long)]
    cpus: Option<String>,
    /// Memory reserved and enforced per replica, e.g. 128m.
    #[arg(long)]
    memory: Option<String>,
    /// Publish a port on every peer (the routing mesh): HOST:CONTAINER[/udp].
    #[arg(short, long = "publish", value_name = "HOST:CONTAINER[/udp]")]
    publish: Vec<String>,
    /// Environment variable KEY=VALUE.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Only peers with this label: key=value (repeatable).
    #[arg(long)]
    constraint: Vec<String>,
    /// Spread replicas over the values of this peer label.
    #[arg(long)]
    spread: Option<String>,
    /// Health check, run in each replica with `sh -c` every 2 s; 3 failures in a row replace it.
    #[arg(long)]
    health_cmd: Option<String>,
    /// Most replicas replaced at once during an update.
    #[arg(long, default_value_t = 1)]
    max_unavailable: u32,
    /// Scale by CPU between MIN:MAX replicas (with --target-cpu).
    #[arg(long, value_name = "MIN:MAX")]
    autoscale: Option<String>,
    /// Target mean CPU use per replica, percent of its CPU limit.
    #[arg(long, default_value_t = 70)]
    target_cpu: u32,
    /// Image: NAME:TAG.
    image: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Declare a service.
    Create(Box<CreateArgs>),
    /// List services.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Each replica of a service: peer, state, address.
    Ps {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Change the number of replicas.
    Scale { name: String, replicas: u32 },
    /// Spread the replicas evenly again (after peers returned or joined), one
    /// `--max-unavailable` batch at a time, each new copy running before the old one stops.
    Rebalance { name: String },
    /// Change the image: a rolling update, rolled back if the new replicas fail.
    Update {
        name: String,
        #[arg(long)]
        image: String,
        /// Most replicas replaced at once.
        #[arg(long)]
        max_unavailable: Option<u32>,
    },
    /// Go back to the image before the last update (a rolling update to it).
    Rollback { name: String },
    /// Restart one replica wherever it runs: its peer stops it and starts a fresh one.
    Restart {
        name: String,
        /// Which replica: its index (`1` for web.1), or for a global service its peer's id.
        replica: String,
    },
    /// Output of every replica, wherever it runs, merged by time.
    Logs {
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each replica.
        #[arg(long, short = 'n')]
        tail: Option<u32>,
    },
    /// Remove a service: every replica is stopped.
    Rm { name: String },
}

fn spec(a: CreateArgs) -> anyhow::Result<ServiceSpec> {
    let cpus_milli = a.cpus.as_deref().map(Resources::parse_cpus).transpose()?.unwrap_or(0);
    let memory_bytes = match &a.memory {
        Some(m) => m.parse::<ByteSize>().map_err(|e| anyhow::anyhow!("--memory {m}: {e}"))?.0,
        None => 0,
    };
    let mut constraints = BTreeMap::new();
    for c in &a.constraint {
        let (k, v) = shoal_types::parse_label(c).map_err(|e| anyhow::anyhow!("--constraint {c}: {e}"))?;
        constraints.insert(k, v);
    }
    for e in &a.env {
        shoal_types::container::check_env(e)?;
    }
    Ok(ServiceSpec {
        vip: None,
        name: a.name,
        image: a.image,
        replicas: if a.mode == ServiceMode::Global { 0 } else { a.replicas.unwrap_or(1) },
        mode: a.mode,
        rebalance: None,
        cmd: a.command,
        env: a.env,
        cpus_milli,
        memory_bytes,
        ports: a.publish.iter().map(|p| PortMapping::parse(p)).collect::<Result<_, _>>()?,
        constraints,
        spread: a.spread,
        health_cmd: a.health_cmd.map(|c| vec!["sh".to_string(), "-c".to_string(), c]),
        max_unavailable: a.max_unavailable,
        autoscale: match a.autoscale.as_deref() {
            None => None,
            Some(text) => {
                let bad = || anyhow::anyhow!("--autoscale {text}: expected MIN:MAX with 1 <= MIN <= MAX, like 2:10");
                let (lo, hi) = text.split_once(':').ok_or_else(bad)?;
                let (min, max): (u32, u32) = (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?);
                if min == 0 || min > max || a.target_cpu == 0 {
                    return Err(bad());
                }
                Some(shoal_types::Autoscale { min, max, target_cpu_percent: a.target_cpu })
            }
        },
        previous_image: None,
        rollback_image: None,
    })
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    match args.cmd {
        Cmd::Create(a) => {
            let info: ServiceInfo = client.send_json(hyper::Method::POST, "/v1/services", &spec(*a)?).await?;
            println!("{}", info.spec.name);
        }
        Cmd::Ls { json } => {
            let list: Vec<ServiceInfo> = client.get("/v1/services").await?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["NAME", "MODE", "IMAGE", "REPLICAS", "STATE"]);
            let mut why = Vec::new();
            for s in list {
                for reason in s.unplaced.iter().chain(&s.errors) {
                    why.push(format!("{}: {reason}", s.spec.name));
                }
                t.row(vec![
                    s.spec.name,
                    s.spec.mode.to_string(),
                    s.spec.image,
                    format!("{}/{}", s.running, s.desired),
                    s.state,
                ]);
            }
            t.print();
            for w in why {
                println!("{w}");
            }
        }
        Cmd::Ps { name, json } => {
            let list: Vec<ReplicaInfo> = client.get(&format!("/v1/services/{}/replicas", encode(&name))).await?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let mut t =
                Table::new(&["REPLICA", "PEER", "STATE", "STARTED", "RESTARTS", "ADDRESS", "CONTAINER", "ERROR"]);
            for r in list {
                let peer = if r.peer.is_empty() {
                    "-".to_string()
                } else {
                    format!("{} ({})", r.peer_name, short_id(&r.peer))
                };
                t.row(vec![
                    r.name(),
                    peer,
                    r.state.clone(),
                    r.started_unix
                        .map(|s| ago(Duration::from_secs(now.saturating_sub(s))) + " ago")
                        .unwrap_or_default(),
                    r.restarts.to_string(),
                    r.ip.clone().unwrap_or_default(),
                    r.container.chars().take(12).collect(),
                    r.error.clone().unwrap_or_default(),
                ]);
            }
            t.print();
        }
        Cmd::Scale { name, replicas } => {
            let path = format!("/v1/services/{}/scale?replicas={replicas}", encode(&name));
            let info: ServiceInfo = client.send_json(hyper::Method::PUT, &path, &()).await?;
            println!("{} scaled to {}", info.spec.name, info.spec.replicas);
        }
        Cmd::Rebalance { name } => {
            let path = format!("/v1/services/{}/rebalance", encode(&name));
            let info: ServiceInfo = client.send_json(hyper::Method::POST, &path, &()).await?;
            println!("{}: rebalancing ({}/{} running)", info.spec.name, info.running, info.desired);
        }
        Cmd::Update { name, image, max_unavailable } => {
            let mut info: ServiceInfo = client.get(&format!("/v1/services/{}", encode(&name))).await?;
            info.spec.image = image;
            if let Some(m) = max_unavailable {
                info.spec.max_unavailable = m;
            }
            let path = format!("/v1/services/{}", encode(&name));
            let info: ServiceInfo = client.send_json(hyper::Method::PUT, &path, &info.spec).await?;
            println!("{} updated to {}", info.spec.name, info.spec.image);
        }
        Cmd::Rollback { name } => {
            let path = format!("/v1/services/{}/rollback", encode(&name));
            let info: ServiceInfo = client.send_json(hyper::Method::POST, &path, &()).await?;
            println!("{} rolling back to {}", info.spec.name, info.spec.image);
        }
        Cmd::Restart { name, replica } => {
            let path = format!("/v1/services/{}/replicas/{}/restart", encode(&name), encode(&replica));
            let r: ReplicaInfo = client.send_json(hyper::Method::POST, &path, &()).await?;
            println!("{} restarting on {}", r.name(), r.peer_name);
        }
        Cmd::Logs { name, follow, tail } => {
            let mut path = format!("/v1/services/{}/logs?follow={follow}", encode(&name));
            if let Some(n) = tail {
                path.push_str(&format!("&tail={n}"));
            }
            client
                .stream_lines(hyper::Method::GET, &path, None::<&()>, |l: shoal_types::ServiceLogLine| {
                    let line = format!("{}@{} | {}", l.replica, l.peer_name, l.entry.text);
                    if l.entry.stream == "stderr" {
                        eprint!("{line}");
                    } else {
                        print!("{line}");
                    }
                })
                .await?;
        }
        Cmd::Rm { name } => {
            let path = format!("/v1/services/{}", encode(&name));
            super::content::expect_no_content(client.raw(hyper::Method::DELETE, &path, None).await?)?;
            println!("{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
