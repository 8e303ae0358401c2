//! Cluster mode with real parts: three etcd members on loopback, one daemon per member, one bucket.
//! Each schedule slot is backed up once for the whole cluster, by a follower.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use etcd_backupd::manifest::BackupId;
use serde_json::Value;

/// One member's daemon config in `work/<member>`: that member's endpoint, its own local dir and state,
/// the shared bucket, a per-two-second schedule, short lease and leader delay.
fn member_config(setup: &Setup, etcd: &Etcd, name: &str, s3: &S3) -> PathBuf {
    let dir = setup.work.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let extra = format!(
        "{}\n[schedule]\ncron = \"*/2 * * * * *\"\nstop_grace = \"5s\"\n\n[coordination]\nlease_ttl = \"3s\"\nleader_delay = \"1s\"\n",
        s3.config_table(BUCKET, "")
    );
    let path = dir.join("etcd-backupd.toml");
    std::fs::write(&path, config_text(&dir, &etcd.config_table(), &[&setup.identity.recipient], "", &extra)).unwrap();
    path
}

/// The slot records in etcd: slot key → (member id, backup id).
async fn records(etcd: &Etcd) -> BTreeMap<String, (String, String)> {
    let mut client = etcd.client().await;
    let prefix = "/etcd-backupd/default/slots/";
    // Right after a member stops, a read may meet a leader election: asked again.
    let mut tries = 0;
    let found = loop {
        match client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await {
            Ok(found) => break found,
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!("reading the records: {e}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot read the records: {e}"),
        }
    };
    found
        .kvs()
        .iter()
        .map(|kv| {
            let r: Value = serde_json::from_slice(kv.value()).unwrap();
            let key = String::from_utf8(kv.key().to_vec()).unwrap();
            (key, (r["member_id"].as_str().unwrap().to_string(), r["backup_id"].as_str().unwrap().to_string()))
        })
        .collect()
}

/// Makes a member's config log in to etcd as `user` with the password in `password_file`.
fn login(config: &std::path::Path, user: &str, password_file: &std::path::Path) {
    let lines = format!("username = \"{user}\"\npassword_file = \"{}\"\n", password_file.display());
    let text = std::fs::read_to_string(config).unwrap().replacen("[etcd]\n", &format!("[etcd]\n{lines}"), 1);
    std::fs::write(config, text).unwrap();
}

/// The ids of the backups committed in S3.
fn committed(s3: &S3) -> Vec<String> {
    s3.keys(BUCKET)
        .iter()
        .filter_map(|k| k.strip_suffix(".manifest.json"))
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_slot_is_backed_up_once_by_a_follower_35() {
    each_slot_is_backed_up_once_by_a_follower(EtcdVersion::V35).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_slot_is_backed_up_once_by_a_follower_34() {
    each_slot_is_backed_up_once_by_a_follower(EtcdVersion::V34).await;
}

async fn each_slot_is_backed_up_once_by_a_follower(version: EtcdVersion) {
    let setup = Setup::new();
    let (members, cluster) = three_members(&setup, version);
    cluster[0].seed(20, 100).await;
    let s3 = S3::start().await;

    let hook = Hook::start(Mode::Ok).await;
    let notify =
        format!("\n[notify]\nwebhooks = [\"{0}/hook\"]\nhealthchecks = [\"{0}/check\"]\ntimeout = \"1s\"\n", hook.url);
    let daemons = start_daemons(&setup, &cluster, &members, &s3, |text| text + &notify).await;
    // Long enough for at least five slots.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let leader = {
        let out = cluster[0].etcdctl(&["endpoint", "status", "-w", "json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        format!("{:x}", status[0]["Status"]["leader"].as_u64().unwrap())
    };
    let mut logs = String::new();
    for d in daemons {
        let (status, _, _, log) = d.stop().await;
        assert!(status.success(), "{log}");
        logs.push_str(&log);
    }

    let recorded = records(&cluster[0]).await;
    assert!(recorded.len() >= 5, "{recorded:?}\n{logs}");
    // No slot between the first recorded and the last went without a backup.
    let slots: Vec<chrono::NaiveDateTime> = recorded
        .keys()
        .map(|k| chrono::NaiveDateTime::parse_from_str(k.rsplit('/').next().unwrap(), "%Y%m%dT%H%M%SZ").unwrap())
        .collect();
    for pair in slots.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 2, "a slot without a backup: {recorded:?}\n{logs}");
    }
    let in_s3 = committed(&s3);
    let recorded_ids: Vec<&String> = recorded.values().map(|(_, id)| id).collect();
    for id in &recorded_ids {
        assert!(in_s3.contains(id), "the record names {id}, which S3 does not hold: {in_s3:?}\n{logs}");
    }
    // Every backup in S3 covers a recorded slot, one each; only the slot running at the stop may lack
    // its record.
    let last_slot = recorded.keys().last().unwrap().rsplit('/').next().unwrap().to_string();
    let unrecorded: Vec<&String> = in_s3.iter().filter(|id| !recorded_ids.contains(id)).collect();
    for id in &unrecorded {
        let created = BackupId::parse(id).unwrap().created().format("%Y%m%dT%H%M%SZ").to_string();
        assert!(created > last_slot, "backup {id} covers no slot: a second backup of a slot?\n{recorded:?}\n{logs}");
    }
    assert!(unrecorded.len() <= 1, "{unrecorded:?}\n{logs}");
    assert!(
        recorded.values().all(|(member, _)| *member != leader),
        "the leader {leader} took a slot while its followers were healthy: {recorded:?}"
    );
    assert!(logs.contains("covered by member"), "the others said who covered the slot:\n{logs}");
    // The webhooks hear one success per backup and `covered` from the members that rightly skipped;
    // the healthchecks hear both as successes.
    let events: Vec<Value> = hook
        .seen()
        .iter()
        .filter(|(line, _)| line.ends_with("/hook"))
        .map(|(_, body)| serde_json::from_str(body).unwrap())
        .collect();
    for id in &recorded_ids {
        let successes = events.iter().filter(|e| e["event"] == "success" && e["backup_id"] == id.as_str()).count();
        assert_eq!(successes, 1, "{id}: {events:?}");
    }
    let covered: Vec<&Value> = events.iter().filter(|e| e["event"] == "covered").collect();
    assert!(!covered.is_empty(), "{events:?}");
    for e in covered {
        assert!(recorded_ids.iter().any(|id| e["backup_id"] == id.as_str()), "{e}");
        assert!(e["covered_by"].as_str().is_some_and(|m| m.starts_with("member-")), "{e}");
    }
    assert!(events.iter().all(|e| e["event"] != "failure"), "{events:?}");
    assert!(hook.seen().iter().any(|(line, _)| line == "POST /check"), "covered slots keep the check fresh");

    // A one-shot backup counts for its slot (the daemons, had they run, would have skipped it).
    let config = setup.work.path().join(&members[0].name).join("etcd-backupd.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("*/2 * * * * *", "0 0 1 1 *");
    std::fs::write(&config, text).unwrap();
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let year = format!("/etcd-backupd/default/slots/{}0101T000000Z", chrono::Utc::now().format("%Y"));
    let recorded = records(&cluster[0]).await;
    let (_, id) = recorded.get(&year).unwrap_or_else(|| panic!("no record of this year's slot: {recorded:?}"));
    assert!(committed(&s3).contains(id), "{id}");
}

/// A three-member cluster on loopback, each member's data dir in the work dir.
fn three_members(setup: &Setup, version: EtcdVersion) -> (Vec<Member>, Vec<Etcd>) {
    let members = Member::several(3);
    let dirs: Vec<(Member, PathBuf)> =
        members.iter().map(|m| (m.clone(), setup.work.path().join(format!("{}-data", m.name)))).collect();
    let cluster = Etcd::start_cluster(version, &dirs);
    (members, cluster)
}

/// A daemon on each member, its config (`member_config`) changed by `edit` first.
async fn start_daemons(
    setup: &Setup,
    cluster: &[Etcd],
    members: &[Member],
    s3: &S3,
    edit: impl Fn(String) -> String,
) -> Vec<Daemon> {
    let mut daemons = Vec::new();
    for (etcd, member) in cluster.iter().zip(members) {
        let config = member_config(setup, etcd, &member.name, s3);
        std::fs::write(&config, edit(std::fs::read_to_string(&config).unwrap())).unwrap();
        daemons.push(Daemon::start(&config).await);
    }
    daemons
}

/// Three members (3.5) with a daemon each, their configs changed by `edit`: the cluster, the daemons,
/// their configs' dirs.
async fn three_daemons(
    setup: &Setup,
    s3: &S3,
    edit: impl Fn(String) -> String,
) -> (Vec<Etcd>, Vec<Daemon>, Vec<PathBuf>) {
    let (members, cluster) = three_members(setup, EtcdVersion::V35);
    let daemons = start_daemons(setup, &cluster, &members, s3, edit).await;
    let dirs = members.iter().map(|m| setup.work.path().join(&m.name)).collect();
    (cluster, daemons, dirs)
}

/// The leader (`leader`) or a follower: its index in `cluster`, and the leader's member id.
fn find_member(cluster: &[Etcd], leader: bool) -> (usize, u64) {
    let out = cluster[0].etcdctl(&["endpoint", "status", "--cluster", "-w", "json"]);
    let statuses: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let leader_id = statuses[0]["Status"]["leader"].as_u64().unwrap();
    let found =
        statuses.iter().find(|s| (s["Status"]["header"]["member_id"].as_u64() == Some(leader_id)) == leader).unwrap();
    let endpoint = found["Endpoint"].as_str().unwrap();
    (cluster.iter().position(|e| e.endpoint == endpoint).unwrap(), leader_id)
}

/// Waits until `cond`, up to `limit`.
async fn until(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The labels of the backups committed in a member's local folder.
fn local_labels(dir: &std::path::Path) -> Vec<String> {
    let folder = dir.join("backups/default");
    files(&folder)
        .iter()
        .filter(|n| n.ends_with(".manifest.json"))
        .map(|n| {
            let m: Value = serde_json::from_slice(&std::fs::read(folder.join(n)).unwrap()).unwrap();
            m["label"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

/// Three members whose daemons all ask for the same slot at once (a new install backs up at start), the
/// database big enough for several S3 parts and every part slow: the member that took the slot is still
/// uploading for a while. The members, the cluster, the daemons, and which one holds the slot.
async fn a_slow_holder(setup: &Setup, s3: &S3) -> (Vec<Member>, Vec<Etcd>, Vec<Daemon>, usize) {
    s3.faults.part_delay_ms.store(3_000, std::sync::atomic::Ordering::SeqCst);
    let (members, cluster) = three_members(setup, EtcdVersion::V35);
    cluster[0].seed(120, 200_000).await;
    let daemons = start_daemons(setup, &cluster, &members, s3, |t| t.replace("*/2 * * * * *", "0 0 1 1 *")).await;
    let mut holder = None;
    until("a member to take the slot", Duration::from_secs(30), async || {
        holder = daemons.iter().position(|d| d.log().contains("this member takes the slot"));
        holder.is_some()
    })
    .await;
    (members, cluster, daemons, holder.unwrap())
}

/// The member holding a slot is killed mid-snapshot: its lease lapses, another member takes the same
/// slot and commits it; the killed one left nothing committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_hands_its_slot_to_another_member() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (members, cluster, mut daemons, holder) = a_slow_holder(&setup, &s3).await;
    // A daemon still waiting for the slot stops at once on SIGTERM: only a backup gets stop_grace (5s).
    let waiter = (0..3).find(|i| *i != holder).unwrap();
    let (status, took, _, log) = daemons.remove(waiter).stop().await;
    assert!(status.success(), "{log}");
    assert!(took < Duration::from_secs(5), "a waiting daemon took {took:?} to stop:\n{log}");
    // The holder's place among the daemons left.
    let holding = if waiter < holder { holder - 1 } else { holder };
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemons[holding].signal(nix::sys::signal::Signal::SIGKILL);
    s3.faults.part_delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);

    until("another member to cover the slot", Duration::from_secs(60), async || !records(&cluster[0]).await.is_empty())
        .await;
    let recorded = records(&cluster[0]).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (member, id) = recorded.values().next().unwrap().clone();
    let killed_dir = setup.work.path().join(&members[holder].name);
    let killed_log = std::fs::read_to_string(killed_dir.join("daemon.log")).unwrap();
    assert!(
        !id.ends_with(&member_id_of(&cluster[holder])),
        "the killed member's backup was recorded: {id}\n{killed_log}"
    );
    assert_ne!(member, member_id_of(&cluster[holder]), "the killed member's record");
    assert_eq!(committed(&s3), vec![id.clone()], "exactly one backup of the slot in S3");
    assert!(
        files(&killed_dir.join("backups/default")).iter().all(|n| !n.ends_with(".manifest.json")),
        "the killed member committed nothing: {:?}",
        files(&killed_dir.join("backups/default"))
    );
    for (i, d) in daemons.into_iter().enumerate() {
        if i != holding {
            d.stop().await;
        }
    }
}

/// The member holding a slot keeps backing up when the cluster loses its quorum mid-backup: without a
/// leader no lease expires and no other member can take the slot, so stopping would leave it with none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_loses_its_quorum_mid_backup_finishes_it() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (_, mut cluster, mut daemons, holder) = a_slow_holder(&setup, &s3).await;
    let holder_id = member_id_of(&cluster[holder]);
    let mut survivor = None;
    for (i, d) in daemons.drain(..).enumerate() {
        if i == holder {
            survivor = Some(d);
        } else {
            d.stop().await;
        }
    }
    let survivor = survivor.unwrap();
    let kept = cluster.remove(holder);
    drop(cluster); // the other two members stop: no quorum
    // Longer than lease_ttl (3 s) without a renewal, then the uploads go on.
    tokio::time::sleep(Duration::from_secs(6)).await;
    s3.faults.part_delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    survivor.wait_until("the backup committed", || survivor.log().contains("backup finished")).await;
    let (_, _, _, log) = survivor.stop().await;
    assert!(!log.contains("lease was lost"), "{log}");
    assert!(committed(&s3).iter().any(|id| id.ends_with(&holder_id)), "{:?}\n{log}", committed(&s3));
    drop(kept);
}

fn member_id_of(etcd: &Etcd) -> String {
    etcd.member_id_hex()
}

/// One member's etcd stops: the others cover every slot. A second stops (no quorum): the survivor sees
/// it has no leader and, after a moment for an election, takes an emergency backup of its own member
/// in every slot, labelled so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sick_cluster_gets_more_backups_never_fewer() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    // Local retention keeps one backup: emergency backups stay anyway, until a normal one is newer.
    let (mut cluster, daemons, dirs) = three_daemons(&setup, &s3, |t| {
        t.replace("*/2 * * * * *", "*/5 * * * * *").replacen("[local]\n", "[local]\nretention = { keep_last = 1 }\n", 1)
    })
    .await;
    until("two slots covered", Duration::from_secs(30), async || records(&cluster[0]).await.len() >= 2).await;

    drop(cluster.remove(2));
    let before = records(&cluster[0]).await.len();
    until("two more slots covered by the two left", Duration::from_secs(40), async || {
        records(&cluster[0]).await.len() >= before + 2
    })
    .await;

    drop(cluster.remove(1));
    let emergencies = || local_labels(&dirs[0]).iter().filter(|l| *l == "emergency-no-quorum").count();
    until("an emergency backup by the survivor", Duration::from_secs(60), async || emergencies() >= 1).await;
    until("three more, all kept", Duration::from_secs(60), async || emergencies() >= 4).await;
    let log = daemons[0].log();
    let sick = &log[log.find("taking an emergency backup").expect("the survivor says why")..];
    assert!(!sick.contains("skipping this scheduled run"), "a slot without an emergency backup:\n{sick}");
    for d in daemons {
        d.stop().await;
    }
}

/// A learner's daemon never fails and never takes a slot, and its status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learners_daemon_never_fails_and_never_takes_a_slot() {
    a_learners_daemon_never_fails(false).await;
}

/// etcd refuses a password login to a learner: its daemon asks the member, without a login, what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learners_daemon_never_fails_with_a_password_login() {
    a_learners_daemon_never_fails(true).await;
}

async fn a_learners_daemon_never_fails(password: bool) {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let members = Member::several(4);
    let voters = &members[..3];
    let dirs: Vec<(Member, PathBuf)> =
        voters.iter().map(|m| (m.clone(), setup.work.path().join(format!("{}-data", m.name)))).collect();
    let cluster = Etcd::start_cluster(EtcdVersion::V35, &dirs);
    let learner = Etcd::start_learner(EtcdVersion::V35, &cluster[0], voters, &members[3]);
    let password_file = setup.work.path().join("etcd-password");
    if password {
        std::fs::write(&password_file, format!("{}\n", cluster[0].enable_auth())).unwrap();
    }
    let mut daemons = Vec::new();
    for (etcd, member) in cluster.iter().chain([&learner]).zip(&members) {
        let config = member_config(&setup, etcd, &member.name, &s3);
        if password {
            login(&config, "backup", &password_file);
        }
        daemons.push(Daemon::start(&config).await);
    }
    until("three slots covered", Duration::from_secs(30), async || records(&cluster[0]).await.len() >= 3).await;
    let learner_id = learner.member_id_hex();
    let learner_dir = setup.work.path().join(&members[3].name);
    let (status, _, _, log) = daemons.pop().unwrap().stop().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains("ERROR") && !log.contains("FAILED"), "the learner's daemon failed:\n{log}");
    assert!(records(&cluster[0]).await.values().all(|(m, _)| *m != learner_id));
    assert!(local_labels(&learner_dir).is_empty(), "the learner backed up");
    let out = run(&learner_dir.join("etcd-backupd.toml"), &["status"]).await;
    let text = stdout(&out);
    assert!(text.contains("learner"), "status says why the learner did not back up:\n{text}\n{}", stderr(&out));
    for d in daemons {
        d.stop().await;
    }
}

/// With etcd's authentication on, the configured user (a snapshot needs the root role, which may use
/// every key) coordinates as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_on_the_members_still_coordinate() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (members, cluster) = three_members(&setup, EtcdVersion::V35);
    let password = cluster[0].enable_auth();
    let password_file = setup.work.path().join("etcd-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let mut daemons = Vec::new();
    for (etcd, member) in cluster.iter().zip(&members) {
        let config = member_config(&setup, etcd, &member.name, &s3);
        login(&config, "backup", &password_file);
        // check-config asks etcd whether the user may use the prefix, without writing to it.
        let out = run(&config, &["check-config"]).await;
        let text = stdout(&out);
        assert!(text.contains("the etcd user may read and write /etcd-backupd/default/"), "{text}{}", stderr(&out));
        daemons.push(Daemon::start(&config).await);
    }
    *cluster[1].root_user.lock().unwrap() = cluster[0].root_user.lock().unwrap().clone();
    until("three slots covered", Duration::from_secs(30), async || records(&cluster[1]).await.len() >= 3).await;
    for d in daemons {
        let (status, _, _, log) = d.stop().await;
        assert!(status.success(), "{log}");
        assert!(!log.contains("grant-permission") && !log.contains("member mode"), "{log}");
    }
    let recorded = records(&cluster[1]).await;
    let in_s3 = committed(&s3);
    assert!(recorded.values().all(|(_, id)| in_s3.contains(id)), "{recorded:?} {in_s3:?}");
}

/// A user who may not use the prefix: check-config prints the grant, and the daemon warns with it and
/// backs up as in member mode rather than not at all. (etcd keeps snapshots to the root role, which may
/// use every key, so such a user's snapshot is refused too, and that error names the root role.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_use_the_prefix_is_told_the_grant_and_falls_back_to_member_mode() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (members, cluster) = three_members(&setup, EtcdVersion::V35);
    cluster[0].enable_auth();
    for args in [
        &["role", "add", "reader"][..],
        &["role", "grant-permission", "reader", "read", "--prefix=true", "/registry/"],
        &["user", "add", "reader", "--new-user-password=reader-pw"],
        &["user", "grant-role", "reader", "reader"],
    ] {
        let out = cluster[0].etcdctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let password_file = setup.work.path().join("etcd-password");
    std::fs::write(&password_file, "reader-pw\n").unwrap();
    let config = member_config(&setup, &cluster[1], &members[1].name, &s3);
    login(&config, "reader", &password_file);
    let grant = "etcdctl role grant-permission <role> readwrite --prefix=true /etcd-backupd/default/";

    let out = run(&config, &["check-config"]).await;
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains(grant), "check-config prints the grant:\n{said}");

    let daemon = Daemon::start(&config).await;
    daemon.wait_until("a fallback to member mode", || daemon.log().contains("member mode")).await;
    daemon.wait_until("the snapshot's refusal", || daemon.log().contains("root role")).await;
    let (_, _, _, log) = daemon.stop().await;
    let warning = log.lines().find(|l| l.contains("member mode")).unwrap();
    assert!(warning.contains("WARN") && warning.contains(grant), "the warning names the fix:\n{log}");
    assert!(records(&cluster[0]).await.is_empty(), "nothing recorded by a user who may not write the prefix");
}

/// The records in etcd stay bounded: the member that records a slot deletes all but the newest 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_in_etcd_stay_bounded() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (members, cluster) = three_members(&setup, EtcdVersion::V35);
    // A hundred slots of last year, as a long-running cluster would have recorded them.
    let mut client = cluster[0].client().await;
    for day in 0..100 {
        let slot = chrono::DateTime::from_timestamp(1_735_689_600 + day * 86_400, 0).unwrap();
        let key = format!("/etcd-backupd/default/slots/{}", slot.format("%Y%m%dT%H%M%SZ"));
        let value = format!("{{\"member_id\": \"1\", \"backup_id\": \"{}-r1-1\"}}", slot.format("%Y%m%dT%H%M%SZ"));
        client.put(key, value, None).await.unwrap();
    }
    let daemons = start_daemons(&setup, &cluster, &members, &s3, |text| text).await;
    let this_year = chrono::Utc::now().format("%Y").to_string();
    until("a slot of this year recorded", Duration::from_secs(30), async || {
        records(&cluster[0]).await.keys().any(|k| k.contains(&format!("/slots/{this_year}")))
    })
    .await;
    for d in daemons {
        d.stop().await;
    }
    let recorded = records(&cluster[0]).await;
    assert!(recorded.len() <= 64, "{} records", recorded.len());
    assert!(recorded.keys().any(|k| k.contains(&format!("/slots/{this_year}"))));
    assert!(!recorded.contains_key("/etcd-backupd/default/slots/20250101T000000Z"), "the oldest went first");
}

/// Records planted in the prefix (by anyone who may write it) neither stop backups nor push the real
/// records out: a record naming a backup the bucket does not hold is not believed, and records of slots
/// that have not begun are deleted first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_records_neither_stop_backups_nor_push_real_ones_out() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (members, cluster) = three_members(&setup, EtcdVersion::V35);
    let victim = cluster[1].member_id_hex();
    let mut client = cluster[0].client().await;
    let key = |t: chrono::DateTime<chrono::Utc>| format!("/etcd-backupd/default/slots/{}", t.format("%Y%m%dT%H%M%SZ"));
    for day in 1..=64 {
        let t = chrono::Utc::now() + chrono::TimeDelta::days(365 * 70 + day);
        client.put(key(t), r#"{"member_id": "1", "backup_id": "x"}"#, None).await.unwrap();
    }
    let daemons = start_daemons(&setup, &cluster, &members, &s3, |text| text).await;
    // The next five slots, each "covered" by a backup of a real member that nobody took.
    let now = chrono::Utc::now().timestamp();
    let first = now - now % 2 + 4;
    let planted: Vec<chrono::DateTime<chrono::Utc>> =
        (0..5).map(|i| chrono::DateTime::from_timestamp(first + 2 * i, 0).unwrap()).collect();
    for slot in &planted {
        let id = BackupId::new(*slot + chrono::TimeDelta::seconds(1), 1, &victim);
        let record = serde_json::json!({
            "slot": slot, "member_id": victim, "member_name": "member-2", "backup_id": id.to_string(),
            "revision": 1, "time": *slot + chrono::TimeDelta::seconds(1),
        });
        client.put(key(*slot), record.to_string(), None).await.unwrap();
    }
    let after = *planted.last().unwrap();
    let (from, to) = (key(after), key(after + chrono::TimeDelta::days(1)));
    until("a slot after the planted ones recorded", Duration::from_secs(40), async || {
        records(&cluster[0]).await.keys().any(|k| *k > from && *k < to)
    })
    .await;
    let mut logs = String::new();
    for d in daemons {
        logs.push_str(&d.stop().await.3);
    }
    assert!(logs.contains("names a backup the bucket does not hold"), "{logs}");
    // Every planted slot still got one backup, taken within it, and its record now names that backup.
    let in_s3 = committed(&s3);
    let taken: Vec<chrono::DateTime<chrono::Utc>> =
        in_s3.iter().map(|id| BackupId::parse(id).unwrap().created()).collect();
    let recorded = records(&cluster[0]).await;
    for slot in &planted {
        let end = *slot + chrono::TimeDelta::seconds(2);
        let n = taken.iter().filter(|t| *t >= slot && **t < end).count();
        assert_eq!(n, 1, "slot {slot}: taken {taken:?}\n{logs}");
        let (_, id) = &recorded[&key(*slot)];
        assert!(in_s3.contains(id), "slot {slot}: the record names {id}, not in S3 {in_s3:?}");
    }
    let far = key(chrono::Utc::now() + chrono::TimeDelta::days(365));
    assert!(recorded.keys().all(|k| *k < far), "records of far-off slots are deleted: {recorded:?}");
}

/// Where no follower's daemon runs, the leader takes the slot, after `leader_delay`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_takes_a_slot_only_when_no_follower_did() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (members, cluster) = three_members(&setup, EtcdVersion::V35);
    let (i, leader) = find_member(&cluster, true);
    let daemon = Daemon::start(&member_config(&setup, &cluster[i], &members[i].name, &s3)).await;
    until("the leader to cover slots", Duration::from_secs(30), async || records(&cluster[0]).await.len() >= 2).await;
    let (_, _, _, log) = daemon.stop().await;
    assert!(log.contains("leaving the slot to a follower first"), "{log}");
    let leader_hex = format!("{leader:x}");
    assert!(records(&cluster[0]).await.values().all(|(m, _)| *m == leader_hex));
}

/// `mode = "member"`: every member's daemon backs up on its own and nothing is written to etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_mode_backs_up_every_member_and_writes_nothing_to_etcd() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (members, cluster) = three_members(&setup, EtcdVersion::V35);
    let member_mode = |t: String| t.replace("[coordination]\n", "[coordination]\nmode = \"member\"\n");
    let daemons = start_daemons(&setup, &cluster, &members, &s3, member_mode).await;
    until("every member's backups", Duration::from_secs(30), async || {
        members.iter().all(|m| !local_labels(&setup.work.path().join(&m.name)).is_empty())
    })
    .await;
    for d in daemons {
        d.stop().await;
    }
    let mut client = cluster[0].client().await;
    let ours = client.get("/etcd-backupd/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert!(ours.kvs().is_empty(), "member mode wrote to etcd");
}

/// A follower whose backups fail (its local dir is a file, its S3 endpoint a dead port) takes slots and
/// hands each back without a record: another member covers every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backup_hands_its_slot_to_the_next_member() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (members, cluster) = three_members(&setup, EtcdVersion::V35);
    let (broken, _) = find_member(&cluster, false);
    let broken_dir = setup.work.path().join(&members[broken].name);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut daemons = Vec::new();
    for (i, (etcd, member)) in cluster.iter().zip(&members).enumerate() {
        let config = member_config(&setup, etcd, &member.name, &s3);
        if i == broken {
            std::fs::write(broken_dir.join("backups"), "not a folder").unwrap();
            let text = std::fs::read_to_string(&config).unwrap().replace(&s3.endpoint, &dead);
            std::fs::write(&config, text).unwrap();
        }
        daemons.push(Daemon::start(&config).await);
    }
    until("the broken follower to take a slot and fail", Duration::from_secs(40), async || {
        let log = daemons[broken].log();
        log.contains("this member takes the slot") && log.contains("no destination can take the backup")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let broken_id = cluster[broken].member_id_hex();
    let mut logs = String::new();
    for d in daemons {
        logs.push_str(&d.stop().await.3);
    }
    let recorded = records(&cluster[0]).await;
    assert!(!recorded.is_empty(), "{recorded:?}\n{logs}");
    assert!(recorded.values().all(|(m, _)| *m != broken_id), "{recorded:?}");
    let in_s3 = committed(&s3);
    assert!(recorded.values().all(|(_, id)| in_s3.contains(id)), "{recorded:?} {in_s3:?}");
}

/// The newest backup's chain of delta segments as `list --json` shows it: (base id, until revision,
/// broken).
async fn chain_listed(config: &std::path::Path) -> Option<(String, i64, bool)> {
    let out = run(config, &["list", "--json"]).await;
    let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
    let newest = rows.get(0)?;
    let chain = newest.get("chain")?;
    Some((newest["id"].as_str()?.to_string(), chain["until_revision"].as_i64()?, chain.get("broken").is_some()))
}

/// One member streams the cluster's delta segments; killed, another takes the stream over and goes on
/// with the same chain from the shared bucket, nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delta_stream_fails_over_to_another_member_and_goes_on_with_the_chain() {
    let setup = Setup::new();
    let s3 = S3::start().await;
    let (cluster, mut daemons, dirs) = three_daemons(&setup, &s3, |text| {
        text.replace("cron = \"*/2 * * * * *\"", "cron = \"0 0 1 1 *\"")
            + "\n[deltas]\nenabled = true\nmax_interval = \"1s\"\n"
    })
    .await;
    let config = dirs[0].join("etcd-backupd.toml");
    let mut client = cluster[0].client().await;
    let mut last = 0;
    for i in 0..10 {
        last = client.put(format!("/before/{i}"), "x", None).await.unwrap().header().unwrap().revision();
    }
    let reaches = |revision: i64| {
        let config = config.clone();
        let logs = dirs.iter().map(|d| d.join("daemon.log")).collect::<Vec<_>>();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(40);
            loop {
                if let Some((base, until, broken)) = chain_listed(&config).await {
                    assert!(!broken, "the chain broke");
                    if until >= revision {
                        return base;
                    }
                }
                if std::time::Instant::now() >= deadline {
                    let logs: Vec<String> =
                        logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect();
                    panic!("the chain never reached revision {revision}:\n{}", logs.join("\n-----\n"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let base = reaches(last).await;
    let before_failover = last;
    let streaming: Vec<usize> = (0..3).filter(|i| daemons[*i].log().contains("streaming delta segments")).collect();
    assert_eq!(streaming.len(), 1, "one member streams for the cluster");
    let streamer = daemons.remove(streaming[0]);
    let killed = streamer.kill().await;

    // Changes while no member streams are read again from etcd's history by the next.
    for i in 0..10 {
        last = client.put(format!("/after/{i}"), "y", None).await.unwrap().header().unwrap().revision();
    }
    let now_base = reaches(last).await;
    let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
    assert_eq!(now_base, base, "the same chain goes on:\n{}", logs.join("\n-----\n"));
    let taken_over: Vec<&Daemon> = daemons.iter().filter(|d| d.log().contains("streaming delta segments")).collect();
    assert_eq!(taken_over.len(), 1, "another member took the stream over; the killed one's log:\n{killed}");
    for d in daemons {
        let (status, _, _, log) = d.stop().await;
        assert!(status.success(), "{log}");
    }

    // Restored through the chain the two members wrote: what the cluster held before the failover and
    // after it, as `get --rev` shows, revision numbers included.
    let key = setup.identity.file.display().to_string();
    let bin = etcd_bin_dir(EtcdVersion::V35).display().to_string();
    for revision in [before_failover, last] {
        let file = setup.work.path().join(format!("point-{revision}.db"));
        let (target, output) = (revision.to_string(), file.display().to_string());
        let args = ["restore", "--revision", &target, "--identity", &key, "--output", &output, "--etcd-bin", &bin];
        let out = run(&config, &args).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let restored = Etcd::start_restored(EtcdVersion::V35, &file);
        let (at, got) = everything(&mut restored.client().await, None).await;
        assert_eq!(at, revision);
        assert_eq!(got, everything(&mut client, Some(revision)).await.1, "at revision {revision}");
    }
}
