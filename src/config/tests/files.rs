use super::*;
use std::io::Write;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
    p
}

#[test]
fn load_reads_the_recipients_file() {
    let dir = tempfile::tempdir().unwrap();
    let rf = write(
        dir.path(),
        "recipients.txt",
        &format!(
            "# team\n{KEY}\n\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHS95VBVaLPmudeOW9aEVTrqx9kr85m1tzlEzwEJFKwE ops\n"
        ),
    );
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[encryption]\nrecipients = [\"{KEY}\"]\nrecipients_file = \"{}\"\n",
            rf.display()
        ),
    );
    let s = load(&cfg).unwrap();
    assert_eq!(s.encryption.recipients.len(), 2, "duplicates are merged");
}

#[test]
fn no_recipients_at_all_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "c.toml", "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n");
    let e = load(&cfg).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].key, "encryption.recipients");
    assert!(e.to_string().contains("age-keygen"), "{e}");
}

#[test]
fn unreadable_files_are_named_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = write(dir.path(), "ca.crt", "hello");
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\ncacert = \"{}\"\ncert = \"/nonexistent/c.crt\"\nkey = \"/nonexistent/c.key\"\n[encryption]\nrecipients_file = \"/nonexistent/recipients.txt\"\n",
            not_pem.display()
        ),
    );
    let e = load(&cfg).unwrap_err();
    let text = e.to_string();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["etcd.cacert", "etcd.cert", "etcd.key", "encryption.recipients_file"], "{text}");
    assert!(text.contains("does not hold a PEM certificate"), "{text}");
    assert!(text.contains("cannot read '/nonexistent/recipients.txt'"), "{text}");
    assert!(text.contains(":3:10: etcd.cacert"), "{text}");
}

#[test]
fn bad_line_in_recipients_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let rf = write(dir.path(), "r.txt", &format!("{KEY}\nnonsense\n"));
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[encryption]\nrecipients_file = \"{}\"\n",
            rf.display()
        ),
    );
    let e = load(&cfg).unwrap_err();
    assert!(e.to_string().contains(&format!("{}:2: ", rf.display())), "{e}");
}

#[test]
fn missing_config_file_says_how_to_proceed() {
    let e = load(Path::new("/nonexistent/etcd-backupd.toml")).unwrap_err();
    assert!(e.to_string().contains("--config"), "{e}");
}
