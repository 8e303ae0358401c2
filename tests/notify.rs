//! `[notify]`: healthchecks-style pings and a JSON webhook, against loopback HTTP servers that answer,
//! answer 500, or hang. A notification never fails, blocks or delays a backup, and its URL's secret
//! path is never logged.

mod common;

use common::*;

fn notify_table(healthchecks: &str, webhooks: &str) -> String {
    format!("[notify]\nhealthchecks = [\"{healthchecks}\"]\nwebhooks = [\"{webhooks}\"]\ntimeout = \"1s\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_and_failure_are_pinged_and_posted_without_logging_the_secret() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let hook = Hook::start(Mode::Ok).await;
    let ping = format!("{}/ping/5f1c-secret", hook.url);
    let post = format!("{}/hook/t0ken-secret", hook.url);
    let config = s.config(&etcd.config_table(), &notify_table(&ping, &post));
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = hook.seen();
    let paths: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
    assert!(paths.contains(&"POST /ping/5f1c-secret/start"), "{paths:?}");
    assert!(paths.contains(&"POST /ping/5f1c-secret"), "{paths:?}");
    let (_, event) = seen.iter().find(|(l, _)| l == "POST /hook/t0ken-secret").expect("the webhook");
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    assert_eq!(event["event"], "success");
    assert_eq!(event["cluster"], "default");
    assert!(event["backup_id"].as_str().unwrap().contains("-r"), "{event}");
    assert!(event["artifact_bytes"].as_u64().unwrap() > 0 && event["error"].is_null(), "{event}");
    assert!(!stderr(&out).contains("secret"), "{}", stderr(&out));

    // A failure: /fail with the error as the body, and the webhook's event says it.
    let dead = s.config(
        &format!("[etcd]\nendpoints = [\"http://127.0.0.1:{}\"]\ndial_timeout = \"1s\"\n", free_port()),
        &notify_table(&ping, &post),
    );
    let out = run(&dead, &["backup"]).await;
    assert_eq!(out.status.code(), Some(1));
    let seen = hook.seen();
    let (_, body) = seen.iter().find(|(l, _)| l == "POST /ping/5f1c-secret/fail").expect("the fail ping");
    assert!(body.contains("cannot reach etcd"), "{body}");
    let failure = seen.iter().filter(|(l, _)| l == "POST /hook/t0ken-secret").nth(1).expect("the second event");
    let event: serde_json::Value = serde_json::from_str(&failure.1).unwrap();
    assert_eq!(event["event"], "failure");
    assert!(event["error"].as_str().unwrap().contains("cannot reach etcd"), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_failing_endpoint_never_fails_the_backup() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let (hang, broken) = (Hook::start(Mode::Hang).await, Hook::start(Mode::Error500).await);
    let config = s.config(
        &etcd.config_table(),
        &notify_table(&format!("{}/hc/k3y", hang.url), &format!("{}/wh/k3y", broken.url)),
    );
    let out = run(&config, &["backup"]).await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(files(&s.folder()).iter().filter(|n| n.ends_with(".manifest.json")).count(), 1);
    assert_eq!(broken.seen().len(), 3, "a 5xx is tried three times: {:?}", broken.seen());
    assert!(!hang.seen().is_empty(), "the hanging endpoint was asked");
    assert!(err.contains("a notification could not be sent (the backup is not affected)"), "{err}");
    assert!(err.contains("no answer in time (notify.timeout)") && err.contains("HTTP 500"), "{err}");
    assert!(!err.contains("k3y"), "the URL's path is never logged: {err}");
}

/// Drills tell their own check (`drill_healthchecks`: URL when one passes, URL/fail with the error) and the
/// webhooks (`drill_success`, `drill_failure`); the backups' check hears nothing of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_ping_their_own_check_and_post_to_the_webhooks() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(5, 10).await;
    let hook = Hook::start(Mode::Ok).await;
    let table = format!(
        "[notify]\nhealthchecks = [\"{0}/backups\"]\ndrill_healthchecks = [\"{0}/drills\"]\nwebhooks = [\"{0}/hook\"]\ntimeout = \"1s\"\n",
        hook.url
    );
    let config = s.config(&etcd.config_table(), &table);
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let before = hook.seen().len();

    let bin = etcd_bin_dir(EtcdVersion::V35);
    let drill =
        ["drill", "latest", "--identity", s.identity.file.to_str().unwrap(), "--etcd-bin", bin.to_str().unwrap()];
    let out = run(&config, &drill).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = hook.seen()[before..].to_vec();
    let paths: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
    assert!(paths.contains(&"POST /drills"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with("POST /backups")), "a drill is not a backup: {paths:?}");
    let (_, event) = seen.iter().find(|(l, _)| l == "POST /hook").expect("the webhook");
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    assert_eq!(event["event"], "drill_success");
    assert!(event["backup_id"].as_str().unwrap().contains("-r"), "{event}");

    // A drill that cannot run (no etcd binary there) fails: /fail with the error, and a drill_failure.
    let before = hook.seen().len();
    let nowhere = s.work.path().join("no-etcd-here");
    std::fs::create_dir(&nowhere).unwrap();
    let drill =
        ["drill", "latest", "--identity", s.identity.file.to_str().unwrap(), "--etcd-bin", nowhere.to_str().unwrap()];
    let out = run(&config, &drill).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let seen = hook.seen()[before..].to_vec();
    let (_, body) = seen.iter().find(|(l, _)| l == "POST /drills/fail").expect("the fail ping");
    assert!(body.contains("restore drill of") && body.contains("failed"), "{body}");
    let (_, event) = seen.iter().find(|(l, _)| l == "POST /hook").expect("the webhook");
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    assert_eq!(event["event"], "drill_failure");
    assert!(event["error"].as_str().is_some_and(|e| !e.is_empty()), "{event}");
}
