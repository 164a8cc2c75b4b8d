//! Command line pieces that several commands share.

use std::time::Duration;

use clap::Args;
use syncd::duration;

/// The longest duration any flag accepts, as written in messages.
pub const DURATION_MAX_TEXT: &str = "365d";
/// The longest duration any flag accepts: long enough for any real wait,
/// short enough that deadlines never overflow.
pub const DURATION_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration flag (`500ms`, `30s`, `2m`), refusing more than
/// [`DURATION_MAX`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = duration::parse(text)?;
    if parsed > DURATION_MAX {
        return Err(format!(
            "duration {:?} is too long: at most {DURATION_MAX_TEXT}",
            text.trim()
        ));
    }
    Ok(parsed)
}

/// Parses a duration flag that must not be zero (a visibility timeout, a
/// pool's max age): at least 1ms, at most [`DURATION_MAX`].
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let parsed = parse_duration(text)?;
    if parsed < Duration::from_millis(1) {
        return Err(format!(
            "duration {:?} is too short: at least 1ms",
            text.trim()
        ));
    }
    Ok(parsed)
}

/// Just a name: for `describe` and the commands that act on a primitive
/// at once.
#[derive(Args, Debug)]
pub struct NameArgs {
    /// The primitive's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,
}

/// The flags of a command that waits without holding anything afterwards
/// (`event wait`, `barrier wait`).
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// How long to wait before giving up (exit 3). At most 365d. Default:
    /// as long as it takes.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// The session's lease: the wait ends on the server if syncctl is
    /// stopped or cut off from it for this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub ttl: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_durations_are_refused() {
        assert_eq!(parse_duration(DURATION_MAX_TEXT), Ok(DURATION_MAX));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        let error = parse_duration("99999999999h").unwrap_err();
        assert_eq!(error, "duration \"99999999999h\" is too long: at most 365d");
        assert!(parse_duration("366d").is_err());
    }

    #[test]
    fn positive_durations_refuse_zero() {
        assert_eq!(
            parse_positive_duration("0s"),
            Err("duration \"0s\" is too short: at least 1ms".to_string())
        );
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert!(parse_positive_duration("366d").is_err());
    }
}
