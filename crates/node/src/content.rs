//! Content and image operations, in the shapes the API returns.

use crate::{Node, NodeError};
use shoal_blobs::{BlobRecord, ContentId, Progress, TransferState};
use shoal_types::{ContentInfo, ImageInfo, SharedContent, TransferInfo};
use std::collections::HashMap;

fn transfer_info(p: &Progress, me: &str) -> TransferInfo {
    TransferInfo {
        id: p.cid.to_string(),
        size: p.size,
        have_bytes: p.have_bytes,
        fetched_bytes: p.fetched_bytes,
        pieces: p.pieces,
        have_pieces: p.have_pieces,
        peers: p.peers,
        rate_bps: p.rate_bps,
        state: match p.state {
            TransferState::Running => "running",
            TransferState::Complete => "complete",
            TransferState::Failed => "failed",
        }
        .to_string(),
        error: p.error.clone(),
        have: hex_bits(p.have.bytes()),
        peer: me.to_string(),
        sources: p
            .sources
            .iter()
            .map(|(peer, rate_bps)| shoal_types::TransferSource { peer: peer.to_string(), rate_bps: *rate_bps })
            .collect(),
    }
}

fn hex_bits(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn content_info(cid: &ContentId, r: &BlobRecord, images: &HashMap<ContentId, Vec<String>>) -> ContentInfo {
    ContentInfo {
        id: cid.to_string(),
        size: r.size,
        state: if r.complete { "complete" } else { "partial" }.to_string(),
        have_bytes: if r.complete {
            r.size
        } else {
            // Whole pieces, bounded by the size (the last piece may be shorter).
            r.have.as_ref().map_or(0, |h| {
                (u64::from(h.count()) * shoal_blobs::manifest::piece_size_for(r.size) as u64).min(r.size)
            })
        },
        pinned: r.pinned,
        name: r.name.clone(),
        sha256: r.sha256.as_ref().map(|d| d.to_string()),
        images: images.get(cid).cloned().unwrap_or_default(),
        last_used_ms: r.last_access_ms,
    }
}

impl Node {
    /// Stores what `r` yields (`shoal share`).
    pub async fn share<R: std::io::Read + Send + 'static>(
        &self,
        r: R,
        size: Option<u64>,
        name: Option<String>,
    ) -> Result<SharedContent, NodeError> {
        let s = self.blobs().share(r, size, name).await?;
        Ok(SharedContent { id: s.cid.to_string(), size: s.size, sha256: s.sha256.to_string(), existed: s.existed })
    }

    /// Every blob in this peer's store.
    pub async fn content(&self) -> Result<Vec<ContentInfo>, NodeError> {
        let list = self.blobs().list().await?;
        let mut images: HashMap<ContentId, Vec<String>> = HashMap::new();
        for s in self.blobs().images().await? {
            for b in s.record.blobs() {
                images.entry(b.cid).or_default().push(s.record.reference.clone());
            }
        }
        let mut out: Vec<ContentInfo> = list.iter().map(|(c, r)| content_info(c, r, &images)).collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.last_used_ms));
        Ok(out)
    }

    /// The content id that `text` (an id or a unique prefix of local content) names.
    pub async fn resolve_content(&self, text: &str) -> Result<ContentId, NodeError> {
        Ok(self.blobs().resolve(text).await?)
    }

    /// Starts (or joins) fetching a blob; returns its progress.
    pub async fn fetch(&self, text: &str) -> Result<TransferInfo, NodeError> {
        let cid = text.parse::<ContentId>()?;
        let rx = self.blobs().fetch(cid, None).await?;
        let p = rx.borrow().clone();
        Ok(transfer_info(&p, &self.overlay().peer_id().to_string()))
    }

    /// A transfer's progress: running, or the finished state of local content.
    pub async fn transfer(&self, text: &str) -> Result<TransferInfo, NodeError> {
        let cid = self.resolve_content(text).await?;
        if let Some(p) = self.blobs().progress(&cid) {
            return Ok(transfer_info(&p, &self.overlay().peer_id().to_string()));
        }
        let rx = self.blobs().fetch(cid, None).await?;
        let p = rx.borrow().clone();
        Ok(transfer_info(&p, &self.overlay().peer_id().to_string()))
    }

    pub async fn remove_content(&self, text: &str) -> Result<(), NodeError> {
        let cid = self.resolve_content(text).await?;
        Ok(self.blobs().remove(cid).await?)
    }

    pub async fn pin_content(&self, text: &str, pinned: bool) -> Result<(), NodeError> {
        let cid = self.resolve_content(text).await?;
        Ok(self.blobs().pin(cid, pinned).await?)
    }

    /// A complete blob to stream out, and its size.
    /// Content from byte `offset`, while it arrives if this peer does not have it all yet
    /// (the fetch starts if it is not running): its size and the chunks, in order.
    pub async fn stream_content(
        &self,
        text: &str,
        offset: u64,
    ) -> Result<(u64, tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>), NodeError> {
        let cid = self.resolve_content(text).await?;
        Ok(self.blobs().stream(cid, offset).await?)
    }

    pub async fn open_content(&self, text: &str) -> Result<(std::fs::File, u64), NodeError> {
        let cid = self.resolve_content(text).await?;
        Ok(self.blobs().open(cid).await?)
    }

    fn image_info(&self, s: &shoal_blobs::ImageSummary) -> ImageInfo {
        ImageInfo {
            reference: s.record.reference.clone(),
            digest: s.record.manifest.digest.to_string(),
            size: s.record.size(),
            layers: s.record.layers.len(),
            holders: s.holders.clone(),
            created_ms: s.record.created_ms,
        }
    }

    /// A fresh path in the content store's scratch directory (same file system as the store).
    fn scratch(&self, what: &str) -> std::path::PathBuf {
        self.blobs().store().dir().join("tmp").join(format!("{what}-{:016x}", rand::random::<u64>()))
    }

    /// Imports an image archive read from `body` (spooled to the store's disk first).
    pub async fn import_image(
        &self,
        mut body: impl tokio::io::AsyncRead + Unpin,
        name: Option<String>,
    ) -> Result<ImageInfo, NodeError> {
        use tokio::io::AsyncWriteExt;
        let path = self.scratch("import");
        let spooled = async {
            let mut f = tokio::fs::File::create(&path).await?;
            tokio::io::copy(&mut body, &mut f).await?;
            f.flush().await
        }
        .await;
        let result = match spooled {
            Ok(()) => self.blobs().import_image(&path, name).await.map_err(NodeError::from),
            Err(e) => Err(NodeError::Upload(e)),
        };
        let _ = tokio::fs::remove_file(&path).await;
        let rec = result?;
        Ok(self.image_info(&shoal_blobs::ImageSummary { record: rec, holders: vec!["(self)".into()] }))
    }

    pub async fn images(&self) -> Result<Vec<ImageInfo>, NodeError> {
        let mut v: Vec<ImageInfo> = self.blobs().images().await?.iter().map(|s| self.image_info(s)).collect();
        v.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(v)
    }

    pub async fn pull_image(&self, reference: &str) -> Result<ImageInfo, NodeError> {
        let rec = self.image_for_pull(reference).await?;
        Ok(self.image_info(&shoal_blobs::ImageSummary { record: rec, holders: vec!["(self)".into()] }))
    }

    /// The image as an OCI archive: an open file (already unlinked: its space is freed when it
    /// closes) and its size.
    pub async fn export_image(&self, reference: &str) -> Result<(tokio::fs::File, u64), NodeError> {
        let path = self.scratch("export");
        self.blobs().export_image(reference, &path).await?;
        let opened = tokio::fs::File::open(&path).await;
        let _ = tokio::fs::remove_file(&path).await;
        let file = opened.map_err(|source| shoal_blobs::BlobsError::Io { path, source })?;
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        Ok((file, size))
    }

    pub async fn remove_image(&self, reference: &str) -> Result<usize, NodeError> {
        Ok(self.blobs().remove_image(reference).await?.len())
    }

    /// Downloads running now.
    pub fn transfers(&self) -> Vec<TransferInfo> {
        let me = self.overlay().peer_id().to_string();
        self.blobs().running().iter().map(|p| transfer_info(p, &me)).collect()
    }
}
