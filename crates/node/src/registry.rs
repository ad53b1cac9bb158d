//! Images from registries: where the agent looks for an image, and `shoal registry login`.
//!
//! A name as given is looked up in the cluster first (an imported `app:v1` keeps working
//! offline); then the registry, through [`shoal_registry::Cluster`] so that each blob is
//! fetched from it once per cluster. `run` prefers the cluster's copy of a registry image
//! (`nginx:1.27` is found under `docker.io/library/nginx:1.27`); `image pull` asks the
//! registry what the tag names now and falls back to the cluster's copy only when the
//! registry cannot be reached.

use crate::error::NodeError;
use crate::node::Node;
use shoal_blobs::{BlobsError, ImageRecord};
use shoal_registry::{Cluster, ImageRef, Logins, Platform, RegistryError, Upstream};
use std::sync::Arc;

/// Errors of a cluster lookup after which the registry is worth asking: nobody has it, or
/// what peers offered did not hold up (an inconsistent record, layers no peer could send or
/// that failed their checks). A full disk here is not one: the registry would not help.
fn not_in_cluster(e: &BlobsError) -> bool {
    match e {
        BlobsError::NoImageHolder(_)
        | BlobsError::BadReference(_)
        | BlobsError::UnsignedTag(_)
        | BlobsError::BadImage { .. } => true,
        BlobsError::Transfer { failure, .. } => !matches!(failure, shoal_blobs::TransferFailure::DiskFull),
        _ => false,
    }
}

/// The error when neither the cluster nor the registry gave the image: what peers offered
/// unsigned says most; a registry that cannot be reached is named beside the cluster's miss;
/// a registry's own answer (no such tag, wrong password) is the answer.
fn neither(reference: &str, cluster: BlobsError, registry: RegistryError) -> NodeError {
    match (cluster, registry) {
        (c @ BlobsError::UnsignedTag(_), RegistryError::Unreachable { .. } | RegistryError::NotFound { .. }) => {
            c.into()
        }
        (_, e @ (RegistryError::Unreachable { .. } | RegistryError::Registry { .. })) => {
            NodeError::NoImageAnywhere { image: reference.to_string(), why: e.to_string() }
        }
        (_, r) => r.into(),
    }
}

impl Node {
    /// Starts the registry client and the upstream protocol (once, at start).
    pub(crate) async fn start_registry(&self) -> Result<(), NodeError> {
        let cfg = self.config();
        let logins = Arc::new(Logins::open(&cfg.data_dir, true)?);
        let upstream = Arc::new(Upstream::new(logins, cfg.insecure_registries.clone(), Platform::this()));
        let weak = Arc::downgrade(self.inner_arc());
        let may_resolve: shoal_registry::MayResolve = Arc::new(move |peer| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(inner) => Node::from_inner(inner).peer_is_operator(&peer).await,
                    None => false,
                }
            })
        });
        let cluster = Cluster::start(upstream, self.blobs().clone(), self.overlay().clone(), may_resolve).await?;
        self.set_registry(cluster.clone());
        if let Some(addr) = cfg.mirror_listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let (default, cancel) = (cfg.mirror_registry.clone(), self.cancel().clone());
                    self.tasks().spawn(async move {
                        if let Err(e) = shoal_registry::mirror::serve(listener, cluster, default, cancel).await {
                            tracing::warn!(err = %e, "the registry mirror stopped");
                        }
                    });
                }
                // The agent runs on without it: the mirror is a convenience, not the peer.
                Err(e) => tracing::warn!(
                    %addr, err = %e,
                    "the registry mirror cannot listen (another agent or registry on this port?); \
                     choose another with --mirror-listen ADDR, or --mirror-listen off"
                ),
            }
        }
        Ok(())
    }

    fn registry(&self) -> Result<&Arc<Cluster>, NodeError> {
        self.registry_cell().get().ok_or(NodeError::Services(shoal_services::ServiceError::Stopped))
    }

    /// The image for a container: here or on a peer by the name given, or by its normalised
    /// name, else from the registry.
    pub(crate) async fn image_for_run(&self, reference: &str) -> Result<ImageRecord, NodeError> {
        let mut missed = match self.blobs().pull(reference).await {
            Ok(rec) => return Ok(rec),
            Err(e) if not_in_cluster(&e) => e,
            Err(e) => return Err(e.into()),
        };
        let Ok(r) = ImageRef::parse(reference) else { return Err(missed.into()) };
        let key = r.key();
        if shoal_blobs::image_key(reference).ok().as_deref() != Some(key.as_str()) {
            match self.blobs().pull(&key).await {
                Ok(rec) => return Ok(rec),
                Err(e) if not_in_cluster(&e) => {
                    if !matches!(missed, BlobsError::UnsignedTag(_)) {
                        missed = e;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        match self.registry()?.pull(&r).await {
            Ok(rec) => Ok(rec),
            Err(e) => Err(neither(reference, missed, e)),
        }
    }

    /// `shoal image pull`: a name the cluster holds as given, else what the registry says the
    /// reference names now (blobs the cluster has are not fetched again), else, with the
    /// registry unreachable, the cluster's copy.
    pub(crate) async fn image_for_pull(&self, reference: &str) -> Result<ImageRecord, NodeError> {
        let missed = match self.blobs().pull(reference).await {
            Ok(rec) => return Ok(rec),
            Err(e) if not_in_cluster(&e) => e,
            Err(e) => return Err(e.into()),
        };
        let Ok(r) = ImageRef::parse(reference) else { return Err(missed.into()) };
        match self.registry()?.pull(&r).await {
            Ok(rec) => Ok(rec),
            Err(e @ (RegistryError::Unreachable { .. } | RegistryError::Registry { .. })) => {
                match self.blobs().pull(&r.key()).await {
                    Ok(rec) => {
                        tracing::warn!(image = %r, err = %e, "the registry cannot be reached: using the cluster's copy");
                        Ok(rec)
                    }
                    Err(_) => Err(neither(reference, missed, e)),
                }
            }
            Err(e) => Err(neither(reference, missed, e)),
        }
    }

    /// The image a service runs, pinned to the digest its tag names now (as Swarm does:
    /// `REF:TAG@sha256:…`), so every replica runs the same bytes however the tag moves. A bare
    /// name the cluster holds (an imported `app:v1`) and a reference with a digest stay as
    /// they are; with the registry unreachable the tag stays too (replicas then use the
    /// cluster's copy).
    pub(crate) async fn pin_image(&self, image: &str) -> Result<String, NodeError> {
        if image.contains('@') {
            return Ok(image.to_string());
        }
        // A name with a registry host in it (`host:5000/app:v1`) is the registry's; a bare
        // name the cluster holds (an imported `app:v1`) is the cluster's own.
        let names_a_registry =
            image.split_once('/').is_some_and(|(first, _)| first.contains(['.', ':']) || first == "localhost");
        if !names_a_registry && self.blobs().is_known(image).await {
            return Ok(image.to_string());
        }
        let Ok(r) = ImageRef::parse(image) else { return Ok(image.to_string()) };
        let limit = std::time::Duration::from_secs(10);
        let why = match tokio::time::timeout(limit, self.registry()?.resolve_top(&r)).await {
            Ok(Ok(digest)) => return Ok(format!("{image}@{digest}")),
            Ok(Err(e @ (RegistryError::Unreachable { .. } | RegistryError::Registry { .. }))) => e.to_string(),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => format!("no answer in {} s", limit.as_secs()),
        };
        tracing::warn!(image, why, "cannot resolve the image's tag with its registry: the service runs the tag as is");
        Ok(image.to_string())
    }

    /// `shoal registry login`: checks the credentials with the registry, then saves them on
    /// this peer (0600; never sent to other peers).
    pub async fn registry_login(&self, registry: &str, username: &str, password: &str) -> Result<(), NodeError> {
        let host = shoal_registry::login_host(registry)?;
        let upstream = self.registry()?.upstream().clone();
        shoal_registry::check_login(&upstream, &host, username, password).await?;
        upstream.logins().save(&host, username, password)?;
        upstream.forget(&host);
        Ok(())
    }

    /// `shoal registry logout`.
    pub async fn registry_logout(&self, registry: &str) -> Result<bool, NodeError> {
        let host = shoal_registry::login_host(registry)?;
        let upstream = self.registry()?.upstream().clone();
        let had = upstream.logins().remove(&host)?;
        upstream.forget(&host);
        Ok(had)
    }

    /// Registry pulls in progress on this peer.
    pub fn registry_pulls(&self) -> Vec<shoal_types::PullStatus> {
        let pulls = self.registry().map(|c| c.pulls()).unwrap_or_default();
        pulls
            .into_iter()
            .map(|p| shoal_types::PullStatus {
                reference: p.reference,
                blobs: p
                    .blobs
                    .into_iter()
                    .map(|b| shoal_types::PullBlob {
                        digest: b.digest,
                        size: b.size,
                        done: b.done,
                        source: b.source.map(|s| s.as_str().to_string()),
                        finished: b.finished,
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_blobs::{ContentId, TransferFailure};

    #[test]
    fn what_peers_failed_to_give_is_asked_of_the_registry_but_a_full_disk_is_not() {
        let transfer = |failure| BlobsError::Transfer { cid: ContentId([0; 32]), reason: "x".into(), failure };
        assert!(not_in_cluster(&BlobsError::NoImageHolder("a".into())));
        assert!(not_in_cluster(&BlobsError::BadImage { reference: "a".into(), reason: "lies".into() }));
        assert!(not_in_cluster(&transfer(TransferFailure::NoHolder)));
        assert!(not_in_cluster(&transfer(TransferFailure::Other)));
        assert!(!not_in_cluster(&transfer(TransferFailure::DiskFull)));
        assert!(!not_in_cluster(&BlobsError::NoName));
    }
}
