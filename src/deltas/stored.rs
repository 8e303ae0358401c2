//! Delta segments in a destination: written (the sealed artifact, then the manifest that commits it),
//! and read back as untrusted input (each manifest checked against its name and its artifact's size;
//! each artifact opened against its manifest, and its body against the manifest's counts).

use anyhow::{Result, anyhow};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::manifest::SegmentManifest;
use super::seal::{self, OpenError, Sealed};
use super::segment::{self, Revision};
use crate::manifest::ClusterName;
use crate::store::{Ignored, SegmentPair, Store};

/// Writes one segment to `store`: its artifact, then its manifest (the commit). Where that segment is
/// already committed with the same body (a stream that stopped between two destinations wrote it
/// before), that is done; with another body it is refused (`Cause::Exists`: another streamer wrote it).
pub async fn write(
    store: &dyn Store,
    sealed: &Sealed,
    manifest: &SegmentManifest,
    cancel: &CancellationToken,
) -> Result<()> {
    store.ready(sealed.artifact.len() as u64).await?;
    let begun = store.begin(&manifest.artifact_name(), &manifest.id.manifest_name()).await;
    let mut upload = match begun {
        Ok(upload) => upload,
        Err(e) if crate::errors::cause_of(&e) == Some(crate::errors::Cause::Exists) => {
            let there = store.read_manifest(&manifest.id.manifest_name()).await.ok();
            let same = there
                .and_then(|bytes| SegmentManifest::from_json(&bytes, &manifest.id, &manifest.cluster).ok())
                .is_some_and(|m| m.body == manifest.body);
            return if same { Ok(()) } else { Err(e) };
        }
        Err(e) => return Err(e),
    };
    match upload.write(Bytes::from(sealed.artifact.clone())).await {
        Ok(()) => upload.commit(&manifest.to_json(), cancel).await,
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// The committed segments of a listing, in id order; those whose manifest does not check out, with why.
pub async fn read_all(
    store: &dyn Store,
    pairs: &[SegmentPair],
    cluster: &ClusterName,
) -> (Vec<SegmentManifest>, Vec<Ignored>) {
    let mut committed = Vec::new();
    let mut ignored = Vec::new();
    for pair in pairs {
        let read = store.read_manifest(&pair.manifest_name).await.map_err(|e| format!("{e:#}"));
        match read.and_then(|bytes| accept(&bytes, pair, cluster)) {
            Ok(m) => committed.push(m),
            Err(why) => {
                tracing::warn!(name = %pair.manifest_name, %why, "ignoring a segment manifest that does not check out");
                ignored.push((pair.manifest_name.clone(), why));
            }
        }
    }
    (committed, ignored)
}

/// The committed segments of `base`'s chain among a listing's, in id order; those whose manifest does
/// not check out, with why.
pub async fn read_chain(
    store: &dyn Store,
    pairs: &[SegmentPair],
    base: &crate::manifest::BackupId,
    cluster: &ClusterName,
) -> (Vec<SegmentManifest>, Vec<Ignored>) {
    let of_base: Vec<SegmentPair> = pairs.iter().filter(|p| p.id.base() == base).cloned().collect();
    read_all(store, &of_base, cluster).await
}

/// A segment manifest read back, checked against its name, its folder's cluster and the artifact found
/// beside it (the one its id and compression name, at the size it records).
pub fn accept(bytes: &[u8], pair: &SegmentPair, cluster: &ClusterName) -> Result<SegmentManifest, String> {
    let m = SegmentManifest::from_json(bytes, &pair.id, cluster)?;
    let name = m.artifact_name();
    match pair.artifacts.iter().find(|(n, _)| *n == name) {
        None => Err(format!("its artifact '{name}' is missing")),
        Some((_, size)) if *size != m.artifact.size => {
            Err(format!("artifact is {size} bytes but the manifest says {}", m.artifact.size))
        }
        Some(_) => Ok(m),
    }
}

/// Why a stored segment could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not what its manifest committed: damaged or replaced.
    #[error("{0}")]
    Damaged(String),
    #[error(transparent)]
    NoKey(OpenError),
    /// The store could not be read (the copy may be good).
    #[error(transparent)]
    Store(anyhow::Error),
}

/// The revisions of the segment `manifest` commits, read from `store` and checked whole.
pub async fn read(
    store: &dyn Store,
    manifest: &SegmentManifest,
    identities: std::sync::Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
) -> Result<Vec<Revision>, ReadError> {
    let mut reader =
        store.artifact_reader(&manifest.artifact_name(), manifest.artifact.size).await.map_err(ReadError::Store)?;
    let manifest = manifest.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        // One byte past the recorded size tells a longer artifact without reading all of it.
        let mut artifact = Vec::new();
        (&mut reader).take(manifest.artifact.size.saturating_add(1)).read_to_end(&mut artifact).map_err(|e| {
            match reader.broke() {
                Some(why) => ReadError::Store(anyhow!("reading segment {} failed: {why}", manifest.id)),
                None => ReadError::Store(anyhow!("cannot read segment {}: {e}", manifest.id)),
            }
        })?;
        let body = seal::open(&artifact, &manifest, &identities).map_err(|e| match e {
            OpenError::Damaged(why) => ReadError::Damaged(why),
            no_key => ReadError::NoKey(no_key),
        })?;
        let (revisions, summary) = segment::read(&body)
            .map_err(|e| ReadError::Damaged(format!("segment {} is not a sound segment: {e}", manifest.id)))?;
        manifest.matches(&summary).map_err(ReadError::Damaged)?;
        Ok(revisions)
    })
    .await
    .map_err(|e| ReadError::Store(anyhow!("reading a segment failed: {e}")))?
}

#[cfg(test)]
mod tests;
