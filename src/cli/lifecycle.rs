//! `shoal stop | kill | rm | inspect`: one container each, by name or id prefix.

use super::output::print_json;
use shoal_api::client::Client;
use shoal_types::ContainerInfo;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    time: u64,
    /// Container names or id prefixes.
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct KillArgs {
    /// Signal to send (name or number).
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    /// Container names or id prefixes.
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RmArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    force: bool,
    /// Container names or id prefixes.
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// Container name or id prefix.
    container: String,
}

/// Percent-encodes a path segment.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `op` for each container, printing its name; fails (after trying all) if any failed.
async fn each<F, Fut>(names: &[String], op: F) -> anyhow::Result<ExitCode>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut failed = false;
    for n in names {
        match op(n.clone()).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("error: {n}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

pub(crate) async fn stop(args: StopArgs, client: &Client) -> anyhow::Result<ExitCode> {
    each(&args.containers, |n| async move {
        let path = format!("/v1/containers/{}/stop?t={}", encode(&n), args.time);
        let _: ContainerInfo = client.send_json(hyper::Method::POST, &path, &()).await?;
        Ok(())
    })
    .await
}

pub(crate) async fn kill(args: KillArgs, client: &Client) -> anyhow::Result<ExitCode> {
    let sig = encode(&args.signal);
    each(&args.containers, |n| {
        let sig = sig.clone();
        async move {
            let path = format!("/v1/containers/{}/kill?signal={sig}", encode(&n));
            let _: ContainerInfo = client.send_json(hyper::Method::POST, &path, &()).await?;
            Ok(())
        }
    })
    .await
}

pub(crate) async fn rm(args: RmArgs, client: &Client) -> anyhow::Result<ExitCode> {
    each(&args.containers, |n| async move {
        let path = format!("/v1/containers/{}?force={}", encode(&n), args.force);
        super::content::expect_no_content(client.raw(hyper::Method::DELETE, &path, None).await?)
    })
    .await
}

pub(crate) async fn inspect(args: InspectArgs, client: &Client) -> anyhow::Result<ExitCode> {
    let info: ContainerInfo = client.get(&format!("/v1/containers/{}", encode(&args.container))).await?;
    print_json(&info)?;
    Ok(ExitCode::SUCCESS)
}
