//! Image references as Docker normalises them: `nginx` → `docker.io/library/nginx:latest`,
//! `registry.example:5000/team/app@sha256:…` kept with its digest.
//!
//! The grammar and the normalisation are the distribution project's, through `oci-spec`'s
//! [`oci_client::Reference`]; this type adds what Shoal needs on top: the key an image is stored
//! under, whether the registry is reached over plain HTTP, and the bounds a peer's request is
//! checked against.

use crate::error::RegistryError;
use oci_client::Reference;
use std::fmt;
use std::net::IpAddr;

/// Longest reference accepted (Docker's name limit plus a tag or digest).
pub const MAX_REFERENCE_LEN: usize = 512;

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parses and normalises `text` (`nginx:1.27`, `host:5000/a/b@sha256:…`).
    pub fn parse(text: &str) -> Result<ImageRef, RegistryError> {
        let bad = |why: String| RegistryError::BadReference { reference: text.to_string(), why };
        if text.is_empty() || text.len() > MAX_REFERENCE_LEN {
            return Err(bad(format!("a reference is 1 to {MAX_REFERENCE_LEN} characters")));
        }
        let inner: Reference = text.parse().map_err(|e: oci_client::ParseError| bad(e.to_string()))?;
        if let Some(d) = inner.digest()
            && d.parse::<shoal_image::Digest>().is_err()
        {
            return Err(bad(format!("only sha256 digests are supported, not {d}")));
        }
        Ok(ImageRef { inner })
    }

    /// The registry host as written after normalisation (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path (`library/nginx`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, if the reference has one (a digest-only reference has none).
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The manifest digest, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The same repository at `digest` (tag dropped).
    pub fn at_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            inner: Reference::with_digest(
                self.registry().to_string(),
                self.repository().to_string(),
                digest.to_string(),
            ),
        }
    }

    /// The same repository with no tag or digest named: what a blob request is made against.
    pub fn repository_ref(&self) -> ImageRef {
        ImageRef {
            inner: Reference::with_tag(self.registry().to_string(), self.repository().to_string(), "latest".into()),
        }
    }

    /// The key the image is stored and advertised under: `REGISTRY/REPO:TAG`, or
    /// `REGISTRY/REPO@DIGEST` when a digest is pinned (a tag beside it is only a label).
    pub fn key(&self) -> String {
        match self.digest() {
            Some(d) => format!("{}/{}@{d}", self.registry(), self.repository()),
            None => self.to_string(),
        }
    }

    /// The oci-client reference.
    pub fn oci(&self) -> &Reference {
        &self.inner
    }

    /// Whether the registry is spoken to over plain HTTP: a loopback address or `localhost`,
    /// as Docker does, or a host in `insecure` (`--insecure-registry`).
    pub fn plain_http(&self, insecure: &[String]) -> bool {
        let host = self.registry();
        if insecure.iter().any(|h| h == host) {
            return true;
        }
        self.is_loopback()
    }

    /// Whether the registry is named as the machine's own (`localhost`, 127.0.0.0/8, `::1`,
    /// `::ffff:127.x`, `0.0.0.0`): each machine's own, so only peers on the same machine share
    /// it. (A name that resolves to a loopback address is found by resolving it.)
    pub fn is_loopback(&self) -> bool {
        let name = host_without_port(self.registry()).to_ascii_lowercase();
        name == "localhost" || name.ends_with(".localhost") || name.parse::<IpAddr>().is_ok_and(is_local_ip)
    }
}

/// A loopback or unspecified address (which connects to this machine), IPv4-mapped too.
pub fn is_local_ip(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified()
}

/// `host:port` → `host` (an IPv6 literal keeps its brackets off).
fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
}

impl fmt::Display for ImageRef {
    /// The normalised whole reference: the key the image is stored and advertised under.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.whole())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("team/app:v1", "docker.io/team/app:v1"),
            ("docker.io/library/nginx:1.27", "docker.io/library/nginx:1.27"),
            ("127.0.0.1:5000/team/app:v2", "127.0.0.1:5000/team/app:v2"),
            ("localhost/app", "localhost/app:latest"),
        ];
        for (given, want) in cases {
            assert_eq!(ImageRef::parse(given).unwrap().to_string(), want, "{given}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("registry.example:5000/team/app@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.tag(), None);
        assert_eq!(r.registry(), "registry.example:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.to_string(), format!("registry.example:5000/team/app@{d}"));
        assert_eq!(r.key(), r.to_string());
        // Docker's pinned form: the tag stays a label, the digest decides.
        let pinned = ImageRef::parse(&format!("127.0.0.1:5000/team/app:v1@{d}")).unwrap();
        assert_eq!(pinned.tag(), Some("v1"));
        assert_eq!(pinned.key(), format!("127.0.0.1:5000/team/app@{d}"));
        assert_eq!(ImageRef::parse("nginx:1.27").unwrap().key(), "docker.io/library/nginx:1.27");
    }

    #[test]
    fn bad_references_say_why() {
        for bad in ["", "team/App", "a:b:c:d", "app@sha512:abcd", "app@sha256:short", &"a".repeat(600)] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let plain = |r: &str, insecure: &[&str]| {
            let list: Vec<String> = insecure.iter().map(|s| s.to_string()).collect();
            ImageRef::parse(r).unwrap().plain_http(&list)
        };
        assert!(plain("127.0.0.1:5000/a", &[]));
        assert!(plain("127.9.9.9:5000/a", &[]));
        assert!(plain("localhost:5000/a", &[]));
        assert!(!plain("nginx", &[]));
        assert!(!plain("10.0.0.1:5000/a", &[]));
        assert!(plain("10.0.0.1:5000/a", &["10.0.0.1:5000"]));
        assert!(!plain("10.0.0.1:5000/a", &["10.0.0.1"]));
    }

    #[test]
    fn every_spelling_of_this_machine_is_loopback() {
        let local = |r: &str| ImageRef::parse(r).unwrap().is_loopback();
        for r in ["127.0.0.1:5000/a", "127.0.0.2:5000/a", "localhost:5000/a", "reg.localhost:5000/a", "0.0.0.0:5000/a"]
        {
            assert!(local(r), "{r}");
        }
        for r in ["nginx", "10.0.0.1:5000/a", "registry.example/a"] {
            assert!(!local(r), "{r}");
        }
        // IPv6 literals (where ::ffff:127.0.0.1 would hide) are not references at all.
        assert!(ImageRef::parse("[::ffff:127.0.0.1]:5000/a").is_err());
        assert!(super::is_local_ip("::ffff:127.0.0.1".parse().unwrap()));
        assert!(super::is_local_ip("::".parse().unwrap()));
    }
}
