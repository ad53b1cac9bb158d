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

/// Errors of a cluster lookup after which the registry is worth asking.
fn not_in_cluster(e: &BlobsError) -> bool {
    matches!(e, BlobsError::NoImageHolder(_) | BlobsError::BadReference(_) | BlobsError::UnsignedTag(_))
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
        match self.blobs().pull(reference).await {
            Ok(rec) => return Ok(rec),
            Err(e) if not_in_cluster(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let r = ImageRef::parse(reference)?;
        let key = r.to_string();
        if shoal_blobs::image_key(reference).ok().as_deref() != Some(key.as_str()) {
            match self.blobs().pull(&key).await {
                Ok(rec) => return Ok(rec),
                Err(e) if not_in_cluster(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.registry()?.pull(&r).await?)
    }

    /// `shoal image pull`: a name the cluster holds as given, else what the registry says the
    /// reference names now (blobs the cluster has are not fetched again), else, with the
    /// registry unreachable, the cluster's copy.
    pub(crate) async fn image_for_pull(&self, reference: &str) -> Result<ImageRecord, NodeError> {
        match self.blobs().pull(reference).await {
            Ok(rec) => return Ok(rec),
            Err(e) if not_in_cluster(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let r = ImageRef::parse(reference)?;
        match self.registry()?.pull(&r).await {
            Ok(rec) => Ok(rec),
            Err(e @ (RegistryError::Unreachable { .. } | RegistryError::Registry { .. })) => {
                match self.blobs().pull(&r.to_string()).await {
                    Ok(rec) => {
                        tracing::warn!(image = %r, err = %e, "the registry cannot be reached: using the cluster's copy");
                        Ok(rec)
                    }
                    Err(_) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `shoal registry login`: checks the credentials with the registry, then saves them on
    /// this peer (0600; never sent to other peers).
    pub async fn registry_login(&self, registry: &str, username: &str, password: &str) -> Result<(), NodeError> {
        // Normalised as in a reference: `docker.io` for Docker Hub.
        let host = ImageRef::parse(&format!("{registry}/x"))?.registry().to_string();
        let upstream = self.registry()?.upstream().clone();
        shoal_registry::check_login(&upstream, &host, username, password).await?;
        upstream.logins().save(&host, username, password)?;
        upstream.forget(&host);
        Ok(())
    }

    /// `shoal registry logout`.
    pub async fn registry_logout(&self, registry: &str) -> Result<bool, NodeError> {
        let host = ImageRef::parse(&format!("{registry}/x"))?.registry().to_string();
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
