//! Facts of this host that every module may ask for: its name and the service's state dir. A leaf.

use std::path::PathBuf;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/etcd-backupd";

/// The state dir: systemd's `$STATE_DIRECTORY` (from `StateDirectory=`), else /var/lib/etcd-backupd.
pub fn state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// This host's name, as manifests, pins and notifications record it ("" if it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}
