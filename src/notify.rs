//! systemd notification (READY, STATUS, WATCHDOG, RELOADING, STOPPING). Never fails the daemon:
//! a notification that cannot be sent is logged once per kind.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// Notifies only when systemd gave a socket.
    pub fn from_env() -> Self {
        Notifier { enabled: std::env::var_os("NOTIFY_SOCKET").is_some() }
    }

    fn send(&self, what: &str, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(notification = what, error = %e, "cannot notify systemd");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send("READY", &[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send("STATUS", &[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG", &[NotifyState::Watchdog]);
    }

    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send("RELOADING", &states);
    }

    pub fn stopping(&self) {
        self.send("STOPPING", &[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, if systemd asked for pings.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2).filter(|d| !d.is_zero())
}
