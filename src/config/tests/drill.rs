use super::*;

#[test]
fn off_by_default() {
    let s = parse(&minimal()).unwrap();
    assert!(s.drill.identity_file.is_none() && s.drill.schedule.is_none() && s.drill.etcd_bin.is_none());
}

#[test]
fn a_full_table_parses() {
    let text = format!(
        "{}[drill]\nidentity_file = \"/etc/etcd-backupd/drill.key\"\ncron = \"30 3 * * 0\"\netcd_bin = \"/opt/etcd\"\n",
        minimal()
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.drill.identity_file, Some(PathBuf::from("/etc/etcd-backupd/drill.key")));
    assert_eq!(s.drill.schedule.as_ref().map(|c| c.text()), Some("30 3 * * 0"));
    assert_eq!(s.drill.etcd_bin, Some(PathBuf::from("/opt/etcd")));
}

#[test]
fn a_schedule_needs_an_identity() {
    let p = one(&format!("{}[drill]\ncron = \"30 3 * * 0\"\n", minimal()));
    assert_eq!((p.key.as_str(), p.line), ("drill.cron", Some(7)));
    assert!(p.message.contains("drill.identity_file") && p.message.contains("verification host"), "{}", p.message);
}

#[test]
fn bad_values_name_their_key() {
    let p = one(&format!("{}[drill]\nidentity_file = \"drill.key\"\n", minimal()));
    assert_eq!(p.key, "drill.identity_file");
    assert!(p.message.contains("relative"), "{}", p.message);
}

#[test]
fn the_identity_file_is_read_when_the_config_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("drill.key");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("{}[drill]\nidentity_file = \"{}\"\n", minimal(), not_a_key.display())).unwrap();
    let e = load(&cfg).unwrap_err().to_string();
    assert!(e.contains("drill.identity_file") && e.contains("drill.key"), "{e}");
    use age::secrecy::ExposeSecret;
    std::fs::write(&not_a_key, age::x25519::Identity::generate().to_string().expose_secret()).unwrap();
    assert!(load(&cfg).is_ok());
}
