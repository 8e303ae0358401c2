//! Logging: to the journal when systemd runs us, else readable lines on stderr.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

pub const SYSLOG_IDENTIFIER: &str = "etcd-backupd";

/// True when stderr is connected to the journal (systemd sets JOURNAL_STREAM to its device:inode).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// Installs the global subscriber. `ETCD_BACKUPD_LOG` (or `RUST_LOG`) sets the filter; default `info`.
pub fn init() {
    let filter = EnvFilter::try_from_env("ETCD_BACKUPD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = if stderr_is_journal() {
        tracing_journald::layer().ok().map(|l| l.with_syslog_identifier(SYSLOG_IDENTIFIER.to_string()))
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none(),
            ))
            .init(),
    }
}
