//! `shoal stats [--json]`: CPU, memory and pids of each running container, from its cgroups.

use super::output::{Table, print_json};
use shoal_api::client::Client;
use shoal_types::{ByteSize, ContainerStats};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    // CPU % needs two samples: take one, wait a second, report the second.
    let _: Vec<ContainerStats> = client.get("/v1/stats").await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let list: Vec<ContainerStats> = client.get("/v1/stats").await?;
    if args.json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS"]);
    for s in list {
        let limit =
            if s.memory_limit_bytes == 0 { "-".to_string() } else { ByteSize(s.memory_limit_bytes).to_string() };
        let pids = if s.pids_limit == 0 { s.pids.to_string() } else { format!("{} / {}", s.pids, s.pids_limit) };
        t.row(vec![
            s.id.chars().take(12).collect(),
            s.name,
            format!("{:.2}%", s.cpu_percent),
            format!("{} / {limit}", ByteSize(s.memory_bytes)),
            pids,
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}
