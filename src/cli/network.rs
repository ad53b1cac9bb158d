//! `shoal network`: this peer's subnet and transport, each remote peer's route, each service's
//! address.

use super::output::{Table, ago, print_json};
use shoal_api::client::Client;
use shoal_types::NetworkInfo;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn bytes(n: u64) -> String {
    shoal_types::ByteSize(n).to_string()
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let n: NetworkInfo = client.get("/v1/network").await?;
    if args.json {
        print_json(&n)?;
        return Ok(ExitCode::SUCCESS);
    }
    let subnet = n.subnet.as_deref().unwrap_or("(not claimed yet)");
    println!("subnet:     {subnet} (gateway and DNS {})", n.gateway.as_deref().unwrap_or("-"));
    println!("transport:  {} on UDP {} (container MTU {})", n.transport, n.port, n.mtu);
    println!("pools:      containers {}, services {}", n.pool, n.service_pool);
    if let Some(k) = &n.public_key {
        println!("public key: {k}");
    }
    if let Some(e) = &n.error {
        println!("error:      {e}");
    }
    println!();
    let encrypted = n.transport == "encrypted";
    let mut t = if encrypted {
        Table::new(&["PEER", "SUBNET", "ENDPOINT", "HANDSHAKE", "RECEIVED", "SENT"])
    } else {
        Table::new(&["PEER", "SUBNET", "ENDPOINT"])
    };
    for p in &n.peers {
        let name = if p.name.is_empty() { super::output::short_id(&p.id) } else { p.name.clone() };
        let mut row = vec![name, p.subnet.clone(), p.endpoint.clone()];
        if encrypted {
            row.push(p.last_handshake_secs.map_or("never".into(), |s| format!("{} ago", ago(Duration::from_secs(s)))));
            row.push(bytes(p.rx_bytes));
            row.push(bytes(p.tx_bytes));
        }
        t.row(row);
    }
    t.print();
    if !n.services.is_empty() {
        println!();
        let mut t = Table::new(&["SERVICE", "ADDRESS", "PORTS", "REPLICAS"]);
        for s in &n.services {
            let backends = if s.backends.is_empty() { "(none running)".to_string() } else { s.backends.join(", ") };
            t.row(vec![s.name.clone(), s.vip.clone(), s.ports.join(", "), backends]);
        }
        t.print();
    }
    Ok(ExitCode::SUCCESS)
}
