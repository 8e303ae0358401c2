//! Crash-safe files, the one way this crate writes anything that must survive a crash: private (0600)
//! files, `.part` + fsync + rename + fsync of the folder, unnamed (O_TMPFILE) files linked in only when
//! complete, and the free space of a file system. A leaf: it uses no other module of the crate.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;

/// What a file being written is called until it is complete.
pub const PART_SUFFIX: &str = ".part";

/// Bytes available to an unprivileged writer in the file system holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64> {
    let st =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("cannot read free space of '{}'", dir.display()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// A private (0600) file for something fetched or decrypted, replacing a leftover of an earlier try.
/// Never for artifacts: those are created only where nothing exists (`open_new`).
pub fn create_private(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create '{}'", path.display()))
}

/// A file without a name in `dir` (O_TMPFILE, 0600, read and write): whatever is written to it
/// disappears with the process, even one killed with SIGKILL, until `link_unnamed` gives it a name.
pub fn unnamed_in(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir)
}

/// Gives an unnamed file (`unnamed_in`) the name `target`; fails if `target` exists (never replaces,
/// not even a dangling symlink).
pub fn link_unnamed(file: &std::fs::File, target: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        fd_path.as_str(),
        nix::fcntl::AT_FDCWD,
        target,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(std::io::Error::from)
}

/// A new private (0600) file; fails if anything exists at `path`.
pub async fn open_new(path: &Path) -> Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    options.open(path).await.with_context(|| format!("cannot create '{}'", path.display()))
}

/// Writes `bytes` to `folder/name` crash-safely: `.part`, fsync, rename, fsync the folder.
pub async fn write_atomic(folder: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let part = folder.join(format!("{name}{PART_SUFFIX}"));
    let _ = tokio::fs::remove_file(&part).await;
    let mut file = open_new(&part).await?;
    let written = async {
        file.write_all(bytes).await?;
        file.sync_all().await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e).with_context(|| format!("cannot write '{}'", part.display()));
    }
    let target = folder.join(name);
    tokio::fs::rename(&part, &target)
        .await
        .with_context(|| format!("cannot rename '{}' to '{}'", part.display(), target.display()))?;
    sync_dir(folder).await
}

/// Makes a folder's entries (a rename, a new file) durable.
pub async fn sync_dir(folder: &Path) -> Result<()> {
    let dir = tokio::fs::File::open(folder).await.with_context(|| format!("cannot open '{}'", folder.display()))?;
    dir.sync_all().await.with_context(|| format!("cannot fsync '{}'", folder.display()))
}

/// The folder `path` is in (`.` for a bare name).
pub fn folder_of(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    }
}
