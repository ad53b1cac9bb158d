//! `shoal content ls|rm|pin`: the blobs in this peer's store.

use super::output::{Table, ago, print_json};
use shoal_api::client::Client;
use shoal_types::{ByteSize, ContentInfo};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// List content (complete and partial).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove content from this peer (refused while an image uses it).
    Rm { id: String },
    /// Pin content so it is never evicted to stay under the quota.
    Pin {
        id: String,
        /// Unpin instead.
        #[arg(long)]
        unpin: bool,
    },
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    match args.cmd {
        Cmd::Ls { json } => {
            let list: Vec<ContentInfo> = client.get("/v1/content").await?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
                as u64;
            let mut t = Table::new(&["ID", "SIZE", "STATE", "PINNED", "USED", "NAME / IMAGES"]);
            for c in list {
                let state = if c.state == "complete" {
                    "complete".to_string()
                } else {
                    format!("partial {:.0}%", c.have_bytes as f64 * 100.0 / c.size.max(1) as f64)
                };
                let what = if c.images.is_empty() { c.name.clone().unwrap_or_default() } else { c.images.join(",") };
                t.row(vec![
                    c.id.chars().take(15).collect(),
                    ByteSize(c.size).to_string(),
                    state,
                    if c.pinned { "yes" } else { "" }.into(),
                    ago(std::time::Duration::from_millis(now.saturating_sub(c.last_used_ms))) + " ago",
                    what,
                ]);
            }
            t.print();
        }
        Cmd::Rm { id } => {
            expect_no_content(client.raw(hyper::Method::DELETE, &format!("/v1/content/{id}"), None).await?)?;
            eprintln!("removed {id}");
        }
        Cmd::Pin { id, unpin } => {
            let m = if unpin { hyper::Method::DELETE } else { hyper::Method::PUT };
            expect_no_content(client.raw(m, &format!("/v1/content/{id}/pin"), None).await?)?;
            eprintln!("{} {id}", if unpin { "unpinned" } else { "pinned" });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Turns an error answer of a no-content request into its message.
pub(crate) fn expect_no_content((status, body): (u16, bytes::Bytes)) -> anyhow::Result<()> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let msg = serde_json::from_slice::<shoal_types::ErrorBody>(&body)
        .map(|b| b.error)
        .unwrap_or_else(|_| format!("the agent answered {status}"));
    anyhow::bail!("{msg}")
}
