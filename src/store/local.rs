//! The local backup directory: `<dir>/<cluster>/<id>.db.zst.age` plus `<id>.manifest.json`.
//! Files are written as `.part` (0600), fsynced, renamed, and the folder fsynced.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use chrono::{DateTime, Utc};

use super::{ArtifactFile, Found, Kind, Listing, Paired, SegmentPair, Store, Stored, Upload, Writer, accept, pair_up};
use crate::config::units::format_size;
use crate::errors::{Cause, classified};
use crate::files::{PART_SUFFIX, free_space, open_new, sync_dir, write_atomic};
use crate::manifest::segments::SegmentId;
use crate::manifest::{BackupId, ClusterName, Compression};
use crate::retention::Leftover;
use tokio_util::sync::CancellationToken;

pub struct LocalStore {
    folder: PathBuf,
    cluster: ClusterName,
}

impl LocalStore {
    pub fn new(dir: &Path, cluster: &ClusterName) -> Self {
        LocalStore { folder: dir.join(cluster.as_str()), cluster: cluster.clone() }
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Creates the cluster folder (and the backup dir) with mode 0700.
    fn prepare(&self) -> Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.folder).with_context(|| {
            format!(
                "cannot create the local backup folder '{}' (local.dir must be writable by etcd-backupd)",
                self.folder.display()
            )
        })
    }

    /// Bytes available to an unprivileged writer in the folder's file system.
    fn free_space(&self) -> Result<u64> {
        free_space(&self.folder)
    }
}

#[async_trait::async_trait]
impl Store for LocalStore {
    fn kind(&self) -> Kind {
        Kind::Local
    }

    fn place(&self) -> String {
        self.folder.display().to_string()
    }

    /// The folder exists (0700) and its file system has room for the artifact, its framing and a margin.
    async fn ready(&self, db_size: u64) -> Result<()> {
        self.prepare()?;
        let free = self.free_space()?;
        let needed = crate::encode::required_local_space(db_size);
        if free < needed {
            return Err(classified(
                Cause::NoSpace,
                format!(
                    "not enough free space in '{}': {} free, {} needed for a {} database (free space, or point local.dir elsewhere)",
                    self.folder.display(),
                    format_size(free),
                    format_size(needed),
                    format_size(db_size)
                ),
            ));
        }
        Ok(())
    }

    async fn artifact_file(&self, name: &str, _size: u64, _download: &Path) -> Result<ArtifactFile> {
        Ok(ArtifactFile::InPlace(self.folder.join(name)))
    }

    async fn artifact_reader(&self, name: &str, _size: u64) -> Result<super::reader::ArtifactReader> {
        let path = self.folder.join(name);
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open '{}'", path.display()))?;
        Ok(super::reader::ArtifactReader::file(file))
    }

    /// Whether anything of backup `id` is already here.
    async fn holds(&self, id: &BackupId, compression: Compression) -> bool {
        [id.manifest_name(), id.artifact_name(compression)].iter().any(|n| self.folder.join(n).exists())
    }

    /// Starts writing `name` as `name.part`; fails if the backup already exists.
    async fn begin(&self, name: &str, manifest_name: &str) -> Result<Upload> {
        // Only a committed backup (its manifest) is never overwritten; an artifact without a manifest is a
        // leftover of a crash between rename and commit, and the rename at commit replaces it.
        let final_path = self.folder.join(name);
        let manifest_path = self.folder.join(manifest_name);
        if manifest_path.exists() {
            return Err(crate::errors::classified(
                crate::errors::Cause::Exists,
                format!("'{}' already exists: a backup with this id was already taken", manifest_path.display()),
            ));
        }
        let part_path = self.folder.join(format!("{name}{PART_SUFFIX}"));
        let file = open_new(&part_path).await?;
        Ok(Box::new(LocalUpload {
            file: Some(file),
            part_path,
            final_path,
            manifest_name: manifest_name.to_string(),
            folder: self.folder.clone(),
            done: false,
            attached: None,
        }))
    }

    /// The committed backups in the folder (newest first), leftovers and strangers.
    async fn list(&self) -> Result<Listing> {
        let mut found = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.folder).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot list '{}'", self.folder.display())),
        };
        while let Some(entry) =
            dir.next_entry().await.with_context(|| format!("cannot list '{}'", self.folder.display()))?
        {
            let meta = entry.metadata().await?;
            if meta.is_file() {
                let modified = meta.modified().map(DateTime::<Utc>::from).unwrap_or_else(|_| Utc::now());
                found.push(Found {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    size: meta.len(),
                    modified,
                });
            }
        }
        let Paired { pairs, leftovers, mut ignored, segments } = pair_up(&found);
        let mut backups = Vec::new();
        for pair in pairs {
            let path = self.folder.join(&pair.manifest_name);
            let read = tokio::fs::read(&path).await.map_err(|e| e.to_string());
            match read.and_then(|bytes| accept(&bytes, &pair, &self.cluster)) {
                Ok(manifest) => backups.push(Stored { manifest, pinned: pair.pinned }),
                Err(why) => {
                    tracing::warn!(path = %path.display(), %why, "ignoring a manifest that does not check out");
                    ignored.push((pair.manifest_name, why));
                }
            }
        }
        Ok(Listing { backups, leftovers, ignored, segments })
    }

    async fn read_manifest(&self, name: &str) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let path = self.folder.join(name);
        let file = tokio::fs::File::open(&path).await.with_context(|| format!("cannot read '{}'", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            anyhow::bail!("'{}' is too large to be a manifest", path.display());
        }
        Ok(bytes)
    }

    /// Removes backups: artifact, then pin, then manifest (the commit marker goes last).
    async fn remove(&self, backups: &[&Stored]) -> Vec<(BackupId, String)> {
        let mut failed = Vec::new();
        for b in backups {
            let id = &b.manifest.id;
            let names = [b.manifest.artifact_name(), id.files_name(), id.pin_name(), id.manifest_name()];
            for name in names {
                if let Err(e) = remove_if_present(&self.folder.join(&name)).await {
                    failed.push((id.clone(), format!("cannot remove '{}': {e}", self.folder.join(&name).display())));
                    break;
                }
            }
        }
        if let Err(e) = sync_dir(&self.folder).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot fsync the backup folder after removing backups");
        }
        failed
    }

    async fn remove_segments(&self, segments: &[&SegmentPair]) -> Vec<(SegmentId, String)> {
        let mut failed = Vec::new();
        for s in segments {
            // Names found in the folder, each one that parsed as this segment's: never a path.
            let names = s.artifacts.iter().map(|(name, _)| name).chain(std::iter::once(&s.manifest_name));
            for name in names {
                if let Err(e) = remove_if_present(&self.folder.join(name)).await {
                    failed.push((s.id.clone(), format!("cannot remove '{}': {e}", self.folder.join(name).display())));
                    break;
                }
            }
        }
        if let Err(e) = sync_dir(&self.folder).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot fsync the backup folder after removing segments");
        }
        failed
    }

    /// Removes leftover files.
    async fn clean(&self, leftovers: &[Leftover]) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for l in leftovers {
            let path = self.folder.join(&l.name);
            if let Err(e) = remove_if_present(&path).await {
                failed.push((l.name.clone(), format!("cannot remove '{}': {e}", path.display())));
            }
        }
        failed
    }

    /// Writes or removes the pin marker of a committed backup.
    async fn set_pin(&self, id: &BackupId, pinned: bool) -> Result<()> {
        if pinned {
            let note = format!("pinned {} on {}\n", Utc::now().to_rfc3339(), crate::host::hostname());
            write_atomic(&self.folder, &id.pin_name(), note.as_bytes()).await
        } else {
            remove_if_present(&self.folder.join(id.pin_name()))
                .await
                .with_context(|| format!("cannot unpin {id} in '{}'", self.folder.display()))?;
            sync_dir(&self.folder).await
        }
    }
}

async fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// An artifact being written to the local folder.
pub struct LocalUpload {
    file: Option<tokio::fs::File>,
    part_path: PathBuf,
    final_path: PathBuf,
    manifest_name: String,
    folder: PathBuf,
    done: bool,
    /// The files archive: its `.part` while written, and its name once the commit renamed it.
    attached: Option<(PathBuf, PathBuf)>,
}

#[async_trait::async_trait]
impl Writer for LocalUpload {
    fn kind(&self) -> Kind {
        Kind::Local
    }

    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let file = self.file.as_mut().context("local upload already closed")?;
        file.write_all(&chunk).await.with_context(|| format!("cannot write '{}'", self.part_path.display()))
    }

    async fn attach(&mut self, name: &str, file: std::fs::File) -> Result<()> {
        let part = self.folder.join(format!("{name}{PART_SUFFIX}"));
        self.attached = Some((part.clone(), self.folder.join(name)));
        let mut dst = open_new(&part).await?;
        let mut src = tokio::fs::File::from_std(file);
        tokio::io::copy(&mut src, &mut dst).await.with_context(|| format!("cannot write '{}'", part.display()))?;
        dst.sync_all().await.with_context(|| format!("cannot fsync '{}'", part.display()))
    }

    async fn commit(mut self: Box<Self>, manifest: &[u8], _cancel: &CancellationToken) -> Result<()> {
        if let Some((part, archive)) = &self.attached {
            tokio::fs::rename(part, archive).await.with_context(|| format!("cannot rename '{}'", part.display()))?;
        }
        let mut file = self.file.take().context("local upload already closed")?;
        file.flush().await?;
        file.sync_all().await.with_context(|| format!("cannot fsync '{}'", self.part_path.display()))?;
        drop(file);
        tokio::fs::rename(&self.part_path, &self.final_path)
            .await
            .with_context(|| format!("cannot rename '{}'", self.part_path.display()))?;
        self.done = true;
        sync_dir(&self.folder).await?;
        write_atomic(&self.folder, &self.manifest_name, manifest).await.inspect_err(|_| {
            // Without its manifest the artifact is not a backup; do not leave it looking like one.
            let _ = std::fs::remove_file(&self.final_path);
            if let Some((_, archive)) = &self.attached {
                let _ = std::fs::remove_file(archive);
            }
        })
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        self.remove_part();
    }
}

/// The most a manifest may hold.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

impl LocalUpload {
    fn remove_part(&mut self) {
        if !self.done {
            self.done = true;
            // Renamed only by a commit, which sets `done` first: a `.part` at most is left here.
            if let Some((part, _)) = self.attached.take() {
                let _ = std::fs::remove_file(part);
            }
            if let Err(e) = std::fs::remove_file(&self.part_path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %self.part_path.display(), error = %e, "cannot remove unfinished backup file");
            }
        }
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        self.remove_part();
    }
}
