//! A restore to a point in time: the newest base whose chain, in one destination, holds the point;
//! that base made plain like any backup; its segments replayed into a throwaway member on loopback up
//! to the point (one transaction per original revision, so revision numbers are the original's); and
//! the member's database saved again as a plain snapshot at the point, which the caller restores as it
//! would a backup's. Every step is checked: the segments against their manifests, each replayed
//! revision against the original's number, the member's revision at the end against the point.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::chain::{Target, follow};
use super::manifest::SegmentManifest;
use super::replay::{keep_leases_alive, replay};
use super::stored::{read, read_all};
use crate::config::Settings;
use crate::manifest::{BackupId, Manifest};
use crate::restore::{Identities, Keep};
use crate::store::Destination;

/// The chain a restore to a point takes: where, from which base, through which segments.
pub struct Chosen<'a> {
    pub holder: &'a Destination,
    pub base: Manifest,
    pub segments: Vec<SegmentManifest>,
    /// How far toward the point it gets, as far as the manifests tell (`Chain::reach`).
    pub reach: i64,
}

/// What a restore to a point is asked for, and with what: the point, the identities that open the
/// copies, the settings, etcd's binaries, and where the plain snapshot at the point goes (`keep`: made
/// durable, or a scratch file).
pub struct Ask<'r> {
    pub target: Target,
    pub identities: &'r Identities,
    pub settings: &'r Settings,
    pub etcd_bin: Option<&'r Path>,
    pub output: &'r Path,
    pub keep: Keep,
    pub cancel: &'r CancellationToken,
}

/// What a restore to a point made.
#[derive(Debug)]
pub struct AtPoint {
    pub base: BackupId,
    /// The revision the saved snapshot holds.
    pub revision: i64,
    /// Segments replayed (the last perhaps in part).
    pub segments: usize,
    /// When the streamer received that revision (none: the base itself).
    pub received: Option<DateTime<Utc>>,
    /// Keys in the cluster at that revision, as the replayed member counted them (the base's status
    /// without segments).
    pub keys: u64,
}

/// The chains that hold `target`, best first: the one that gets furthest, then the newest base, then
/// the destinations in order (local first), so that a copy that fails falls back to the next. `Err`
/// says what the destinations can restore instead.
pub async fn choose<'a>(
    destinations: &'a [Destination],
    target: Target,
    settings: &Settings,
) -> Result<Vec<Chosen<'a>>> {
    let mut held = Vec::new();
    let mut reach = Vec::new();
    for holder in destinations {
        let listing = match holder.list().await {
            Ok(listing) => listing,
            Err(e) => {
                reach.push(format!("{}: {e:#}", holder.kind()));
                continue;
            }
        };
        let (segments, _) = read_all(&**holder, &listing.segments, &settings.cluster).await;
        // The backups that can show a cluster was quiet after a chain's end: when each began (its
        // snapshot was read after), the revision and keys it holds, of which cluster. Not one dated in
        // the future (a wrong clock) or taken without quorum (a member's stale data).
        let now = chrono::Utc::now();
        let taken: Vec<_> = listing
            .backups
            .iter()
            .filter(|b| !b.manifest.is_emergency() && !crate::retention::is_future_dated(&b.manifest.id, now))
            .filter_map(|b| {
                let status = b.manifest.snapshot.status.as_ref()?;
                let cluster = b.manifest.etcd.cluster_id.to_ascii_lowercase();
                Some((b.manifest.created, status.served_revision(), status.live_keys, cluster))
            })
            .collect();
        for stored in &listing.backups {
            let Some(status) = &stored.manifest.snapshot.status else { continue };
            let chain = follow(&stored.manifest.id, status.served_revision(), &segments).taken_by(&stored.manifest);
            // Of the same cluster, with the keys the chain ends with (the revision is checked by the chain).
            let cluster = stored.manifest.etcd.cluster_id.to_ascii_lowercase();
            let end_keys = chain.segments.last().map_or(Some(status.live_keys), |s| s.live_keys);
            let later: Vec<_> = taken
                .iter()
                .filter(|(_, _, keys, c)| *c == cluster && Some(*keys) == end_keys)
                .map(|&(t, r, ..)| (t, r))
                .collect();
            let needed = match chain.needs_until(target, &later) {
                Ok(needed) => needed,
                Err(_) => {
                    reach.push(format!(
                        "{}: {} holds revisions {} to {} ({} to {}){}",
                        holder.kind(),
                        stored.manifest.id,
                        chain.base_revision,
                        chain.end_revision(),
                        chain.base_taken.format("%Y-%m-%d %H:%M:%S"),
                        chain.end_time().format("%Y-%m-%d %H:%M:%S UTC"),
                        chain.broken.as_ref().map_or(String::new(), |b| format!(", then {b}"))
                    ));
                    continue;
                }
            };
            let reach = chain.reach(needed, target);
            let segments = needed.iter().map(|s| (*s).clone()).collect();
            held.push(Chosen { holder, base: stored.manifest.clone(), segments, reach });
        }
    }
    if held.is_empty() {
        let wanted = match target {
            Target::Revision(r) => format!("revision {r}"),
            Target::Time(t) => format!("{}", t.format("%Y-%m-%d %H:%M:%S UTC")),
        };
        let reach = if reach.is_empty() { "no backup with a known revision".to_string() } else { reach.join("; ") };
        bail!("no backup and chain of delta segments holds {wanted}; the destinations hold: {reach}");
    }
    // The furthest first, then the newest base; stable: equal chains keep the destinations' order.
    held.sort_by(|a, b| (b.reach, &b.base.id).cmp(&(a.reach, &a.base.id)));
    Ok(held)
}

/// What `restore_first_good` restored, through which chain, and why the chains before it failed.
pub struct Restored<'c, 'a> {
    pub at: AtPoint,
    pub through: &'c Chosen<'a>,
    pub failed: Vec<String>,
}

/// At most this many chains are tried for one restore (each downloads a base and replays its segments).
const ATTEMPTS: usize = 4;

/// Restores through the first of `chosen` (best first) that works, each in a fresh folder under
/// `scratch`: a copy that cannot be restored (a damaged or missing base or segment, a store that does
/// not answer) falls back to the next chain that gets as far, at most `ATTEMPTS` in all; never to one
/// that gets less far (for a time, an older point), which is named instead. A failure no other copy
/// mends (no room, the output taken meanwhile, the config or the tools) ends the restore at once.
/// `Err` names why each failed, or says the restore was interrupted.
pub async fn restore_first_good<'c, 'a>(
    chosen: &'c [Chosen<'a>],
    ask: &Ask<'_>,
    scratch: &Path,
) -> Result<Restored<'c, 'a>> {
    let Some(best) = chosen.first() else { bail!("no chain holds the point") };
    let mut failed = Vec::new();
    for through in chosen.iter().filter(|c| c.reach == best.reach).take(ATTEMPTS) {
        let attempt = tempfile::Builder::new().prefix("point-").tempdir_in(scratch)?;
        tracing::info!(base = %through.base.id, segments = through.segments.len(), from = %through.holder.kind(), "restoring to a point");
        let done = restore_to(through, ask, attempt.path()).await;
        drop(attempt);
        let e = match done {
            Ok(at) => return Ok(Restored { at, through, failed }),
            Err(_) if ask.cancel.is_cancelled() => return Err(crate::interrupt::Interrupted.into()),
            Err(e) => e,
        };
        use crate::errors::Cause;
        if matches!(
            crate::errors::cause_of(&e),
            Some(Cause::NoSpace | Cause::Exists | Cause::Config | Cause::Cancelled)
        ) {
            return Err(e.context(format!("restoring through {} in {}", through.base.id, through.holder.kind())));
        }
        let what = format!("{} and its segments in {}: {e:#}", through.base.id, through.holder.kind());
        tracing::warn!(error = %what, "this chain cannot be restored; trying the next");
        failed.push(what);
    }
    let shorter = chosen.iter().find(|c| c.reach < best.reach).map_or(String::new(), |c| {
        format!(
            "\nthe next chain that holds the point, {} in {}, gets only to revision {} (at least): ask for that \
             revision if it will do",
            c.base.id,
            c.holder.kind(),
            c.reach
        )
    });
    bail!("no chain holding the point could be restored:\n  {}{shorter}", failed.join("\n  "))
}

/// Restores `chosen` to the point and writes the plain snapshot at it to the output (a new file, named
/// only once complete; fsynced with its folder when asked to be durable), working in `scratch`.
pub async fn restore_to(chosen: &Chosen<'_>, ask: &Ask<'_>, scratch: &Path) -> Result<AtPoint> {
    let Ask { target, identities, settings, etcd_bin, output, keep, cancel } = *ask;
    let base_file = scratch.join("base.db");
    let base = &chosen.base;
    crate::restore::fetch_and_decrypt(chosen.holder, base, identities, scratch, &base_file, Keep::Scratch, cancel)
        .await
        .with_context(|| format!("the {} copy of {} cannot be restored", chosen.holder.kind(), base.id))?;
    let base_revision = base.snapshot.status.as_ref().map_or(base.etcd.revision, |s| s.served_revision());
    if chosen.segments.is_empty() {
        // The point is the base itself.
        copy_new(&base_file, output, keep)?;
        let keys = base.snapshot.status.as_ref().map_or(0, |s| s.live_keys);
        return Ok(AtPoint { base: base.id.clone(), revision: base_revision, segments: 0, received: None, keys });
    }
    let etcd = crate::throwaway::etcd_binary(etcd_bin)?;
    let data = scratch.join("data");
    let (member, mut client) = crate::throwaway::start(&base_file, &data, &etcd, etcd_bin, settings, cancel).await?;
    let _ = std::fs::remove_file(&base_file);
    let stop = CancellationToken::new();
    let keeping = tokio::spawn(keep_leases_alive(client.clone(), stop.clone()));
    // Interrupted (SIGINT, SIGTERM), the replay and the saving stop where they are; whatever ends
    // them, the keepalive and the member go, and nothing is named at `output`.
    let work = async {
        let replayed = replay_all(chosen, target, identities, &mut client, cancel).await?;
        let keys = save_at(&mut client, replayed.0, output, keep).await?;
        Ok::<_, anyhow::Error>((replayed, keys))
    };
    let done = tokio::select! {
        done = work => done,
        () = cancel.cancelled() => Err(crate::interrupt::Interrupted.into()),
    };
    // Leases stay alive until the snapshot is taken.
    stop.cancel();
    keeping.abort();
    drop(member);
    let ((revision, received), keys) = done?;
    Ok(AtPoint { base: base.id.clone(), revision, segments: chosen.segments.len(), received, keys })
}

/// Replays the chosen segments up to the target: the revision reached, and when it was received.
async fn replay_all(
    chosen: &Chosen<'_>,
    target: Target,
    identities: &Identities,
    client: &mut etcd_client::Client,
    cancel: &CancellationToken,
) -> Result<(i64, Option<DateTime<Utc>>)> {
    let mut granted = std::collections::HashSet::new();
    let mut reached = None;
    for segment in &chosen.segments {
        crate::interrupt::check(cancel)?;
        let revisions = read(&**chosen.holder, segment, identities.clone()).await?;
        // A time is the newest revision received at or before it, in order.
        let until = match target {
            Target::Revision(r) => r,
            Target::Time(t) => match revisions.iter().take_while(|r| r.received <= t).last() {
                Some(last) => last.revision,
                None => break,
            },
        };
        let last = replay(client, &revisions, until, &mut granted).await?;
        if let Some(last) = last {
            let received = revisions.iter().find(|r| r.revision == last).map(|r| r.received);
            reached = Some((last, received));
        }
        if last != Some(segment.last_revision) {
            break;
        }
    }
    let (revision, received) = match reached {
        Some(reached) => reached,
        None => bail!("no revision of the chain from {} is at or before the point", chosen.base.id),
    };
    if let Target::Revision(r) = target
        && r != revision
    {
        bail!("the replay reached revision {revision}, not {r}");
    }
    Ok((revision, received))
}

/// Saves the member's database (which must be at `revision`) to `output` as a plain snapshot; returns
/// the keys it holds.
async fn save_at(client: &mut etcd_client::Client, revision: i64, output: &Path, keep: Keep) -> Result<u64> {
    let all = etcd_client::GetOptions::new().with_all_keys().with_count_only();
    let serving = client.get("\0", Some(all)).await?;
    let at = serving.header().map_or(0, |h| h.revision());
    if at != revision {
        bail!("the replayed member is at revision {at}, not {revision}: something else wrote to it");
    }
    let (mut file, part) = new_file(output)?;
    use std::io::Write;
    let mut stream = client.snapshot().await.context("cannot read the replayed member's snapshot")?;
    while let Some(chunk) = stream.message().await.context("the replayed member's snapshot broke off")? {
        file.write_all(chunk.blob()).with_context(|| format!("cannot write '{}'", output.display()))?;
    }
    name(&file, part, output, keep)?;
    Ok(u64::try_from(serving.count()).unwrap_or(0))
}

/// A `.part` file, removed however its writer ends unless it was named.
struct Part(Option<PathBuf>);

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A new file for `output`: unnamed in its folder where the file system allows (a killed restore leaves
/// nothing), else a `.part` beside it (removed if the write ends early, a dropped future included).
fn new_file(output: &Path) -> Result<(std::fs::File, Part)> {
    match crate::files::unnamed_in(crate::files::folder_of(output)) {
        Ok(file) => Ok((file, Part(None))),
        Err(_) => {
            let name = output.file_name().and_then(|n| n.to_str()).context("the output needs a file name")?;
            let part = output.with_file_name(format!(".{name}.part"));
            Ok((crate::files::create_private(&part)?, Part(Some(part))))
        }
    }
}

/// Names a complete file `output` (never over an existing one), durable with its folder if asked.
fn name(file: &std::fs::File, part: Part, output: &Path, keep: Keep) -> Result<()> {
    if keep == Keep::Durable {
        file.sync_all().with_context(|| format!("cannot fsync '{}'", output.display()))?;
    }
    match &part.0 {
        // Linked, never renamed over whatever appeared at `output` meanwhile; the `.part` then goes
        // with `part`.
        Some(path) => {
            std::fs::hard_link(path, output).with_context(|| format!("cannot create '{}'", output.display()))?
        }
        None => {
            crate::files::link_unnamed(file, output).with_context(|| format!("cannot create '{}'", output.display()))?
        }
    }
    drop(part);
    if keep == Keep::Durable {
        let folder = crate::files::folder_of(output);
        std::fs::File::open(folder)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot fsync '{}'", folder.display()))?;
    }
    Ok(())
}

/// Copies the base's plain snapshot to a new `output`.
fn copy_new(from: &Path, output: &Path, keep: Keep) -> Result<()> {
    let (mut file, part) = new_file(output)?;
    std::fs::File::open(from)
        .and_then(|mut source| std::io::copy(&mut source, &mut file))
        .with_context(|| format!("cannot write '{}'", output.display()))?;
    name(&file, part, output, keep)
}
