//! The journal that `shim.c` writes: parsing it, and (for the tests of the
//! rollback) writing one without the shim.
//!
//! Policy: the format is the one documented at the top of `shim.c`; a
//! record cut short at the end (the process was killed inside the
//! journal's write) is dropped, since the change it announced never ran.
//! Anything else that does not parse is an error: a journal that cannot be
//! read whole cannot say what a power cut could undo.
//!
//! Invariants: `parse(&encode(records)) == records` for every record list.

/// A file as the kernel names it: device and inode (a name may change
/// with a rename; the inode stays).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// The sync calls the shim tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncCall {
    Fsync,
    Fdatasync,
    /// Only with `POWERCUT_TRUST_SYNC_FILE_RANGE=1` (the control run).
    TrustedSyncFileRange,
    Syncfs,
    Sync,
}

impl SyncCall {
    fn from_byte(byte: u8) -> Result<SyncCall, String> {
        match byte {
            1 => Ok(SyncCall::Fsync),
            2 => Ok(SyncCall::Fdatasync),
            3 => Ok(SyncCall::TrustedSyncFileRange),
            4 => Ok(SyncCall::Syncfs),
            5 => Ok(SyncCall::Sync),
            other => Err(format!("unknown sync call {other}")),
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            SyncCall::Fsync => 1,
            SyncCall::Fdatasync => 2,
            SyncCall::TrustedSyncFileRange => 3,
            SyncCall::Syncfs => 4,
            SyncCall::Sync => 5,
        }
    }
}

/// What undoes one change: put `old` back at `off`, then cut the file to
/// `old_size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undo {
    pub seq: u64,
    pub file: FileId,
    pub off: u64,
    pub old_size: u64,
    pub old: Vec<u8>,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Header {
        version: u32,
        pid: u32,
    },
    Write(Undo),
    /// Every change of `file` numbered below `seq` is durable.
    Synced {
        seq: u64,
        file: FileId,
        call: SyncCall,
        path: String,
    },
    /// Every change numbered below `seq` is durable.
    SyncedAll {
        seq: u64,
        call: SyncCall,
    },
    /// A `sync_file_range`, which makes nothing durable here.
    SyncFileRange {
        file: FileId,
        path: String,
    },
    /// The inode's last name went: its changes below `seq` belong to a
    /// file that no longer exists.
    Gone {
        seq: u64,
        file: FileId,
        path: String,
    },
    /// A writable shared mapping (or another change the shim cannot undo):
    /// the model is incomplete.
    Unmodelled {
        file: FileId,
        path: String,
    },
}

/// The records of a journal, and whether its last one was cut short.
pub fn parse(bytes: &[u8]) -> Result<(Vec<Record>, bool), String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 5) else {
            return Ok((records, true));
        };
        let len = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes.get(at + 5..at + 5 + len) else {
            return Ok((records, true));
        };
        let record = parse_body(header[0], &mut Reader { body, at: 0 })
            .map_err(|e| format!("journal record at byte {at}: {e}"))?;
        records.push(record);
        at += 5 + len;
    }
    Ok((records, false))
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let bytes = (self.body.get(self.at..self.at + n)).ok_or("record body too short")?;
        self.at += n;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn file(&mut self) -> Result<FileId, String> {
        Ok(FileId {
            dev: self.u64()?,
            ino: self.u64()?,
        })
    }

    fn call(&mut self) -> Result<SyncCall, String> {
        SyncCall::from_byte(self.take(1)?[0])
    }

    /// The rest of the body: a path.
    fn path(&mut self) -> String {
        let rest = &self.body[self.at..];
        self.at = self.body.len();
        String::from_utf8_lossy(rest).into_owned()
    }
}

fn parse_body(tag: u8, r: &mut Reader) -> Result<Record, String> {
    let record = match tag {
        b'H' => Record::Header {
            version: r.u32()?,
            pid: r.u32()?,
        },
        b'W' => {
            let (seq, file, off, old_size) = (r.u64()?, r.file()?, r.u64()?, r.u64()?);
            let old_len = usize::try_from(r.u64()?).map_err(|e| e.to_string())?;
            let old = r.take(old_len)?.to_vec();
            Record::Write(Undo {
                seq,
                file,
                off,
                old_size,
                old,
                path: r.path(),
            })
        }
        b'S' => Record::Synced {
            seq: r.u64()?,
            file: r.file()?,
            call: r.call()?,
            path: r.path(),
        },
        b'A' => Record::SyncedAll {
            seq: r.u64()?,
            call: r.call()?,
        },
        b'R' => Record::SyncFileRange {
            file: r.file()?,
            path: r.path(),
        },
        b'G' => Record::Gone {
            seq: r.u64()?,
            file: r.file()?,
            path: r.path(),
        },
        b'M' => Record::Unmodelled {
            file: r.file()?,
            path: r.path(),
        },
        other => return Err(format!("unknown tag {other:#04x}")),
    };
    Ok(record)
}

/// The bytes the shim would have written for `records`: a journal made
/// without the shim, for the tests of the rollback.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        let mut body = Vec::new();
        let tag = encode_body(record, &mut body);
        out.push(tag);
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(body);
    }
    out
}

fn put_file(body: &mut Vec<u8>, file: &FileId) {
    body.extend(file.dev.to_le_bytes());
    body.extend(file.ino.to_le_bytes());
}

/// Appends the record's body; returns its tag.
fn encode_body(record: &Record, body: &mut Vec<u8>) -> u8 {
    match record {
        Record::Header { version, pid } => {
            body.extend(version.to_le_bytes());
            body.extend(pid.to_le_bytes());
            b'H'
        }
        Record::Write(undo) => {
            body.extend(undo.seq.to_le_bytes());
            put_file(body, &undo.file);
            body.extend(undo.off.to_le_bytes());
            body.extend(undo.old_size.to_le_bytes());
            body.extend((undo.old.len() as u64).to_le_bytes());
            body.extend(&undo.old);
            body.extend(undo.path.as_bytes());
            b'W'
        }
        Record::Synced {
            seq,
            file,
            call,
            path,
        } => {
            body.extend(seq.to_le_bytes());
            put_file(body, file);
            body.push(call.to_byte());
            body.extend(path.as_bytes());
            b'S'
        }
        Record::SyncedAll { seq, call } => {
            body.extend(seq.to_le_bytes());
            body.push(call.to_byte());
            b'A'
        }
        Record::SyncFileRange { file, path } => {
            put_file(body, file);
            body.extend(path.as_bytes());
            b'R'
        }
        Record::Gone { seq, file, path } => {
            body.extend(seq.to_le_bytes());
            put_file(body, file);
            body.extend(path.as_bytes());
            b'G'
        }
        Record::Unmodelled { file, path } => {
            put_file(body, file);
            body.extend(path.as_bytes());
            b'M'
        }
    }
}
