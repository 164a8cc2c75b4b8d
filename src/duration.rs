//! Durations as people write them: `500ms`, `30s`, `2m`, `1h`, `1m30s`.

use std::time::Duration;

/// Parses a duration such as `500ms`, `30s`, `2m` or `1h30m`. A bare number
/// is refused: the unit is required so that `--ttl 10` cannot mean 10 ms to
/// one reader and 10 s to another.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "duration {text:?} has no unit: write e.g. {text}s or {text}ms"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}); write e.g. 500ms, 30s, 2m"))
}

/// Formats a duration as humantime does (`1s 500ms`, `250ms`, `2m`): the
/// same form `parse` reads back.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_missing_unit_and_garbage() {
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("soon").is_err());
        assert!(parse("").is_err());
    }
}
