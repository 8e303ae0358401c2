//! One backup, top to bottom: connect → precheck → stream the snapshot while checking its trailer,
//! compressing and encrypting it once → fan the encrypted bytes out to every destination → commit each
//! destination on its own, manifest last.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::config::units::format_size;
use crate::errors::{Cause, cause_of, classified};
use crate::manifest::EtcdFacts;
use crate::manifest::{ArtifactFacts, BackupId, Compression, FORMAT_VERSION, Manifest, SnapshotFacts};
use crate::prune::{PruneOptions, PruneReport, prune};
use crate::snapshot::TrailerCheck;
use crate::store::local::LocalStore;
use crate::store::s3::S3Store;
use crate::store::{Destination, Upload};

/// Encrypted bytes are handed to destinations in pieces of this size.
const CHUNK: usize = 1 << 20;
/// Pieces queued per destination before the snapshot stream waits for it.
const QUEUE: usize = 4;

#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub label: Option<String>,
    /// Pin the backup in every destination that commits it.
    pub pin: bool,
    /// Prune each destination after its commit.
    pub prune: bool,
    /// Cancelled (by SIGTERM after the grace period): stop streaming, abort every upload, commit nothing.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl Default for BackupRequest {
    fn default() -> Self {
        BackupRequest { label: None, pin: false, prune: true, cancel: Default::default() }
    }
}

/// What happened to one backup.
#[derive(Debug)]
pub struct BackupReport {
    pub manifest: Manifest,
    pub committed: Vec<&'static str>,
    /// Destinations that did not commit, and pin or prune problems after a commit.
    pub failed: Vec<(&'static str, String)>,
    pub pruned: Vec<PruneReport>,
}

/// Space the local folder needs for a database of `db_size` bytes: the artifact is at most the database
/// plus framing (zstd's worst case and age's 16 bytes per 64 KiB), and a margin for the file system.
pub fn required_local_space(db_size: u64) -> u64 {
    db_size + db_size / 64 + 16 * 1024 * 1024
}

/// Where the plain snapshot comes from: etcd, or (in tests) bytes a real etcd cannot be made to send.
pub trait SnapshotSource: Send {
    /// What the member reported before the snapshot.
    fn facts(&self) -> &EtcdFacts;
    /// Starts the snapshot stream.
    fn open(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// The next piece of the snapshot, or `None` at its end.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
}

/// Takes one backup from `source` (etcd: `etcd::connect`) into every configured destination. `Err` means
/// no destination committed anything; a report with failures means some committed and others did not.
pub async fn write_backup<S: SnapshotSource>(
    settings: &Settings,
    request: &BackupRequest,
    mut source: S,
) -> Result<BackupReport> {
    let etcd = settings.etcd()?;
    let mut started = Utc::now();
    let clock = Instant::now();
    let mut failed: Vec<(&'static str, String)> = Vec::new();
    let facts = source.facts().clone();
    tracing::info!(
        endpoint = %facts.endpoint, member = %facts.member_name, member_id = %facts.member_id,
        version = %facts.version, revision = facts.revision, db_size = facts.db_size,
        "connected to etcd"
    );
    if facts.leader == "0" {
        tracing::warn!(endpoint = %facts.endpoint, "etcd reports no leader; taking the snapshot anyway");
    }
    for alarm in &facts.alarms {
        tracing::warn!(endpoint = %facts.endpoint, %alarm, "etcd has an active alarm; taking the snapshot anyway");
    }

    // Why each destination could not begin or commit, for the retry decision.
    let mut causes = Vec::new();
    let (destinations, unusable) = crate::store::open_all(settings).await;
    for (name, e) in unusable {
        causes.push(cause_of(&e).unwrap_or(Cause::Config));
        failed.push((name, format!("{e:#}")));
    }
    let mut id = BackupId::new(started, facts.revision, &facts.member_id);
    if any_holds(&destinations, &id, settings.compression).await {
        // A backup of this member at this revision was taken this very second (a destination holds it,
        // perhaps one this run's local copy never reached): take the next second.
        let wait = 1000 - u64::from(Utc::now().timestamp_subsec_millis().min(999));
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        started = Utc::now();
        id = BackupId::new(started, facts.revision, &facts.member_id);
    }
    // Where the plain snapshot is checked before anything commits; without it, nothing begins.
    let copy = check_copy(&crate::host::state_dir(), facts.db_size)
        .context("the backup cannot be checked; nothing was committed")?;
    let artifact_name = id.artifact_name(settings.compression);
    let manifest_name = id.manifest_name();
    let mut uploads = Vec::new();

    for destination in &destinations {
        match begin(destination, facts.db_size, &artifact_name, &manifest_name).await {
            Ok(upload) => uploads.push(upload),
            Err(e) => {
                causes.push(cause_of(&e).unwrap_or(Cause::Unreachable));
                failed.push((destination.name(), format!("{e:#}")));
            }
        }
    }
    if uploads.is_empty() {
        return Err(classified(
            Cause::of_all(causes).unwrap_or(Cause::Config),
            format!("no destination can take the backup:\n  {}", describe(&failed)),
        ));
    }

    // Destinations: each drains its own queue; on error it stops, which the encoder notices.
    let mut senders = Vec::new();
    let mut sinks = Vec::new();
    for mut upload in uploads {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        senders.push(tx);
        let cancel = request.cancel.clone();
        sinks.push(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                let written = tokio::select! {
                    written = upload.write(chunk) => written,
                    () = cancel.cancelled() => Err(anyhow!("cancelled")),
                };
                if let Err(e) = written {
                    return (upload, Err(e));
                }
            }
            (upload, Ok(()))
        }));
    }

    let (plain_tx, plain_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let compression = settings.compression;
    let recipients = settings.encryption.recipients.clone();
    let encoder = tokio::task::spawn_blocking(move || encode(plain_rx, senders, compression, &recipients, copy));

    let read = tokio::time::timeout(etcd.snapshot_timeout, async {
        source.open().await?;
        loop {
            let chunk = tokio::select! {
                chunk = source.next_chunk() => chunk?,
                () = request.cancel.cancelled() => return Err(cancelled()),
            };
            let Some(chunk) = chunk else { break };
            tokio::select! {
                sent = plain_tx.send(chunk) => if sent.is_err() {
                    break; // the encoder stopped; its result says why
                },
                () = request.cancel.cancelled() => return Err(cancelled()),
            }
        }
        anyhow::Ok(())
    })
    .await
    .unwrap_or_else(|_| {
        Err(anyhow!(
            "the snapshot took longer than {} (etcd.snapshot_timeout)",
            humantime::format_duration(etcd.snapshot_timeout)
        ))
    });
    drop(plain_tx);

    let encoded = encoder.await.context("the encoder task failed")?;
    let mut finished = Vec::new();
    for sink in sinks {
        finished.push(sink.await.context("a destination task failed")?);
    }

    // A cancelled run commits nothing, even where its upload had finished; nor does a snapshot older
    // than the revision its member reported.
    let checked = read
        .and(encoded)
        .and_then(|e| if request.cancel.is_cancelled() { Err(cancelled()) } else { Ok(e) })
        .and_then(|e| match e.status.check_not_older_than(facts.revision) {
            Ok(()) => Ok(e),
            Err(why) => Err(anyhow!("etcd sent a snapshot that does not match its status: {why}")),
        });
    let encoded = match checked {
        Ok(ok) => ok,
        Err(e) => {
            for (upload, written) in finished {
                if let Err(why) = written {
                    failed.push((upload.destination(), format!("{why:#}")));
                }
                upload.abort().await;
            }
            let mut e = e.context("the backup failed; nothing was committed");
            if !failed.is_empty() {
                e = e.context(format!("destinations failed:\n  {}", describe(&failed)));
            }
            return Err(e);
        }
    };

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        id: id.clone(),
        created: started,
        duration_ms: clock.elapsed().as_millis() as u64,
        cluster: settings.cluster.clone(),
        label: request.label.clone(),
        host: crate::host::hostname(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        etcd: facts,
        snapshot: SnapshotFacts {
            size: encoded.plain_size,
            sha256: encoded.snapshot_sha256,
            status: Some(encoded.status),
        },
        artifact: ArtifactFacts {
            name: artifact_name,
            size: encoded.artifact_size,
            sha256: encoded.artifact_sha256,
            compression: settings.compression.name().to_string(),
            compression_level: match settings.compression {
                Compression::Zstd { level } => Some(level),
                Compression::None => None,
            },
            encryption: "age".to_string(),
            recipients: settings.encryption.recipients.clone(),
        },
    };

    let mut committed = Vec::new();
    for (upload, written) in finished {
        let destination = upload.destination();
        let outcome = match written {
            Ok(()) => upload.commit(&manifest, &request.cancel).await,
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        };
        match outcome {
            Ok(()) => {
                tracing::info!(%destination, id = %id, "backup committed");
                committed.push(destination);
            }
            Err(e) => {
                causes.push(cause_of(&e).unwrap_or(Cause::Unreachable));
                failed.push((destination, format!("{e:#}")));
            }
        }
    }
    tracing::info!(
        id = %id, revision = manifest.etcd.revision, snapshot = %format_size(manifest.snapshot.size),
        artifact = %format_size(manifest.artifact.size), committed = ?committed, failed = failed.len(),
        "backup finished"
    );
    if committed.is_empty() {
        return Err(classified(
            Cause::of_all(causes).unwrap_or(Cause::Unreachable),
            format!("backup {id} was taken but no destination committed it:\n  {}", describe(&failed)),
        ));
    }

    // A pin asked for is part of the backup: it is written even when the run is stopping.
    if request.pin {
        for destination in destinations.iter().filter(|d| committed.contains(&d.name())) {
            if let Err(e) = destination.set_pin(&id, true).await {
                failed.push((destination.name(), format!("committed, but cannot pin it: {e:#}")));
            } else {
                tracing::info!(destination = destination.name(), id = %id, "backup pinned");
            }
        }
    }

    // Stopping (SIGTERM past stop_grace, or an interrupted one-shot run): the backup is committed and
    // stays; catching up and pruning are left to the next run, so the stop is not overrun.
    if request.cancel.is_cancelled() {
        tracing::info!(id = %id, "stopping: the backup is committed; catch-up uploads and pruning are left to the next run");
        return Ok(BackupReport { manifest, committed, failed, pruned: Vec::new() });
    }

    // Backups committed locally while S3 was failing are uploaded now, oldest first, before any pruning.
    if let (Some(Destination::Local(local)), Some(Destination::S3(s3)), Some(s3_settings)) =
        (destinations.first(), destinations.get(1), &settings.s3)
        && committed.contains(&"s3")
    {
        let keep = |candidates: &[crate::retention::Candidate]| {
            crate::retention::plan(candidates, &s3_settings.retention, settings.timezone, Utc::now())
        };
        if let Err(e) = upload_missing(local, s3, keep, &request.cancel).await {
            failed.push(("s3", format!("uploading backups that only the local dir holds: {e:#}")));
        }
    }

    // Each destination that committed is pruned on its own; a destination that failed is not pruned,
    // so a failed upload never costs an older backup.
    let mut pruned = Vec::new();
    for destination in destinations.iter().filter(|d| committed.contains(&d.name())) {
        if request.cancel.is_cancelled() || !request.prune {
            break;
        }
        let options = PruneOptions {
            policy: policy_for(settings, destination).clone(),
            timezone: settings.timezone,
            now: Utc::now(),
            leftover_grace: settings.leftover_grace,
            dry_run: false,
            this_run: Some(id.clone()),
        };
        match prune(destination, &options).await {
            Ok(report) => {
                for e in &report.errors {
                    failed.push((destination.name(), format!("pruning: {e}")));
                }
                pruned.push(report);
            }
            Err(e) => failed.push((destination.name(), format!("pruning failed: {e:#}"))),
        }
    }
    Ok(BackupReport { manifest, committed, failed, pruned })
}

/// Whether any destination already holds backup `id` (a store that cannot be asked counts as not).
async fn any_holds(destinations: &[Destination], id: &BackupId, compression: Compression) -> bool {
    for d in destinations {
        let holds = match d {
            Destination::Local(l) => l.holds(id, compression),
            Destination::S3(s3) => s3.holds(id).await,
        };
        if holds {
            return true;
        }
    }
    false
}

/// The retention policy of a destination.
pub fn policy_for<'a>(settings: &'a Settings, destination: &Destination) -> &'a crate::retention::Policy {
    match (destination, &settings.s3) {
        (Destination::S3(_), Some(s3)) => &s3.retention,
        _ => &settings.local.retention,
    }
}

/// Uploads to S3 the backups the local dir holds and S3 does not, oldest first, pin included; only
/// those S3's retention keeps (`plan` over S3's backups and these), so none is uploaded to be removed at
/// once. Stops between backups, and aborts the one uploading, when `cancel` fires.
pub async fn upload_missing(
    local: &LocalStore,
    s3: &S3Store,
    plan: impl Fn(&[crate::retention::Candidate]) -> Vec<crate::retention::Decision>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Vec<BackupId>> {
    use tokio::io::AsyncReadExt;
    let here = local.list().await?;
    let there = s3.list().await?;
    let missing: Vec<&crate::store::Stored> =
        here.backups.iter().filter(|b| !there.backups.iter().any(|t| t.manifest.id == b.manifest.id)).collect();
    let candidates: Vec<crate::retention::Candidate> = there
        .backups
        .iter()
        .chain(missing.iter().copied())
        .map(|s| crate::retention::Candidate {
            id: s.manifest.id.clone(),
            size: s.manifest.artifact.size,
            pinned: s.pinned,
            this_run: false,
        })
        .collect();
    let decisions = plan(&candidates);
    let mut uploaded = Vec::new();
    let mut failures = Vec::new();
    for stored in missing.into_iter().rev() {
        let m = &stored.manifest;
        if !decisions.iter().any(|d| d.keep && d.id == m.id) {
            tracing::info!(id = %m.id, "not uploading a backup that only the local dir holds: S3's retention would remove it at once");
            continue;
        }
        if cancel.is_cancelled() {
            break;
        }
        let name = m.artifact_name();
        let path = local.folder().join(&name);
        let mut file =
            tokio::fs::File::open(&path).await.with_context(|| format!("cannot open '{}'", path.display()))?;
        let mut upload = match s3.begin(&name, &m.id.manifest_name()).await {
            Ok(upload) => upload,
            // S3 holds a manifest of this id that its listing does not accept (damaged, planted, from a
            // newer version): never overwritten, reported, and no reason to hold back newer backups.
            Err(e) if cause_of(&e) == Some(Cause::Exists) => {
                tracing::warn!(id = %m.id, error = %format!("{e:#}"), "not uploading a backup that only the local dir holds: S3 has a manifest of that id that does not check out (see `etcd-backupd prune --dry-run`)");
                continue;
            }
            Err(e) => return Err(e),
        };
        // The copy that goes off-site is the one the manifest recorded: hashed as it is read.
        let mut hasher = Sha256::new();
        let copied = async {
            loop {
                if cancel.is_cancelled() {
                    return Err(cancelled());
                }
                let mut buf = BytesMut::with_capacity(CHUNK);
                let n = file.read_buf(&mut buf).await.with_context(|| format!("cannot read '{}'", path.display()))?;
                if n == 0 {
                    let sha = hex::encode(hasher.finalize_reset());
                    if sha != m.artifact.sha256 {
                        bail!(
                            "'{}' does not match its manifest (sha256 {sha}, the manifest says {}): the local copy is damaged; it is not uploaded",
                            path.display(),
                            m.artifact.sha256
                        );
                    }
                    return anyhow::Ok(());
                }
                hasher.update(&buf);
                upload.write(buf.freeze()).await?;
            }
        }
        .await;
        // One backup that cannot go (a damaged local copy) holds back none of the others.
        let sent = match copied {
            Ok(()) => upload.commit(m, cancel).await,
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        };
        let pinned = match sent {
            Ok(()) if stored.pinned => s3.set_pin(&m.id, true).await,
            other => other,
        };
        match pinned {
            Ok(()) => {
                tracing::info!(id = %m.id, "uploaded a backup that only the local dir held");
                uploaded.push(m.id.clone());
            }
            Err(e) => failures.push(format!("{}: {e:#}", m.id)),
        }
    }
    if failures.is_empty() { Ok(uploaded) } else { bail!("{}", failures.join("; ")) }
}

fn cancelled() -> anyhow::Error {
    classified(Cause::Cancelled, "the backup was cancelled (etcd-backupd is stopping)")
}

fn describe(failed: &[(&str, String)]) -> String {
    failed.iter().map(|(d, e)| format!("{d}: {e}")).collect::<Vec<_>>().join("\n  ")
}

async fn begin_local(
    local: &LocalStore,
    db_size: u64,
    artifact: &str,
    manifest: &str,
) -> Result<crate::store::local::LocalUpload> {
    local.prepare()?;
    let free = local.free_space()?;
    let needed = required_local_space(db_size);
    if free < needed {
        return Err(classified(
            Cause::NoSpace,
            format!(
                "not enough free space in '{}': {} free, {} needed for a {} database (free space, or point local.dir elsewhere)",
                local.folder().display(),
                format_size(free),
                format_size(needed),
                format_size(db_size)
            ),
        ));
    }
    local.begin(artifact, manifest).await
}

async fn begin(destination: &Destination, db_size: u64, artifact: &str, manifest: &str) -> Result<Upload> {
    match destination {
        Destination::Local(local) => Ok(Upload::Local(begin_local(local, db_size, artifact, manifest).await?)),
        Destination::S3(store) => {
            store.check_bucket().await?;
            Ok(Upload::S3(Box::new(store.begin(artifact, manifest).await?)))
        }
    }
}

/// What the encoder produced.
struct Encoded {
    plain_size: u64,
    /// The trailer, checked.
    snapshot_sha256: String,
    status: crate::snapshot::bbolt::Status,
    artifact_size: u64,
    artifact_sha256: String,
}

/// Runs on a blocking thread: plain chunks in, trailer checked, compressed, encrypted, fanned out.
fn encode(
    mut plain: mpsc::Receiver<Vec<u8>>,
    senders: Vec<mpsc::Sender<Bytes>>,
    compression: Compression,
    recipients: &[String],
    mut copy: std::fs::File,
) -> Result<Encoded> {
    let fanout = FanOut {
        senders: senders.into_iter().map(Some).collect(),
        buf: BytesMut::with_capacity(CHUNK),
        hasher: Sha256::new(),
        size: 0,
    };
    let encrypted = crate::crypto::encrypt_to(recipients, fanout).map_err(|e| anyhow!(e))?;
    let mut sealer = match compression {
        Compression::Zstd { level } => {
            Sealer::Zstd(zstd::stream::write::Encoder::new(encrypted, level).context("cannot start zstd")?)
        }
        Compression::None => Sealer::Age(encrypted),
    };
    let mut check = TrailerCheck::new();
    while let Some(chunk) = plain.blocking_recv() {
        check.update(&chunk);
        copy.write_all(&chunk).map_err(copy_error)?;
        sealer.write_all(&chunk).map_err(write_error)?;
    }
    let fanout = sealer.finish().map_err(write_error)?;
    let plain_size = check.total();
    let (artifact_size, artifact_sha256) = fanout.close().map_err(write_error)?;
    let snapshot_sha256 = check.finish()?;
    // The database itself: every page reachable once, types and bounds sane, and its status.
    let status = crate::snapshot::bbolt::status(&copy)
        .map_err(|e| anyhow!("etcd sent a snapshot that is not a sound database: {e}"))?;
    Ok(Encoded { plain_size, snapshot_sha256, artifact_size, artifact_sha256, status })
}

/// What makes the artifact: zstd then age, or age alone.
enum Sealer<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, age::stream::StreamWriter<W>>),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealer<W> {
    fn write_all(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Sealer::Zstd(z) => z.write_all(chunk),
            Sealer::Age(a) => a.write_all(chunk),
        }
    }

    /// Ends the zstd frame (if any) and the age stream; returns what age wrote into.
    fn finish(self) -> std::io::Result<W> {
        match self {
            Sealer::Zstd(z) => z.finish()?.finish(),
            Sealer::Age(a) => a.finish(),
        }
    }
}

fn write_error(e: std::io::Error) -> anyhow::Error {
    anyhow!("cannot write the encrypted backup: {e}")
}

fn copy_error(e: std::io::Error) -> anyhow::Error {
    anyhow!("cannot write the snapshot's check copy in the state dir: {e}")
}

/// An unnamed file in the state dir for the plain snapshot while it is checked: it has no name, so
/// no plaintext survives a crash, and it is gone when closed.
fn check_copy(state_dir: &std::path::Path, db_size: u64) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(state_dir)
        .with_context(|| format!("cannot create the state dir '{}'", state_dir.display()))?;
    let free = crate::files::free_space(state_dir)?;
    let needed = required_local_space(db_size);
    if free < needed {
        return Err(classified(
            Cause::NoSpace,
            format!(
                "not enough free space in the state dir '{}' to check the snapshot: {} free, {} needed",
                state_dir.display(),
                format_size(free),
                format_size(needed)
            ),
        ));
    }
    crate::files::unnamed_in(state_dir)
        .or_else(|_| {
            // File systems without O_TMPFILE: a named file, unlinked at once.
            let path = state_dir.join(format!(".check-{}.db", std::process::id()));
            let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
            std::fs::remove_file(&path)?;
            Ok::<_, std::io::Error>(f)
        })
        .with_context(|| format!("cannot create the snapshot's check copy in '{}'", state_dir.display()))
}

/// Hashes the artifact and hands it, in `CHUNK` pieces, to every destination still taking it.
struct FanOut {
    senders: Vec<Option<mpsc::Sender<Bytes>>>,
    buf: BytesMut,
    hasher: Sha256,
    size: u64,
}

impl FanOut {
    fn send(&mut self) -> std::io::Result<()> {
        let piece = self.buf.split().freeze();
        for slot in &mut self.senders {
            if let Some(tx) = slot
                && tx.blocking_send(piece.clone()).is_err()
            {
                *slot = None; // that destination failed; it reports why
            }
        }
        if self.senders.iter().all(Option::is_none) {
            return Err(std::io::Error::other("every destination failed"));
        }
        Ok(())
    }

    fn close(mut self) -> std::io::Result<(u64, String)> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok((self.size, hex::encode(self.hasher.finalize_reset())))
    }
}

impl Write for FanOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_space_covers_the_database_and_framing() {
        assert_eq!(required_local_space(0), 16 * 1024 * 1024);
        let gib = 1u64 << 30;
        assert!(required_local_space(gib) > gib + gib / 100);
        assert!(required_local_space(gib) < gib + gib / 10);
    }
}
