//! An artifact uploaded to S3 in parts (one uploads while the next fills), committed by its manifest
//! after a checked CompleteMultipartUpload, or aborted.

use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, StorageClass};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::{S3Store, sse_headers};
use crate::config::ChecksumMode;
use crate::errors::Cause;
use crate::store::{Kind, Writer};

impl S3Store {
    /// Starts a multipart upload of `name`; nothing is visible until `commit`.
    pub async fn start_upload(&self, name: &str, manifest_name: &str) -> Result<S3Upload> {
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
            attached: None,
        })
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
    /// The files archive's key, once put.
    attached: Option<String>,
}

impl S3Upload {
    pub async fn send(&mut self, chunk: Bytes) -> Result<()> {
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

    pub async fn complete_and_commit(
        mut self,
        manifest: &[u8],
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<()> {
        let completed = tokio::select! {
            completed = self.complete() => completed,
            () = cancel.cancelled() => Err(anyhow!("the upload was cancelled (etcd-backupd is stopping)")),
        };
        if let Err(e) = completed {
            self.abort_upload().await;
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
            .body(ByteStream::from(manifest.to_vec()));
        let (sse, kms_key) = sse_headers(&s.sse);
        put = put.set_server_side_encryption(sse).set_ssekms_key_id(kms_key);
        if let Err(e) = put.send().await {
            let err = self.store.explain(e, "writing the manifest");
            // An artifact without its manifest is not a backup: remove it rather than leave it looking like one.
            if let Err(del) = client.delete_object().bucket(&s.bucket).key(&self.key).send().await {
                tracing::warn!(key = %self.key, error = %crate::errors::chain(&del), "cannot remove the uncommitted artifact");
            }
            self.remove_archive().await;
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

    /// Puts the files archive beside the artifact (an object without a manifest is not a backup: the
    /// commit makes it one, an abort removes it).
    pub async fn put_archive(&mut self, name: &str, file: std::fs::File) -> Result<()> {
        let key = format!("{}{name}", self.store.folder);
        self.attached = Some(key.clone());
        let body = ByteStream::read_from()
            .file(tokio::fs::File::from_std(file))
            .build()
            .await
            .context("cannot read the files archive")?;
        let s = &self.store.settings;
        let mut put = self
            .store
            .client
            .put_object()
            .bucket(&s.bucket)
            .key(&key)
            .content_type("application/octet-stream")
            .body(body);
        if let Some(class) = &s.storage_class {
            put = put.storage_class(StorageClass::from(class.as_str()));
        }
        let (sse, kms_key) = sse_headers(&s.sse);
        put = put.set_server_side_encryption(sse).set_ssekms_key_id(kms_key);
        put.send().await.map_err(|e| self.store.explain(e, "uploading the files archive"))?;
        Ok(())
    }

    async fn remove_archive(&mut self) {
        if let Some(key) = self.attached.take() {
            let s = &self.store.settings;
            if let Err(e) = self.store.client.delete_object().bucket(&s.bucket).key(&key).send().await {
                tracing::warn!(%key, error = %crate::errors::chain(&e), "cannot remove the uncommitted files archive");
            }
        }
    }

    pub async fn abort_upload(mut self) {
        self.remove_archive().await;
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

#[async_trait::async_trait]
impl Writer for S3Upload {
    fn kind(&self) -> Kind {
        Kind::S3
    }

    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.send(chunk).await
    }

    async fn attach(&mut self, name: &str, file: std::fs::File) -> Result<()> {
        self.put_archive(name, file).await
    }

    async fn commit(self: Box<Self>, manifest: &[u8], cancel: &tokio_util::sync::CancellationToken) -> Result<()> {
        S3Upload::complete_and_commit(*self, manifest, cancel).await
    }

    async fn abort(self: Box<Self>) {
        S3Upload::abort_upload(*self).await
    }
}
