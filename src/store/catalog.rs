//! Every destination's backups merged into one catalog: one row per backup id, with the destinations
//! that hold it, for `list`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Destination, Kind, Stored};
use crate::manifest::{BackupId, Manifest};

/// A backup and the destinations that hold it. The manifest shown is the first holder's (local first).
#[derive(Debug, Serialize)]
pub struct Listed {
    pub destinations: Vec<Kind>,
    /// Pinned in any destination.
    pub pinned: bool,
    /// Its chain of delta segments, if it has one: the longest any destination holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainReach>,
    #[serde(flatten)]
    pub manifest: Manifest,
}

/// What a backup's chain of delta segments can restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReach {
    pub segments: usize,
    /// `restore --revision` takes any revision from the backup's to this one.
    pub until_revision: i64,
    /// `restore --at` takes any time from the backup's to this one.
    pub until: chrono::DateTime<chrono::Utc>,
    /// Where the chain stops short of segments that were found, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
    pub destination: Kind,
}

/// The merged rows, newest first, and the destinations that could not be listed.
pub struct Catalog {
    pub rows: Vec<Listed>,
    pub errors: Vec<String>,
}

/// Lists every destination and merges what they hold, with each backup's chain of delta segments.
pub async fn catalog(destinations: &[Destination], cluster: &crate::manifest::ClusterName) -> Catalog {
    let mut listings = Vec::new();
    let mut errors = Vec::new();
    let mut reaches: BTreeMap<BackupId, ChainReach> = BTreeMap::new();
    for destination in destinations {
        match destination.list().await {
            Ok(listing) => {
                if !listing.segments.is_empty() {
                    let (segments, _) =
                        crate::deltas::stored::read_all(&**destination, &listing.segments, cluster).await;
                    for (id, reach) in chains(destination.kind(), &listing.backups, &segments) {
                        let longer = reaches.get(&id).is_none_or(|r| reach.until_revision > r.until_revision);
                        if longer {
                            reaches.insert(id, reach);
                        }
                    }
                }
                listings.push((destination.kind(), listing.backups));
            }
            Err(e) => errors.push(format!("{}: {e:#}", destination.kind())),
        }
    }
    let mut rows = merge(listings);
    for row in &mut rows {
        row.chain = reaches.remove(&row.manifest.id);
    }
    Catalog { rows, errors }
}

/// The chains one destination's segments make from its backups. Pure.
fn chains(
    kind: Kind,
    backups: &[Stored],
    segments: &[crate::deltas::manifest::SegmentManifest],
) -> Vec<(BackupId, ChainReach)> {
    backups
        .iter()
        .filter_map(|b| {
            let base_revision = b.manifest.snapshot.status.as_ref()?.served_revision();
            let chain = crate::deltas::chain::follow(&b.manifest.id, base_revision, segments).taken_by(&b.manifest);
            let found = segments.iter().any(|s| s.id.base() == &b.manifest.id);
            found.then(|| {
                let reach = ChainReach {
                    segments: chain.segments.len(),
                    until_revision: chain.end_revision(),
                    until: chain.end_time(),
                    broken: chain.broken.as_ref().map(ToString::to_string),
                    destination: kind,
                };
                (b.manifest.id.clone(), reach)
            })
        })
        .collect()
}

/// One row per backup id, newest first, in the order the listings come. Pure.
pub fn merge(listings: Vec<(Kind, Vec<Stored>)>) -> Vec<Listed> {
    let mut merged: BTreeMap<BackupId, Listed> = BTreeMap::new();
    for (kind, backups) in listings {
        for stored in backups {
            let entry = merged.entry(stored.manifest.id.clone()).or_insert_with(|| Listed {
                destinations: Vec::new(),
                pinned: false,
                chain: None,
                manifest: stored.manifest,
            });
            entry.destinations.push(kind);
            entry.pinned |= stored.pinned;
        }
    }
    merged.into_values().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn stored(day: u32, host: &str, pinned: bool) -> Stored {
        let mut manifest = crate::manifest::tests::sample();
        let created = chrono::Utc.with_ymd_and_hms(2026, 11, day, 6, 0, 0).unwrap();
        manifest.id = BackupId::new(created, 48211, "8e9e05c52164694d");
        manifest.host = host.into();
        Stored { manifest, pinned }
    }

    #[test]
    fn one_row_per_backup_newest_first_with_every_holder() {
        let rows = merge(vec![
            (Kind::Local, vec![stored(3, "local", false), stored(1, "local", false)]),
            (Kind::S3, vec![stored(3, "s3", true), stored(2, "s3", false)]),
        ]);
        let shape: Vec<(u32, Vec<Kind>, bool, &str)> = rows
            .iter()
            .map(|r| {
                use chrono::Datelike;
                (r.manifest.id.created().day(), r.destinations.clone(), r.pinned, r.manifest.host.as_str())
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (3, vec![Kind::Local, Kind::S3], true, "local"),
                (2, vec![Kind::S3], false, "s3"),
                (1, vec![Kind::Local], false, "local"),
            ],
            "pinned anywhere is pinned; the first holder's manifest is shown"
        );
        assert!(merge(Vec::new()).is_empty());
    }
}
