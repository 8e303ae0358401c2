//! One backup, top to bottom: connect → precheck → stream the snapshot while checking its trailer,
//! compressing and encrypting it once → fan the encrypted bytes out to every destination → commit each
//! destination on its own, manifest last.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::config::units::format_size;
use crate::errors::{Cause, cause_of, classified};
use crate::interrupt::cancelled;
use crate::manifest::EtcdFacts;
use crate::manifest::{ArtifactFacts, BackupId, Compression, FORMAT_VERSION, Manifest, SnapshotFacts};
use crate::store::{Destination, Kind, Upload};

/// Pieces queued per destination before the snapshot stream waits for it.
const QUEUE: usize = 4;

/// What one write needs besides the settings and the destinations: everything it would otherwise read
/// from the environment.
#[derive(Debug, Clone)]
pub struct Write {
    pub label: Option<String>,
    /// Cancelled (by SIGTERM after the grace period): stop streaming, abort every upload, commit nothing.
    pub cancel: tokio_util::sync::CancellationToken,
    /// Where the snapshot check's unnamed scratch file (page summaries) is written: the state dir.
    pub check_dir: std::path::PathBuf,
    /// The host recorded in the manifest.
    pub host: String,
}

/// What one write committed, and where it did not.
#[derive(Debug)]
pub struct Written {
    pub manifest: Manifest,
    pub committed: Vec<crate::store::Kind>,
    /// Destinations that could not be opened, begun or committed, and why.
    pub failed: Vec<(crate::store::Kind, String)>,
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

/// Writes one backup from `source` (etcd: `etcd::connect`) into `destinations` and commits it in each;
/// `unusable` are the configured destinations that could not be opened (`store::open_all`). `Err` means no
/// destination committed anything; failures beside a commit mean some committed and others did not.
/// Stops at the commit: pinning, catching up and pruning are `backup`'s.
pub async fn write_backup<S: SnapshotSource>(
    settings: &Settings,
    request: &Write,
    destinations: &[Destination],
    unusable: Vec<(Kind, anyhow::Error)>,
    source: S,
) -> Result<Written> {
    let etcd = settings.etcd()?;
    let clock = Instant::now();
    let facts = source.facts().clone();
    report_facts(&facts);
    if let Some(rate) = settings.max_rate {
        // The stream must end well inside the timeout: connecting and the ends of the stream take time too.
        let least = crate::pace::Pace::new(rate).time_for(facts.db_size);
        if least.saturating_mul(5) > etcd.snapshot_timeout.saturating_mul(4) {
            return Err(classified(
                Cause::Config,
                format!(
                    "at backup.max_rate = {}/s the {} database takes at least {}, more than 80% of etcd.snapshot_timeout ({}): raise max_rate or snapshot_timeout; nothing was committed",
                    format_size(rate.get()),
                    format_size(facts.db_size),
                    humantime::format_duration(Duration::from_secs(least.as_secs())),
                    humantime::format_duration(etcd.snapshot_timeout)
                ),
            ));
        }
    }
    let mut failures = Failures::default();
    for (kind, e) in unusable {
        failures.add(kind, e, Cause::Config);
    }
    let (started, id) = fresh_id(destinations, &facts, settings.compression).await;
    // The control-plane files first: a path that cannot be read fails the backup before anything begins.
    let archive = match &settings.files {
        Some(files) => Some(
            archive_files(files, settings.compression, &id, &request.check_dir)
                .await
                .map_err(|e| classified(Cause::Config, format!("{e:#}")))
                .context("the backup failed; nothing was committed")?,
        ),
        None => None,
    };
    // Where the snapshot's structure check keeps its page summaries; without it, nothing begins.
    let spill = crate::encode::check_spill(&request.check_dir, facts.db_size)
        .context("the backup cannot be checked; nothing was committed")?;
    let uploads = begin_all(destinations, facts.db_size, &id, settings.compression, &mut failures).await?;
    let (read, encoded, finished) = stream(settings, request, etcd.snapshot_timeout, source, uploads, spill).await?;

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
                    failures.failed.push((upload.kind(), format!("{why:#}")));
                }
                upload.abort().await;
            }
            let mut e = e.context("the backup failed; nothing was committed");
            if !failures.failed.is_empty() {
                e = e.context(format!("destinations failed:\n  {}", describe(&failures.failed)));
            }
            return Err(e);
        }
    };

    let duration_ms = clock.elapsed().as_millis() as u64;
    let (files, archive_file) = archive.unzip();
    let mut manifest = manifest_of(settings, request, &id, started, duration_ms, facts, encoded);
    if files.is_some() {
        manifest.format_version = crate::manifest::FILES_FORMAT_VERSION;
        manifest.files = files;
    }
    let committed = commit_all(finished, &manifest, archive_file.as_ref(), &request.cancel, &mut failures).await;
    tracing::info!(
        id = %id, revision = manifest.etcd.revision, snapshot = %format_size(manifest.snapshot.size),
        artifact = %format_size(manifest.artifact.size), committed = ?committed, failed = failures.failed.len(),
        "backup finished"
    );
    if committed.is_empty() {
        return Err(classified(
            Cause::of_all(failures.causes).unwrap_or(Cause::Unreachable),
            format!("backup {id} was taken but no destination committed it:\n  {}", describe(&failures.failed)),
        ));
    }
    Ok(Written { manifest, committed, failed: failures.failed })
}

/// Where destinations failed, and why, for the report and the retry decision.
#[derive(Default)]
struct Failures {
    failed: Vec<(Kind, String)>,
    causes: Vec<Cause>,
}

impl Failures {
    /// `kind` failed with `e`; `otherwise` is its cause when `e` carries none.
    fn add(&mut self, kind: Kind, e: anyhow::Error, otherwise: Cause) {
        self.causes.push(cause_of(&e).unwrap_or(otherwise));
        self.failed.push((kind, format!("{e:#}")));
    }
}

/// Logs what the member said about itself, and warns of what a backup is taken despite.
fn report_facts(facts: &EtcdFacts) {
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
}

/// The time and id of this backup. When a destination already holds a backup of this member at this
/// revision taken this very second (perhaps one this run's local copy never reached), the next second.
async fn fresh_id(
    destinations: &[Destination],
    facts: &EtcdFacts,
    compression: Compression,
) -> (chrono::DateTime<Utc>, BackupId) {
    let started = Utc::now();
    let id = BackupId::new(started, facts.revision, &facts.member_id);
    if !any_holds(destinations, &id, compression).await {
        return (started, id);
    }
    let wait = 1000 - u64::from(Utc::now().timestamp_subsec_millis().min(999));
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let started = Utc::now();
    (started, BackupId::new(started, facts.revision, &facts.member_id))
}

/// Begins the upload in every destination that is ready for it; `Err` when none is.
async fn begin_all(
    destinations: &[Destination],
    db_size: u64,
    id: &BackupId,
    compression: Compression,
    failures: &mut Failures,
) -> Result<Vec<Upload>> {
    let (artifact, manifest) = (id.artifact_name(compression), id.manifest_name());
    let mut uploads = Vec::new();
    for destination in destinations {
        match begin(destination, db_size, &artifact, &manifest).await {
            Ok(upload) => uploads.push(upload),
            Err(e) => failures.add(destination.kind(), e, Cause::Unreachable),
        }
    }
    if uploads.is_empty() {
        return Err(classified(
            Cause::of_all(failures.causes.clone()).unwrap_or(Cause::Config),
            format!("no destination can take the backup:\n  {}", describe(&failures.failed)),
        ));
    }
    Ok(uploads)
}

/// What streaming left: how reading the snapshot ended, the encoder's result, and each upload with how
/// its writing ended.
type Streamed = (Result<()>, Result<crate::encode::Encoded>, Vec<(Upload, Result<()>)>);

/// Streams the snapshot from `source` through the encoder (checked, compressed, encrypted once) into every
/// upload, each draining its own queue; a destination that fails stops, which the encoder notices.
async fn stream<S: SnapshotSource>(
    settings: &Settings,
    request: &Write,
    timeout: std::time::Duration,
    mut source: S,
    uploads: Vec<Upload>,
    spill: std::fs::File,
) -> Result<Streamed> {
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
    let encoder =
        tokio::task::spawn_blocking(move || crate::encode::encode(plain_rx, senders, compression, &recipients, spill));

    let mut pace = settings.max_rate.map(crate::pace::Pace::new);
    let read = tokio::time::timeout(timeout, async {
        source.open().await?;
        let began = tokio::time::Instant::now();
        loop {
            let chunk = tokio::select! {
                chunk = source.next_chunk() => chunk?,
                () = request.cancel.cancelled() => return Err(cancelled()),
            };
            let Some(chunk) = chunk else { break };
            let due = pace.as_mut().map(|p| began + p.read(chunk.len() as u64, began.elapsed()));
            tokio::select! {
                sent = plain_tx.send(chunk) => if sent.is_err() {
                    break; // the encoder stopped; its result says why
                },
                () = request.cancel.cancelled() => return Err(cancelled()),
            }
            // [backup] max_rate: not reading is what slows etcd's sender (flow control), nothing queues.
            if let Some(due) = due {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = request.cancel.cancelled() => return Err(cancelled()),
                }
            }
        }
        anyhow::Ok(())
    })
    .await
    .unwrap_or_else(|_| {
        Err(anyhow!("the snapshot took longer than {} (etcd.snapshot_timeout)", humantime::format_duration(timeout)))
    });
    drop(plain_tx);

    let encoded = encoder.await.context("the encoder task failed")?;
    let mut finished = Vec::new();
    for sink in sinks {
        finished.push(sink.await.context("a destination task failed")?);
    }
    Ok((read, encoded, finished))
}

/// The manifest that commits this backup.
fn manifest_of(
    settings: &Settings,
    request: &Write,
    id: &BackupId,
    started: chrono::DateTime<Utc>,
    duration_ms: u64,
    facts: EtcdFacts,
    encoded: crate::encode::Encoded,
) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        id: id.clone(),
        created: started,
        duration_ms,
        cluster: settings.cluster.clone(),
        label: request.label.clone(),
        host: request.host.clone(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        etcd: facts,
        snapshot: SnapshotFacts {
            size: encoded.plain_size,
            sha256: encoded.snapshot_sha256,
            status: Some(encoded.status),
        },
        artifact: ArtifactFacts {
            name: id.artifact_name(settings.compression),
            size: encoded.artifact_size,
            sha256: encoded.artifact_sha256,
            compression: settings.compression.kind(),
            compression_level: settings.compression.level(),
            encryption: "age".to_string(),
            recipients: settings.encryption.recipients.iter().map(|k| k.as_str().to_string()).collect(),
        },
        files: None,
    }
}

/// Writes the files archive (`archive`, the file `archive_files` wrote) into an upload, read from its
/// start: the uploads attach it one after another, so the shared file offset is theirs in turn.
async fn attach_archive(upload: &mut Upload, manifest: &Manifest, archive: Option<&std::fs::File>) -> Result<()> {
    let Some(file) = archive else { return Ok(()) };
    use std::io::Seek;
    let mut file = file.try_clone().context("cannot reopen the files archive")?;
    file.rewind().context("cannot read the files archive")?;
    upload.attach(&manifest.id.files_name(), file).await
}

/// The files archive of backup `id`, written (on a blocking thread) to an unnamed file in `dir` that
/// disappears with the process: what the manifest records of it, and the file.
async fn archive_files(
    files: &crate::config::FilesSettings,
    compression: Compression,
    id: &BackupId,
    dir: &std::path::Path,
) -> Result<(crate::manifest::FilesFacts, std::fs::File)> {
    let (files, id, dir) = (files.clone(), id.clone(), dir.to_path_buf());
    let level = compression.level().unwrap_or(3);
    tokio::task::spawn_blocking(move || {
        let paths = crate::archive::collect(&files)?;
        let file = crate::files::unnamed_in(&dir)
            .with_context(|| format!("cannot write the files archive in '{}'", dir.display()))?;
        let mut facts = crate::archive::write(&paths, &files.recipients, level, &id, file.try_clone()?)?;
        facts.preset = files.preset;
        tracing::info!(files = facts.entries.len(), size = facts.size, "control-plane files archived");
        Ok((facts, file))
    })
    .await
    .context("the files archive task failed")?
}

/// Commits every upload that wrote the whole artifact (manifest last) and aborts the others: the kinds
/// that committed.
async fn commit_all(
    finished: Vec<(Upload, Result<()>)>,
    manifest: &Manifest,
    archive: Option<&std::fs::File>,
    cancel: &tokio_util::sync::CancellationToken,
    failures: &mut Failures,
) -> Vec<Kind> {
    let mut committed = Vec::new();
    for (mut upload, written) in finished {
        let destination = upload.kind();
        let written = match written {
            Ok(()) => attach_archive(&mut upload, manifest, archive).await,
            Err(e) => Err(e),
        };
        let outcome = match written {
            Ok(()) => upload.commit(&manifest.to_json(), cancel).await,
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        };
        match outcome {
            Ok(()) => {
                tracing::info!(%destination, id = %manifest.id, "backup committed");
                committed.push(destination);
            }
            Err(e) => failures.add(destination, e, Cause::Unreachable),
        }
    }
    committed
}

/// Whether any destination already holds backup `id` (a store that cannot be asked counts as not).
async fn any_holds(destinations: &[Destination], id: &BackupId, compression: Compression) -> bool {
    for d in destinations {
        if d.holds(id, compression).await {
            return true;
        }
    }
    false
}

fn describe(failed: &[(Kind, String)]) -> String {
    failed.iter().map(|(d, e)| format!("{d}: {e}")).collect::<Vec<_>>().join("\n  ")
}

async fn begin(destination: &Destination, db_size: u64, artifact: &str, manifest: &str) -> Result<Upload> {
    destination.ready(db_size).await?;
    destination.begin(artifact, manifest).await
}
