//! `shoal image import|ls|pull|export|rm`: OCI images, shared peer to peer.

use super::content::expect_no_content;
use super::lifecycle::encode;
use super::output::{Table, print_json};
use super::progress::bytes_bar;
use anyhow::Context;
use shoal_api::client::Client;
use shoal_types::{ByteSize, ImageInfo, PullRequest, PullStatus, TransferInfo};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Import `docker save` output, an OCI archive, or a rootfs tarball (with --name).
    Import {
        file: PathBuf,
        /// NAME:TAG (required for a rootfs tarball; overrides the archive's own name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List images on this peer and which peers hold them.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Fetch an image: from the peers that hold it, else from its registry (`nginx:1.27` is
    /// docker.io/library/nginx:1.27, as with docker); each layer is fetched from the registry
    /// once per cluster and swarmed between the peers.
    Pull { reference: String },
    /// Write an image as an OCI archive (skopeo, podman and docker load it).
    Export {
        reference: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Remove an image (and its layers no other image uses).
    Rm { reference: String },
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    match args.cmd {
        Cmd::Import { file, name } => {
            let f = tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
            let size = f.metadata().await?.len();
            let path = match &name {
                Some(n) => format!("/v1/images/import?name={}", encode(n)),
                None => "/v1/images/import".to_string(),
            };
            let pb = bytes_bar(size, "importing");
            let pb2 = pb.clone();
            let img: ImageInfo =
                client.upload(hyper::Method::POST, &path, f, &[], move |n| pb2.set_position(n)).await?;
            pb.finish_and_clear();
            println!("{} {}", img.reference, img.digest);
        }
        Cmd::Ls { json } => {
            let list: Vec<ImageInfo> = client.get("/v1/images").await?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["IMAGE", "DIGEST", "SIZE", "LAYERS", "HELD BY"]);
            for i in list {
                t.row(vec![
                    i.reference,
                    i.digest.chars().take(19).collect(),
                    ByteSize(i.size).to_string(),
                    i.layers.to_string(),
                    i.holders.join(","),
                ]);
            }
            t.print();
        }
        Cmd::Pull { reference } => {
            let img = pull_with_progress(client, &reference).await?;
            println!("{} {}", img.reference, img.digest);
        }
        Cmd::Export { reference, output } => {
            let path = format!("/v1/images/export?reference={}", encode(&reference));
            super::get::download_to_file(client, &path, &output, "exporting").await?;
            eprintln!("wrote {}", output.display());
        }
        Cmd::Rm { reference } => {
            expect_no_content(
                client
                    .raw(hyper::Method::DELETE, &format!("/v1/images?reference={}", encode(&reference)), None)
                    .await?,
            )?;
            eprintln!("removed {reference}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Pulls `reference`, drawing a bar per layer (bytes, rate, and whether it comes from the
/// peers or the registry) while the agent works.
pub(crate) async fn pull_with_progress(client: &Client, reference: &str) -> anyhow::Result<ImageInfo> {
    let multi = indicatif::MultiProgress::new();
    let mut bars: std::collections::HashMap<String, indicatif::ProgressBar> = Default::default();
    let mut swarm: Option<indicatif::ProgressBar> = None;
    let req = PullRequest { reference: reference.to_string() };
    let pull = client.send_json::<_, ImageInfo>(hyper::Method::POST, "/v1/images/pull", &req);
    tokio::pin!(pull);
    let img = loop {
        tokio::select! {
            r = &mut pull => break r,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let pulls = client.get::<Vec<PullStatus>>("/v1/images/pulls").await.unwrap_or_default();
                for b in pulls.iter().flat_map(|p| &p.blobs) {
                    let bar = bars.entry(b.digest.clone()).or_insert_with(|| {
                        let short = b.digest.trim_start_matches("sha256:").chars().take(12).collect::<String>();
                        multi.add(bytes_bar(b.size, &short))
                    });
                    bar.set_position(b.done);
                    bar.set_message(b.source.clone().unwrap_or_else(|| "waiting".into()));
                    if b.finished && !bar.is_finished() {
                        bar.finish();
                    }
                }
                if bars.is_empty() {
                    // An image only peers hold: one bar over its transfers.
                    if let Ok(ts) = client.get::<Vec<TransferInfo>>("/v1/transfers").await {
                        let bar = swarm.get_or_insert_with(|| multi.add(bytes_bar(0, "pulling")));
                        bar.set_length(ts.iter().map(|t| t.size).sum());
                        bar.set_position(ts.iter().map(|t| t.have_bytes).sum());
                        bar.set_message(format!("{} blobs from peers", ts.len()));
                    }
                }
            }
        }
    };
    let _ = multi.clear();
    Ok(img?)
}
