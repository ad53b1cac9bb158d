//! `shoal keygen`: create an operator key, or derive a worker key from one.

use anyhow::{Context, bail};
use shoal_overlay::KeyFile;
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
    /// Derive a worker key from this operator key: the same cluster, but a peer that holds it
    /// runs work and serves content while it cannot change services.
    #[arg(long, value_name = "OPERATOR_KEY")]
    worker: Option<PathBuf>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (key, what) = match &args.worker {
        Some(op) => {
            let op = KeyFile::load(op).with_context(|| format!("reading the operator key {}", op.display()))?;
            (op.worker().map_err(anyhow::Error::msg)?, "worker key")
        }
        None => (KeyFile::generate(), "operator key"),
    };
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
            let hint = if args.worker.is_some() {
                "give it to peers that run work but change no services; start them with --cluster-key"
            } else {
                "copy it to every operator peer and start them with --cluster-key; make worker keys with `shoal keygen --worker FILE -o worker.key`"
            };
            eprintln!("wrote {what} {} (cluster fingerprint {}); {hint}", path.display(), key.cluster.fingerprint());
        }
        None => print!("{}", key.to_file_text()),
    }
    Ok(ExitCode::SUCCESS)
}
