//! Restore drills: prove a backup restores by restoring it into a temporary data dir, starting a
//! throwaway etcd on loopback, and comparing what that member serves with what the manifest recorded.
//! The comparison and the member's command line are pure; the rest is thin glue around `restore`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;

use crate::config::Settings;
use crate::manifest::Manifest;
use crate::restore::{MemberFlags, Selector};
use tokio_util::sync::CancellationToken;

/// What a member restored from the backup must serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub revision: i64,
    pub keys: u64,
}

/// What the throwaway member served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub revision: i64,
    pub keys: u64,
}

/// The revision and key count a restored member must serve, from the database status in the manifest.
pub fn expected(manifest: &Manifest) -> Result<Expected, String> {
    let status = manifest.snapshot.status.ok_or_else(|| {
        format!("the manifest of {} records no database status (it predates drills): drill a newer backup", manifest.id)
    })?;
    Ok(Expected { revision: status.served_revision(), keys: status.live_keys })
}

/// Compares the member with the manifest; the error says both.
pub fn compare(expected: Expected, observed: Observed) -> Result<(), String> {
    let mut wrong = Vec::new();
    if observed.revision != expected.revision {
        wrong.push(format!("revision {} where the manifest says {}", observed.revision, expected.revision));
    }
    if observed.keys != expected.keys {
        wrong.push(format!("{} keys where the manifest says {}", observed.keys, expected.keys));
    }
    if wrong.is_empty() { Ok(()) } else { Err(format!("the restored member serves {}", wrong.join(" and "))) }
}

pub const DRILL_MEMBER: &str = "etcd-backupd-drill";

fn peer_url(peer_port: u16) -> String {
    format!("http://127.0.0.1:{peer_port}")
}

/// The member flags `snapshot restore` gets for the drill's one-member cluster.
pub fn restore_flags(peer_port: u16) -> MemberFlags {
    MemberFlags {
        name: Some(DRILL_MEMBER.into()),
        initial_cluster: Some(format!("{DRILL_MEMBER}={}", peer_url(peer_port))),
        initial_advertise_peer_urls: Some(peer_url(peer_port)),
        initial_cluster_token: Some(DRILL_MEMBER.into()),
        // The drill checks the revision the manifest recorded.
        bump_revision: None,
    }
}

/// The throwaway member's command line: loopback only, plain HTTP, nothing else of the host's.
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
    args
}

/// The result of a drill that ran.
#[derive(Debug, Clone)]
pub struct DrillReport {
    pub id: crate::manifest::BackupId,
    pub from: crate::store::Kind,
    pub observed: Observed,
    /// The control-plane files restored and checked from its files archive, if it has one.
    pub files: Option<usize>,
    pub duration: Duration,
}

/// Runs a drill: the identity and the etcd tools come from the arguments or the `[drill]` table.
pub async fn drill(
    settings: &Settings,
    selector: &Selector,
    identity: Option<&Path>,
    etcd_bin: Option<&Path>,
    cancel: &CancellationToken,
) -> (Option<crate::manifest::BackupId>, Result<DrillReport>) {
    let mut id = None;
    let result = async {
        let identity = identity.or(settings.drill.identity_file.as_deref()).ok_or_else(|| {
            anyhow!("a drill decrypts the backup: pass --identity FILE or set drill.identity_file in the config")
        })?;
        let etcd_bin = etcd_bin.or(settings.drill.etcd_bin.as_deref());
        let identities = std::sync::Arc::new(crate::crypto::read_identities(identity).map_err(|e| anyhow!(e))?);
        let etcd = etcd_binary(etcd_bin)?;
        crate::restore::restore_tool(etcd_bin)?;
        let started = std::time::Instant::now();
        let (destinations, _) = crate::store::open_all(settings).await;
        let found = crate::restore::find(&destinations, selector).await?;
        id = Some(found.manifest.id.clone());
        // The drill proves the copy a restore would use first (local, else S3), by its own manifest.
        let (holder, stored) = found.holders.first().context("no destination holds the backup")?;
        let m = stored.manifest.clone();
        let expected = expected(&m).map_err(|e| anyhow!(e))?;
        let scratch = crate::scratch::scratch_dir()?;
        let snapshot = scratch.path().join("snapshot.db");
        tracing::info!(id = %m.id, from = %holder.kind(), "drill: fetching and decrypting");
        crate::restore::fetch_and_decrypt(
            holder,
            &m,
            &identities,
            scratch.path(),
            &snapshot,
            crate::restore::Keep::Scratch,
            cancel,
        )
        .await
        .with_context(|| format!("the {} copy of {} cannot be restored", holder.kind(), m.id))?;
        let data = scratch.path().join("data");
        let observed = serve_and_count(&snapshot, &data, &etcd, etcd_bin, settings, cancel).await?;
        compare(expected, observed).map_err(|e| anyhow!("{}: {e}", m.id))?;
        // Its files archive too: every file restored (into the scratch dir) and checked.
        let files = match &m.files {
            Some(_) => {
                let into = crate::restore::files::Into::Folder { dir: scratch.path().join("files"), force: false };
                let opened =
                    crate::restore::files::open_copy(holder, &m, Some(&identities), scratch.path(), &into, cancel)
                        .await
                        .with_context(|| {
                            format!("the {} copy of {}'s files archive cannot be restored", holder.kind(), m.id)
                        })?;
                Some(opened.files)
            }
            None => None,
        };
        Ok(DrillReport { id: m.id.clone(), from: holder.kind(), observed, files, duration: started.elapsed() })
    }
    .await;
    // Whatever a step said when it was stopped (its etcd killed under it, say), the drill was interrupted.
    let result = result.map_err(|e| if cancel.is_cancelled() { crate::interrupt::Interrupted.into() } else { e });
    (id, result)
}

/// `etcd` in `etcd_bin`, else on PATH.
fn etcd_binary(etcd_bin: Option<&Path>) -> Result<PathBuf> {
    crate::restore::tool_dirs(etcd_bin).into_iter().map(|d| d.join("etcd")).find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "a drill starts a throwaway etcd, and no etcd binary was found {}: install etcd (the same major.minor as the cluster) or set drill.etcd_bin / --etcd-bin",
            crate::restore::searched(etcd_bin)
        )
    })
}

/// A free loopback port (the kernel's choice; released just before etcd binds it).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Stops the throwaway member however the drill ends.
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

/// Restores the snapshot, starts etcd on it (retrying on a port race), and counts what it serves.
async fn serve_and_count(
    snapshot: &Path,
    data_dir: &Path,
    etcd: &Path,
    etcd_bin: Option<&Path>,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Observed> {
    let mut last_error = None;
    for _attempt in 0..3 {
        let (client_port, peer_port) = (free_port()?, free_port()?);
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir).with_context(|| format!("cannot clear '{}'", data_dir.display()))?;
        }
        crate::restore::restore_into(snapshot, data_dir, &restore_flags(peer_port), etcd_bin, cancel)?;
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).context("cannot create the drill's etcd log")?;
        let child = crate::interrupt::die_with_parent(&mut Command::new(etcd))
            .args(member_args(data_dir, client_port, peer_port))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start '{}'", etcd.display()))?;
        let mut member = Member(child);
        tracing::info!(port = client_port, "drill: throwaway etcd started");
        let counted = tokio::select! {
            counted = count(&mut member, client_port, settings) => counted,
            () = cancel.cancelled() => return Err(crate::interrupt::Interrupted.into()),
        };
        match counted {
            Ok(observed) => return Ok(observed),
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

/// Waits for the member to serve, then reads its revision and key count. A snapshot with auth enabled
/// needs the [etcd] user (the one that took the backup) to count keys.
async fn count(member: &mut Member, port: u16, settings: &Settings) -> Result<Observed> {
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
                Ok(r) => Ok(r),
                Err(e) if is_auth_error(&e) => {
                    let auth = settings.etcd.as_ref().and_then(|e| e.auth.as_ref()).ok_or_else(|| {
                        etcd_client::Error::InvalidArgs(
                            "the backup has etcd auth enabled: set etcd.username and etcd.password_file (a user with the root role) so the drill can count keys".into(),
                        )
                    })?;
                    let options = crate::etcd::with_user(options, auth)
                        .map_err(|e| etcd_client::Error::InvalidArgs(format!("{e:#}")))?;
                    let mut client = etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?;
                    client.get("", Some(all())).await
                }
                Err(e) => Err(e),
            }
        }
        .await;
        match attempt {
            Ok(response) => {
                let revision = response.header().map(|h| h.revision()).unwrap_or_default();
                return Ok(Observed { revision, keys: response.count() as u64 });
            }
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

/// Records a drill in the state file, the journal and the metrics; returns the state as saved.
/// Tells `[notify]` how a drill went: the webhooks (`drill_success`, `drill_failure`) and the drills'
/// own check (`notify.drill_healthchecks`). Never fails or delays anything.
pub fn notify(
    settings: &Settings,
    id: Option<&crate::manifest::BackupId>,
    result: &Result<DrillReport>,
    pending: &mut crate::alerts::Pending,
) {
    use crate::alerts::Kind;
    let (event, revision, error) = match result {
        Ok(report) => (Kind::DrillSuccess, Some(report.observed.revision), None),
        Err(e) => (Kind::DrillFailure, None, Some(format!("{e:#}"))),
    };
    let event = crate::alerts::Event {
        event,
        cluster: settings.cluster.to_string(),
        host: crate::host::hostname(),
        time: Utc::now(),
        backup_id: id.map(ToString::to_string),
        revision,
        snapshot_bytes: None,
        artifact_bytes: None,
        committed: Vec::new(),
        error,
        covered_by: None,
    };
    crate::alerts::send(&settings.notify, event, pending);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(revision: i64, compact_revision: i64, live_keys: u64) -> crate::snapshot::bbolt::Status {
        crate::snapshot::bbolt::Status {
            hash: 1,
            revision,
            total_key: 99,
            live_keys,
            compact_revision,
            total_size: 1 << 20,
        }
    }

    #[test]
    fn the_expected_revision_accounts_for_compaction() {
        let mut m = crate::manifest::tests::sample();
        m.snapshot.status = Some(status(120, 0, 40));
        assert_eq!(expected(&m), Ok(Expected { revision: 120, keys: 40 }));
        m.snapshot.status = Some(status(120, 125, 40));
        assert_eq!(expected(&m), Ok(Expected { revision: 125, keys: 40 }), "a compaction past the last key");
        m.snapshot.status = None;
        assert!(expected(&m).unwrap_err().contains("drill a newer backup"));
    }

    #[test]
    fn compare_names_every_difference() {
        let e = Expected { revision: 10, keys: 3 };
        assert_eq!(compare(e, Observed { revision: 10, keys: 3 }), Ok(()));
        assert_eq!(
            compare(e, Observed { revision: 9, keys: 3 }).unwrap_err(),
            "the restored member serves revision 9 where the manifest says 10"
        );
        assert_eq!(
            compare(e, Observed { revision: 10, keys: 0 }).unwrap_err(),
            "the restored member serves 0 keys where the manifest says 3"
        );
        assert!(compare(e, Observed { revision: 1, keys: 1 }).unwrap_err().contains(" and "));
    }

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
