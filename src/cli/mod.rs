//! Command-line interface: one module per verb.

mod agent;
mod content;
mod get;
mod image;
mod keygen;
mod lab;
mod output;
mod peers;
mod progress;
mod share;
mod status;

use clap::{Parser, Subcommand};
use shoal_api::client::Client;
use std::process::ExitCode;

/// Shoal: a leaderless peer-to-peer container platform.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// The agent to talk to: its API socket path or http://host:port.
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
    /// Show this agent: id, name, version, addresses, cluster size.
    Status(status::Args),
    /// Store a file and serve it to the cluster; prints its content id.
    Share(share::Args),
    /// Fetch content from the peers that hold it.
    Get(get::Args),
    /// The content in this peer's store.
    Content(content::Args),
    /// OCI images shared peer to peer.
    Image(image::Args),
    /// A cluster of containerized peers on this machine, with shaped links and faults.
    Lab(lab::Args),
    /// (internal) join a cgroup and network namespace, then exec a command.
    #[command(name = "__enter", hide = true)]
    Enter(lab::EnterArgs),
}

impl Cli {
    /// Commands that must run before any runtime starts; returns their exit code.
    pub(crate) fn pre_runtime(&self) -> Option<ExitCode> {
        match &self.command {
            Command::Enter(a) => Some(lab::enter(a)),
            _ => None,
        }
    }

    /// The agent needs a multi-threaded runtime; the CLI verbs do not.
    pub(crate) fn needs_multi_thread(&self) -> bool {
        matches!(self.command, Command::Agent(_))
    }
}

/// The client for the agent named by `--addr`/`SHOAL_ADDR`, with `SHOAL_TOKEN` if set.
pub(crate) fn client(addr: Option<&str>) -> anyhow::Result<Client> {
    let default = shoal_node::config::default_api_socket();
    let addr = addr.map(str::to_string).unwrap_or_else(|| default.display().to_string());
    let token = std::env::var("SHOAL_TOKEN").ok().filter(|t| !t.is_empty());
    Ok(Client::new(&addr, token)?)
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let addr = cli.addr.as_deref();
    match cli.command {
        Command::Agent(args) => agent::run(*args).await,
        Command::Keygen(args) => keygen::run(args),
        Command::Peers(args) => peers::run(args, &client(addr)?).await,
        Command::Status(args) => status::run(args, &client(addr)?).await,
        Command::Lab(args) => lab::run(args).await,
        Command::Share(args) => share::run(args, &client(addr)?).await,
        Command::Get(args) => get::run(args, &client(addr)?).await,
        Command::Content(args) => content::run(args, &client(addr)?).await,
        Command::Image(args) => image::run(args, &client(addr)?).await,
        Command::Enter(_) => unreachable!("handled before the runtime starts"),
    }
}
