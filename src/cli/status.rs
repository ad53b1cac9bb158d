//! `shoal status`: this agent.

use super::output::{ago, print_json};
use shoal_api::client::Client;
use shoal_types::AgentStatus;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let s: AgentStatus = client.get("/v1/status").await?;
    if args.json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("id:           {}", s.id);
    println!("name:         {}", s.name);
    println!("version:      {}", s.version);
    println!("cluster:      {} alive of {} known peers", s.cluster_size, s.known_peers);
    println!("private net:  {}", if s.private_network { "yes (cluster key)" } else { "no (open cluster)" });
    println!("uptime:       {}", ago(Duration::from_secs(s.uptime_secs)));
    println!("data dir:     {}", s.data_dir);
    println!("listening on:");
    for a in &s.listen_addrs {
        println!("  {a}");
    }
    Ok(ExitCode::SUCCESS)
}
