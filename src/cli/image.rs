//! `shoal image import|ls|pull|export|rm`: OCI images, shared peer to peer.

use super::content::expect_no_content;
use super::lifecycle::encode;
use super::output::{Table, print_json};
use super::progress::bytes_bar;
use anyhow::Context;
use shoal_api::client::Client;
use shoal_types::{ByteSize, ImageInfo, PullRequest, TransferInfo};
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
    /// Fetch an image another peer holds; layers come from every peer that has them.
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
            let pb = bytes_bar(0, "pulling");
            let req = PullRequest { reference: reference.clone() };
            let pull = client.send_json::<_, ImageInfo>(hyper::Method::POST, "/v1/images/pull", &req);
            tokio::pin!(pull);
            let img = loop {
                tokio::select! {
                    r = &mut pull => break r?,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        if let Ok(ts) = client.get::<Vec<TransferInfo>>("/v1/transfers").await {
                            pb.set_length(ts.iter().map(|t| t.size).sum());
                            pb.set_position(ts.iter().map(|t| t.have_bytes).sum());
                            pb.set_message(format!("{} blobs", ts.len()));
                        }
                    }
                }
            };
            pb.finish_and_clear();
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
