//! S3 and S3-compatible stores: `<prefix><cluster>/<id>.db.zst.age` by multipart upload, then the
//! manifest by a single PUT. An upload that does not commit is aborted.

use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::ResponseChecksumValidation;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::ServerSideEncryption as SseHeader;

use chrono::{DateTime, Utc};

mod cache;
mod client;
mod download;
mod remove;
mod upload;

pub use upload::S3Upload;

use super::{ArtifactFile, Found, Kind, Listing, Paired, SegmentPair, Store, Stored, Upload, accept, pair_up};
use crate::config::{S3Settings, ServerSideEncryption};
use crate::errors::Cause;
use crate::manifest::BackupId;
use crate::manifest::ClusterName;
use crate::manifest::Compression;
use crate::manifest::segments::SegmentId;
use crate::progress::Progress;
use crate::retention::{Leftover, LeftoverKind};

/// The largest manifest we read; anything bigger is not ours.
const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Manifests read at once while listing.
const MANIFEST_READS: usize = 16;
/// DeleteObjects takes at most this many keys.
const DELETE_BATCH: usize = 1000;

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    settings: S3Settings,
    /// `<prefix><cluster>/`
    folder: String,
    /// Where, for messages: `s3://bucket/prefix/cluster/ at https://endpoint`.
    place: String,
    cluster: ClusterName,
}

impl S3Store {
    /// `s3://bucket/prefix/cluster/ at ENDPOINT`, for messages.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Checks that the bucket exists and these credentials reach it.
    pub async fn check_bucket(&self) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.settings.bucket)
            .send()
            .await
            .map_err(|e| self.explain(e, "checking the bucket"))?;
        Ok(())
    }

    /// Whether backup `id` is committed here; a store that cannot be asked says no.
    pub async fn has_manifest(&self, id: &BackupId) -> bool {
        self.manifest_found(id).await.unwrap_or(false)
    }

    /// Whether the manifest of `id` is here; `Err` when S3 could not say.
    pub async fn manifest_found(&self, id: &BackupId) -> Result<bool> {
        self.exists(&format!("{}{}", self.folder, id.manifest_name())).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        match self.client.head_object().bucket(&self.settings.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(self.explain(e, "checking for an existing backup")),
        }
    }

    /// The committed backups under this cluster's prefix (newest first), leftovers and strangers. Only
    /// manifests not read before (or changed since) are downloaded; see `cache.rs`.
    pub async fn list_folder(&self) -> Result<Listing> {
        use futures::StreamExt;
        let mut found = Vec::new();
        let mut versions = std::collections::HashMap::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(&self.folder)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.explain(e, "listing backups"))?;
            for object in page.contents() {
                if let Some(name) = object.key().and_then(|k| k.strip_prefix(&self.folder)) {
                    let modified = utc(object.last_modified());
                    let size = object.size().unwrap_or(0).max(0) as u64;
                    let version = cache::Version {
                        etag: object.e_tag().map(str::to_string),
                        modified: object.last_modified().map(|t| t.secs()),
                    };
                    versions.insert(name.to_string(), version);
                    found.push(Found { name: name.to_string(), size, modified });
                }
            }
        }
        let sizes: std::collections::HashMap<&str, u64> = found.iter().map(|f| (f.name.as_str(), f.size)).collect();
        let Paired { pairs, mut leftovers, mut ignored, segments } = pair_up(&found);
        let cache = cache::Cache::for_place(&self.place);
        let cached = cache.load().await;
        let reads = futures::stream::iter(pairs.into_iter().map(|pair| {
            let key = format!("{}{}", self.folder, pair.manifest_name);
            let size = sizes.get(pair.manifest_name.as_str()).copied().unwrap_or(0);
            let hit = versions
                .get(&pair.manifest_name)
                .and_then(|listed| cache::hit(&cached, &key, listed, size))
                .map(|e| (e.manifest.as_bytes().to_vec(), e.version.clone()));
            async move {
                let got = match hit {
                    Some(got) => Ok(got),
                    None => self.get_small(&key).await,
                };
                // What is cached is labelled with the version it was served as, and used while the
                // listing shows that version.
                let read = got.and_then(|(b, version)| {
                    let manifest = accept(&b, &pair, &self.cluster).map_err(|e| anyhow!(e))?;
                    Ok((manifest, b, version))
                });
                (pair, key, read)
            }
        }))
        .buffered(MANIFEST_READS);
        let mut backups = Vec::new();
        let mut keep = std::collections::HashMap::new();
        for (pair, key, read) in reads.collect::<Vec<_>>().await {
            match read {
                Ok((manifest, bytes, version)) => {
                    if let (true, Ok(text)) = (bytes.len() <= cache::MAX_ENTRY, String::from_utf8(bytes)) {
                        keep.insert(key, cache::Entry { version, size: text.len() as u64, manifest: text });
                    }
                    backups.push(Stored { manifest, pinned: pair.pinned });
                }
                Err(why) => {
                    tracing::warn!(key = %pair.manifest_name, why = %format!("{why:#}"), "ignoring a manifest that does not check out");
                    ignored.push((pair.manifest_name, format!("{why:#}")));
                }
            }
        }
        if keep.len() != cached.len() || keep.iter().any(|(k, e)| cached.get(k) != Some(e)) {
            cache.save(keep).await;
        }
        leftovers.extend(self.unfinished_uploads().await);
        Ok(Listing { backups, leftovers, ignored, segments })
    }

    /// Multipart uploads under our prefix that were never completed or aborted. Stores that cannot
    /// list them (or refuse to) give none; the bucket's lifecycle rule is then the safety net.
    async fn unfinished_uploads(&self) -> Vec<Leftover> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.settings.bucket)
                .prefix(&self.folder)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %crate::errors::chain(&e), "the store does not list unfinished uploads");
                    return out;
                }
            };
            for u in page.uploads() {
                let (Some(key), Some(upload_id)) = (u.key(), u.upload_id()) else { continue };
                let Some(name) = key.strip_prefix(&self.folder) else { continue };
                // Only uploads of our names, directly in the cluster folder: anything else is not ours.
                if name.contains('/') || crate::manifest::classify(name) == crate::manifest::Entry::Foreign {
                    continue;
                }
                let time = utc(u.initiated());
                out.push(Leftover {
                    name: name.to_string(),
                    kind: LeftoverKind::Upload,
                    time,
                    upload_id: Some(upload_id.to_string()),
                });
            }
            if page.is_truncated() != Some(true) {
                return out;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return out;
            }
        }
    }

    /// Downloads `name` from the cluster folder into `path` (0600), streaming; returns its size and
    /// sha256 (hex), computed as it arrives.
    pub async fn download(
        &self,
        name: &str,
        path: &std::path::Path,
        progress: &crate::progress::Progress,
    ) -> Result<(u64, String)> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let key = format!("{}{name}", self.folder);
        // The artifact is checked against the manifest's sha256 as it arrives; the SDK's own check
        // cannot check a multipart object (its checksum is per part) and would only warn.
        let no_sdk_check = aws_sdk_s3::config::Builder::default()
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        let out = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(&key)
            .customize()
            .config_override(no_sdk_check)
            .send()
            .await
            .map_err(|e| self.explain(e, "downloading a backup"))?;
        let mut file = tokio::fs::File::from_std(crate::files::create_private(path)?);
        let mut body = out.body;
        while let Some(chunk) = body.try_next().await.with_context(|| format!("downloading '{key}' broke"))? {
            file.write_all(&chunk).await.with_context(|| format!("cannot write '{}'", path.display()))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
        }
        file.flush().await?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// A manifest's bytes and the version they were served as.
    async fn get_small(&self, key: &str) -> Result<(Vec<u8>, cache::Version)> {
        let out = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.explain(e, "reading a manifest"))?;
        if out.content_length().unwrap_or(0) > MAX_MANIFEST_BYTES as i64 {
            anyhow::bail!("'{key}' is too large to be a manifest");
        }
        let version =
            cache::Version { etag: out.e_tag().map(str::to_string), modified: out.last_modified().map(|t| t.secs()) };
        // Read up to the limit, whatever the answer said of its length.
        let mut body = out.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.try_next().await.with_context(|| format!("cannot read '{key}'"))? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_MANIFEST_BYTES {
                anyhow::bail!("'{key}' is too large to be a manifest");
            }
        }
        Ok((bytes, version))
    }

    /// Turns an SDK error into a sentence naming bucket, endpoint and what to check.
    fn explain<E, R>(&self, err: SdkError<E, R>, action: &str) -> anyhow::Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HttpStatus + 'static,
    {
        let status = err.raw_response().map(|r| r.status_code());
        let code = err.code().map(str::to_string);
        let bucket = &self.settings.bucket;
        let hint = match (code.as_deref(), status) {
            (Some("NoSuchBucket" | "NotFound"), _) | (None, Some(404)) => format!(
                "bucket '{bucket}' does not exist: create it, or fix s3.bucket / s3.endpoint / s3.region"
            ),
            (Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken"), _) => {
                "the store rejected the credentials: check the AWS access key and secret (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the shared profile, or the instance role)".to_string()
            }
            (Some("AccessDenied" | "Forbidden"), _) | (None, Some(403)) => format!(
                "access denied: the credentials are wrong or lack permission on bucket '{bucket}' (s3:PutObject, s3:GetObject, s3:ListBucket, s3:AbortMultipartUpload, s3:DeleteObject)"
            ),
            (Some("PermanentRedirect" | "AuthorizationHeaderMalformed"), _) | (None, Some(301)) => {
                "the bucket is in another region: set s3.region to the bucket's region".to_string()
            }
            _ => String::new(),
        };
        let detail = match &err {
            SdkError::ServiceError(_) => {
                let mut d = format!("HTTP {}", status.map_or_else(|| "?".to_string(), |s| s.to_string()));
                if let Some(code) = &code {
                    d += &format!(" {code}");
                }
                if let Some(message) = err.message() {
                    d += &format!(": {message}");
                }
                d
            }
            SdkError::TimeoutError(_) => format!(
                "no answer within {} (s3.timeout; raise it for a slow link): {}",
                humantime::format_duration(self.settings.timeout),
                crate::errors::chain(&err)
            ),
            SdkError::DispatchFailure(_) => {
                let chain = crate::errors::chain(&err);
                if chain.contains("credentials") {
                    format!(
                        "no usable AWS credentials: {chain} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or an instance role)"
                    )
                } else {
                    format!("cannot reach the store: {chain}")
                }
            }
            _ => crate::errors::chain(&err),
        };
        let message = if hint.is_empty() {
            format!("S3 {} failed for {}: {detail}", action, self.place)
        } else {
            format!("S3 {} failed for {}: {hint} ({detail})", action, self.place)
        };
        crate::errors::classified(s3_cause(&err, code.as_deref(), status), message)
    }
}

/// What an S3 failure means for a retry: from the error code and HTTP status, or the kind of failure
/// when no answer came.
fn s3_cause<E, R>(err: &SdkError<E, R>, code: Option<&str>, status: Option<u16>) -> Cause
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match err {
        SdkError::ServiceError(_) => match (code, status) {
            (Some("NoSuchBucket" | "NotFound" | "NoSuchKey"), _) | (None, Some(404)) => Cause::Missing,
            (Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken"), _) => Cause::Auth,
            (Some("AccessDenied" | "Forbidden" | "AllAccessDisabled"), _) | (None, Some(403)) => Cause::Denied,
            (Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "InvalidRequest" | "InvalidArgument"), _)
            | (None, Some(301 | 400)) => Cause::Config,
            (Some("SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout"), _) => Cause::Busy,
            (_, Some(s)) if s >= 500 || s == 429 || s == 408 => Cause::Busy,
            _ => Cause::Denied,
        },
        SdkError::TimeoutError(_) => Cause::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Cause::Timeout,
        SdkError::DispatchFailure(d) if d.is_io() => crate::errors::io_cause(err).unwrap_or(Cause::Unreachable),
        // Building the request failed: no usable credentials, a bad endpoint or region.
        SdkError::DispatchFailure(d) if d.is_user() => Cause::Config,
        SdkError::ConstructionFailure(_) => Cause::Config,
        _ => Cause::Unreachable,
    }
}

/// A store timestamp as UTC; a missing one counts as now (so a leftover without one waits out the grace).
fn utc(t: Option<&aws_smithy_types::DateTime>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())).unwrap_or_else(Utc::now)
}

/// The SSE headers for artifacts and manifests alike.
fn sse_headers(sse: &Option<ServerSideEncryption>) -> (Option<SseHeader>, Option<String>) {
    match sse {
        None => (None, None),
        Some(ServerSideEncryption::S3) => (Some(SseHeader::Aes256), None),
        Some(ServerSideEncryption::Kms { key_id }) => (Some(SseHeader::AwsKms), key_id.clone()),
    }
}

/// The HTTP status of a raw response, whatever its type.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::client::orchestrator::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// The store's contract, by the methods above and in `upload.rs` and `remove.rs`.
#[async_trait::async_trait]
impl Store for S3Store {
    fn kind(&self) -> Kind {
        Kind::S3
    }

    fn place(&self) -> String {
        self.place.clone()
    }

    async fn holds(&self, id: &BackupId, _compression: Compression) -> bool {
        self.has_manifest(id).await
    }

    /// The bucket exists and these credentials reach it.
    async fn ready(&self, _db_size: u64) -> Result<()> {
        self.check_bucket().await
    }

    async fn begin(&self, artifact: &str, manifest: &str) -> Result<Upload> {
        Ok(Box::new(self.start_upload(artifact, manifest).await?))
    }

    async fn list(&self) -> Result<Listing> {
        self.list_folder().await
    }

    async fn read_manifest(&self, name: &str) -> Result<Vec<u8>> {
        Ok(self.get_small(&format!("{}{name}", self.folder)).await?.0)
    }

    async fn remove(&self, backups: &[&Stored]) -> Vec<(BackupId, String)> {
        self.remove_backups(backups).await
    }

    async fn remove_segments(&self, segments: &[&SegmentPair]) -> Vec<(SegmentId, String)> {
        self.remove_segment_objects(segments).await
    }

    async fn clean(&self, leftovers: &[Leftover]) -> Vec<(String, String)> {
        self.clean_leftovers(leftovers).await
    }

    async fn set_pin(&self, id: &BackupId, pinned: bool) -> Result<()> {
        self.write_pin(id, pinned).await
    }

    async fn artifact_file(&self, name: &str, size: u64, download: &std::path::Path) -> Result<ArtifactFile> {
        let progress = Progress::start("downloading", size);
        let (size, sha256) = self.download(name, download, &progress).await?;
        progress.finish();
        Ok(ArtifactFile::Downloaded { size, sha256 })
    }

    async fn artifact_reader(&self, name: &str, size: u64) -> Result<super::reader::ArtifactReader> {
        self.stream_artifact(name, size).await
    }
}
