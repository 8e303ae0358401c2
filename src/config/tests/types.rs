//! Values of the wrong type, said in the user's words; every problem at once.

use super::*;

#[test]
fn wrong_type_names_the_key() {
    let p = one(&minimal().replace("[encryption]", "[backup]\ncompression_level = \"high\"\n[encryption]"));
    assert_eq!(p.key, "backup.compression_level");
    assert_eq!(p.line, Some(5));
    assert_eq!(p.message, "expected a whole number, like 3, found the text \"high\"");
}

/// Every kind of value, written wrong, is said in the user's words: what to write and what was found.
#[test]
fn wrong_types_are_said_in_the_users_words() {
    let cases = [
        (
            "[schedule]\nmax_attempts = \"3\"",
            "schedule.max_attempts",
            "expected a whole number, 0 or more, like 3, found the text \"3\"",
        ),
        (
            "[schedule]\nmax_attempts = -2",
            "schedule.max_attempts",
            "expected a whole number, 0 or more, like 3, found -2, which is below 0",
        ),
        (
            "[schedule]\nmax_attempts = 5000000000",
            "schedule.max_attempts",
            "expected a whole number, 0 or more, like 3, found 5000000000, which is too large",
        ),
        (
            "[schedule]\nmax_attempts = 1.5",
            "schedule.max_attempts",
            "expected a whole number, 0 or more, like 3, found the number 1.5",
        ),
        (
            "[schedule]\ncatch_up = \"yes\"",
            "schedule.catch_up",
            "expected true or false, without quotes, found the text \"yes\"",
        ),
        (
            "[schedule]\njitter = 30",
            "schedule.jitter",
            "expected a duration in quotes, like \"30s\", \"10m\" or \"6h\", found the number 30",
        ),
        (
            "[s3]\nbucket = \"bkt\"\npart_size = 8",
            "s3.part_size",
            "expected a size in quotes, like \"8MiB\" or \"2GiB\", found the number 8",
        ),
        ("[s3]\nbucket = [\"b\"]", "s3.bucket", "expected text in quotes, found a list"),
        (
            "[notify]\nwebhooks = \"https://x\"",
            "notify.webhooks",
            "expected a list of texts in quotes, like [\"a\", \"b\"], found the text \"https://x\"",
        ),
        (
            "[notify]\nwebhooks = [\"https://x\", 2]",
            "notify.webhooks",
            "expected a list of texts in quotes, like [\"a\", \"b\"], found the number 2 as item 2",
        ),
        ("[local]\nretention = 3", "local.retention", "expected a table of its own, found the number 3"),
        ("metrics = \"/x\"", "metrics", "expected a table, written [metrics] on its own line, found the text \"/x\""),
        ("[drill]\ncron = 2026-01-01", "drill.cron", "expected text in quotes, found the date 2026-01-01"),
    ];
    for (extra, key, message) in cases {
        // A top-level value must come before the first table.
        let text =
            if extra.starts_with('[') { format!("{}{extra}\n", minimal()) } else { format!("{extra}\n{}", minimal()) };
        let p = one(&text);
        assert_eq!((p.key.as_str(), p.message.as_str()), (key, message), "{extra}");
        assert!(p.line.is_some(), "{extra}: no line");
    }
}

/// Every problem of a file comes at once, in the order of its lines, whether a type, an unknown key or a
/// value; one does not hide the next, and a removed key does not add a follow-on complaint.
#[test]
fn every_problem_at_once_sorted_by_line() {
    let text = format!(
        "[schedule]\ncatch_up = \"no\"\ncron = \"every day\"\n{}[local.retention]\nkeep_last = \"3\"\nkeep_lats = 2\n[backup]\ncompresion = \"zstd\"\ncompression_level = \"high\"\n",
        minimal()
    );
    let p = problems(&text);
    let got: Vec<(Option<usize>, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (Some(2), "schedule.catch_up"),
            (Some(3), "schedule.cron"),
            (Some(10), "local.retention.keep_last"),
            (Some(11), "local.retention.keep_lats"),
            (Some(13), "backup.compresion"),
            (Some(14), "backup.compression_level"),
        ]
    );
}

/// The reference's kinds are the parser's types: a value of each key's documented kind is read, a value
/// of another kind is refused by the parser itself (so the check before it cannot drift from it).
#[test]
fn the_reference_kinds_are_the_parsers_types() {
    use super::reference::{Kind, TABLES};
    fn sample(kind: Kind) -> &'static str {
        match kind {
            Kind::Text | Kind::Duration | Kind::Size => "\"x\"",
            Kind::Count | Kind::Integer => "3",
            Kind::Bool => "true",
            Kind::List => "[\"x\"]",
            Kind::SubTable => "{}",
        }
    }
    for table in TABLES {
        for key in table.keys {
            let doc = |value: &str| {
                let (parent, name) = table.name.rsplit_once('.').unwrap_or(("", table.name));
                let inner = format!("{{ {} = {value} }}", key.name);
                if parent.is_empty() {
                    format!("{name} = {inner}\n")
                } else {
                    format!("{parent} = {{ {name} = {inner} }}\n")
                }
            };
            let read = |value: &str| toml::from_str::<RawConfig>(&doc(value)).map(|_| ()).map_err(|e| e.to_string());
            assert!(read(sample(key.kind)).is_ok(), "[{}] {}: {:?}", table.name, key.name, read(sample(key.kind)));
            let other = if key.kind == Kind::Bool { "\"x\"" } else { "true" };
            assert!(read(other).is_err(), "[{}] {} accepts {other}", table.name, key.name);
        }
    }
}
