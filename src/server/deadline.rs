//! Wait deadlines. The server enforces them itself: tonic's own timeout does
//! not cover a stream that the handler has already returned.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The call's `grpc-timeout` header, if present and well formed.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(text)
}

/// Parses the gRPC wire format: at most 8 digits and a unit
/// (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    let duration = match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    };
    Some(duration)
}

/// The wait's timeout in milliseconds: the smaller of the request's own
/// field and the call's gRPC deadline. `None` waits forever.
pub fn effective_timeout_ms(requested_ms: Option<u64>, grpc: Option<Duration>) -> Option<u64> {
    let grpc_ms = grpc.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    match (requested_ms, grpc_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1000u"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }

    #[test]
    fn takes_the_smaller_timeout() {
        let grpc = Some(Duration::from_secs(1));
        assert_eq!(effective_timeout_ms(Some(5_000), grpc), Some(1_000));
        assert_eq!(effective_timeout_ms(Some(0), grpc), Some(0));
        assert_eq!(effective_timeout_ms(None, grpc), Some(1_000));
        assert_eq!(effective_timeout_ms(None, None), None);
    }
}
