use super::*;

/// The keys the parser accepts in a table, read from serde's "unknown field" error.
fn accepted(table: &str) -> Vec<String> {
    let minimal = "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
    let text = if table == "etcd" {
        "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nzz_unknown = 1\n".to_string()
    } else {
        format!("{minimal}[{table}]\nzz_unknown = 1\n")
    };
    let errors = crate::config::parse(&text).expect_err("an unknown key is refused");
    let message = &errors.iter().find(|e| e.message.contains("zz_unknown")).expect("names the key").message;
    let (_, expected) = message.split_once("expected").expect("lists the expected keys");
    expected.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn the_reference_names_exactly_the_keys_the_parser_accepts() {
    for table in TABLES {
        let mut documented: Vec<&str> = table.keys.iter().map(|k| k.name).collect();
        let mut parsed = accepted(table.name);
        documented.sort_unstable();
        parsed.sort_unstable();
        assert_eq!(documented, parsed, "[{}]", table.name);
    }
}

#[test]
fn every_table_the_parser_accepts_is_documented() {
    let top: Vec<&str> = TABLES.iter().map(|t| t.name).filter(|n| !n.contains('.')).collect();
    let err = crate::config::parse("zz_table = 1\n").expect_err("unknown");
    let message = &err.iter().find(|e| e.message.contains("zz_table")).expect("names it").message;
    let (_, expected) = message.split_once("expected").expect("lists them");
    let mut parsed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let mut top = top;
    parsed.sort_unstable();
    top.sort_unstable();
    assert_eq!(top, parsed);
}

/// Defaults that describe rather than spell a value; every other default must be one.
const DESCRIBED: &[&str] = &[
    "required",
    "none",
    "system roots",
    "[]",
    "AWS chain",
    "AWS",
    "bucket default",
    "bucket default key",
    "PATH",
    "HTTPS_PROXY etc.",
    "keep_last = 3",
    "as long as its base",
    "daily 7, weekly 4, monthly 6",
    "/etcd-backupd/<cluster>/",
    "[encryption]'s",
];

/// Writing a key's documented default changes nothing: the manual's defaults are the code's.
#[test]
fn every_documented_default_is_the_parsers_default() {
    let recipient = "age129n4cdkqnnw0ufcsz5av60my25tehpq9mlsxr3jfs68hzl2nqf4qpfwa0s";
    let mut checked = 0;
    for table in TABLES {
        // The table under test comes last, so the key written below lands in it.
        let mut base =
            format!("[encryption]\nrecipients = [\"{recipient}\"]\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n");
        if table.name.starts_with("s3") {
            base.push_str("[s3]\nbucket = \"backups\"\n");
        }
        if table.name != "etcd" && table.name != "encryption" && table.name != "s3" {
            base.push_str(&format!("[{}]\n", table.name));
        }
        if table.name.ends_with("retention") {
            // A retention table needs a rule; this one's default is described, so never tested.
            base.push_str("keep_within = \"1d\"\n");
        }
        if table.name == "files" {
            // [files] must name something; preset's default is described, so never tested.
            base.push_str("preset = \"kubeadm\"\n");
        }
        let Ok(expected) = crate::config::parse(&base) else { panic!("[{}]: the base config is valid", table.name) };
        let expected = format!("{expected:?}");
        for k in table.keys.iter().filter(|k| !DESCRIBED.contains(&k.default)) {
            // The default as TOML: bare (numbers, booleans, "") or quoted (durations, sizes, names).
            let written = [k.default.to_string(), format!("\"{}\"", k.default)]
                .into_iter()
                .find_map(|value| crate::config::parse(&format!("{base}{} = {value}\n", k.name)).ok());
            let Some(written) = written else { panic!("[{}] {} = {} is refused", table.name, k.name, k.default) };
            assert_eq!(
                format!("{written:?}"),
                expected,
                "[{}] {}: documented default {}",
                table.name,
                k.name,
                k.default
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} defaults checked");
}

#[test]
fn the_readme_documents_every_key() {
    let readme = include_str!("../../../README.md");
    for table in TABLES {
        for k in table.keys {
            let in_table = readme.contains(&format!("`{}`", k.name));
            let in_example = readme.contains(&format!("\n{} = ", k.name));
            assert!(in_table || in_example, "README lacks [{}] {}", table.name, k.name);
        }
    }
}
