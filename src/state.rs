//! What the daemon remembers across restarts (last success and failure, next run, counters): a small
//! JSON file in the state dir, written crash-safely under its own lock (the daemon, one-shot backups and
//! drills all change it); and the lock that keeps runs from overlapping across processes (the daemon and
//! a one-shot `backup`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::BackupId;
use crate::store::Kind;

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
const STATE_LOCK_FILE: &str = "state.lock";

/// Every field has a default, and each is read on its own (`lenient`): a state file from another version
/// still loads, and a field this version cannot read (an id of an older format, a destination it does not
/// know) is reset alone, never the whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    #[serde(deserialize_with = "lenient")]
    pub last_success: Option<Success>,
    #[serde(deserialize_with = "lenient")]
    pub last_failure: Option<Failure>,
    /// When the last run started (success, failure or unchanged): drives catch-up.
    #[serde(deserialize_with = "lenient")]
    pub last_attempt: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "lenient")]
    pub next_run: Option<DateTime<Utc>>,
    /// Interval of the schedule, for `status` to judge staleness.
    #[serde(deserialize_with = "lenient")]
    pub schedule_interval_secs: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    pub runs: Runs,
    /// Committed backups per destination after the last run.
    #[serde(deserialize_with = "lenient")]
    pub backups: std::collections::BTreeMap<Kind, usize>,
    /// The newest drill that passed: this backup was restored and served by a throwaway etcd.
    #[serde(deserialize_with = "lenient")]
    pub last_proven: Option<Proven>,
    #[serde(deserialize_with = "lenient")]
    pub last_drill_failure: Option<DrillFailure>,
    #[serde(deserialize_with = "lenient")]
    pub drills: DrillRuns,
    /// Backups dated in the future (a clock was wrong when they were taken) that the last run's prune
    /// found: kept, counted for no retention rule, and reported until they are gone.
    #[serde(deserialize_with = "lenient")]
    pub future_dated: Vec<BackupId>,
    /// The last run that did not back up (another run held the lock; cluster mode: a learner, a slot
    /// still held at its end), and why.
    #[serde(deserialize_with = "lenient")]
    pub last_skip: Option<Failure>,
    /// Cluster mode: the newest slot another member covered (this member rightly skipped it).
    #[serde(deserialize_with = "lenient")]
    pub last_covered: Option<crate::coordination::slot::Record>,
    /// The delta stream of this host (`[deltas]`), as it last reported.
    #[serde(deserialize_with = "lenient")]
    pub deltas: Option<DeltaState>,
}

/// How the delta stream stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeltaState {
    /// The backup the current chain starts from.
    pub chain: String,
    /// The newest segment this host committed, and the last revision it holds.
    pub segment: String,
    pub last_revision: i64,
    /// Every change up to this time is in a committed segment (the last close, or etcd's word that
    /// nothing changed since).
    pub covered_until: Option<DateTime<Utc>>,
    /// Revisions etcd had made that no committed segment held, when the stream last heard from it.
    pub lag_revisions: i64,
    /// Segments and bytes this host committed since the state file began.
    pub segments: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proven {
    /// When the drill ran.
    pub time: DateTime<Utc>,
    pub id: BackupId,
    pub revision: i64,
    pub keys: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillFailure {
    pub time: DateTime<Utc>,
    /// The backup drilled, if it was found.
    pub id: Option<BackupId>,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillRuns {
    pub ok: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Success {
    pub time: DateTime<Utc>,
    pub id: BackupId,
    pub revision: i64,
    pub artifact_size: u64,
    pub duration_ms: u64,
    pub destinations: Vec<Kind>,
    /// True when the revision had not changed and nothing was uploaded (`skip_unchanged`).
    #[serde(default)]
    pub unchanged: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub time: DateTime<Utc>,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Runs {
    pub ok: u64,
    pub failed: u64,
    pub unchanged: u64,
    pub skipped: u64,
    /// Cluster mode: slots another member covered.
    pub covered: u64,
}

/// Reads one field of the state file; a value this version cannot read is reported and replaced by the
/// field's default.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(value).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "a field of the state file is not readable; it starts afresh");
        T::default()
    }))
}

impl State {
    /// Reads the state; a missing file is a fresh state, a corrupt one is reported and replaced.
    pub fn load(dir: &Path) -> State {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "the state file is not readable; starting afresh");
                State::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                let fix = not_ours(&path, &e).unwrap_or_default();
                tracing::warn!(path = %path.display(), error = %e, "cannot read the state file; starting afresh{fix}");
                State::default()
            }
        }
    }

    /// Writes the state crash-safely. Hold a [`StateLock`] from the load this state came from until
    /// after the save, or another writer's change is lost.
    pub async fn save(&self, dir: &Path) -> Result<()> {
        ensure_dir(dir)?;
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        crate::files::write_atomic(dir, STATE_FILE, &bytes).await.map_err(|e| {
            let fix = e.downcast_ref::<std::io::Error>().and_then(|io| not_ours(dir, io));
            match fix {
                Some(fix) => e.context(format!("cannot save the state{fix}")),
                None => e,
            }
        })
    }
}

fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| {
        format!("cannot create the state dir '{}' (it must be writable by etcd-backupd)", dir.display())
    })
}

/// The state file's lock: held from loading the state to saving the changed state, so that the daemon,
/// a one-shot backup and a drill never overwrite each other's changes. Held for milliseconds.
pub struct StateLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl StateLock {
    /// Waits for the lock.
    pub async fn take(dir: &Path) -> Result<StateLock> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let locked = flock(&dir, STATE_LOCK_FILE, nix::fcntl::FlockArg::LockExclusive)?;
            let file = locked.with_context(|| format!("cannot lock '{}'", dir.join(STATE_LOCK_FILE).display()))?;
            Ok(StateLock { _file: file })
        })
        .await
        .context("the state lock task failed")?
    }
}

/// Opens (creating) the lock file `name` in the state dir and flocks it: the outer error is the file,
/// the inner one the lock.
fn flock(
    dir: &Path,
    name: &str,
    how: nix::fcntl::FlockArg,
) -> Result<std::result::Result<nix::fcntl::Flock<std::fs::File>, nix::errno::Errno>> {
    ensure_dir(dir)?;
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| {
        let fix = not_ours(&path, &e).unwrap_or_default();
        anyhow::Error::new(e).context(format!("cannot open the lock file '{}'{fix}", path.display()))
    })?;
    Ok(nix::fcntl::Flock::lock(file, how).map_err(|(_, e)| e))
}

/// How fresh the backups are, by the state, the schedule's interval and the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// No backup has succeeded yet.
    NeverBackedUp,
    /// The last success is more than twice the schedule's interval old.
    Overdue {
        last: DateTime<Utc>,
        interval: std::time::Duration,
    },
    /// The last success is dated in the future (the clock was wrong then, or is now): it proves nothing
    /// about how fresh the backups are, so it counts as overdue, never as "fresh until that date".
    FutureDated {
        last: DateTime<Utc>,
    },
}

impl Freshness {
    /// The overdue rule. Pure. Without an interval (a schedule that never fires) any success is fresh.
    pub fn of(
        last_success: Option<DateTime<Utc>>,
        interval: Option<std::time::Duration>,
        now: DateTime<Utc>,
    ) -> Freshness {
        match (last_success, interval) {
            (None, _) => Freshness::NeverBackedUp,
            (Some(last), _) if last > now + crate::retention::FUTURE_TOLERANCE => Freshness::FutureDated { last },
            (Some(last), Some(interval)) if (now - last).to_std().unwrap_or_default() > 2 * interval => {
                Freshness::Overdue { last, interval }
            }
            (Some(_), _) => Freshness::Fresh,
        }
    }

    /// What `status` says when the backups are not fresh.
    pub fn problem(&self) -> Option<String> {
        let at = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        match self {
            Freshness::Fresh => None,
            Freshness::NeverBackedUp => Some("backups are overdue: no backup has succeeded yet".to_string()),
            Freshness::Overdue { last, interval } => Some(format!(
                "backups are overdue: the last success was at {}, more than twice the schedule's interval ({}) ago",
                at(last),
                humantime::format_duration(*interval)
            )),
            Freshness::FutureDated { last } => Some(format!(
                "backups may be overdue: the last success is dated {}, in the future (the clock was wrong then, or is now): check the clock",
                at(last)
            )),
        }
    }
}

/// When `e` denied access to `path` (or to its folder) because another user owns it, the fix: a run as
/// root before the package was installed, or by hand, leaves root-owned files that lock the service out.
fn not_ours(path: &Path, e: &std::io::Error) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return None;
    }
    let me = nix::unistd::geteuid();
    let owned = |p: &Path| std::fs::metadata(p).ok().map(|m| nix::unistd::Uid::from_raw(m.uid()));
    let (culprit, owner) = [Some(path), path.parent()]
        .into_iter()
        .flatten()
        .find_map(|p| owned(p).filter(|o| *o != me).map(|o| (p, o)))?;
    let name = |uid: nix::unistd::Uid| match uid.as_raw() {
        // The overflow id: with PrivateUsers=, every user but root and the service's shows as this.
        65534 => "another user (shown as nobody inside the service's sandbox)".to_string(),
        _ => nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| format!("uid {uid}"), |u| u.name),
    };
    let dir = if path.is_dir() { path } else { path.parent().unwrap_or(path) };
    Some(ownership_fix(&culprit.display().to_string(), &name(owner), &name(me), &dir.display().to_string()))
}

/// The words of [`not_ours`]. Pure.
fn ownership_fix(culprit: &str, owner: &str, me: &str, dir: &str) -> String {
    format!(
        ": '{culprit}' belongs to {owner}, not to {me}, which this runs as (a run as another user, often root, left it); as root, run `chown -R {me}: {dir}` (installing the package again does the same)"
    )
}

/// The run lock is held by another process: the one case in which a run is skipped, not failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "another backup is running (the lock '{}' is held, by the etcd-backupd service or another `etcd-backupd backup`); try again when it has finished",
    path.display()
)]
pub struct LockHeld {
    pub path: PathBuf,
}

/// An exclusive lock on the state dir, held while a backup runs. Released on drop.
pub struct Lock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl Lock {
    /// Takes the lock, or returns `None` if another process holds it.
    pub fn try_take(dir: &Path) -> Result<Option<Lock>> {
        match flock(dir, LOCK_FILE, nix::fcntl::FlockArg::LockExclusiveNonblock)? {
            Ok(file) => Ok(Some(Lock { _file: file })),
            Err(nix::errno::Errno::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot lock '{}'", dir.join(LOCK_FILE).display())),
        }
    }

    /// Takes the lock, waiting up to `wait` for another run to finish.
    pub async fn take(dir: &Path, wait: std::time::Duration) -> Result<Lock> {
        Lock::take_unless(dir, wait, &tokio_util::sync::CancellationToken::new()).await
    }

    /// `take`, the wait ended by `cancel` (SIGINT, SIGTERM) with `Interrupted`.
    pub async fn take_unless(
        dir: &Path,
        wait: std::time::Duration,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Lock> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut told = false;
        loop {
            if let Some(lock) = Lock::try_take(dir)? {
                return Ok(lock);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LockHeld { path: dir.join(LOCK_FILE) }.into());
            }
            if !told {
                tracing::info!(lock = %dir.join(LOCK_FILE).display(), "another backup is running; waiting for it");
                told = true;
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                () = cancel.cancelled() => return Err(crate::interrupt::Interrupted.into()),
            }
        }
    }
}

/// A successful run at `time`, for tests elsewhere.
#[cfg(test)]
pub fn sample_success(time: DateTime<Utc>) -> Success {
    Success {
        time,
        id: BackupId::parse("20261122T060000Z-r48211-a").expect("a valid id"),
        revision: 48211,
        artifact_size: 13_002_342,
        duration_ms: 1500,
        destinations: vec![Kind::Local, Kind::S3],
        unchanged: false,
    }
}

#[cfg(test)]
mod tests;
