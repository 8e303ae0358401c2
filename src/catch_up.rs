//! Catch-up: backups this host has locally that an off-site store (S3) lacks (an upload that failed, the
//! store down for a while) are sent there, oldest first, as far as that store's retention would keep them.

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use sha2::{Digest, Sha256};

use crate::encode::CHUNK;
use crate::errors::{Cause, cause_of};
use crate::interrupt::cancelled;
use crate::manifest::BackupId;

use crate::store::Store;
use crate::store::local::LocalStore;

/// Uploads to `to` the backups the local dir holds and `to` does not, oldest first, pin included; only
/// those `to`'s retention keeps (`plan` over its backups and these), so none is uploaded to be removed at
/// once. Stops between backups, and aborts the one uploading, when `cancel` fires.
pub async fn upload_missing(
    local: &LocalStore,
    to: &dyn Store,
    plan: impl Fn(&[crate::retention::Candidate]) -> Vec<crate::retention::Decision>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Vec<BackupId>> {
    use tokio::io::AsyncReadExt;
    let here = local.list().await?;
    let there = to.list().await?;
    let missing: Vec<&crate::store::Stored> =
        here.backups.iter().filter(|b| !there.backups.iter().any(|t| t.manifest.id == b.manifest.id)).collect();
    let candidates: Vec<crate::retention::Candidate> = there
        .backups
        .iter()
        .chain(missing.iter().copied())
        .map(|s| crate::retention::Candidate {
            id: s.manifest.id.clone(),
            size: s.manifest.artifact.size,
            pinned: s.pinned,
            this_run: false,
            emergency: s.manifest.is_emergency(),
        })
        .collect();
    let decisions = plan(&candidates);
    let mut uploaded = Vec::new();
    let mut failures = Vec::new();
    for stored in missing.into_iter().rev() {
        let m = &stored.manifest;
        if !decisions.iter().any(|d| d.keep && d.id == m.id) {
            tracing::info!(id = %m.id, "not uploading a backup that only the local dir holds: {}'s retention would remove it at once", to.kind().title());
            continue;
        }
        if cancel.is_cancelled() {
            break;
        }
        let name = m.artifact_name();
        let path = local.folder().join(&name);
        let mut file =
            tokio::fs::File::open(&path).await.with_context(|| format!("cannot open '{}'", path.display()))?;
        let mut upload = match to.begin(&name, &m.id.manifest_name()).await {
            Ok(upload) => upload,
            // The store holds a manifest of this id that its listing does not accept (damaged, planted, from a
            // newer version): never overwritten, reported, and no reason to hold back newer backups.
            Err(e) if cause_of(&e) == Some(Cause::Exists) => {
                tracing::warn!(id = %m.id, error = %format!("{e:#}"), "not uploading a backup that only the local dir holds: {} has a manifest of that id that does not check out (see `etcd-backupd prune --dry-run`)", to.kind().title());
                continue;
            }
            Err(e) => return Err(e),
        };
        // The copy that goes off-site is the one the manifest recorded: hashed as it is read.
        let mut hasher = Sha256::new();
        let copied = async {
            loop {
                if cancel.is_cancelled() {
                    return Err(cancelled());
                }
                let mut buf = BytesMut::with_capacity(CHUNK);
                let n = file.read_buf(&mut buf).await.with_context(|| format!("cannot read '{}'", path.display()))?;
                if n == 0 {
                    let sha = hex::encode(hasher.finalize_reset());
                    if sha != m.artifact.sha256 {
                        bail!(
                            "'{}' does not match its manifest (sha256 {sha}, the manifest says {}): the local copy is damaged; it is not uploaded",
                            path.display(),
                            m.artifact.sha256
                        );
                    }
                    return anyhow::Ok(());
                }
                hasher.update(&buf);
                upload.write(buf.freeze()).await?;
            }
        }
        .await;
        // Its files archive goes with it (checked against the manifest as it is read).
        let copied = match (copied, &m.files) {
            (Ok(()), Some(files)) => attach_local_archive(&mut upload, local.folder(), &m.id, files).await,
            (copied, _) => copied,
        };
        // One backup that cannot go (a damaged local copy) holds back none of the others.
        let sent = match copied {
            Ok(()) => upload.commit(&m.to_json(), cancel).await,
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        };
        let pinned = match sent {
            Ok(()) if stored.pinned => to.set_pin(&m.id, true).await,
            other => other,
        };
        match pinned {
            Ok(()) => {
                tracing::info!(id = %m.id, "uploaded a backup that only the local dir held");
                uploaded.push(m.id.clone());
            }
            Err(e) => failures.push(format!("{}: {e:#}", m.id)),
        }
    }
    if failures.is_empty() { Ok(uploaded) } else { bail!("{}", failures.join("; ")) }
}

/// Attaches the local copy of a backup's files archive to `upload`, once its sha256 is the manifest's.
async fn attach_local_archive(
    upload: &mut crate::store::Upload,
    folder: &std::path::Path,
    id: &crate::manifest::BackupId,
    files: &crate::manifest::FilesFacts,
) -> Result<()> {
    // The name from the id, never from the manifest's field.
    let name = id.files_name();
    let path = folder.join(&name);
    let (checked, size, sha256) = (path.clone(), files.size, files.sha256.clone());
    tokio::task::spawn_blocking(move || crate::restore::check_file(&checked, size, &sha256, "archive"))
        .await?
        .context("the local copy is damaged; it is not uploaded")?;
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open '{}'", path.display()))?;
    upload.attach(&name, file).await
}
