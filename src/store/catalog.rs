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
    #[serde(flatten)]
    pub manifest: Manifest,
}

/// The merged rows, newest first, and the destinations that could not be listed.
pub struct Catalog {
    pub rows: Vec<Listed>,
    pub errors: Vec<String>,
}

/// Lists every destination and merges what they hold.
pub async fn catalog(destinations: &[Destination]) -> Catalog {
    let mut listings = Vec::new();
    let mut errors = Vec::new();
    for destination in destinations {
        match destination.list().await {
            Ok(listing) => listings.push((destination.kind(), listing.backups)),
            Err(e) => errors.push(format!("{}: {e:#}", destination.kind())),
        }
    }
    Catalog { rows: merge(listings), errors }
}

/// One row per backup id, newest first, in the order the listings come. Pure.
pub fn merge(listings: Vec<(Kind, Vec<Stored>)>) -> Vec<Listed> {
    let mut merged: BTreeMap<BackupId, Listed> = BTreeMap::new();
    for (kind, backups) in listings {
        for stored in backups {
            let entry = merged.entry(stored.manifest.id.clone()).or_insert_with(|| Listed {
                destinations: Vec::new(),
                pinned: false,
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
