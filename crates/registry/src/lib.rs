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
    let url = format!("{scheme}://{registry}/v2/");
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
