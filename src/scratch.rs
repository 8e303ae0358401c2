//! Scratch folders for downloads, decrypted snapshots and a drill's data dir: in the state dir (never
//! a tmpfs /tmp by surprise), named by the process that owns them, removed when their owner drops them,
//! and, for a process that was killed, by the next run of any command that uses the state dir.

use std::path::Path;

use anyhow::{Context, Result};

/// Scratch folders are `.etcd-backupd-scratch-<pid>-<random>`.
const SCRATCH_PREFIX: &str = ".etcd-backupd-scratch-";

/// A new scratch folder, removed when dropped; those of runs that were killed are removed first.
pub fn scratch_dir() -> Result<tempfile::TempDir> {
    let base = crate::host::state_dir();
    std::fs::create_dir_all(&base).ok();
    let base = if base.is_dir() { base } else { std::env::temp_dir() };
    sweep(&base);
    tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir_in(base)
        .context("cannot create a scratch folder")
}

/// Removes the scratch folders in `base` whose process no longer runs: no plaintext outlives the next run.
pub fn sweep(base: &Path) {
    sweep_owned(base, SCRATCH_PREFIX);
}

/// Removes the folders `<prefix><pid>…` in `base` whose process `pid` no longer runs.
pub fn sweep_owned(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        let gone =
            matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH));
        if gone && pid > 0 {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed the scratch folder of a run that was killed")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove the scratch folder of a run that was killed")
                }
            }
        }
    }
}
