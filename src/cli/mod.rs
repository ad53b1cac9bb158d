//! Command-line interface: one module per verb.

mod agent;
mod content;
mod dashboard;
mod deploy;
mod events;
mod exec;
mod get;
mod image;
mod keygen;
mod lab;
mod lifecycle;
mod logs;
mod network;
mod output;
mod peers;
mod progress;
mod ps;
mod registry;
mod run;
mod service;
mod share;
mod stats;
mod status;

use clap::{Parser, Subcommand};
use shoal_api::client::Client;
use std::process::ExitCode;

/// Shoal: a leaderless peer-to-peer container platform.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// The agent to talk to: its API socket path or https://host:port.
    /// [default: <data-dir>/shoal.sock]
    #[arg(long, env = "SHOAL_ADDR", global = true)]
    addr: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a peer on this machine.
    Agent(Box<agent::Args>),
    /// Create a new cluster key (the secret every peer of a cluster shares).
    Keygen(keygen::Args),
    /// List every peer in the cluster.
    Peers(peers::Args),
    /// What the cluster saw happen (peers joining and dying, replicas placed and moved,
    /// rollouts, pulls), merged from every live peer.
    Events(events::Args),
    /// A live web page of the cluster (peers, services and replicas, transfers, events):
    /// prints a URL with a one-time token and serves until ^C.
    Dashboard(dashboard::Args),
    /// Show this agent: id, name, version, addresses, cluster size.
    Status(status::Args),
    /// Show the cluster network: this peer's subnet and transport, routes to the other peers,
    /// service addresses.
    Network(network::Args),
    /// Store a file and serve it to the cluster; prints its content id.
    Share(share::Args),
    /// Fetch content from the peers that hold it.
    Get(get::Args),
    /// The content in this peer's store.
    Content(content::Args),
    /// OCI images shared peer to peer.
    Image(image::Args),
    /// Logins for private registries (kept on this peer only).
    Registry(registry::Args),
    /// Run a container from an image (streams its output; -d to detach).
    Run(Box<run::Args>),
    /// List containers on this peer.
    Ps(ps::Args),
    /// Print a container's output.
    Logs(logs::Args),
    /// Leaderless services: replicas placed across the peers.
    Service(service::Args),
    /// Declare services from a file (idempotent; prints the diff).
    Deploy(deploy::Args),
    /// Run a command in a running container.
    Exec(exec::Args),
    /// Stop containers: SIGTERM, then SIGKILL after a grace period.
    Stop(lifecycle::StopArgs),
    /// Send a signal to containers (default KILL).
    Kill(lifecycle::KillArgs),
    /// Remove containers (-f kills running ones first).
    Rm(lifecycle::RmArgs),
    /// Show everything about one container, as JSON.
    Inspect(lifecycle::InspectArgs),
    /// CPU, memory and pids of running containers.
    Stats(stats::Args),
    /// (internal) run a command inside a container.
    #[command(name = "__exec", hide = true)]
    ExecInside(ExecInsideArgs),
    /// (internal) a container's supervisor.
    #[command(name = "__shim", hide = true)]
    Shim(ShimArgs),
    /// A cluster of containerized peers on this machine, with shaped links and faults.
    Lab(lab::Args),
    /// (internal) join a cgroup and network namespace, then exec a command.
    #[command(name = "__enter", hide = true)]
    Enter(lab::EnterArgs),
}

/// `shoal __shim DIR`: arguments the shim carries across its re-executions.
#[derive(Debug, clap::Args)]
pub(crate) struct ShimArgs {
    dir: std::path::PathBuf,
    #[arg(long, default_value_t = 0)]
    restarts: u32,
    #[arg(long, default_value_t = 0)]
    quick_fails: u32,
}

/// `shoal __exec DIR -- CMD...`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecInsideArgs {
    dir: std::path::PathBuf,
    #[arg(last = true)]
    args: Vec<String>,
}

impl Cli {
    /// Commands that must run before any runtime starts; returns their exit code.
    pub(crate) fn pre_runtime(&self) -> Option<ExitCode> {
        match &self.command {
            Command::Enter(a) => Some(lab::enter(a)),
            Command::ExecInside(a) => {
                Some(ExitCode::from(shoal_runtime::exec::run(&a.dir, a.args.clone()).clamp(0, 255) as u8))
            }
            Command::Shim(a) => shoal_runtime::shim::run(
                &a.dir,
                shoal_runtime::shim::ShimArgs { restarts: a.restarts, quick_fails: a.quick_fails },
            ),
            _ => None,
        }
    }

    /// The agent needs a multi-threaded runtime; the CLI verbs do not.
    pub(crate) fn needs_multi_thread(&self) -> bool {
        matches!(self.command, Command::Agent(_))
    }
}

/// The client for the agent named by `--addr`/`SHOAL_ADDR`. For `https://` agents: the token
/// and certificate fingerprint from `SHOAL_TOKEN_FILE` (a copy of the agent's `api.token`),
/// or `SHOAL_TOKEN` and `SHOAL_API_FINGERPRINT`.
pub(crate) fn client(addr: Option<&str>) -> anyhow::Result<Client> {
    use anyhow::Context;
    let default = shoal_node::config::default_api_socket();
    let addr = addr.map(str::to_string).unwrap_or_else(|| default.display().to_string());
    let env = |k: &str| std::env::var(k).ok().filter(|t| !t.is_empty());
    let (mut token, mut pin) = (None, None);
    if let Some(f) = env("SHOAL_TOKEN_FILE") {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading SHOAL_TOKEN_FILE {f}"))?;
        (token, pin) = shoal_api::auth::parse_token_file(&text);
    }
    Ok(Client::pinned(&addr, env("SHOAL_TOKEN").or(token), env("SHOAL_API_FINGERPRINT").or(pin))?)
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let addr = cli.addr.as_deref();
    match cli.command {
        Command::Agent(args) => agent::run(*args).await,
        Command::Keygen(args) => keygen::run(args),
        Command::Peers(args) => peers::run(args, &client(addr)?).await,
        Command::Events(args) => events::run(args, &client(addr)?).await,
        Command::Dashboard(args) => dashboard::run(args, client(addr)?).await,
        Command::Status(args) => status::run(args, &client(addr)?).await,
        Command::Network(args) => network::run(args, &client(addr)?).await,
        Command::Lab(args) => lab::run(args).await,
        Command::Share(args) => share::run(args, &client(addr)?).await,
        Command::Get(args) => get::run(args, &client(addr)?).await,
        Command::Content(args) => content::run(args, &client(addr)?).await,
        Command::Image(args) => image::run(args, &client(addr)?).await,
        Command::Registry(args) => registry::run(args, &client(addr)?).await,
        Command::Run(args) => run::run(*args, &client(addr)?).await,
        Command::Ps(args) => ps::run(args, &client(addr)?).await,
        Command::Logs(args) => logs::run(args, &client(addr)?).await,
        Command::Stop(args) => lifecycle::stop(args, &client(addr)?).await,
        Command::Kill(args) => lifecycle::kill(args, &client(addr)?).await,
        Command::Rm(args) => lifecycle::rm(args, &client(addr)?).await,
        Command::Inspect(args) => lifecycle::inspect(args, &client(addr)?).await,
        Command::Stats(args) => stats::run(args, &client(addr)?).await,
        Command::Exec(args) => exec::run(args, &client(addr)?).await,
        Command::Service(args) => service::run(args, &client(addr)?).await,
        Command::Deploy(args) => deploy::run(args, &client(addr)?).await,
        Command::Enter(_) | Command::Shim(_) | Command::ExecInside(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}
