//! `shoal ps [-a] [--json]`: containers on this peer.

use super::output::{Table, ago, print_json};
use shoal_api::client::Client;
use shoal_types::{ContainerInfo, ContainerState};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Include exited containers.
    #[arg(short, long)]
    all: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn status_text(c: &ContainerInfo, now: u64) -> String {
    match c.state {
        ContainerState::Running => {
            format!("Up {}", ago(Duration::from_secs(now.saturating_sub(c.started_unix.unwrap_or(now)))))
        }
        ContainerState::Exited => {
            let when = c.finished_unix.map(|f| format!(" {} ago", ago(Duration::from_secs(now.saturating_sub(f)))));
            let reason = match c.reason.as_deref() {
                Some("OOMKilled") => " OOMKilled".to_string(),
                _ => String::new(),
            };
            format!("Exited ({}){reason}{}", c.exit_code.unwrap_or(-1), when.unwrap_or_default())
        }
        other => other.to_string(),
    }
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let list: Vec<ContainerInfo> = client.get(&format!("/v1/containers?all={}", args.all)).await?;
    if args.json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut t = Table::new(&["CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS", "IP", "PORTS"]);
    for c in list {
        let mut cmd = c.command.join(" ");
        if cmd.chars().count() > 30 {
            cmd = cmd.chars().take(29).collect::<String>() + "…";
        }
        let ports: Vec<String> = c.spec.ports.iter().map(|p| p.docker_style()).collect();
        t.row(vec![
            c.id.chars().take(12).collect(),
            c.name.clone(),
            c.image.clone(),
            format!("\"{cmd}\""),
            status_text(&c, now),
            c.ip.clone().unwrap_or_default(),
            ports.join(", "),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}
