//! Removing from S3: backups (artifacts first, manifests last) and leftovers in DeleteObjects batches,
//! unfinished uploads aborted, and pins written or removed.

use std::collections::HashMap;

use anyhow::Result;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use chrono::Utc;

use super::{DELETE_BATCH, S3Store, sse_headers};
use crate::manifest::BackupId;
use crate::manifest::segments::SegmentId;
use crate::retention::Leftover;
use crate::store::{SegmentPair, Stored};

impl S3Store {
    /// Removes backups with DeleteObjects in batches of at most 1000 keys: every artifact first, then
    /// the pins and manifests of those whose artifact is gone. Per-object errors are reported.
    pub async fn remove_backups(&self, backups: &[&Stored]) -> Vec<(BackupId, String)> {
        let artifact_keys: Vec<String> =
            backups.iter().map(|b| format!("{}{}", self.folder, b.manifest.artifact_name())).collect();
        // The files archives go with their artifacts (an archive left by a failed delete is a leftover).
        let archives: Vec<String> = backups
            .iter()
            .filter(|b| b.manifest.files.is_some())
            .map(|b| format!("{}{}", self.folder, b.manifest.id.files_name()))
            .collect();
        let archive_errors = self.delete_keys(&archives).await;
        let artifact_errors = self.delete_keys(&artifact_keys).await;
        let mut failed = Vec::new();
        let mut markers = Vec::new();
        for (b, key) in backups.iter().zip(&artifact_keys) {
            let archive = format!("{}{}", self.folder, b.manifest.id.files_name());
            match artifact_errors.get(key).or_else(|| archive_errors.get(&archive)) {
                Some(why) => failed.push((b.manifest.id.clone(), why.clone())),
                None => {
                    markers.push(format!("{}{}", self.folder, b.manifest.id.pin_name()));
                    markers.push(format!("{}{}", self.folder, b.manifest.id.manifest_name()));
                }
            }
        }
        let marker_errors = self.delete_keys(&markers).await;
        for b in backups {
            let manifest_key = format!("{}{}", self.folder, b.manifest.id.manifest_name());
            if let Some(why) = marker_errors.get(&manifest_key) {
                failed.push((
                    b.manifest.id.clone(),
                    format!("artifact removed, manifest not (the next prune finishes it): {why}"),
                ));
            }
        }
        failed
    }

    /// Removes delta segments: every artifact first, then the manifests of those whose artifact went.
    pub async fn remove_segment_objects(&self, segments: &[&SegmentPair]) -> Vec<(SegmentId, String)> {
        let key = |name: &str| format!("{}{name}", self.folder);
        let artifacts: Vec<String> = segments.iter().flat_map(|s| s.artifacts.iter().map(|(n, _)| key(n))).collect();
        let artifact_errors = self.delete_keys(&artifacts).await;
        let mut failed = Vec::new();
        let mut manifests = Vec::new();
        for s in segments {
            match s.artifacts.iter().find_map(|(n, _)| artifact_errors.get(&key(n))) {
                Some(why) => failed.push((s.id.clone(), why.clone())),
                None => manifests.push(key(&s.manifest_name)),
            }
        }
        let manifest_errors = self.delete_keys(&manifests).await;
        for s in segments {
            if let Some(why) = manifest_errors.get(&key(&s.manifest_name)) {
                failed.push((
                    s.id.clone(),
                    format!("artifact removed, manifest not (the next prune finishes it): {why}"),
                ));
            }
        }
        failed
    }

    /// Deletes keys in batches of at most 1000; returns the errors by key.
    async fn delete_keys(&self, keys: &[String]) -> HashMap<String, String> {
        let mut errors = HashMap::new();
        for batch in keys.chunks(DELETE_BATCH) {
            let objects: Vec<ObjectIdentifier> =
                batch.iter().filter_map(|k| ObjectIdentifier::builder().key(k).build().ok()).collect();
            let request = Delete::builder().set_objects(Some(objects)).quiet(true).build();
            let result = match request {
                Ok(delete) => self
                    .client
                    .delete_objects()
                    .bucket(&self.settings.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| format!("{:#}", self.explain(e, "deleting objects"))),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(out) => {
                    for e in out.errors() {
                        let key = e.key().unwrap_or_default().to_string();
                        let why = format!("{}: {}", e.code().unwrap_or("error"), e.message().unwrap_or("no message"));
                        errors.insert(key, why);
                    }
                }
                Err(why) => {
                    for k in batch {
                        errors.insert(k.clone(), why.clone());
                    }
                }
            }
        }
        errors
    }

    /// Removes leftover objects and aborts unfinished uploads.
    pub async fn clean_leftovers(&self, leftovers: &[Leftover]) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let objects: Vec<String> =
            leftovers.iter().filter(|l| l.upload_id.is_none()).map(|l| format!("{}{}", self.folder, l.name)).collect();
        for (key, why) in self.delete_keys(&objects).await {
            failed.push((key.strip_prefix(&self.folder).unwrap_or(&key).to_string(), why));
        }
        for l in leftovers {
            let Some(upload_id) = &l.upload_id else { continue };
            let result = self
                .client
                .abort_multipart_upload()
                .bucket(&self.settings.bucket)
                .key(format!("{}{}", self.folder, l.name))
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(e) = result {
                failed.push((l.name.clone(), format!("{:#}", self.explain(e, "aborting an unfinished upload"))));
            }
        }
        failed
    }

    /// Writes or removes the pin marker of a backup.
    pub async fn write_pin(&self, id: &BackupId, pinned: bool) -> Result<()> {
        let key = format!("{}{}", self.folder, id.pin_name());
        if pinned {
            let note = format!("pinned {} on {}\n", Utc::now().to_rfc3339(), crate::host::hostname());
            let (sse, kms_key) = sse_headers(&self.settings.sse);
            self.client
                .put_object()
                .bucket(&self.settings.bucket)
                .key(&key)
                .content_type("text/plain")
                .set_server_side_encryption(sse)
                .set_ssekms_key_id(kms_key)
                .body(ByteStream::from(note.into_bytes()))
                .send()
                .await
                .map_err(|e| self.explain(e, "writing a pin"))?;
        } else {
            self.client
                .delete_object()
                .bucket(&self.settings.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.explain(e, "removing a pin"))?;
        }
        Ok(())
    }
}
