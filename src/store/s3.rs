//! S3 and S3-compatible stores: `<prefix><cluster>/<id>.db.zst.age` by multipart upload, then the
//! manifest by a single PUT. An upload that does not commit is aborted.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption as SseHeader;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, StorageClass,
};
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore, rustls_provider::CryptoMode};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{Found, Listing, Paired, Stored, accept, pair_up};
use crate::config::{ChecksumMode, Proxy, S3Settings, ServerSideEncryption};
use crate::errors::Cause;
use crate::manifest::BackupId;
use crate::manifest::{ClusterName, Manifest};
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
    /// Builds a client from the settings and the standard AWS credential chain. Makes no request.
    pub async fn new(settings: &S3Settings, cluster: &ClusterName) -> Result<Self> {
        let mut trust = TrustStore::default();
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read s3.ca_file '{}'", ca.display()))?;
            trust = trust.with_pem_certificate(pem);
        }
        let tls = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| anyhow!("cannot use s3.ca_file: {}", crate::errors::chain(&e)))?;
        let proxy = proxy_config(&settings.proxy)?;
        // The builder's own build_https() takes no proxy (and so ignores HTTPS_PROXY): the connector is
        // built here, with the same settings the SDK hands it, plus the proxy.
        let http = aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
            let mut connector = aws_smithy_http_client::Connector::builder();
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector
                .proxy_config(proxy.clone())
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .tls_context(tls.clone())
                .build()
        });
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(settings.force_path_style).timeout_config(
                // A hung store holds an attempt for s3.timeout at most, a whole part included (a read
                // timeout alone never fires while a slow server trickles bytes); three attempts at most.
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10).min(settings.timeout))
                    .read_timeout(settings.timeout)
                    .operation_attempt_timeout(settings.timeout)
                    .operation_timeout(settings.timeout * 3 + Duration::from_secs(30))
                    .build(),
            );
        if sdk.region().is_none() {
            if settings.endpoint.is_none() {
                anyhow::bail!("no S3 region: set s3.region (or AWS_REGION) to the bucket's region");
            }
            // S3-compatible stores mostly ignore the region, but SigV4 needs one.
            config = config.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        if settings.checksums == ChecksumMode::WhenRequired {
            config = config
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let folder = format!("{}{}/", settings.prefix, cluster);
        let at = settings.endpoint.clone().unwrap_or_else(|| "AWS".to_string());
        let place = format!("s3://{}/{} at {}", settings.bucket, folder, at);
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            settings: settings.clone(),
            folder,
            place,
            cluster: cluster.clone(),
        })
    }

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

    /// Starts a multipart upload of `name`; nothing is visible until `commit`.
    pub async fn begin(&self, name: &str, manifest_name: &str) -> Result<S3Upload> {
        let key = format!("{}{name}", self.folder);
        let manifest_key = format!("{}{manifest_name}", self.folder);
        // The manifest is the commit: only a committed backup is never overwritten. An artifact without
        // one was left by an upload interrupted between completing and committing (a crash, a killed
        // run); this upload replaces it.
        if self.exists(&manifest_key).await? {
            return Err(crate::errors::classified(
                Cause::Exists,
                format!("'{manifest_key}' already exists in {}: a backup with this id was already taken", self.place),
            ));
        }
        if self.exists(&key).await? {
            tracing::info!(%key, "replacing an artifact that has no manifest (left by an interrupted upload)");
        }
        let s = &self.settings;
        let mut req =
            self.client.create_multipart_upload().bucket(&s.bucket).key(&key).content_type("application/octet-stream");
        if let Some(class) = &s.storage_class {
            req = req.storage_class(StorageClass::from(class.as_str()));
        }
        if s.checksums == ChecksumMode::WhenSupported {
            req = req.checksum_algorithm(ChecksumAlgorithm::Crc32);
        }
        let (sse, kms_key) = sse_headers(&s.sse);
        req = req.set_server_side_encryption(sse).set_ssekms_key_id(kms_key);
        let out = req.send().await.map_err(|e| self.explain(e, "starting the upload"))?;
        let upload_id = out.upload_id().context("the store started an upload without an upload id")?.to_string();
        Ok(S3Upload {
            store: self.clone(),
            key,
            manifest_key,
            upload_id,
            buffer: BytesMut::new(),
            parts: Vec::new(),
            in_flight: None,
        })
    }

    /// Whether backup `id` is committed here; a store that cannot be asked says no.
    pub async fn holds(&self, id: &BackupId) -> bool {
        self.exists(&format!("{}{}", self.folder, id.manifest_name())).await.unwrap_or(false)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        match self.client.head_object().bucket(&self.settings.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(self.explain(e, "checking for an existing backup")),
        }
    }

    /// The committed backups under this cluster's prefix (newest first), leftovers and strangers.
    pub async fn list(&self) -> Result<Listing> {
        use futures::StreamExt;
        let mut found = Vec::new();
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
                    found.push(Found {
                        name: name.to_string(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                        modified,
                    });
                }
            }
        }
        let Paired { pairs, mut leftovers, mut ignored } = pair_up(&found);
        let reads = futures::stream::iter(pairs.into_iter().map(|pair| async move {
            let key = format!("{}{}", self.folder, pair.manifest_name);
            let read =
                self.get_small(&key).await.and_then(|b| accept(&b, &pair, &self.cluster).map_err(|e| anyhow!(e)));
            (pair, read)
        }))
        .buffered(MANIFEST_READS);
        let mut backups = Vec::new();
        for (pair, read) in reads.collect::<Vec<_>>().await {
            match read {
                Ok(manifest) => backups.push(Stored { manifest, pinned: pair.pinned }),
                Err(why) => {
                    tracing::warn!(key = %pair.manifest_name, why = %format!("{why:#}"), "ignoring a manifest that does not check out");
                    ignored.push((pair.manifest_name, format!("{why:#}")));
                }
            }
        }
        leftovers.extend(self.unfinished_uploads().await);
        Ok(Listing { backups, leftovers, ignored })
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

    /// Removes backups with DeleteObjects in batches of at most 1000 keys: every artifact first, then
    /// the pins and manifests of those whose artifact is gone. Per-object errors are reported.
    pub async fn remove(&self, backups: &[&Stored]) -> Vec<(BackupId, String)> {
        let artifact_keys: Vec<String> =
            backups.iter().map(|b| format!("{}{}", self.folder, b.manifest.artifact_name())).collect();
        let artifact_errors = self.delete_keys(&artifact_keys).await;
        let mut failed = Vec::new();
        let mut markers = Vec::new();
        for (b, key) in backups.iter().zip(&artifact_keys) {
            match artifact_errors.get(key) {
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
    pub async fn clean(&self, leftovers: &[Leftover]) -> Vec<(String, String)> {
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
    pub async fn set_pin(&self, id: &BackupId, pinned: bool) -> Result<()> {
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

    async fn get_small(&self, key: &str) -> Result<Vec<u8>> {
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
        let body = out.body.collect().await.with_context(|| format!("cannot read '{key}'"))?;
        Ok(body.into_bytes().to_vec())
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

/// The proxy to reach the store through: `s3.proxy` if set (`""`: none), else the standard variables
/// HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY (either case). NO_PROXY applies to an explicit proxy too.
fn proxy_config(setting: &Proxy) -> Result<aws_smithy_http_client::proxy::ProxyConfig> {
    use aws_smithy_http_client::proxy::ProxyConfig;
    Ok(match setting {
        Proxy::Environment => ProxyConfig::from_env(),
        Proxy::None => ProxyConfig::disabled(),
        Proxy::Url(url) => {
            let config =
                ProxyConfig::all(url.as_str()).map_err(|e| anyhow!("s3.proxy \"{url}\" cannot be used: {e}"))?;
            match ["NO_PROXY", "no_proxy"].iter().find_map(|v| std::env::var(v).ok()) {
                Some(rules) => config.no_proxy(rules),
                None => config,
            }
        }
    })
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

/// An artifact being uploaded in parts: one part uploads while the next fills.
pub struct S3Upload {
    store: S3Store,
    key: String,
    manifest_key: String,
    upload_id: String,
    buffer: BytesMut,
    parts: Vec<CompletedPart>,
    in_flight: Option<JoinHandle<Result<CompletedPart>>>,
}

impl S3Upload {
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        // Each part gets a buffer of exactly the part size: memory stays at two parts (one filling,
        // one uploading) whatever the snapshot size.
        let part_size = self.store.settings.part_size as usize;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if self.buffer.capacity() == 0 {
                self.buffer = BytesMut::with_capacity(part_size);
            }
            let take = rest.len().min(part_size - self.buffer.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == part_size {
                let part = std::mem::take(&mut self.buffer).freeze();
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self, body: Bytes) -> Result<()> {
        self.wait_in_flight().await?;
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        if number > 10_000 {
            anyhow::bail!("the artifact needs more than 10000 parts: raise s3.part_size");
        }
        let store = self.store.clone();
        let (key, upload_id) = (self.key.clone(), self.upload_id.clone());
        self.in_flight = Some(tokio::spawn(async move {
            let mut req = store
                .client
                .upload_part()
                .bucket(&store.settings.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(body));
            if store.settings.checksums == ChecksumMode::WhenSupported {
                req = req.checksum_algorithm(ChecksumAlgorithm::Crc32);
            }
            let out = req.send().await.map_err(|e| store.explain(e, &format!("uploading part {number}")))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                .build())
        }));
        Ok(())
    }

    async fn wait_in_flight(&mut self) -> Result<()> {
        // The handle stays in place while awaited: if this wait is cancelled, `abort` still stops the part.
        if let Some(handle) = &mut self.in_flight {
            let part = handle.await;
            self.in_flight = None;
            self.parts.push(part.context("part upload task failed")??);
        }
        Ok(())
    }

    pub async fn commit(mut self, manifest: &Manifest, cancel: &tokio_util::sync::CancellationToken) -> Result<()> {
        let completed = tokio::select! {
            completed = self.complete() => completed,
            () = cancel.cancelled() => Err(anyhow!("the upload was cancelled (etcd-backupd is stopping)")),
        };
        if let Err(e) = completed {
            self.abort().await;
            return Err(e);
        }
        let s = &self.store.settings;
        let client = &self.store.client;
        // Manifests stay in the default storage class so they can always be read at once.
        let mut put = client
            .put_object()
            .bucket(&s.bucket)
            .key(&self.manifest_key)
            .content_type("application/json")
            .body(ByteStream::from(manifest.to_json()));
        let (sse, kms_key) = sse_headers(&s.sse);
        put = put.set_server_side_encryption(sse).set_ssekms_key_id(kms_key);
        if let Err(e) = put.send().await {
            let err = self.store.explain(e, "writing the manifest");
            // An artifact without its manifest is not a backup: remove it rather than leave it looking like one.
            if let Err(del) = client.delete_object().bucket(&s.bucket).key(&self.key).send().await {
                tracing::warn!(key = %self.key, error = %crate::errors::chain(&del), "cannot remove the uncommitted artifact");
            }
            return Err(err);
        }
        Ok(())
    }

    /// Uploads what is left and completes the multipart upload: the artifact becomes visible.
    async fn complete(&mut self) -> Result<()> {
        let last = std::mem::take(&mut self.buffer).freeze();
        if !last.is_empty() || self.parts.is_empty() && self.in_flight.is_none() {
            self.send_part(last).await?;
        }
        self.wait_in_flight().await?;
        let s = &self.store.settings;
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(self.parts.clone())).build())
            .send()
            .await
            .map_err(|e| self.store.explain(e, "completing the upload"))?;
        Ok(())
    }

    pub async fn abort(mut self) {
        if let Some(handle) = self.in_flight.take() {
            handle.abort();
            let _ = handle.await;
        }
        let s = &self.store.settings;
        let result = self
            .store
            .client
            .abort_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        match result {
            Ok(_) => tracing::info!(key = %self.key, "aborted the unfinished S3 upload"),
            Err(e) => tracing::warn!(
                key = %self.key,
                upload_id = %self.upload_id,
                error = %crate::errors::chain(&e),
                "cannot abort the unfinished S3 upload; the store keeps its parts until a lifecycle rule or a later cleanup removes them"
            ),
        }
    }
}
