//! Parsing of the human units used in the config file: durations ("10s", "30m", "7d") and sizes ("16MiB").

use std::time::Duration;

/// Parses a duration such as `10s`, `30m`, `7d` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("expected a duration like \"10s\", \"30m\" or \"7d\", found an empty string".into());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "\"{trimmed}\" has no unit: write \"{trimmed}s\" for seconds, \"{trimmed}m\" for minutes, \"{trimmed}d\" for days"
        ));
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("\"{trimmed}\" is not a duration ({e}): expected a number and a unit like \"10s\", \"30m\", \"12h\" or \"7d\"")
    })
}

/// Parses a byte size such as `16MiB`, `512KiB` or `1GiB` (decimal units like `16MB` are accepted too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.chars().all(|c| c.is_ascii_digit()) && !trimmed.is_empty() {
        return Err(format!(
            "\"{trimmed}\" has no unit: write a size like \"{trimmed}MiB\" (or \"{trimmed}B\" for bytes)"
        ));
    }
    trimmed
        .parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|_| format!("\"{trimmed}\" is not a size: expected a number and a unit like \"16MiB\" or \"1GiB\""))
}

/// Formats a byte count the way operators read it: `12.4 MiB`.
pub fn format_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        for bad in ["", "10", "ten seconds", "10x", "-5s", "s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration") || err.contains("no unit"), "{bad}: {err}");
        }
        assert!(parse_duration("10").unwrap_err().contains("\"10s\""));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 * 1024 * 1024));
        assert_eq!(parse_size("16 MiB"), Ok(16 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("100B"), Ok(100));
    }

    #[test]
    fn bad_sizes() {
        assert!(parse_size("16").unwrap_err().contains("no unit"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("").unwrap_err().contains("not a size"));
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(13_002_342), "12.4 MiB");
        assert_eq!(format_size(0), "0 B");
    }
}
