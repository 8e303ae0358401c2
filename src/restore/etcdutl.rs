//! etcd's own tool restores a plain snapshot into a new data dir: found (`etcdutl`, or 3.4's `etcdctl`),
//! run into a folder this process owns, and renamed into place only when it succeeded. Where the tool
//! offers them, the revision is raised and marked compacted, so that Kubernetes' watch caches start over.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use tokio_util::sync::CancellationToken;

use crate::interrupt::Interrupted;

/// Member flags for `snapshot restore`.
#[derive(Debug, Clone, Default)]
pub struct MemberFlags {
    pub name: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    pub initial_cluster_token: Option<String>,
    /// Raise the restored revision by this much and mark it compacted (`--bump-revision`,
    /// `--mark-compacted`), where the tool offers both.
    pub bump_revision: Option<u64>,
}

/// OKD's bump: far above any revision a cluster served since the snapshot, so that every client's
/// next watch or list starts over.
pub const DEFAULT_BUMP: u64 = 1_000_000_000;

/// What became of the revision bump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bump {
    /// Raised by this much, and marked compacted.
    Raised(u64),
    /// Asked for, but the tool does not offer the flags (etcd before 3.5.10): the revision is the
    /// snapshot's.
    Unsupported(PathBuf),
    /// Not asked for.
    Off,
}

/// Whether a `snapshot restore --help` text offers both `--bump-revision` and `--mark-compacted`: the
/// help says what this build can do, where a version string would not (backports).
pub fn offers_bump(help: &str) -> bool {
    let flags: Vec<&str> = help.lines().filter_map(flag_of).collect();
    ["--bump-revision", "--mark-compacted"].iter().all(|f| flags.contains(f))
}

/// The flag a help line describes: its first word, after the short form if it has one (`-h, --help`).
fn flag_of(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    match words.next() {
        Some(w) if w.starts_with("--") => Some(w),
        Some(w) if w.starts_with('-') && w.ends_with(',') => words.next(),
        _ => None,
    }
}

/// The tool's own help for `snapshot restore` (stdout and stderr: 3.4 writes it to either).
fn restore_help(tool: &Path, utl: bool) -> String {
    let mut cmd = std::process::Command::new(tool);
    crate::interrupt::die_with_parent(&mut cmd);
    if !utl {
        cmd.env("ETCDCTL_API", "3");
    }
    match cmd.args(["snapshot", "restore", "--help"]).output() {
        Ok(out) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        Err(_) => String::new(),
    }
}

/// Where etcd's binaries are looked for: `etcd_bin` if given (a folder, or one of etcd's binaries in
/// it: `--etcd-bin /opt/etcd/etcd` means its folder), else every folder on PATH.
pub fn tool_dirs(etcd_bin: Option<&Path>) -> Vec<PathBuf> {
    match etcd_bin {
        Some(file) if file.is_file() => vec![file.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)],
        Some(dir) => vec![dir.to_path_buf()],
        None => std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
    }
}

/// "in 'DIR'" or "on PATH", for an error saying a tool was not found.
pub fn searched(etcd_bin: Option<&Path>) -> String {
    match etcd_bin {
        Some(d) => format!("in '{}'", d.display()),
        None => "on PATH".to_string(),
    }
}

/// The tool that restores: `etcdutl` (3.5+) if found, else `etcdctl` (3.4).
pub fn restore_tool(etcd_bin: Option<&Path>) -> Result<(PathBuf, bool)> {
    let dirs = tool_dirs(etcd_bin);
    for (tool, utl) in [("etcdutl", true), ("etcdctl", false)] {
        if let Some(path) = dirs.iter().map(|d| d.join(tool)).find(|p| p.is_file()) {
            return Ok((path, utl));
        }
    }
    bail!(
        "neither etcdutl (etcd 3.5+) nor etcdctl (3.4) was found {}: install etcd's tools or pass --etcd-bin DIR",
        searched(etcd_bin)
    )
}

/// A restore goes into a new data dir: one that does not exist yet, or an empty one.
pub fn check_new_data_dir(data_dir: &Path) -> Result<()> {
    if data_dir.exists() && std::fs::read_dir(data_dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("'{}' is not empty: restore into a new data dir, then swap it in", data_dir.display());
    }
    Ok(())
}

/// Runs `snapshot restore` into `data_dir`, which must not exist or be empty. The tool writes into a
/// sibling folder owned by this process, renamed to `data_dir` only when it succeeded: an interrupted or
/// killed restore never leaves a half-written data dir where etcd would start from it (and the next
/// restore beside it removes what a killed one left).
pub fn restore_into(
    snapshot: &Path,
    data_dir: &Path,
    flags: &MemberFlags,
    etcd_bin: Option<&Path>,
    cancel: &CancellationToken,
) -> Result<Bump> {
    check_new_data_dir(data_dir)?;
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).with_context(|| format!("cannot use '{}'", data_dir.display()))?;
    }
    let (tool, utl) = restore_tool(etcd_bin)?;
    let bump = match flags.bump_revision {
        Some(by) if by > 0 && offers_bump(&restore_help(&tool, utl)) => Bump::Raised(by),
        Some(by) if by > 0 => Bump::Unsupported(tool.clone()),
        _ => Bump::Off,
    };
    let name = data_dir.file_name().context("the data dir needs a name")?.to_string_lossy();
    let parent = crate::files::folder_of(data_dir);
    let prefix = format!(".{name}.restoring-");
    crate::scratch::sweep_owned(parent, &prefix);
    let work = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let mut cmd = std::process::Command::new(&tool);
    crate::interrupt::die_with_parent(&mut cmd);
    if !utl {
        cmd.env("ETCDCTL_API", "3");
    }
    cmd.args(["snapshot", "restore"]).arg(snapshot).arg("--data-dir").arg(&work);
    for (flag, value) in [
        ("--name", &flags.name),
        ("--initial-cluster", &flags.initial_cluster),
        ("--initial-advertise-peer-urls", &flags.initial_advertise_peer_urls),
        ("--initial-cluster-token", &flags.initial_cluster_token),
    ] {
        if let Some(v) = value {
            cmd.arg(flag).arg(v);
        }
    }
    if let Bump::Raised(by) = bump {
        cmd.arg("--bump-revision").arg(by.to_string()).arg("--mark-compacted");
    }
    let out = cmd.output().with_context(|| format!("cannot run '{}'", tool.display()))?;
    if cancel.is_cancelled() {
        let _ = std::fs::remove_dir_all(&work);
        return Err(Interrupted.into());
    }
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&work);
        bail!("{} snapshot restore failed: {}", tool.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    std::fs::rename(&work, data_dir).with_context(|| {
        let _ = std::fs::remove_dir_all(&work);
        format!("cannot move the restored data dir into place at '{}'", data_dir.display())
    })?;
    Ok(bump)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcdutl 3.5.1's help (trimmed), and the same with the flags 3.5.10 added.
    const OLD: &str = "Usage:\n  etcdutl snapshot restore <filename> --data-dir {output dir} [options] [flags]\n\nFlags:\n      --data-dir string                      Path to the output data directory\n  -h, --help                                 help for restore\n      --skip-hash-check                      Ignore snapshot integrity hash value (required if copied from data directory)\n";

    #[test]
    fn the_flags_are_read_from_the_tools_own_help() {
        assert!(!offers_bump(OLD));
        let new = format!(
            "{OLD}      --bump-revision uint                   How much to increase the latest revision after restore\n      --mark-compacted                       Mark the latest revision after restore as the point of scheduled compaction (required if --bump-revision > 0, disallowed otherwise)\n"
        );
        assert!(offers_bump(&new));
        let only_one = format!("{OLD}      --bump-revision uint   How much\n");
        assert!(!offers_bump(&only_one), "both flags, or neither is used");
        assert!(!offers_bump("mentions --bump-revision and --mark-compacted in a sentence\n"));
        assert!(!offers_bump(""), "no help (the tool would not run): no flags");
    }
}
