//! `shoal get ID [-o FILE]`: fetch content from the peers that hold it, with a progress bar.
//!
//! The agent does the fetching (and keeps the blob, serving it onward); if this command is
//! interrupted the agent carries on, and running it again picks up where it is.

use super::progress::bytes_bar;
use anyhow::{Context, bail};
use shoal_api::client::Client;
use shoal_types::TransferInfo;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The content id (as `shoal share` printed it).
    id: String,
    /// Also write the content to this file; `-` streams it to standard output in order while
    /// the pieces arrive (`shoal get ID -o - | mpv -`).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    if args.output.as_deref() == Some(std::path::Path::new("-")) {
        // The agent fetches and streams each verified piece as it arrives, the ones just ahead
        // of what has been written first.
        let mut out = tokio::io::stdout();
        client.download(&format!("/v1/content/{}", args.id), &mut out, |_, _| {}).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let t: TransferInfo = client.send_json(hyper::Method::POST, &format!("/v1/content/{}/fetch", args.id), &()).await?;
    let pb = bytes_bar(t.size, "fetching");
    let id = t.id.clone();
    loop {
        let p: TransferInfo = client.get(&format!("/v1/content/{id}/progress")).await?;
        pb.set_length(p.size);
        pb.set_position(p.have_bytes);
        pb.set_message(format!("{} peer{}", p.peers, if p.peers == 1 { "" } else { "s" }));
        match p.state.as_str() {
            "complete" => break,
            "failed" => {
                pb.abandon();
                bail!("{}", p.error.unwrap_or_else(|| "the download failed".into()));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    pb.finish_and_clear();
    let Some(out) = args.output else {
        eprintln!("{id} is in this peer's store (write it out with -o FILE)");
        return Ok(ExitCode::SUCCESS);
    };
    download_to_file(client, &format!("/v1/content/{id}"), &out, "writing").await?;
    eprintln!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Streams `path` from the agent into `out` with a progress bar: written beside it, synced,
/// then renamed, so a cut never leaves half a file.
pub(crate) async fn download_to_file(
    client: &Client,
    path: &str,
    out: &std::path::Path,
    label: &str,
) -> anyhow::Result<()> {
    let tmp = out.with_extension("shoal-partial");
    let mut f = tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot create {}", tmp.display()))?;
    let pb = bytes_bar(0, label);
    let pb2 = pb.clone();
    let r = client
        .download(path, &mut f, move |n, total| {
            if let Some(t) = total {
                pb2.set_length(t);
            }
            pb2.set_position(n);
        })
        .await;
    pb.finish_and_clear();
    if let Err(e) = r {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e.into());
    }
    f.sync_all().await?;
    tokio::fs::rename(&tmp, out).await.with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
