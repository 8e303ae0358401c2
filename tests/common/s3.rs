//! An in-process S3 (s3s-fs) on 127.0.0.1 with SigV4 auth, a request log and fault injection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-0123456789";
pub const BUCKET: &str = "etcd-backups";

/// Faults the S3 server can be told to inject.
#[derive(Default)]
pub struct Faults {
    /// After this many successful part uploads, every request fails as if the server went away.
    pub down_after_parts: AtomicUsize,
    pub parts_seen: AtomicUsize,
    pub down: AtomicBool,
    /// After the first part, every part upload fails (the server itself stays up).
    pub fail_later_parts: AtomicBool,
    /// Each part upload is answered this many milliseconds late.
    pub part_delay_ms: std::sync::atomic::AtomicU64,
    pub parts_started: AtomicUsize,
    pub requests: AtomicUsize,
    /// Requests by kind: "list" (ListObjectsV2), "delete" (DeleteObjects), "get", "put", "uploads" (ListMultipartUploads), "other".
    pub counts: std::sync::Mutex<std::collections::HashMap<&'static str, usize>>,
    /// For each UploadPart request: the checksum it carried (`x-amz-checksum-*` header or trailer), if any.
    pub part_checksums: std::sync::Mutex<Vec<Option<String>>>,
    /// Answer every GetObject of an artifact with the part-level CRC32 AWS returns for a multipart object.
    pub part_level_checksum_on_get: AtomicBool,
    /// Answer every part upload with this HTTP status (503: SlowDown-like overload; 500: InternalError).
    pub part_status: std::sync::atomic::AtomicU16,
    /// Every request, in order of arrival: what S3 was asked, for tests of the requests' shape.
    pub log: std::sync::Mutex<Vec<Logged>>,
    /// DeleteObjects refuses this key (a per-object AccessDenied in the answer); the object stays.
    pub refuse_delete: std::sync::Mutex<Option<String>>,
    /// After this many GetObject requests of an artifact (`.age`), every later one fails as if the
    /// server went away (0: never).
    pub artifact_gets_then_down: AtomicUsize,
    pub artifact_gets: AtomicUsize,
}

/// One request the S3 server received.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The `x-amz-*` headers.
    pub amz: std::collections::BTreeMap<String, String>,
    /// For DeleteObjects: the keys it names, in order.
    pub delete_keys: Vec<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// An in-process S3 (s3s-fs over a temp dir) on 127.0.0.1 with SigV4 auth.
pub struct S3 {
    pub endpoint: String,
    pub root: PathBuf,
    /// With `start_tls`: the CA that signed the server's certificate.
    pub pki: Option<Pki>,
    pub faults: Arc<Faults>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct FaultyService {
    inner: s3s::service::S3Service,
    faults: Arc<Faults>,
    /// The store's folder (bucket folders under it).
    root: PathBuf,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for FaultyService {
    type Response =
        <s3s::service::S3Service as hyper::service::Service<hyper::Request<hyper::body::Incoming>>>::Response;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let faults = self.faults.clone();
        let inner = self.inner.clone();
        let root = self.root.clone();
        Box::pin(async move {
            faults.requests.fetch_add(1, Ordering::SeqCst);
            let query = req.uri().query().unwrap_or("");
            let kind = match *req.method() {
                hyper::Method::GET if query.contains("list-type=2") => "list",
                hyper::Method::GET if query.contains("uploads") => "uploads",
                hyper::Method::GET => "get",
                hyper::Method::POST if query.contains("delete") => "delete",
                hyper::Method::PUT => "put",
                _ => "other",
            };
            *faults.counts.lock().unwrap().entry(kind).or_default() += 1;
            if faults.down.load(Ordering::SeqCst) {
                return Err(s3s::HttpError::new("injected: server down".into()));
            }
            let mut logged = Logged {
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
                query: query.to_string(),
                amz: req
                    .headers()
                    .iter()
                    .filter(|(k, _)| k.as_str().starts_with("x-amz-"))
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
                delete_keys: Vec::new(),
                range: req.headers().get("range").and_then(|v| v.to_str().ok()).map(str::to_string),
            };
            if kind == "get" && logged.path.ends_with(".age") {
                let before = faults.artifact_gets.fetch_add(1, Ordering::SeqCst);
                let limit = faults.artifact_gets_then_down.load(Ordering::SeqCst);
                if limit > 0 && before >= limit {
                    faults.log.lock().unwrap().push(logged);
                    return Err(s3s::HttpError::new("injected: server went away".into()));
                }
            }
            if kind == "delete" {
                // Read the request to log its keys (and drop a refused one), then hand it on.
                use http_body_util::BodyExt;
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.map_err(|e| s3s::HttpError::new(Box::new(e)))?.to_bytes();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                logged.delete_keys = text
                    .split("<Key>")
                    .skip(1)
                    .filter_map(|rest| rest.split("</Key>").next())
                    .map(str::to_string)
                    .collect();
                // A refused key: the object is put back after the store deleted it, and the answer says
                // AccessDenied for it (the request itself is signed and must reach the store unchanged).
                let refused = faults.refuse_delete.lock().unwrap().clone().filter(|r| logged.delete_keys.contains(r));
                let bucket_dir = root.join(logged.path.trim_start_matches('/'));
                let kept = refused.as_ref().and_then(|r| std::fs::read(bucket_dir.join(r)).ok());
                faults.log.lock().unwrap().push(logged);
                let response = inner.call(hyper::Request::from_parts(parts, s3s::Body::from(bytes))).await?;
                return Ok(match (refused, kept) {
                    (Some(key), Some(content)) => {
                        std::fs::write(bucket_dir.join(&key), content).unwrap();
                        hyper::Response::builder()
                            .status(200)
                            .body(s3s::Body::from(format!(
                                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Error><Key>{key}</Key><Code>AccessDenied</Code><Message>injected</Message></Error></DeleteResult>"
                            )))
                            .unwrap()
                    }
                    _ => response,
                });
            }
            faults.log.lock().unwrap().push(logged);
            let is_part = req.uri().query().is_some_and(|q| q.contains("partNumber="));
            if is_part {
                let headers = req.headers();
                let checksum = headers
                    .keys()
                    .map(|k| k.as_str())
                    .find(|k| k.starts_with("x-amz-checksum-"))
                    .map(str::to_string)
                    .or_else(|| headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).map(str::to_string));
                faults.part_checksums.lock().unwrap().push(checksum);
                faults.parts_started.fetch_add(1, Ordering::SeqCst);
                let delay = faults.part_delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
            }
            let status = faults.part_status.load(Ordering::SeqCst);
            if is_part && status != 0 {
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected</Message></Error>",
                    if status == 503 { "ServiceUnavailable" } else { "InternalError" }
                );
                let response = hyper::Response::builder().status(status).body(s3s::Body::from(body)).unwrap();
                return Ok(response);
            }
            if is_part
                && faults.fail_later_parts.load(Ordering::SeqCst)
                && faults.parts_seen.load(Ordering::SeqCst) >= 1
            {
                return Err(s3s::HttpError::new("injected: part upload fails".into()));
            }
            let part_level = kind == "get"
                && req.uri().path().ends_with(".age")
                && faults.part_level_checksum_on_get.load(Ordering::SeqCst);
            let mut result = hyper::service::Service::call(&inner, req).await;
            if part_level && let Ok(response) = &mut result {
                response.headers_mut().insert("x-amz-checksum-crc32", "AAAAAA==-3".parse().unwrap());
            }
            if is_part {
                let seen = faults.parts_seen.fetch_add(1, Ordering::SeqCst) + 1;
                let limit = faults.down_after_parts.load(Ordering::SeqCst);
                if limit > 0 && seen >= limit {
                    faults.down.store(true, Ordering::SeqCst);
                }
            }
            result
        })
    }
}

impl S3 {
    /// Starts the server with the bucket `BUCKET` created.
    pub async fn start() -> S3 {
        Self::start_with(false).await
    }

    /// The same over HTTPS, with a certificate from a private CA (`pki.ca`).
    pub async fn start_tls() -> S3 {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> S3 {
        let dir = tempfile::tempdir().unwrap();
        let pki = tls.then(|| Pki::generate(&dir.path().join("pki")));
        let acceptor = pki.as_ref().map(|p| {
            use rustls_pki_types::pem::PemObject;
            let certs =
                rustls_pki_types::CertificateDer::pem_file_iter(&p.server_cert).unwrap().map(Result::unwrap).collect();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&p.server_key).unwrap();
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(&root).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let faults = Arc::new(Faults::default());
        let service = FaultyService { inner: builder.build(), faults: faults.clone(), root: root.clone() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let service = service.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(socket).await else { return };
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(socket), service).await;
                        }
                    }
                });
            }
        });
        S3 { endpoint, root, pki, faults, _dir: dir, task }
    }

    /// The `[s3]` table of a config for this server. It keeps every backup; tests of retention say
    /// their own policy with `config_table_with`.
    pub fn config_table(&self, bucket: &str, prefix: &str) -> String {
        self.config_table_with(bucket, prefix, "{ keep_last = 1000 }")
    }

    /// The `[s3]` table with an inline retention policy, e.g. `{ keep_daily = 7 }`.
    pub fn config_table_with(&self, bucket: &str, prefix: &str, retention: &str) -> String {
        format!(
            "[s3]\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\nforce_path_style = true\npart_size = \"5MiB\"\nretention = {retention}\n",
            self.endpoint
        )
    }

    /// Every object key in the bucket, sorted (walks the store's directory, skipping its metadata).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let base = self.root.join(bucket);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    pub fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        std::fs::read(self.root.join(bucket).join(key)).unwrap()
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(base, &p, out);
        } else {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if !rel.split('/').any(|c| c.starts_with('.')) {
                out.push(rel);
            }
        }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
