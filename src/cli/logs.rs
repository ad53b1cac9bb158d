//! `shoal logs [-f] [--tail N] NAME`: a container's output, stdout to stdout, stderr to stderr.

use shoal_api::client::Client;
use shoal_types::LogEntry;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Keep printing new output until the container's run is over.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, short = 'n')]
    tail: Option<usize>,
    /// Container name or id prefix.
    container: String,
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/containers/{}/logs?follow={}", super::lifecycle::encode(&args.container), args.follow);
    if let Some(n) = args.tail {
        path.push_str(&format!("&tail={n}"));
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    client
        .stream_lines(hyper::Method::GET, &path, None::<&()>, |l: LogEntry| {
            let w: &mut dyn Write = if l.stream == "stderr" { &mut err } else { &mut out };
            let _ = w.write_all(l.text.as_bytes());
            let _ = w.flush();
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
