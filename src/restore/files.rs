//! A backup's files archive made plain: fetched (local first), checked against the manifest (size and
//! sha256) before anything decrypts it, then each entry checked against the list the manifest keeps
//! (listed, of its kind, its sha256) and, when extracting, written under a folder with its mode, mtime
//! and (as root) owner. Never over an existing file without `force`; never outside the folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Found, Identities};
use crate::manifest::{FileKind, FilesFacts, Manifest};
use crate::store::{ArtifactFile, Destination};

/// What an archive held.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opened {
    pub files: usize,
    pub bytes: u64,
}

/// Where the archive's entries go: a folder (`force`: over existing files), or nowhere (`verify`).
#[derive(Debug, Clone)]
pub enum Into {
    Folder { dir: PathBuf, force: bool },
    CheckOnly,
}

/// Opens the archive of `found` from the first holder whose copy checks out (local first).
pub async fn open_first_good(
    found: &Found<'_>,
    identities: &Identities,
    scratch: &Path,
    into: &Into,
    cancel: &CancellationToken,
) -> Result<Opened> {
    let mut failures = Vec::new();
    for (holder, stored) in &found.holders {
        match open_copy(holder, &stored.manifest, Some(identities), scratch, into, cancel).await {
            Ok(opened) => return Ok(opened),
            Err(e) => {
                tracing::warn!(from = %holder.kind(), error = %format!("{e:#}"), "this copy of the files archive cannot be opened; trying the next");
                failures.push(format!("{}: {e:#}", holder.kind()));
            }
        }
    }
    Err(anyhow!("no copy of {}'s files archive could be opened:\n  {}", found.manifest.id, failures.join("\n  ")))
}

/// Opens one holder's copy of a backup's archive; without identities, only checks its size and sha256.
pub async fn open_copy(
    holder: &Destination,
    manifest: &Manifest,
    identities: Option<&Identities>,
    scratch: &Path,
    into: &Into,
    cancel: &CancellationToken,
) -> Result<Opened> {
    let files = manifest.files.clone().with_context(|| format!("backup {} has no files archive", manifest.id))?;
    // The name from the id, never from the manifest's field.
    let name = manifest.id.files_name();
    let download = scratch.join(format!(".{name}.download"));
    let got = tokio::select! {
        got = holder.artifact_file(&name, files.size, &download) => got,
        () = cancel.cancelled() => Err(crate::interrupt::Interrupted.into()),
    };
    let path = match got? {
        ArtifactFile::InPlace(path) => path,
        ArtifactFile::Downloaded { .. } => download.clone(),
    };
    let (identities, into, cancel) = (identities.cloned(), into.clone(), cancel.clone());
    let opened = tokio::task::spawn_blocking(move || {
        open_file(&path, &files, identities.as_deref().map(|i| &i[..]), &into, &cancel)
    })
    .await?;
    let _ = std::fs::remove_file(&download);
    opened
}

/// Checks the archive file against the manifest, then decrypts, decompresses and reads it entry by entry.
fn open_file(
    path: &Path,
    files: &FilesFacts,
    identities: Option<&[Box<dyn age::Identity + Send + Sync>]>,
    into: &Into,
    cancel: &CancellationToken,
) -> Result<Opened> {
    super::artifact::check_file(path, files.size, &files.sha256, "archive")?;
    let Some(identities) = identities else { return Ok(Opened::default()) };
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let decryptor = age::Decryptor::new_buffered(file).map_err(|e| anyhow!("not an age file: {e}"))?;
    let plain = decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| {
        anyhow!(
            "cannot decrypt the files archive: {e} (is the identity one of [files] recipients? the manifest lists them)"
        )
    })?;
    let tar = zstd::stream::read::Decoder::new(plain).context("cannot start zstd")?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_overwrite(true);
    if let Into::Folder { dir, .. } = into {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    }
    let mut seen = std::collections::HashSet::new();
    let mut opened = Opened::default();
    for entry in archive.entries().context("cannot read the files archive")? {
        if cancel.is_cancelled() {
            return Err(crate::interrupt::Interrupted.into());
        }
        let mut entry = entry.context("cannot read the files archive")?;
        let rel = entry.path().context("a name in the files archive is not a path")?.into_owned();
        let listed = format!("/{}", rel.to_string_lossy().trim_end_matches('/'));
        let facts = files.entry(&listed).with_context(|| {
            format!("the files archive holds {listed}, which its manifest does not list: it was tampered with")
        })?;
        let kind = entry.header().entry_type();
        let same_kind = match facts.kind {
            FileKind::File => kind.is_file(),
            FileKind::Dir => kind.is_dir(),
            FileKind::Symlink => kind.is_symlink(),
        };
        if !same_kind || !seen.insert(listed.clone()) {
            bail!("{listed} in the files archive is not what its manifest lists: it was tampered with");
        }
        match into {
            Into::CheckOnly => {
                if facts.kind == FileKind::File {
                    let mut hasher = Sha256::new();
                    let n = std::io::copy(&mut entry, &mut hasher)?;
                    check_hash(&listed, &hex::encode(hasher.finalize()), facts.sha256.as_deref())?;
                    opened.bytes += n;
                }
            }
            Into::Folder { dir, force } => {
                let target = dir.join(&rel);
                if facts.kind != FileKind::Dir && target.symlink_metadata().is_ok() && !force {
                    bail!("'{}' exists: extract into a new folder, or pass --force to write over it", target.display());
                }
                if facts.kind != FileKind::Dir && target.symlink_metadata().is_ok() {
                    std::fs::remove_file(&target).with_context(|| format!("cannot replace '{}'", target.display()))?;
                }
                // unpack_in refuses to write outside `dir`, through `..` or a symlink.
                if !entry.unpack_in(dir).with_context(|| format!("cannot write '{}'", target.display()))? {
                    bail!("{listed} would land outside '{}': the archive was tampered with", dir.display());
                }
                if facts.kind == FileKind::File {
                    // The mode is the manifest's, never setuid or setgid (a planted archive could ask).
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::Permissions::from_mode(facts.mode & 0o1777);
                    std::fs::set_permissions(&target, mode)
                        .with_context(|| format!("cannot set the mode of '{}'", target.display()))?;
                    let mut written = std::fs::File::open(&target)?;
                    let mut hasher = Sha256::new();
                    opened.bytes += std::io::copy(&mut written, &mut hasher)?;
                    if let Err(e) = check_hash(&listed, &hex::encode(hasher.finalize()), facts.sha256.as_deref()) {
                        let _ = std::fs::remove_file(&target);
                        return Err(e);
                    }
                }
            }
        }
        if facts.kind == FileKind::File {
            opened.files += 1;
        }
    }
    if let Some(missing) = files.entries.iter().find(|e| !seen.contains(&e.path)) {
        bail!("the files archive lacks {}, which its manifest lists: it was tampered with", missing.path);
    }
    Ok(opened)
}

fn check_hash(path: &str, sha: &str, listed: Option<&str>) -> Result<()> {
    if Some(sha) != listed {
        bail!(
            "{path} in the files archive has sha256 {sha}, its manifest says {}: it was tampered with",
            listed.unwrap_or("none")
        );
    }
    Ok(())
}
