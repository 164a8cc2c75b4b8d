//! Helpers shared by the fuzz targets and the seed-corpus generator.

/// Encodes a list of (key, value) records as the `restore_records` input:
/// for each record, key length (u16 BE), key, value length (u16 BE), value.
pub fn encode_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        for part in [key, value] {
            let len = part.len().min(u16::MAX as usize);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(&part[..len]);
        }
    }
    out
}

/// The inverse of `encode_records`; a truncated tail is cut short (a record
/// with a truncated value keeps what is there).
pub fn decode_records(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
        if data.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let len = len.min(rest.len());
        let (part, tail) = rest.split_at(len);
        *data = tail;
        Some(part)
    }
    let mut records = Vec::new();
    while let Some(key) = take(&mut data) {
        let value = take(&mut data).unwrap_or_default();
        records.push((key.to_vec(), value.to_vec()));
    }
    records
}
