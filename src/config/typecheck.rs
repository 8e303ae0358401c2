//! Checks each documented key's TOML type against the reference before serde reads the file, so that every
//! mistyped key is reported at once, in the user's words, and removed so the rest can still be checked.
//! Pure.

use toml::{Table, Value};

use super::Issue;
use super::reference::{Kind, TABLES};

/// Reports and removes every documented key whose value has the wrong type. Unknown keys are left for the
/// parser, which names the keys it accepts.
pub fn take_mistyped(root: &mut Table) -> Vec<Issue> {
    let mut issues = Vec::new();
    for table in TABLES {
        let Some(values) = table_mut(root, table.name) else { continue };
        for key in table.keys {
            let Some(value) = values.get(key.name) else { continue };
            if let Some(found) = mismatch(key.kind, value) {
                issues.push(Issue::new(
                    format!("{}.{}", table.name, key.name),
                    format!("expected {}, found {found}", key.kind.expected()),
                ));
                values.remove(key.name);
            }
        }
    }
    // A table written as a plain value (`s3 = "x"`) is reported by its parent's entry, or here for the top.
    for table in TABLES.iter().filter(|t| !t.name.contains('.')) {
        if let Some(value) = root.get(table.name)
            && !value.is_table()
        {
            issues.push(Issue::new(
                table.name,
                format!("expected a table, written [{}] on its own line, found {}", table.name, describe(value)),
            ));
            root.remove(table.name);
        }
    }
    issues
}

/// The table at a dotted name, if every part of it is a table.
fn table_mut<'a>(root: &'a mut Table, dotted: &str) -> Option<&'a mut Table> {
    dotted.split('.').try_fold(root, |table, part| table.get_mut(part)?.as_table_mut())
}

/// How `value` fails to be a `kind`, in words, or None when it is one.
fn mismatch(kind: Kind, value: &Value) -> Option<String> {
    let ok = match (kind, value) {
        (Kind::Text | Kind::Duration | Kind::Size, Value::String(_)) => true,
        (Kind::Count, Value::Integer(n)) => {
            if u32::try_from(*n).is_err() {
                let why = if *n < 0 { "below 0" } else { "too large" };
                return Some(format!("{n}, which is {why}"));
            }
            true
        }
        (Kind::Integer, Value::Integer(_)) | (Kind::Bool, Value::Boolean(_)) => true,
        (Kind::List, Value::Array(items)) => {
            if let Some((i, item)) = items.iter().enumerate().find(|(_, v)| !v.is_str()) {
                return Some(format!("{} as item {}", describe(item), i + 1));
            }
            true
        }
        (Kind::SubTable, Value::Table(_)) => true,
        _ => false,
    };
    (!ok).then(|| describe(value))
}

/// A TOML value as a user would name it.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the text \"{}\"", s.escape_debug()),
        Value::Integer(n) => format!("the number {n}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "a list".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}
