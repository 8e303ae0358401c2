//! `etcd-backupd run` as systemd runs it: the notify socket bound by the test, the log, signals.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::*;

pub struct Daemon {
    child: tokio::process::Child,
    /// Every notification, with when it arrived.
    notes: Arc<Mutex<Vec<(Instant, String)>>>,
    log: PathBuf,
    _socket_task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    pub async fn start(config: &Path) -> Daemon {
        Self::start_with_watchdog(config, Duration::from_millis(400)).await
    }

    /// Starts the daemon as systemd would with `WatchdogSec=` of `watchdog`.
    pub async fn start_with_watchdog(config: &Path, watchdog: Duration) -> Daemon {
        let dir = config.parent().unwrap();
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path); // a daemon started before in this dir
        let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink = notes.clone();
        let socket_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                sink.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        });
        let log = dir.join("daemon.log");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
        cmd.arg("--config").arg(config).arg("run");
        aws_env(&mut cmd);
        cmd.env("STATE_DIRECTORY", state_dir_for(config))
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        let d = Daemon { child, notes, log, _socket_task: socket_task };
        d.wait_until("READY=1", || d.notes().iter().any(|n| n.contains("READY=1"))).await;
        d
    }

    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().iter().map(|(_, n)| n.clone()).collect()
    }

    /// Waits until the scheduling loop has gone round twice after READY (two watchdog pings, which the
    /// loop itself sends): what it decided at start is done by then.
    pub async fn loop_ran(&self) {
        let ready = self.notes().iter().position(|n| n.contains("READY=1")).expect("started");
        self.wait_until("two turns of the loop", || {
            self.notes().iter().skip(ready).filter(|n| n.contains("WATCHDOG=1")).count() >= 2
        })
        .await;
    }

    /// When each WATCHDOG=1 arrived.
    pub fn pings(&self) -> Vec<Instant> {
        self.notes.lock().unwrap().iter().filter(|(_, n)| n.contains("WATCHDOG=1")).map(|(t, _)| *t).collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.child.id().unwrap() as i32), s).unwrap();
    }

    pub async fn wait_until(&self, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; daemon log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as the OOM killer or a power cut stops it: nothing runs after.
    pub async fn kill(mut self) -> String {
        self.signal(Signal::SIGKILL);
        tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.expect("dies").unwrap();
        self.log()
    }

    pub async fn stop(mut self) -> (std::process::ExitStatus, Duration, Vec<String>, String) {
        let t0 = Instant::now();
        self.signal(Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await.expect("exits").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, t0.elapsed(), self.notes(), self.log())
    }
}
