//! Images from OCI registries.
//!
//! - [`reference`]: references as Docker normalises them.
//! - [`logins`]: `shoal registry login`'s credentials (0600, never sent to peers), else the
//!   user's Docker config, else anonymous.
//! - [`upstream`]: the distribution API client (`oci-client`): manifests kept byte for byte, an
//!   index resolved to this peer's platform, blobs streamed into the content store with resume.
//! - [`cluster`]: each blob fetched from the registry once per cluster, by the peer rendezvous
//!   hashing picks; everyone else swarms it.
//! - [`mirror`]: Shoal as a read-only registry mirror for containerd, Docker, Podman, skopeo.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cluster;
pub mod error;
pub mod logins;
pub mod mirror;
pub mod reference;
pub mod upstream;

pub use cluster::{Cluster, MayResolve, PullProgress, Source};
pub use error::RegistryError;
pub use logins::Logins;
pub use reference::ImageRef;
pub use upstream::{Platform, Upstream};

use std::time::Duration;

/// The registry host a login is for, as references name it: `docker.io` for Docker Hub
/// (however it is spelled), else `HOST[:PORT]` as given, a scheme or path dropped. A bare word
/// (`myhost`) would be a Docker Hub repository in a reference, so it is refused rather than
/// quietly saved for Docker Hub.
pub fn login_host(given: &str) -> Result<String, RegistryError> {
    let host = given.trim();
    let host = host.strip_prefix("https://").or_else(|| host.strip_prefix("http://")).unwrap_or(host);
    let host = host.split('/').next().unwrap_or_default();
    let bad = |why: &str| RegistryError::BadReference { reference: given.to_string(), why: why.to_string() };
    if host.is_empty() {
        return Err(bad("no registry host given: use HOST[:PORT], or docker.io for Docker Hub"));
    }
    if matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        return Ok("docker.io".into());
    }
    if !(host.contains(['.', ':']) || host == "localhost") {
        return Err(bad(&format!(
            "{host} is not a registry host (a name without a dot or a port is a Docker Hub repository): \
             use {host}.DOMAIN, {host}:PORT, or docker.io for Docker Hub"
        )));
    }
    // The same parse references get, so the login is found when one names this host.
    let r = ImageRef::parse(&format!("{host}/x"))?;
    Ok(r.registry().to_string())
}

/// Checks `username`/`password` against `registry` before they are saved: a wrong password is
/// an error now, not at the next pull.
pub async fn check_login(
    upstream: &Upstream,
    registry: &str,
    username: &str,
    password: &str,
) -> Result<(), RegistryError> {
    let probe = ImageRef::parse(&format!("{registry}/library/shoal-login-check"))?;
    let scheme = if probe.plain_http(&[]) || upstream.is_insecure(registry) { "http" } else { "https" };
    let unreachable =
        |e: reqwest::Error| RegistryError::Unreachable { registry: registry.into(), detail: e.to_string() };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(unreachable)?;
    // Docker Hub's API is at index.docker.io, not docker.io.
    let url = format!("{scheme}://{}/v2/", probe.oci().resolve_registry());
    let res = http.get(&url).basic_auth(username, Some(password)).send().await.map_err(unreachable)?;
    let unauthorized = || RegistryError::Unauthorized { registry: registry.into(), what: format!("user {username}") };
    match res.status().as_u16() {
        200..=299 => Ok(()),
        401 => {
            let challenge = res
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !challenge.starts_with("bearer") {
                return Err(unauthorized());
            }
            // A token service: ask it for a pull token with these credentials.
            let auth = oci_client::secrets::RegistryAuth::Basic(username.into(), password.into());
            let client = oci_client::Client::new(oci_client::client::ClientConfig {
                protocol: if scheme == "http" {
                    oci_client::client::ClientProtocol::Http
                } else {
                    oci_client::client::ClientProtocol::Https
                },
                ..Default::default()
            });
            match client.auth(probe.oci(), &auth, oci_client::RegistryOperation::Pull).await {
                Ok(_) => Ok(()),
                Err(_) => Err(unauthorized()),
            }
        }
        code => {
            Err(RegistryError::Registry { registry: registry.into(), message: format!("GET {url} answered {code}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::login_host;

    #[test]
    fn a_login_names_a_registry_host_or_is_refused() {
        for (given, want) in [
            ("docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("registry.example:5000", "registry.example:5000"),
            ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
            ("localhost:5000", "localhost:5000"),
            ("ghcr.io", "ghcr.io"),
        ] {
            assert_eq!(login_host(given).unwrap(), want, "{given}");
        }
        for given in ["myhost", "", "  ", "https://"] {
            let e = login_host(given).unwrap_err().to_string();
            assert!(e.contains("docker.io"), "{given}: {e}");
        }
    }
}
