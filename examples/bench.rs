//! The benchmark's helpers (bench/run), one binary with four commands:
//!
//! - `s3 ROOT PORT`: an S3 server (s3s-fs over ROOT, SigV4 with the bench's keys) on 127.0.0.1:PORT that
//!   prints one line per request, its kind (`list`, `get`, `put`, `delete`, `uploads`, `other`), so that
//!   the script can count what a command asked.
//! - `fill ENDPOINT COUNT BYTES`: puts COUNT values of BYTES base64 characters (random bytes, which
//!   compress about as well as Kubernetes objects do) under /registry/bench/.
//! - `writer ENDPOINT PUTS_PER_SECOND`: puts 1 KiB values at a steady rate, open loop (each put starts on
//!   schedule whether or not the last one returned, so a slow member shows as latency, not as fewer
//!   puts), printing `<unix ms when due> <latency µs> <ok|err>` per put, until killed.
//! - `plant DIR CLUSTER COUNT`: COUNT committed-looking backups of CLUSTER (manifest and a small
//!   artifact) in DIR, one a minute up to now, for the prune benchmark.
//! - `acked ENDPOINT PUTS_PER_SECOND`: puts new keys `/rpo/<n>` at a steady rate, printing
//!   `<unix ms when acknowledged> <n>` for each put etcd acknowledged, until killed (bench/deltas' RPO).
//! - `burst ENDPOINT COUNT`: COUNT puts of small values as fast as the member takes them, 64 at a time
//!   (a long history of revisions in little time).

use std::sync::Arc;

use futures::StreamExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ACCESS_KEY: &str = "bench";
const SECRET_KEY: &str = "bench-secret-key";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| usage());
    match args.first().map(String::as_str) {
        Some("s3") => s3(arg(1), num(2) as u16).await,
        Some("fill") => fill(&arg(1), num(2), num(3) as usize).await,
        Some("writer") => writer(&arg(1), num(2)).await,
        Some("plant") => plant(&arg(1), &arg(2), num(3)),
        Some("acked") => acked(&arg(1), num(2)).await,
        Some("burst") => burst(&arg(1), num(2)).await,
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench s3 ROOT PORT | fill ENDPOINT COUNT BYTES | writer ENDPOINT RATE | plant DIR CLUSTER COUNT | acked ENDPOINT RATE | burst ENDPOINT COUNT"
    );
    std::process::exit(2)
}

async fn connect(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None).await.unwrap_or_else(|e| {
        eprintln!("bench: cannot connect to {endpoint}: {e}");
        std::process::exit(1)
    })
}

#[derive(Clone)]
struct Counting {
    inner: s3s::service::S3Service,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Counting {
    type Response =
        <s3s::service::S3Service as hyper::service::Service<hyper::Request<hyper::body::Incoming>>>::Response;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let query = req.uri().query().unwrap_or("");
        let kind = match *req.method() {
            hyper::Method::GET if query.contains("list-type=2") => "list",
            hyper::Method::GET if query.contains("uploads") => "uploads",
            hyper::Method::GET => "get",
            hyper::Method::POST if query.contains("delete") => "delete",
            hyper::Method::PUT => "put",
            _ => "other",
        };
        println!("{kind}");
        let inner = self.inner.clone();
        Box::pin(async move { hyper::service::Service::call(&inner, req).await })
    }
}

async fn s3(root: String, port: u16) {
    let fs = s3s_fs::FileSystem::new(&root).unwrap_or_else(|e| {
        eprintln!("bench: cannot serve {root}: {e:?}");
        std::process::exit(1)
    });
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = Counting { inner: builder.build() };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap_or_else(|e| {
        eprintln!("bench: cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1)
    });
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let service = service.clone();
        tokio::spawn(async move {
            let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(socket), service).await;
        });
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    bytes
        .chunks(3)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            (0..=c.len()).map(move |i| ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char)
        })
        .collect()
}

async fn fill(endpoint: &str, count: u64, bytes: usize) {
    let client = connect(endpoint).await;
    // A loaded member can time a large put out ("context deadline exceeded"): each is tried again.
    let puts = futures::stream::iter(0..count).map(|i| {
        let mut client = client.clone();
        async move {
            let mut raw = vec![0u8; bytes * 3 / 4];
            getrandom::getrandom(&mut raw).unwrap_or_default();
            let value = base64(&raw);
            let mut tries = 0;
            loop {
                tries += 1;
                match client.put(format!("/registry/bench/{i:08}"), value.as_str(), None).await {
                    Err(_) if tries < 10 => tokio::time::sleep(Duration::from_secs(1)).await,
                    done => return done,
                }
            }
        }
    });
    let mut puts = puts.buffer_unordered(2);
    while let Some(put) = puts.next().await {
        if let Err(e) = put {
            eprintln!("bench: a put failed: {e}");
            std::process::exit(1);
        }
    }
}

async fn writer(endpoint: &str, rate: u64) {
    let client = connect(endpoint).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u128, u128, bool)>();
    tokio::spawn(async move {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout());
        while let Some((due, latency, ok)) = rx.recv().await {
            let _ = writeln!(out, "{due} {latency} {}", if ok { "ok" } else { "err" });
            if rx.is_empty() {
                let _ = out.flush();
            }
        }
    });
    let value = Arc::new("v".repeat(1024));
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0u64.. {
        ticks.tick().await;
        let due = Instant::now();
        let due_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let (mut client, tx, value) = (client.clone(), tx.clone(), value.clone());
        tokio::spawn(async move {
            let put = client.put(format!("/bench/writer/{}", i % 1000), value.as_bytes(), None);
            let ok = matches!(tokio::time::timeout(Duration::from_secs(10), put).await, Ok(Ok(_)));
            let _ = tx.send((due_ms, due.elapsed().as_micros(), ok));
        });
    }
}

async fn acked(endpoint: &str, rate: u64) {
    let client = connect(endpoint).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u128, u64)>();
    tokio::spawn(async move {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout());
        while let Some((at, n)) = rx.recv().await {
            let _ = writeln!(out, "{at} {n}");
            if rx.is_empty() {
                let _ = out.flush();
            }
        }
    });
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0u64.. {
        ticks.tick().await;
        let (mut client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            if client.put(format!("/rpo/{n:010}"), "acked", None).await.is_ok() {
                let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
                let _ = tx.send((at, n));
            }
        });
    }
}

async fn burst(endpoint: &str, count: u64) {
    let client = connect(endpoint).await;
    futures::stream::iter(0..count)
        .map(|n| {
            let mut client = client.clone();
            async move {
                for _ in 0..10 {
                    if client.put(format!("/burst/{}", n % 10_000), format!("{n}"), None).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                eprintln!("bench: put {n} failed ten times");
                std::process::exit(1);
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

fn plant(dir: &str, cluster: &str, count: u64) {
    use etcd_backupd::manifest::*;
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let now = chrono::Utc::now();
    for i in 0..count {
        let created = now - chrono::Duration::minutes((count - i) as i64);
        let id = BackupId::new(created, i as i64 + 1, "b3e1c4a5d6f70809");
        let artifact = vec![7u8; 100];
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: id.clone(),
            created: id.created(),
            duration_ms: 10,
            cluster: ClusterName::parse(cluster).unwrap_or_else(|e| panic!("{cluster}: {e}")),
            label: None,
            host: "bench".into(),
            tool_version: "0.0.0".into(),
            etcd: EtcdFacts {
                endpoint: "http://127.0.0.1:2379".into(),
                cluster_id: "1".into(),
                member_id: id.member().into(),
                member_name: "bench".into(),
                version: "3.4.23".into(),
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
                size: artifact.len() as u64,
                sha256: "00".repeat(32),
                compression: CompressionName::Zstd,
                compression_level: Some(3),
                encryption: "age".into(),
                recipients: vec![],
            },
            files: None,
        };
        let write = |name: String, bytes: &[u8]| {
            std::fs::write(dir.join(&name), bytes).unwrap_or_else(|e| panic!("cannot write {name}: {e}"))
        };
        write(manifest.artifact.name.clone(), &artifact);
        write(id.manifest_name(), &manifest.to_json());
    }
}
