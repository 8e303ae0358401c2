use super::*;
use crate::manifest::BackupId;
use crate::manifest::CompressionName;

pub(crate) fn base() -> BackupId {
    BackupId::parse("20261122T060000Z-r100-8e9e05c52164694d").unwrap()
}

fn hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Segment `seq` of a chain from `base()` (holding revision 105), each segment holding 10 revisions
/// received a minute apart, continuing the one before.
pub(crate) fn segment(seq: u32) -> SegmentManifest {
    let id = SegmentId::new(base(), seq);
    let first = 106 + i64::from(seq - 1) * 10;
    let minute = |m: i64| base().created() + chrono::Duration::minutes(m);
    SegmentManifest {
        format_version: SEGMENT_FORMAT,
        cluster: ClusterName::default(),
        host: "node-1".into(),
        tool_version: "0.0.0".into(),
        member_id: "8e9e05c52164694d".into(),
        cluster_id: "cdf818194e3a8c32".into(),
        base_revision: 105,
        first_revision: first,
        last_revision: first + 9,
        revisions: 10,
        events: 12,
        first_received: minute(i64::from(seq)),
        last_received: minute(i64::from(seq)) + chrono::Duration::seconds(9),
        closed: minute(i64::from(seq)) + chrono::Duration::seconds(15),
        previous_sha256: (seq > 1).then(|| hash(seq as u8 - 1)),
        live_keys: Some(42),
        body: BodyFacts { size: 1000, sha256: hash(seq as u8) },
        artifact: ArtifactFacts {
            name: id.artifact_name(Compression::Zstd { level: 3 }),
            size: 900,
            sha256: hash(200),
            compression: CompressionName::Zstd,
            compression_level: Some(3),
            encryption: "age".into(),
            recipients: vec!["age1…".into()],
        },
        id,
    }
}

#[test]
fn ids_print_and_parse_back_and_sort_by_place() {
    let id = SegmentId::new(base(), 7);
    assert_eq!(id.to_string(), "20261122T060000Z-r100-8e9e05c52164694d.d00000007");
    assert_eq!(SegmentId::parse(&id.to_string()), Ok(id.clone()));
    assert_eq!(id.manifest_name(), "20261122T060000Z-r100-8e9e05c52164694d.d00000007.segment.json");
    assert_eq!(
        id.artifact_name(Compression::Zstd { level: 3 }),
        "20261122T060000Z-r100-8e9e05c52164694d.d00000007.delta.zst.age"
    );
    assert_eq!(id.artifact_name(Compression::None), "20261122T060000Z-r100-8e9e05c52164694d.d00000007.delta.age");
    assert!(SegmentId::new(base(), 9) < SegmentId::new(base(), 10));
    assert_eq!(SegmentId::new(base(), 0).seq(), 1);
    assert_eq!(id.next().unwrap().seq(), 8);
    assert_eq!(SegmentId::new(base(), 99_999_999).next(), None);
    for bad in [
        "",
        ".d00000001",
        "20261122T060000Z-r100-8e9e05c52164694d",
        "20261122T060000Z-r100-8e9e05c52164694d.d00000000",
        "20261122T060000Z-r100-8e9e05c52164694d.d0000001",
        "20261122T060000Z-r100-8e9e05c52164694d.d000000001",
        "20261122T060000Z-r100-8e9e05c52164694d.d0000000x",
        "20261122T060000Z-r100-8e9e05c52164694d.d+0000001",
        "20261122T060000Z-r100-8E9E05C52164694D.d00000001",
        "../20261122T060000Z-r100-8e9e05c52164694d.d00000001",
        "20261122T060000Z-r100-8e9e05c52164694d.d00000001/x",
    ] {
        assert!(SegmentId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_manifest_reads_back_as_written() {
    let m = segment(3);
    assert_eq!(SegmentManifest::from_json(&m.to_json(), &m.id, &ClusterName::default()), Ok(m.clone()));
    assert_eq!(m.artifact_name(), m.id.artifact_name(m.compression()));
}

/// Every fact a chain, a restore or a file name is derived from is checked against the id and the
/// others: a planted or edited manifest is refused, naming why.
#[test]
fn a_manifest_that_disagrees_with_its_name_or_itself_is_refused() {
    type Edit = fn(&mut SegmentManifest);
    let edits: [(Edit, &str); 19] = [
        (|m| (m.first_revision, m.last_revision) = (MAX_REVISION - 8, MAX_REVISION + 1), "past"),
        (|m| m.body.size = MAX_BODY + 1, "more than a segment can"),
        (|m| m.artifact.size = u64::MAX, "more than a segment can"),
        (|m| m.id = SegmentId::new(base(), 4), "stored as"),
        (|m| m.cluster = ClusterName::parse("other").unwrap(), "cluster"),
        (|m| m.base_revision = 99, "older than the 100"),
        (|m| m.first_revision = 105, "cannot be"),
        (|m| m.last_revision = m.first_revision - 1, "cannot be"),
        (|m| m.revisions = 11, "cannot be"),
        (|m| m.last_revision = i64::MAX, "cannot be"),
        (|m| m.events = 9, "fewer events"),
        (|m| m.last_received = m.closed + chrono::Duration::seconds(1), "out of order"),
        (|m| m.first_received = m.last_received + chrono::Duration::seconds(1), "out of order"),
        (|m| m.previous_sha256 = None, "no previous"),
        (|m| m.previous_sha256 = Some("x".repeat(64)), "64 hex"),
        (|m| m.body.sha256 = hash(0xab).to_uppercase(), "64 hex"),
        (|m| m.artifact.name = "../../etc/passwd".into(), "always"),
        (|m| m.artifact.compression = CompressionName::None, "always"),
        (|m| m.artifact.encryption = "gpg".into(), "encryption"),
    ];
    let expected = SegmentId::new(base(), 3);
    for (edit, why) in edits {
        let mut m = segment(3);
        edit(&mut m);
        let refused = SegmentManifest::from_json(&m.to_json(), &expected, &ClusterName::default()).unwrap_err();
        assert!(refused.contains(why), "{why}: {refused}");
    }
    let mut first = segment(1);
    first.previous_sha256 = Some(hash(9));
    assert!(first.check_fields(&ClusterName::default()).unwrap_err().contains("no previous"));
}

#[test]
fn a_newer_format_or_an_unknown_field_is_refused() {
    let m = segment(1);
    let mut json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
    json["format_version"] = 2.into();
    let newer = SegmentManifest::from_json(json.to_string().as_bytes(), &m.id, &ClusterName::default());
    assert!(newer.unwrap_err().contains("upgrade etcd-backupd"));
    let mut json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
    json["path"] = "/etc/shadow".into();
    let unknown = SegmentManifest::from_json(json.to_string().as_bytes(), &m.id, &ClusterName::default());
    assert!(unknown.unwrap_err().contains("unknown field"));
    assert!(SegmentManifest::from_json(b"{", &m.id, &ClusterName::default()).is_err());
}

#[test]
fn names_in_a_folder_are_told_apart() {
    let id = SegmentId::new(base(), 2);
    let zstd = Compression::Zstd { level: 3 };
    assert_eq!(classify(&id.manifest_name()), Some(SegmentEntry::Manifest(id.clone())));
    assert_eq!(classify(&id.artifact_name(zstd)), Some(SegmentEntry::Artifact(id.clone())));
    assert_eq!(classify(&id.artifact_name(Compression::None)), Some(SegmentEntry::Artifact(id.clone())));
    assert_eq!(classify(&format!("{}.part", id.manifest_name())), Some(SegmentEntry::Partial));
    assert_eq!(classify(&format!("{}.part", id.artifact_name(zstd))), Some(SegmentEntry::Partial));
    for stranger in [
        format!("{}.part.part", id.manifest_name()),
        "notes.part".to_string(),
        base().manifest_name(),
        base().artifact_name(zstd),
        format!("{}.d00000000.segment.json", base()),
        format!("{id}.delta.gz.age"),
        format!("x{}", id.manifest_name()),
    ] {
        assert_eq!(classify(&stranger), None, "{stranger}");
    }
}
