//! What a refused plain HTTP/2 connection hears before it is closed.
//!
//! Policy: when there is time (past `max_connections`, with fewer than
//! [`ANSWERING_MAX`] refusals being answered), a task waits up to
//! [`ANSWER_WAIT`] for the client's first request and answers it with a
//! gRPC status (UNAVAILABLE, its message saying why), then a GOAWAY, so
//! that the caller gets a status that names the limit rather than a
//! closed connection. Otherwise (out of descriptors, where the descriptor
//! must come free at once, or too many being answered) the server's
//! SETTINGS and a GOAWAY carrying the reason as debug text are written
//! without waiting and the connection is closed. Either way the client's
//! bytes are read first, so that the close is a FIN, not a reset that
//! could overtake the answer.
//!
//! Invariant: a refused connection is held at most `2 × ANSWER_WAIT`, and at
//! most [`ANSWERING_MAX`] at once.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Refusals answered at once; more are closed at once.
pub(super) const ANSWERING_MAX: usize = 32;
/// How long a refusal waits for the client's request, and then for the
/// client to close.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// Bytes read while looking for the first request.
const REQUEST_SEARCH_BYTES_MAX: usize = 16 * 1024;

const PREFACE_BYTES: usize = 24;
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 1;
const FRAME_SETTINGS: u8 = 4;
const FRAME_GOAWAY: u8 = 7;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
/// HTTP/2's ENHANCE_YOUR_CALM error code (RFC 9113 §7).
pub(super) const ENHANCE_YOUR_CALM: u32 = 0xb;
/// gRPC's UNAVAILABLE: transient, try again later.
const GRPC_UNAVAILABLE: &str = "14";

/// Writes the short refusal (SETTINGS, GOAWAY) on a fresh socket without
/// waiting, after reading what the client sent so far.
pub(super) fn at_once(stream: &TcpStream, why: &str) {
    // Raw non-blocking calls: tokio's `try_*` would not even try on a
    // socket whose readiness it has not seen yet.
    let socket = socket2::SockRef::from(stream);
    let mut sink = [0u8; 1024];
    let _ = io::Read::read(&mut &*socket, &mut sink);
    let _ = io::Write::write(&mut &*socket, &goaway(0, why));
}

/// Waits for the client's first request, answers it with UNAVAILABLE and
/// `why`, and closes (see the module's doc).
pub(super) async fn answer(mut stream: TcpStream, why: String) {
    let request = tokio::time::timeout(ANSWER_WAIT, first_request(&mut stream)).await;
    let frames = match request {
        Ok(Ok(Some(stream_id))) => unavailable(stream_id, &why),
        _ => goaway(0, &why),
    };
    let drained = async {
        stream.write_all(&frames).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(ANSWER_WAIT, drained).await;
}

/// The stream id of the client's first HEADERS frame; `None` if the
/// client closes or sends too much before one.
async fn first_request(stream: &mut TcpStream) -> io::Result<Option<u32>> {
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while bytes.len() < REQUEST_SEARCH_BYTES_MAX {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(stream_id) = find_headers(&bytes) {
            return Ok(Some(stream_id));
        }
    }
    Ok(None)
}

/// Walks the frames after the client preface; the stream id of the first
/// complete-headed HEADERS frame.
fn find_headers(bytes: &[u8]) -> Option<u32> {
    let mut at = PREFACE_BYTES;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER_BYTES) {
        if header[3] == FRAME_HEADERS {
            let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
            return Some(id & 0x7fff_ffff);
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
        at += FRAME_HEADER_BYTES + usize::try_from(length).ok()?;
    }
    None
}

fn frame(frames: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    debug_assert!(length < 1 << 14, "within the default frame size");
    frames.extend_from_slice(&length.to_be_bytes()[1..]);
    frames.extend_from_slice(&[kind, flags]);
    frames.extend_from_slice(&stream_id.to_be_bytes());
    frames.extend_from_slice(payload);
}

/// The server's SETTINGS (empty), an ACK of the client's, and a GOAWAY
/// after `last_stream_id` with `why` as its debug data, which clients show
/// in their error.
pub(super) fn goaway(last_stream_id: u32, why: &str) -> Vec<u8> {
    let mut frames = Vec::with_capacity(64 + why.len());
    frame(&mut frames, FRAME_SETTINGS, 0, 0, &[]);
    frame(&mut frames, FRAME_SETTINGS, FLAG_ACK, 0, &[]);
    let mut payload = Vec::with_capacity(8 + why.len());
    payload.extend_from_slice(&last_stream_id.to_be_bytes());
    payload.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    payload.extend_from_slice(why.as_bytes());
    frame(&mut frames, FRAME_GOAWAY, 0, 0, &payload);
    frames
}

/// A trailers-only gRPC answer on `stream_id` (UNAVAILABLE, `why`), then
/// the GOAWAY.
fn unavailable(stream_id: u32, why: &str) -> Vec<u8> {
    let mut block = vec![0x88]; // `:status: 200`, HPACK static entry 8.
    for (name, value) in [
        ("content-type", "application/grpc"),
        ("grpc-status", GRPC_UNAVAILABLE),
        ("grpc-message", why),
    ] {
        literal(&mut block, name, value);
    }
    let mut frames = goaway(stream_id, why);
    let mut answer = Vec::with_capacity(block.len() + 9);
    let flags = FLAG_END_STREAM | FLAG_END_HEADERS;
    frame(&mut answer, FRAME_HEADERS, flags, stream_id, &block);
    // Before the GOAWAY, after the SETTINGS and their ACK.
    let at = 2 * FRAME_HEADER_BYTES;
    frames.splice(at..at, answer);
    frames
}

/// An HPACK literal header field without indexing, new name, no Huffman
/// coding (RFC 7541 §6.2.2).
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    for text in [name, value] {
        integer(block, text.len());
        block.extend_from_slice(text.as_bytes());
    }
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1).
fn integer(block: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        block.push(n as u8);
        return;
    }
    block.push(127);
    n -= 127;
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames as (type, flags, stream id, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let id = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            frames.push((bytes[3], bytes[4], id, bytes[9..9 + length].to_vec()));
            bytes = &bytes[9 + length..];
        }
        frames
    }

    #[test]
    fn the_goaway_is_preceded_by_settings_and_their_ack() {
        let frames = frames(&goaway(0, "why"));
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], (4, 0, 0, vec![]));
        assert_eq!(frames[1], (4, 1, 0, vec![]));
        let (kind, _, id, payload) = &frames[2];
        assert_eq!((*kind, *id), (7, 0));
        assert_eq!(&payload[..4], &[0, 0, 0, 0], "last stream id");
        assert_eq!(u32::from_be_bytes(payload[4..8].try_into().unwrap()), 0xb);
        assert_eq!(&payload[8..], b"why");
    }

    #[test]
    fn the_answer_is_a_trailers_only_response_on_the_request_s_stream() {
        let frames = frames(&unavailable(3, "full"));
        let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [4, 4, 1, 7]);
        let (_, flags, id, block) = &frames[2];
        assert_eq!((*flags, *id), (0x5, 3));
        let mut want = vec![0x88, 0, 12];
        want.extend(b"content-type");
        want.push(16);
        want.extend(b"application/grpc");
        want.extend([0, 11]);
        want.extend(b"grpc-status");
        want.extend([2, b'1', b'4', 0, 12]);
        want.extend(b"grpc-message");
        want.push(4);
        want.extend(b"full");
        assert_eq!(block, &want);
        assert_eq!(&frames[3].3[..4], &[0, 0, 0, 3], "stream 3 was answered");
    }

    #[test]
    fn hpack_integers_past_the_prefix_continue() {
        let mut block = Vec::new();
        integer(&mut block, 126);
        integer(&mut block, 127);
        integer(&mut block, 1337);
        assert_eq!(block, [126, 127, 0, 127, 0xba, 0x09]);
    }

    #[test]
    fn the_first_request_is_found_after_other_frames() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        assert_eq!(find_headers(&bytes), None);
        bytes.extend([0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(find_headers(&bytes), None);
        bytes.extend([0, 0, 1, 1, 4, 0, 0, 0]);
        assert_eq!(find_headers(&bytes), None, "header not complete");
        bytes.extend([1, 0x88]);
        assert_eq!(find_headers(&bytes), Some(1));
    }
}
