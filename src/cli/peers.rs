//! `shoal peers`: the membership table.

use super::output::{Table, ago, print_json, short_id};
use shoal_api::client::Client;
use shoal_types::{ByteSize, PeerInfo, PeerState};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON (one object per peer).
    #[arg(long)]
    json: bool,
    /// Only peers in this state.
    #[arg(long, value_parser = ["alive", "suspect", "dead", "left"])]
    state: Option<String>,
    /// Show full peer ids and every address.
    #[arg(long, short)]
    wide: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Retire a peer's operator grant: the services it changes from now on are void on every
    /// peer (run on an operator peer; give the retired peer a worker key).
    Revoke {
        /// Peer id or name.
        peer: String,
    },
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    if let Some(Cmd::Revoke { peer }) = &args.command {
        let path = format!("/v1/peers/{}/revoke", super::lifecycle::encode(peer));
        super::content::expect_no_content(client.raw(hyper::Method::POST, &path, None).await?)?;
        eprintln!("revoked the operator grant of {peer}");
        return Ok(ExitCode::SUCCESS);
    }
    let path = match &args.state {
        Some(s) => format!("/v1/peers?state={s}"),
        None => "/v1/peers".to_string(),
    };
    let peers: Vec<PeerInfo> = client.get(&path).await?;
    if args.json {
        print_json(&peers)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["NAME", "ID", "STATE", "ADDRESS", "CPUS FREE/CAP", "MEMORY FREE/CAP", "LABELS", "SINCE"]);
    for p in &peers {
        let name = if p.is_self { format!("{} (self)", p.name) } else { p.name.clone() };
        let addrs = if args.wide { p.addrs.join(",") } else { p.addrs.first().cloned().unwrap_or_default() };
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let known = p.state != PeerState::Dead || !p.version.is_empty();
        t.row(vec![
            name,
            if args.wide { p.id.clone() } else { short_id(&p.id) },
            p.state.to_string(),
            addrs,
            if known { format!("{}/{}", p.free.cpus(), p.capacity.cpus()) } else { "-".into() },
            if known {
                format!("{}/{}", ByteSize(p.free.memory_bytes), ByteSize(p.capacity.memory_bytes))
            } else {
                "-".into()
            },
            labels.join(","),
            ago(Duration::from_millis(p.since_ms)),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}
