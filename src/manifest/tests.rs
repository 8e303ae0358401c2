use super::*;
use chrono::TimeZone;

fn t(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

#[test]
fn id_round_trips_and_sorts_by_time() {
    let id = BackupId::new(t(2026, 11, 22, 6, 0, 0), 48211, "8e9e05c52164694d");
    assert_eq!(id.to_string(), "20261122T060000Z-r48211-8e9e05c52164694d");
    assert_eq!(BackupId::parse("20261122T060000Z-r48211-8e9e05c52164694d").unwrap(), id);
    assert_eq!(id.member(), "8e9e05c52164694d");
    let later = BackupId::new(t(2026, 11, 22, 6, 0, 1), 7, "1");
    assert!(later > id);
    assert!(later.to_string() > id.to_string(), "string order is time order");
    let next_year = BackupId::new(t(2027, 1, 1, 0, 0, 0), 1, "ff");
    assert!(next_year.to_string() > later.to_string());
    let other_member = BackupId::new(t(2026, 11, 22, 6, 0, 0), 48211, "2e1259d415f2a040");
    assert_ne!(other_member.to_string(), id.to_string(), "two members never share a name");
}

#[test]
fn id_drops_sub_seconds() {
    let precise = t(2026, 11, 22, 6, 0, 0) + chrono::Duration::milliseconds(731);
    let id = BackupId::new(precise, 3, "a");
    assert_eq!(BackupId::parse(&id.to_string()).unwrap(), id);
}

#[test]
fn bad_ids_are_refused() {
    for bad in [
        "",
        "20261122T060000Z",
        "20261122T060000Z-r1",
        "20261122T060000Z-r-a",
        "20261122T060000Z-rx-a",
        "20261122T060000Z-r01-a",
        "2026112T060000Z-r1-a",
        "20261322T060000Z-r1-a",
        "20261122T060000-r1-a",
        "20261122T060000Z-r1-",
        "20261122T060000Z-r1-xyz",
        "20261122T060000Z-r1-ABC",
        "20261122T060000Z-r1-0123456789abcdef0",
        "20261122T060000Z-r1-a-b",
        "latest",
        "20261122T060000Z-r1-a/../x",
    ] {
        assert!(BackupId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn names_carry_id_compression_and_kind() {
    let id = BackupId::new(t(2026, 1, 2, 3, 4, 5), 9, "abc");
    assert_eq!(id.artifact_name(Compression::Zstd { level: 3 }), "20260102T030405Z-r9-abc.db.zst.age");
    assert_eq!(id.artifact_name(Compression::None), "20260102T030405Z-r9-abc.db.age");
    assert_eq!(id.manifest_name(), "20260102T030405Z-r9-abc.manifest.json");
    assert_eq!(classify("20260102T030405Z-r9-abc.db.zst.age"), Entry::Artifact(id.clone()));
    assert_eq!(classify("20260102T030405Z-r9-abc.db.age"), Entry::Artifact(id.clone()));
    assert_eq!(id.pin_name(), "20260102T030405Z-r9-abc.pinned");
    assert_eq!(classify("20260102T030405Z-r9-abc.pinned"), Entry::Pin(id.clone()));
    assert_eq!(classify("20260102T030405Z-r9-abc.manifest.json"), Entry::Manifest(id));
    for partial in ["20260102T030405Z-r9-abc.db.zst.age.part", "20260102T030405Z-r9-abc.manifest.json.part"] {
        assert_eq!(classify(partial), Entry::Partial(partial.into()));
    }
    for foreign in [
        "notes.txt",
        "x.db.zst.age",
        "20260102T030405Z-r9-abc.db.zst",
        "snapshot.db",
        "x.manifest.json",
        ".part",
        "notes.part",
        "db.part",
    ] {
        assert_eq!(classify(foreign), Entry::Foreign, "{foreign}");
    }
}

#[test]
fn cluster_names() {
    assert!(ClusterName::parse("prod-east").is_ok());
    assert!(ClusterName::parse("k8s.prod_1").is_ok());
    for bad in ["", "-x", ".hidden", "a/b", "a b", "..", &"x".repeat(64)] {
        assert!(ClusterName::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn labels() {
    assert!(check_label("pre-upgrade-1.31").is_ok());
    for bad in ["", "a b", "x/y", &"l".repeat(65)] {
        assert!(check_label(bad).is_err(), "{bad}");
    }
}

pub(crate) fn sample() -> Manifest {
    let id = BackupId::new(t(2026, 11, 22, 6, 0, 0), 48211, "8e9e05c52164694d");
    Manifest {
        format_version: FORMAT_VERSION,
        id: id.clone(),
        created: t(2026, 11, 22, 6, 0, 0),
        duration_ms: 1234,
        cluster: ClusterName::parse("prod").unwrap(),
        label: Some("pre-upgrade".into()),
        host: "cp-1".into(),
        tool_version: "0.1.0".into(),
        etcd: EtcdFacts {
            endpoint: "https://127.0.0.1:2379".into(),
            cluster_id: "cdf818194e3a8c32".into(),
            member_id: "8e9e05c52164694d".into(),
            member_name: "cp-1".into(),
            version: "3.5.1".into(),
            revision: 48211,
            raft_term: 2,
            raft_index: 50000,
            db_size: 20480,
            leader: "8e9e05c52164694d".into(),
            alarms: vec![],
        },
        snapshot: SnapshotFacts { size: 20512, sha256: "ab".repeat(32), status: None },
        artifact: ArtifactFacts {
            name: id.artifact_name(Compression::Zstd { level: 3 }),
            size: 900,
            sha256: "cd".repeat(32),
            compression: CompressionName::Zstd,
            compression_level: Some(3),
            encryption: "age".into(),
            recipients: vec!["age1x".into()],
        },
        files: None,
    }
}

#[test]
fn manifest_round_trips() {
    let m = sample();
    let json = m.to_json();
    assert_eq!(Manifest::from_json(&json, &m.id, &m.cluster).unwrap(), m);
    let text = String::from_utf8(json).unwrap();
    assert!(text.contains("\"id\": \"20261122T060000Z-r48211-8e9e05c52164694d\""), "{text}");
    assert!(text.ends_with('\n'));
}

#[test]
fn manifest_under_another_name_is_refused() {
    let m = sample();
    let other = BackupId::new(t(2026, 11, 22, 7, 0, 0), 1, "8e9e05c52164694d");
    assert!(Manifest::from_json(&m.to_json(), &other, &m.cluster).unwrap_err().contains("stored as"));
}

#[test]
fn newer_format_asks_for_an_upgrade() {
    let mut m = sample();
    m.format_version = NEWEST_FORMAT + 1;
    assert!(Manifest::from_json(&m.to_json(), &m.id, &m.cluster).unwrap_err().contains("upgrade etcd-backupd"));
}

#[test]
fn garbage_is_not_a_manifest() {
    let (id, cluster) = (sample().id, sample().cluster);
    assert!(Manifest::from_json(b"{}", &id, &cluster).is_err());
    assert!(Manifest::from_json(b"", &id, &cluster).is_err());
    assert!(Manifest::from_json(b"\xff\x00", &id, &cluster).is_err());
}

/// Every field a path, a key, a revision or a check is derived from must agree with the id and the
/// folder; a planted manifest that disagrees is refused with the field named.
#[test]
fn a_manifest_that_disagrees_with_its_id_or_folder_is_refused() {
    type Edit = fn(&mut Manifest);
    let cases: [(&str, Edit, &str); 13] = [
        ("absolute artifact name", |m| m.artifact.name = "/etc/passwd".into(), "names its artifact"),
        ("artifact name with ..", |m| m.artifact.name = "../../../../etc/shadow".into(), "names its artifact"),
        (
            "another backup's artifact",
            |m| m.artifact.name = "20261122T050000Z-r1-8e9e05c52164694d.db.zst.age".into(),
            "names its artifact",
        ),
        ("the other extension", |m| m.artifact.name = m.id.artifact_name(Compression::None), "names its artifact"),
        ("a name with a slash", |m| m.artifact.name = format!("x/{}", m.artifact.name), "names its artifact"),
        ("another cluster", |m| m.cluster = ClusterName::parse("other").unwrap(), "cluster \"other\""),
        ("another time", |m| m.created += chrono::Duration::days(400), "created at"),
        ("another revision", |m| m.etcd.revision += 1, "revision 48212"),
        ("another member", |m| m.etcd.member_id = "1".into(), "member 1"),
        ("short artifact hash", |m| m.artifact.sha256 = "ab".into(), "artifact sha256"),
        ("path in the snapshot hash", |m| m.snapshot.sha256 = format!("../{}", "a".repeat(61)), "snapshot sha256"),
        ("upper-case hash", |m| m.artifact.sha256 = "AB".repeat(32), "artifact sha256"),
        ("unknown encryption", |m| m.artifact.encryption = "gpg".into(), "encryption"),
    ];
    let good = sample();
    for (what, edit, expect) in cases {
        let mut m = good.clone();
        edit(&mut m);
        let err = Manifest::from_json(&m.to_json(), &good.id, &good.cluster).expect_err(what);
        assert!(err.contains(expect), "{what}: {err}");
    }
    let text = String::from_utf8(good.to_json()).unwrap();
    let lz4 = text.replace("\"compression\": \"zstd\"", "\"compression\": \"lz4\"");
    assert_ne!(text, lz4);
    let err = Manifest::from_json(lz4.as_bytes(), &good.id, &good.cluster).expect_err("unknown compression");
    assert!(err.contains("compression this version does not know"), "unknown compression: {err}");
    // A newer format is named as such, whatever it holds.
    let newer = lz4.replace(
        &format!("\"format_version\": {FORMAT_VERSION}"),
        &format!("\"format_version\": {}", NEWEST_FORMAT + 1),
    );
    assert_ne!(newer, lz4);
    let err = Manifest::from_json(newer.as_bytes(), &good.id, &good.cluster).expect_err("newer format");
    assert!(err.contains("is newer than this etcd-backupd understands"), "newer format: {err}");
    let mut uncompressed = good.clone();
    uncompressed.artifact.compression = CompressionName::None;
    uncompressed.artifact.compression_level = None;
    uncompressed.artifact.name = good.id.artifact_name(Compression::None);
    let m = Manifest::from_json(&uncompressed.to_json(), &good.id, &good.cluster).unwrap();
    assert_eq!(m.artifact_name(), "20261122T060000Z-r48211-8e9e05c52164694d.db.age");
    assert_eq!(good.artifact_name(), "20261122T060000Z-r48211-8e9e05c52164694d.db.zst.age");
}

/// A backup with a files archive is format 2 (an older reader refuses it rather than miss the archive);
/// format 1 cannot hold one, and a planted archive record is checked like the rest.
#[test]
fn a_files_archive_needs_format_2_and_is_checked() {
    let mut m = sample();
    m.format_version = FILES_FORMAT_VERSION;
    m.files = Some(FilesFacts {
        preset: Some(crate::archive::preset::Preset::Kubeadm),
        ..super::files::tests::facts_of(&m.id)
    });
    let json = m.to_json();
    assert_eq!(Manifest::from_json(&json, &m.id, &m.cluster).unwrap(), m);
    let mut old = m.clone();
    old.format_version = FORMAT_VERSION;
    assert!(Manifest::from_json(&old.to_json(), &m.id, &m.cluster).unwrap_err().contains("cannot hold"));
    let mut planted = m.clone();
    if let Some(f) = planted.files.as_mut() {
        f.entries[0].path = "/../root/.ssh/authorized_keys".into();
    }
    assert!(Manifest::from_json(&planted.to_json(), &m.id, &m.cluster).unwrap_err().contains("unsafe"));
    assert_eq!(classify(&m.id.files_name()), Entry::Files(m.id.clone()));
    assert_eq!(classify(&format!("{}.part", m.id.files_name())), Entry::Partial(format!("{}.part", m.id.files_name())));
}
