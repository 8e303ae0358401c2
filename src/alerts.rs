//! Alerts that reach a person: healthchecks.io-style pings (`<url>/start`, `<url>`, `<url>/fail` with
//! the error as the body) and a JSON webhook, for every backup run and every drill (drills ping a check of
//! their own, `notify.drill_healthchecks`). A notification never fails, blocks
//! or delays a backup: it is sent on its own task, each attempt bounded by `notify.timeout`, three
//! attempts at most; the URLs (which carry secrets) are logged by scheme and host only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::NotifySettings;

/// Attempts per notification; a 4xx answer is not retried.
const ATTEMPTS: u32 = 3;

/// What happened, as the webhook's `event` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A backup run started (healthchecks only).
    Start,
    Success,
    Failure,
    /// Cluster mode: another member backed up this slot (healthchecks hear a success: the cluster's
    /// backups are fresh).
    Covered,
    DrillSuccess,
    DrillFailure,
}

impl Kind {
    fn is_drill(self) -> bool {
        matches!(self, Kind::DrillSuccess | Kind::DrillFailure)
    }

    /// The healthchecks.io path suffix of this kind.
    fn ping_suffix(self) -> &'static str {
        match self {
            Kind::Start => "/start",
            Kind::Failure | Kind::DrillFailure => "/fail",
            Kind::Success | Kind::Covered | Kind::DrillSuccess => "",
        }
    }
}

/// What a run tells the webhooks (and, as text, the healthchecks).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: Kind,
    pub cluster: String,
    pub host: String,
    pub time: DateTime<Utc>,
    pub backup_id: Option<String>,
    pub revision: Option<i64>,
    pub snapshot_bytes: Option<u64>,
    pub artifact_bytes: Option<u64>,
    pub committed: Vec<crate::store::Kind>,
    pub error: Option<String>,
    /// The member that backed up a covered slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<String>,
}

/// The notifications of one run still being sent; `wait` for them before the process exits.
#[derive(Default)]
pub struct Pending(Vec<JoinHandle<()>>);

impl Pending {
    /// Waits for the notifications (each is bounded by its timeout and attempts).
    pub async fn wait(self) {
        for handle in self.0 {
            let _ = handle.await;
        }
    }
}

/// Sends `event` to every configured URL, each on its own task.
pub fn send(settings: &NotifySettings, event: Event, pending: &mut Pending) {
    let pings = if event.event.is_drill() { &settings.drill_healthchecks } else { &settings.healthchecks };
    if pings.is_empty() && settings.webhooks.is_empty() {
        return;
    }
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot send notifications");
            return;
        }
    };
    for url in pings {
        let target = format!("{url}{}", event.event.ping_suffix());
        let body = summary(&event);
        let client = client.clone();
        pending.0.push(tokio::spawn(async move { deliver(&client, &target, Body::Text(body)).await }));
    }
    if event.event != Kind::Start {
        for url in &settings.webhooks {
            let (client, url, event) = (client.clone(), url.clone(), event.clone());
            pending.0.push(tokio::spawn(async move { deliver(&client, &url, Body::Json(event)).await }));
        }
    }
}

enum Body {
    Text(String),
    Json(Event),
}

/// One notification, retried on a network error or a 5xx (after 1 s, then 2 s); the outcome is logged.
async fn deliver(client: &reqwest::Client, url: &str, body: Body) {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let request = match &body {
            Body::Text(text) => client.post(url).body(text.clone()),
            Body::Json(event) => client.post(url).json(event),
        };
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(to = %redact(url), "notification sent");
                return;
            }
            Ok(r) if r.status().is_client_error() => {
                last = format!("HTTP {}", r.status());
                break;
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) if e.is_timeout() => last = "no answer in time (notify.timeout)".to_string(),
            Err(e) => last = redact_error(e),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
    }
    tracing::warn!(to = %redact(url), error = %last, "a notification could not be sent (the backup is not affected)");
}

/// A one-line text of the event, for healthchecks' body.
fn summary(e: &Event) -> String {
    let id = e.backup_id.as_deref().unwrap_or("-");
    let error = e.error.as_deref().unwrap_or("");
    match e.event {
        Kind::Failure => format!("etcd backup of {} on {} failed: {error}", e.cluster, e.host),
        Kind::Start => format!("etcd backup of {} on {} started", e.cluster, e.host),
        Kind::Covered => format!(
            "etcd backup of {} on {}: this slot was covered by member {} (backup {id})",
            e.cluster,
            e.host,
            e.covered_by.as_deref().unwrap_or("-")
        ),
        Kind::DrillFailure => format!("restore drill of {id} of {} on {} failed: {error}", e.cluster, e.host),
        Kind::DrillSuccess => format!(
            "restore drill of {id} of {} on {} passed: a throwaway etcd served revision {}",
            e.cluster,
            e.host,
            e.revision.unwrap_or_default()
        ),
        Kind::Success => format!(
            "etcd backup {} of {} on {} committed in {}",
            e.backup_id.as_deref().unwrap_or("-"),
            e.cluster,
            e.host,
            crate::store::Kind::join(&e.committed, ", ")
        ),
    }
}

/// A URL as it may be logged: scheme and host (paths and queries of ping URLs are secrets).
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or(host);
            format!("{scheme}://{host}/…")
        }
        None => "…".to_string(),
    }
}

/// An HTTP client error without the URL it carries.
fn redact_error(e: reqwest::Error) -> String {
    crate::errors::chain(&e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_their_secrets() {
        assert_eq!(redact("https://hc-ping.com/5f1c6e1a-2b3c?key=s3cret"), "https://hc-ping.com/…");
        assert_eq!(redact("https://user:pw@hooks.example:8443/t/abc"), "https://hooks.example:8443/…");
        assert_eq!(redact("not a url"), "…");
    }

    #[test]
    fn the_summary_says_what_happened() {
        let mut e = Event {
            event: Kind::Failure,
            cluster: "prod".into(),
            host: "cp-1".into(),
            time: Utc::now(),
            backup_id: None,
            revision: None,
            snapshot_bytes: None,
            artifact_bytes: None,
            committed: vec![],
            error: Some("cannot reach etcd".into()),
            covered_by: None,
        };
        assert_eq!(summary(&e), "etcd backup of prod on cp-1 failed: cannot reach etcd");
        e.event = Kind::Success;
        e.backup_id = Some("ID".into());
        e.committed = vec![crate::store::Kind::Local, crate::store::Kind::S3];
        assert_eq!(summary(&e), "etcd backup ID of prod on cp-1 committed in local, s3");
        e.event = Kind::Covered;
        e.committed = vec![];
        e.covered_by = Some("m2".into());
        assert_eq!(summary(&e), "etcd backup of prod on cp-1: this slot was covered by member m2 (backup ID)");
    }
}
