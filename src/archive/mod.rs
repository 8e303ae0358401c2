//! The companion archive of a backup: the control-plane files a node needs besides etcd's data
//! (`[files]`), as a tar (owners, modes, mtimes, symlinks; no devices, sockets or fifos) streamed through
//! zstd and age into a file, with memory bounded by the pieces in flight. Every file's sha256 is taken
//! as it is read, for the manifest.

pub mod preset;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::config::FilesSettings;
use crate::manifest::{BackupId, FileEntry, FileKind, FilesFacts};

/// What the README says of reading root-only files as the service user.
const READ_FIX: &str = "the service runs as user etcd-backupd: grant it read access \
    (README, \"Control-plane files\": the CAP_DAC_READ_SEARCH drop-in), or remove the path from [files]";

/// The paths `[files]` names: presets and paths (a `*` expanded), folders walked without following
/// symlinks, excluded ones left out; sorted, each once. A path that must be there and is not, or cannot be
/// read, is an error naming it and the fix.
pub fn collect(files: &FilesSettings) -> Result<Vec<PathBuf>> {
    collect_in(files, Path::new("/"))
}

/// `collect`, with a preset's paths (and the encryption config kube-apiserver's manifest names) under
/// `host` instead of `/`.
fn collect_in(files: &FilesSettings, host: &Path) -> Result<Vec<PathBuf>> {
    let on_host = |path: &str| host.join(path.trim_start_matches('/')).to_string_lossy().into_owned();
    let mut roots: Vec<(String, bool)> = Vec::new();
    if let Some(preset) = files.preset {
        roots.extend(preset.paths().iter().map(|p| (on_host(p.path), p.required)));
        if preset == preset::Preset::Kubeadm
            && let Ok(manifest) = std::fs::read_to_string(on_host(preset::KUBEADM_APISERVER_MANIFEST))
            && let Some(config) = preset::encryption_config(&manifest)
        {
            roots.push((on_host(&config), true));
        }
    }
    roots.extend(files.paths.iter().map(|p| (p.to_string_lossy().into_owned(), true)));
    let excluded = |p: &Path| files.exclude.iter().any(|pattern| pattern.matches_path(p));
    let mut found = BTreeSet::new();
    for (root, required) in roots {
        for path in expand(&root, required)? {
            if excluded(&path) {
                continue;
            }
            let walk = walkdir::WalkDir::new(&path).follow_links(false).into_iter();
            for entry in walk.filter_entry(|e| !excluded(e.path())) {
                let entry = entry.map_err(|e| {
                    let at = e.path().map_or_else(|| path.display().to_string(), |p| p.display().to_string());
                    anyhow!("[files]: cannot read '{at}': {e}; {READ_FIX}")
                })?;
                found.insert(entry.into_path());
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// The paths a configured path names: its glob's matches, or itself. Missing: an error if `required`.
fn expand(pattern: &str, required: bool) -> Result<Vec<PathBuf>> {
    if !pattern.contains(['*', '?', '[']) {
        return match std::fs::symlink_metadata(pattern) {
            Ok(_) => Ok(vec![PathBuf::from(pattern)]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(vec![]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("[files]: '{pattern}' does not exist: fix the path, or remove it from [files]")
            }
            Err(e) => bail!("[files]: cannot read '{pattern}': {e}; {READ_FIX}"),
        };
    }
    let mut out = Vec::new();
    for found in glob::glob(pattern).with_context(|| format!("[files]: '{pattern}' is not a glob"))? {
        out.push(
            found.map_err(|e| anyhow!("[files]: cannot read '{}': {}; {READ_FIX}", e.path().display(), e.error()))?,
        );
    }
    if out.is_empty() && required {
        bail!("[files]: nothing matches '{pattern}': fix the pattern, or remove it from [files]");
    }
    Ok(out)
}

/// Writes the archive of `paths` for backup `id` into `out`: tar, zstd at `level`, age to `recipients`.
/// Returns what the manifest records of it.
pub fn write(
    paths: &[PathBuf],
    recipients: &[crate::crypto::PublicKey],
    level: i32,
    id: &BackupId,
    out: std::fs::File,
) -> Result<FilesFacts> {
    let sealed = Hashing { inner: out, hasher: Sha256::new(), size: 0 };
    let encrypted = crate::crypto::encrypt_to(recipients, sealed).map_err(|e| anyhow!("[files]: {e}"))?;
    let compressed = zstd::stream::write::Encoder::new(encrypted, level).context("cannot start zstd")?;
    let mut tar = tar::Builder::new(compressed);
    tar.follow_symlinks(false);
    let mut entries = Vec::new();
    for path in paths {
        if let Some(entry) = append(&mut tar, path)? {
            entries.push(entry);
        }
    }
    let encrypted = tar.into_inner().context("cannot finish the files archive")?.finish()?;
    let mut sealed = encrypted.finish().context("cannot finish encrypting the files archive")?;
    sealed.inner.flush()?;
    sealed.inner.sync_all().context("cannot fsync the files archive")?;
    Ok(FilesFacts {
        name: id.files_name(),
        size: sealed.size,
        sha256: hex::encode(sealed.hasher.finalize()),
        recipients: recipients.iter().map(|r| r.as_str().to_string()).collect(),
        preset: None,
        entries,
    })
}

/// Adds one path to the tar; `None` for what an archive does not hold (devices, sockets, fifos).
fn append<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> Result<Option<FileEntry>> {
    let shown = path.display();
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("[files]: cannot read '{shown}'"))?;
    let text = path.to_str().with_context(|| format!("[files]: '{shown}' is not UTF-8: exclude it"))?;
    let name = text.trim_start_matches('/');
    let kind = if meta.file_type().is_symlink() {
        FileKind::Symlink
    } else if meta.is_dir() {
        FileKind::Dir
    } else if meta.is_file() {
        FileKind::File
    } else {
        tracing::warn!(path = %shown, "not archived: a device, socket or fifo");
        return Ok(None);
    };
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    let mut entry = FileEntry {
        path: text.to_string(),
        kind,
        size: 0,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        sha256: None,
        target: None,
    };
    match kind {
        FileKind::Symlink => {
            let target = std::fs::read_link(path).with_context(|| format!("[files]: cannot read '{shown}'"))?;
            let target_text =
                target.to_str().with_context(|| format!("[files]: '{shown}' points to a name that is not UTF-8"))?;
            tar.append_link(&mut header, name, &target)?;
            entry.target = Some(target_text.to_string());
        }
        FileKind::Dir => {
            header.set_size(0);
            tar.append_data(&mut header, name, std::io::empty())?;
        }
        FileKind::File => {
            let file =
                std::fs::File::open(path).map_err(|e| anyhow!("[files]: cannot read '{shown}': {e}; {READ_FIX}"))?;
            let mut reader = Hashing { inner: file.take(meta.len()), hasher: Sha256::new(), size: 0 };
            tar.append_data(&mut header, name, &mut reader)
                .with_context(|| format!("[files]: cannot archive '{shown}'"))?;
            if reader.size != meta.len() {
                bail!("[files]: '{shown}' changed while it was archived: back up again");
            }
            entry.size = meta.len();
            entry.sha256 = Some(hex::encode(reader.hasher.finalize()));
        }
    }
    Ok(Some(entry))
}

/// A reader or writer that hashes and counts what passes through.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeadm() -> FilesSettings {
        FilesSettings {
            preset: Some(preset::Preset::Kubeadm),
            paths: vec![],
            exclude: vec![glob::Pattern::new("*.tmp").unwrap()],
            recipients: vec![],
            recipients_file: None,
        }
    }

    /// The kubeadm preset on a host laid out as kubeadm does: its folders walked, its kubeconfigs
    /// matched, and the encryption config that kube-apiserver's manifest names, wherever it lies; a
    /// required folder missing fails naming it.
    #[test]
    fn the_kubeadm_preset_finds_the_encryption_config_its_apiserver_names() {
        let host = tempfile::tempdir().unwrap();
        let at = |p: &str| host.path().join(p);
        for dir in ["etc/kubernetes/pki/etcd", "etc/kubernetes/manifests", "srv/secrets"] {
            std::fs::create_dir_all(at(dir)).unwrap();
        }
        for file in [
            "etc/kubernetes/pki/ca.key",
            "etc/kubernetes/pki/etcd/ca.key",
            "etc/kubernetes/admin.conf",
            "srv/secrets/enc.yaml",
            "etc/kubernetes/pki/x.tmp",
        ] {
            std::fs::write(at(file), "x").unwrap();
        }
        std::fs::write(
            at("etc/kubernetes/manifests/kube-apiserver.yaml"),
            "    - --encryption-provider-config=/srv/secrets/enc.yaml\n",
        )
        .unwrap();
        let found = collect_in(&kubeadm(), host.path()).unwrap();
        for want in [
            "etc/kubernetes/pki/ca.key",
            "etc/kubernetes/pki/etcd/ca.key",
            "etc/kubernetes/admin.conf",
            "etc/kubernetes/manifests/kube-apiserver.yaml",
            "srv/secrets/enc.yaml",
        ] {
            assert!(found.contains(&at(want)), "{want} not in {found:?}");
        }
        assert!(!found.contains(&at("etc/kubernetes/pki/x.tmp")), "excluded");

        std::fs::remove_file(at("srv/secrets/enc.yaml")).unwrap();
        let err = collect_in(&kubeadm(), host.path()).unwrap_err().to_string();
        assert!(err.contains("srv/secrets/enc.yaml") && err.contains("does not exist"), "{err}");
        std::fs::remove_dir_all(at("etc/kubernetes/pki")).unwrap();
        let err = collect_in(&kubeadm(), host.path()).unwrap_err().to_string();
        assert!(err.contains("etc/kubernetes/pki"), "{err}");
    }
}
