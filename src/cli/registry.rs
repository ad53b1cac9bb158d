//! `shoal registry login|logout`: credentials for pulling from private registries.

use anyhow::Context;
use shoal_api::client::Client;
use shoal_types::RegistryLogin;
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Save a login for a registry on this peer: the password is read from standard input
    /// (`echo "$PW" | shoal registry login HOST -u USER`), checked with the registry, and kept
    /// in a 0600 file in the data dir; it is never sent to other peers.
    Login {
        /// HOST[:PORT] (`docker.io` for Docker Hub).
        registry: String,
        #[arg(short, long)]
        username: String,
    },
    /// Forget this peer's saved login for a registry.
    Logout { registry: String },
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    match args.cmd {
        Cmd::Login { registry, username } => {
            if std::io::stdin().is_terminal() {
                eprint!("password for {username} at {registry} (then Enter): ");
            }
            let mut password = String::new();
            std::io::stdin().lock().read_line(&mut password).context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            if password.is_empty() {
                anyhow::bail!(
                    "no password on standard input: pipe it in, e.g. `echo \"$PW\" | shoal registry login {registry} -u {username}`"
                );
            }
            let req = RegistryLogin { registry: registry.clone(), username, password };
            super::content::expect_no_content(
                client.raw(hyper::Method::POST, "/v1/registries/login", Some(serde_json::to_vec(&req)?)).await?,
            )?;
            eprintln!("login for {registry} saved on this peer");
        }
        Cmd::Logout { registry } => {
            let body = serde_json::json!({ "registry": registry });
            super::content::expect_no_content(
                client.raw(hyper::Method::POST, "/v1/registries/logout", Some(serde_json::to_vec(&body)?)).await?,
            )?;
            eprintln!("login for {registry} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
