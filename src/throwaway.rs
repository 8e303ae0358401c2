//! A throwaway etcd member on loopback, restored from a plain snapshot: what a drill checks, and what a
//! point-in-time restore replays segments into. Its command line is pure; it is stopped (SIGTERM, then
//! SIGKILL) however its owner ends, and its data dir is its owner's scratch.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::restore::MemberFlags;

/// A running throwaway member; stopped when dropped.
pub struct Throwaway {
    _member: Member,
    _log: PathBuf,
}

pub const DRILL_MEMBER: &str = "etcd-backupd-drill";

fn peer_url(peer_port: u16) -> String {
    format!("http://127.0.0.1:{peer_port}")
}

/// The member flags `snapshot restore` gets for the throwaway one-member cluster.
pub fn restore_flags(peer_port: u16) -> MemberFlags {
    MemberFlags {
        name: Some(DRILL_MEMBER.into()),
        initial_cluster: Some(format!("{DRILL_MEMBER}={}", peer_url(peer_port))),
        initial_advertise_peer_urls: Some(peer_url(peer_port)),
        initial_cluster_token: Some(DRILL_MEMBER.into()),
        // A drill checks the revision the manifest recorded; a replay continues from it.
        bump_revision: None,
    }
}

/// Limits a replay needs above etcd's defaults: it makes one transaction of each original revision, and
/// a prefix delete or an expired lease's keys, one operation there, become one operation per key.
pub const REPLAY_LIMITS: [(&str, &str); 2] = [("--max-txn-ops", "1000000"), ("--max-request-bytes", "134217728")];

/// The throwaway member's command line: loopback only, plain HTTP, nothing else of the host's; room for
/// a replay's transactions.
pub fn member_args(data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<OsString> {
    let client = format!("http://127.0.0.1:{client_port}");
    let mut args: Vec<OsString> = vec!["--data-dir".into(), data_dir.into()];
    for (flag, value) in [
        ("--name", DRILL_MEMBER.to_string()),
        ("--listen-client-urls", client.clone()),
        ("--advertise-client-urls", client),
        ("--listen-peer-urls", peer_url(peer_port)),
        ("--initial-advertise-peer-urls", peer_url(peer_port)),
        ("--initial-cluster", format!("{DRILL_MEMBER}={}", peer_url(peer_port))),
        ("--initial-cluster-token", DRILL_MEMBER.to_string()),
        ("--initial-cluster-state", "new".to_string()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    for (flag, value) in REPLAY_LIMITS {
        args.extend([flag.into(), value.into()]);
    }
    args
}

/// `etcd` in `etcd_bin`, else on PATH.
pub fn etcd_binary(etcd_bin: Option<&Path>) -> Result<PathBuf> {
    crate::restore::tool_dirs(etcd_bin).into_iter().map(|d| d.join("etcd")).find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "a drill or a point-in-time restore starts a throwaway etcd, and no etcd binary was found {}: install etcd (the same major.minor as the cluster) or set drill.etcd_bin / --etcd-bin",
            crate::restore::searched(etcd_bin)
        )
    })
}

/// A free loopback port (the kernel's choice; released just before etcd binds it).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Stops the throwaway member however its owner ends.
struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Restores `snapshot` into `data_dir`, starts etcd on it on loopback (retrying on a port race), and
/// connects to it (as the [etcd] user where the snapshot has auth on).
pub async fn start(
    snapshot: &Path,
    data_dir: &Path,
    etcd: &Path,
    etcd_bin: Option<&Path>,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<(Throwaway, etcd_client::Client)> {
    let mut last_error = None;
    for _attempt in 0..3 {
        let (client_port, peer_port) = (free_port()?, free_port()?);
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir).with_context(|| format!("cannot clear '{}'", data_dir.display()))?;
        }
        crate::restore::restore_into(snapshot, data_dir, &restore_flags(peer_port), etcd_bin, cancel)?;
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).context("cannot create the throwaway etcd's log")?;
        let child = crate::interrupt::die_with_parent(&mut Command::new(etcd))
            .args(member_args(data_dir, client_port, peer_port))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start '{}'", etcd.display()))?;
        let mut member = Member(child);
        tracing::info!(port = client_port, "throwaway etcd started");
        let connected = tokio::select! {
            connected = connect(&mut member, client_port, settings) => connected,
            () = cancel.cancelled() => return Err(crate::interrupt::Interrupted.into()),
        };
        match connected {
            Ok(client) => return Ok((Throwaway { _member: member, _log: log_path }, client)),
            Err(e) => {
                let tail = log_tail(&log_path);
                last_error = Some(e.context(format!("the throwaway etcd's last words:\n{tail}")));
                if !tail.contains("address already in use") {
                    break;
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("the throwaway etcd did not start")))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Waits for the member to serve, and connects to it. A snapshot with auth enabled needs the [etcd]
/// user (the one that took the backup) to read and write keys.
async fn connect(member: &mut Member, port: u16, settings: &Settings) -> Result<etcd_client::Client> {
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let all = || etcd_client::GetOptions::new().with_all_keys().with_count_only();
    loop {
        if let Ok(Some(status)) = member.0.try_wait() {
            bail!("the throwaway etcd exited ({status}) before it served");
        }
        let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        let attempt = async {
            let mut client = etcd_client::Client::connect([endpoint.as_str()], Some(options.clone())).await?;
            match client.get("", Some(all())).await {
                Ok(_) => Ok(client),
                Err(e) if is_auth_error(&e) => {
                    let auth = settings.etcd.as_ref().and_then(|e| e.auth.as_ref()).ok_or_else(|| {
                        etcd_client::Error::InvalidArgs(
                            "the backup has etcd auth enabled: set etcd.username and etcd.password_file (a user with the root role) so the throwaway member can be read".into(),
                        )
                    })?;
                    let options = crate::etcd::with_user(options, auth)
                        .map_err(|e| etcd_client::Error::InvalidArgs(format!("{e:#}")))?;
                    let mut client = etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?;
                    client.get("", Some(all())).await.map(|_| client)
                }
                Err(e) => Err(e),
            }
        }
        .await;
        match attempt {
            Ok(client) => return Ok(client),
            Err(e @ etcd_client::Error::InvalidArgs(_)) => return Err(e.into()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow!("the throwaway etcd at {endpoint} did not serve within 60s: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn is_auth_error(e: &etcd_client::Error) -> bool {
    crate::etcd::cause(e) == crate::errors::Cause::Auth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_listens_on_loopback_only() {
        let args: Vec<String> =
            member_args(Path::new("/tmp/d"), 40001, 40002).into_iter().map(|a| a.into_string().unwrap()).collect();
        let text = args.join(" ");
        assert!(text.starts_with("--data-dir /tmp/d --name etcd-backupd-drill"), "{text}");
        assert!(text.contains("--listen-client-urls http://127.0.0.1:40001"), "{text}");
        assert!(text.contains("--listen-peer-urls http://127.0.0.1:40002"), "{text}");
        assert!(text.contains("--initial-cluster etcd-backupd-drill=http://127.0.0.1:40002"), "{text}");
        for (i, a) in args.iter().enumerate() {
            if a.ends_with("-urls") {
                assert!(args[i + 1].starts_with("http://127.0.0.1:"), "{a} {}", args[i + 1]);
            }
        }
        let flags = restore_flags(40002);
        assert_eq!(flags.initial_cluster.as_deref(), Some("etcd-backupd-drill=http://127.0.0.1:40002"));
        assert_eq!(flags.name.as_deref(), Some(DRILL_MEMBER));
    }
}
