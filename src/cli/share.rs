//! `shoal share FILE`: store a file and serve it to the cluster; prints its content id.

use super::progress::bytes_bar;
use anyhow::Context;
use shoal_api::client::Client;
use shoal_types::SharedContent;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The file to share.
    file: PathBuf,
    /// Print JSON instead of the id alone.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let f = tokio::fs::File::open(&args.file).await.with_context(|| format!("cannot open {}", args.file.display()))?;
    let size = f.metadata().await?.len();
    let name = args.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let pb = bytes_bar(size, "sharing");
    let pb2 = pb.clone();
    let r: SharedContent = client
        .upload(hyper::Method::POST, "/v1/content", f, &[("x-shoal-name", name)], move |n| pb2.set_position(n))
        .await?;
    pb.finish_and_clear();
    if args.json {
        super::output::print_json(&r)?;
    } else {
        println!("{}", r.id);
        eprintln!(
            "{} ({}){}; get it on any peer with: shoal get {} -o {}",
            shoal_types::ByteSize(r.size),
            r.sha256,
            if r.existed { ", already shared" } else { "" },
            r.id,
            args.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "FILE".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}
