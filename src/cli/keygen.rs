//! `shoal keygen`: create a cluster key.

use anyhow::{Context, bail};
use shoal_overlay::ClusterKey;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Write the key to this file (mode 0600) instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = ClusterKey::generate();
    match args.output {
        Some(path) => {
            if path.exists() && !args.force {
                bail!(
                    "{} already exists; a new key would lock its peers out. Use --force to replace it",
                    path.display()
                );
            }
            shoal_overlay::keys::write_secret(&path, key.to_file_text().as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote cluster key {} (fingerprint {}); copy it to every peer and start them with --cluster-key",
                path.display(),
                key.fingerprint()
            );
        }
        None => print!("{}", key.to_file_text()),
    }
    Ok(ExitCode::SUCCESS)
}
