//! When a new connection counts as handshaken, judged from the bytes the
//! server reads from it (before any TLS is removed).
//!
//! Policy:
//! - Plain HTTP/2: once the 24-byte client preface and the whole first
//!   frame (which RFC 9113 §3.4 requires to be SETTINGS) have been read. The
//!   bytes are counted, not checked: hyper checks them and closes a
//!   connection that sends anything else.
//! - TLS: the records are encrypted, so the client's second complete
//!   application-data record (content type 23) counts. In TLS 1.3 the first
//!   is its encrypted Finished and the second carries its first HTTP/2
//!   bytes; in TLS 1.2 the first carries the preface and the second the
//!   SETTINGS acknowledgement RFC 9113 requires (or, at the latest, its
//!   answer to hyper's keepalive PING 10 s later). The TLS handshake itself
//!   is also bounded by tonic's TLS timeout (`tls::HANDSHAKE_TIMEOUT`). A
//!   client that finishes TLS and then sends a partial preface passes this
//!   check; `max_connections` still bounds how many such clients hold fds.
//!
//! Invariant: [`Progress::observe`] turns true once and stays true; it
//! looks at each byte at most once and keeps a fixed few bytes of state.

/// The client preface and a frame header.
const PLAIN_HEAD_BYTES: usize = 24 + 9;
/// A TLS record header: type, version (2), length (2).
const TLS_HEADER_BYTES: usize = 5;
/// TLS content type `application_data`.
const TLS_APPLICATION_DATA: u8 = 23;
/// Application-data records a TLS client sends by the end of its HTTP/2
/// handshake (see the module's doc).
const TLS_APPLICATION_RECORDS: u32 = 2;

/// What a connection has sent of its handshake so far.
#[derive(Debug)]
pub(super) enum Progress {
    Plain {
        head: [u8; PLAIN_HEAD_BYTES],
        read_bytes: u64,
    },
    Tls {
        header: [u8; TLS_HEADER_BYTES],
        header_bytes: usize,
        /// The current record's type and how much of its body is to come.
        record_type: u8,
        body_left: usize,
        application_records: u32,
    },
}

impl Progress {
    pub(super) fn plain() -> Progress {
        Progress::Plain {
            head: [0; PLAIN_HEAD_BYTES],
            read_bytes: 0,
        }
    }

    pub(super) fn tls() -> Progress {
        Progress::Tls {
            header: [0; TLS_HEADER_BYTES],
            header_bytes: 0,
            record_type: 0,
            body_left: 0,
            application_records: 0,
        }
    }

    /// Takes the next bytes read; true once the handshake is complete.
    pub(super) fn observe(&mut self, bytes: &[u8]) -> bool {
        match self {
            Progress::Plain { head, read_bytes } => observe_plain(head, read_bytes, bytes),
            Progress::Tls {
                header,
                header_bytes,
                record_type,
                body_left,
                application_records,
            } => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    if *body_left > 0 {
                        let n = (*body_left).min(rest.len());
                        rest = &rest[n..];
                        *body_left -= n;
                    } else {
                        let n = (TLS_HEADER_BYTES - *header_bytes).min(rest.len());
                        header[*header_bytes..*header_bytes + n].copy_from_slice(&rest[..n]);
                        *header_bytes += n;
                        rest = &rest[n..];
                        if *header_bytes < TLS_HEADER_BYTES {
                            continue;
                        }
                        *header_bytes = 0;
                        *record_type = header[0];
                        *body_left = usize::from(u16::from_be_bytes([header[3], header[4]]));
                    }
                    if *body_left == 0 && *record_type == TLS_APPLICATION_DATA {
                        *application_records += 1;
                        *record_type = 0;
                    }
                }
                *application_records >= TLS_APPLICATION_RECORDS
            }
        }
    }
}

fn observe_plain(head: &mut [u8; PLAIN_HEAD_BYTES], read_bytes: &mut u64, bytes: &[u8]) -> bool {
    let at = usize::try_from(*read_bytes).unwrap_or(usize::MAX);
    if at < PLAIN_HEAD_BYTES {
        let n = (PLAIN_HEAD_BYTES - at).min(bytes.len());
        head[at..at + n].copy_from_slice(&bytes[..n]);
    }
    *read_bytes = read_bytes.saturating_add(bytes.len() as u64);
    if *read_bytes < PLAIN_HEAD_BYTES as u64 {
        return false;
    }
    let frame_bytes = u32::from_be_bytes([0, head[24], head[25], head[26]]);
    *read_bytes >= PLAIN_HEAD_BYTES as u64 + u64::from(frame_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A SETTINGS frame with one setting (6 bytes of payload).
    fn settings() -> Vec<u8> {
        vec![0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]
    }

    fn feed(progress: &mut Progress, bytes: &[u8], chunk: usize) -> Vec<bool> {
        bytes.chunks(chunk).map(|c| progress.observe(c)).collect()
    }

    #[test]
    fn plain_needs_the_preface_and_the_whole_first_frame() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings());
        for chunk in [1, 2, 7, 100] {
            let mut progress = Progress::plain();
            let seen = feed(&mut progress, &bytes, chunk);
            let done_at = seen.iter().position(|&done| done).expect("done");
            assert!((done_at + 1) * chunk >= bytes.len(), "chunk {chunk}");
            assert!(done_at * chunk < bytes.len(), "not before the end: {chunk}");
            assert!(progress.observe(b"more"), "stays done");
        }
        let mut silent = Progress::plain();
        assert!(!silent.observe(&[]));
        assert!(!silent.observe(PREFACE));
        assert!(!silent.observe(&settings()[..14]));
        assert!(silent.observe(&settings()[14..]));
    }

    fn record(content_type: u8, body_bytes: usize) -> Vec<u8> {
        let mut record = vec![content_type, 3, 3];
        record.extend(u16::try_from(body_bytes).unwrap().to_be_bytes());
        record.extend(std::iter::repeat_n(0xaa, body_bytes));
        record
    }

    #[test]
    fn tls_needs_two_application_data_records() {
        let hello = record(22, 300);
        let change_cipher_spec = record(20, 1);
        let finished = record(23, 53);
        let preface = record(23, 80);
        let mut bytes = [hello, change_cipher_spec, finished].concat();
        let before = bytes.len();
        bytes.extend(&preface);
        for chunk in [1, 3, 64, 1000] {
            let mut progress = Progress::tls();
            let seen = feed(&mut progress, &bytes, chunk);
            let done_at = seen.iter().position(|&done| done).expect("done");
            assert!((done_at + 1) * chunk >= bytes.len(), "chunk {chunk}");
            assert!(done_at * chunk < bytes.len(), "chunk {chunk}");
        }
        let mut partial = Progress::tls();
        assert!(!partial.observe(&bytes[..before]), "the handshake alone");
        assert!(
            !partial.observe(&preface[..preface.len() - 1]),
            "a partial record"
        );
        assert!(partial.observe(&preface[preface.len() - 1..]));
    }

    #[test]
    fn an_empty_application_record_counts_when_its_header_is_read() {
        let bytes = [record(23, 0), record(23, 0)].concat();
        let mut progress = Progress::tls();
        assert!(!progress.observe(&bytes[..5]));
        assert!(progress.observe(&bytes[5..]));
    }
}
