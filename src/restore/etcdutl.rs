//! etcd's own tool restores a plain snapshot into a new data dir: found (`etcdutl`, or 3.4's `etcdctl`),
//! run into a folder this process owns, and renamed into place only when it succeeded.

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
) -> Result<()> {
    check_new_data_dir(data_dir)?;
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).with_context(|| format!("cannot use '{}'", data_dir.display()))?;
    }
    let (tool, utl) = restore_tool(etcd_bin)?;
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
    })
}
