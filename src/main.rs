//! `shoal`: the agent (`shoal agent`) and the CLI that talks to it.
//!
//! This file only parses arguments, picks a runtime and maps errors to exit codes; each verb
//! lives in `cli/<verb>.rs`.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Some(code) = cli.pre_runtime() {
        return code;
    }
    let rt = if cli.needs_multi_thread() {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
