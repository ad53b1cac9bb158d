//! What can go wrong with services: a spec that cannot be run ([`SpecError`], the user's to
//! fix), a request that does not fit the current state, a failure to keep the desired state on
//! disk, and the effects the actor depends on ([`EffectError`]).

use std::path::PathBuf;

/// Longest service name: `NAME.SLOT` must stay a valid container name and a DNS label.
pub const MAX_NAME: usize = 48;
/// Most replicas one replicated service may ask for.
pub const MAX_REPLICAS: u32 = 10_000;

/// Why a spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The name breaks the naming rule.
    #[error(
        "service name {0:?}: use 1-{MAX_NAME} letters, digits, '-' or '_', starting with a letter or digit (it becomes a container name and a DNS name)"
    )]
    Name(String),
    /// No image given.
    #[error("a service needs an image (like `shoal service create --name web nginx:1.27`)")]
    NoImage,
    /// Too many replicas.
    #[error("{asked} replicas asked; a service may have at most {MAX_REPLICAS}")]
    TooManyReplicas {
        /// Replicas asked for.
        asked: u32,
    },
    /// An environment entry that is not `KEY=VALUE`.
    #[error(transparent)]
    Env(#[from] shoal_types::SpecParseError),
    /// Bad autoscale bounds.
    #[error("--autoscale needs 1 <= MIN <= MAX <= {MAX_REPLICAS} and a --target-cpu above 0")]
    Autoscale,
    /// A global service cannot autoscale.
    #[error("a global service runs one replica on every matching peer; it cannot --autoscale")]
    GlobalAutoscale,
    /// A memory limit below what a container needs.
    #[error("--memory is below the minimum of 6 MiB")]
    MemoryTooSmall,
    /// A published port bound to one address.
    #[error(
        "-p {0}: a service's published port answers on every peer's addresses; drop the address (IP:) or use `shoal run` for one peer"
    )]
    PortAddress(String),
    /// The same host port twice.
    #[error("-p {0}: the host port is published twice")]
    PortTwice(String),
}

/// Why a services request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The spec is refused (400).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No such service (404).
    #[error("no service {0}; see `shoal service ls`")]
    NotFound(String),
    /// The service exists already (409).
    #[error("service {0} exists; change it with `shoal service update` or `shoal service scale`")]
    Exists(String),
    /// Another service publishes the port (409).
    #[error("port {port} is already published by service {by}; pick another host port")]
    PortTaken {
        /// The port, `8080/tcp`.
        port: String,
        /// The service that has it.
        by: String,
    },
    /// A global service has no replica count (409).
    #[error("service {0} is global: it runs one replica on every matching peer and has no replica count to scale")]
    Global(String),
    /// The body names another service than the path (400).
    #[error("the spec names service {body}, the request {path}")]
    NameMismatch {
        /// Name in the spec.
        body: String,
        /// Name in the request.
        path: String,
    },
    /// The desired state could not be written to disk (507 when the disk is full, else 500).
    #[error("cannot save the services to {path}: {source}")]
    Save {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// This peer holds a worker key (403).
    #[error(
        "this peer holds a worker key: only a peer started with the cluster's operator key (made by `shoal keygen -o cluster.key`) changes services; run the command on an operator peer"
    )]
    NotOperator,
    /// A revocation not signed by this cluster's operator key (403).
    #[error(
        "the revocation is not signed by this cluster's operator key, or names this peer itself (revoke a peer from another operator peer)"
    )]
    BadRevocation,
    /// The services actor has stopped (503).
    #[error("the services subsystem has stopped (the agent is shutting down)")]
    Stopped,
}

impl ServiceError {
    /// Whether the disk was full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, ServiceError::Save { source, .. } if source.raw_os_error() == Some(28))
    }
}

/// A failed effect: the actor logs it and tries again next round.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    /// The overlay (membership, records, streams) failed or has stopped.
    #[error("the overlay: {0}")]
    Overlay(String),
    /// The container runtime failed.
    #[error("the container runtime: {0}")]
    Runtime(String),
    /// A peer did not answer, or answered wrong.
    #[error("peer {peer}: {reason}")]
    Peer {
        /// The peer.
        peer: String,
        /// What happened.
        reason: String,
    },
}

/// Checks a spec as the API and every merge from a peer do.
pub fn check_spec(spec: &shoal_types::ServiceSpec) -> Result<(), SpecError> {
    let name = &spec.name;
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if !ok {
        return Err(SpecError::Name(name.clone()));
    }
    if spec.image.trim().is_empty() {
        return Err(SpecError::NoImage);
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(SpecError::TooManyReplicas { asked: spec.replicas });
    }
    for e in &spec.env {
        shoal_types::container::check_env(e)?;
    }
    if let Some(a) = spec.autoscale {
        if spec.mode == shoal_types::ServiceMode::Global {
            return Err(SpecError::GlobalAutoscale);
        }
        if a.min == 0 || a.min > a.max || a.max > MAX_REPLICAS || a.target_cpu_percent == 0 {
            return Err(SpecError::Autoscale);
        }
    }
    if spec.memory_bytes != 0 && spec.memory_bytes < 6 << 20 {
        return Err(SpecError::MemoryTooSmall);
    }
    for (i, p) in spec.ports.iter().enumerate() {
        if p.host_ip.is_some() {
            return Err(SpecError::PortAddress(p.to_string()));
        }
        if spec.ports[..i].iter().any(|q| (q.protocol, q.host_port) == (p.protocol, p.host_port)) {
            return Err(SpecError::PortTwice(p.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::ServiceSpec;

    #[test]
    fn specs_are_checked() {
        let ok = ServiceSpec { name: "web-1".into(), image: "app".into(), replicas: 3, ..Default::default() };
        assert_eq!(check_spec(&ok), Ok(()));
        for bad in ["", "-x", "a.b", "a b", &"x".repeat(MAX_NAME + 1)] {
            let s = ServiceSpec { name: bad.into(), ..ok.clone() };
            assert!(matches!(check_spec(&s), Err(SpecError::Name(_))), "{bad:?}");
        }
        assert_eq!(check_spec(&ServiceSpec { image: " ".into(), ..ok.clone() }), Err(SpecError::NoImage));
        let many = ServiceSpec { replicas: MAX_REPLICAS + 1, ..ok.clone() };
        assert!(matches!(check_spec(&many), Err(SpecError::TooManyReplicas { .. })));
        let env = ServiceSpec { env: vec!["=x".into()], ..ok.clone() };
        assert!(matches!(check_spec(&env), Err(SpecError::Env(_))));
        let mem = ServiceSpec { memory_bytes: 1 << 20, ..ok.clone() };
        assert_eq!(check_spec(&mem), Err(SpecError::MemoryTooSmall));
        let bound = shoal_types::PortMapping::parse("127.0.0.1:8080:80").unwrap();
        assert!(matches!(
            check_spec(&ServiceSpec { ports: vec![bound], ..ok.clone() }),
            Err(SpecError::PortAddress(_))
        ));
        let p = shoal_types::PortMapping::tcp(8080, 80);
        let udp = shoal_types::PortMapping { protocol: shoal_types::Protocol::Udp, ..p };
        assert!(matches!(check_spec(&ServiceSpec { ports: vec![p, p], ..ok.clone() }), Err(SpecError::PortTwice(_))));
        assert_eq!(check_spec(&ServiceSpec { ports: vec![p, udp], ..ok }), Ok(()), "the same number over TCP and UDP");
    }
}
