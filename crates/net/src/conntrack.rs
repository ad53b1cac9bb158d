//! Conntrack clean-up, with the `conntrack` tool (package conntrack), as kube-proxy did for
//! years. UDP has no end of connection: a flow to a service address keeps its NAT binding to
//! a replica that is gone until the entry times out, so when a backend leaves a service its
//! UDP entries are deleted; and when a container is removed, every entry to or from its
//! address goes (nothing stale is left for the next container given that address). TCP is
//! left alone: a reset or the timeout ends it.

use std::net::Ipv4Addr;

/// Why the tool could not run.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// Not installed.
    #[error("`conntrack` (package conntrack) is not installed; install it with: apt-get install conntrack")]
    Missing,
    /// It failed.
    #[error("conntrack {args}: {message}")]
    Failed {
        /// Its arguments.
        args: String,
        /// What it said.
        message: String,
    },
}

async fn delete(args: &[&str]) -> Result<(), ConntrackError> {
    let out = tokio::process::Command::new("conntrack")
        .arg("-D")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ConntrackError::Missing
            } else {
                ConntrackError::Failed { args: args.join(" "), message: e.to_string() }
            }
        })?;
    // Exit status 1 with "0 flow entries" means there was nothing to delete.
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !text.contains("0 flow entries") {
        return Err(ConntrackError::Failed { args: args.join(" "), message: text.trim().to_string() });
    }
    Ok(())
}

/// Deletes UDP entries whose replies come from `backend` (a replica no longer behind a
/// service).
pub async fn forget_udp_backend(backend: Ipv4Addr) -> Result<(), ConntrackError> {
    delete(&["-p", "udp", "--reply-src", &backend.to_string()]).await
}

/// Deletes every entry to or from `ip` (a removed container's address).
pub async fn forget_address(ip: Ipv4Addr) -> Result<(), ConntrackError> {
    let ip = ip.to_string();
    delete(&["--orig-src", &ip]).await?;
    delete(&["--orig-dst", &ip]).await
}

/// Lists entries mentioning `ip` (tests and diagnostics).
pub async fn list(ip: Ipv4Addr) -> Result<String, ConntrackError> {
    let out = tokio::process::Command::new("conntrack")
        .args(["-L", "--orig-dst", &ip.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|_| ConntrackError::Missing)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
