//! The fenced resource: a small TCP server on 127.0.0.1 that remembers, per
//! resource, the highest fencing token it accepted, and refuses a write with
//! a lower one (Kleppmann's fencing). A write with the highest token so far
//! is accepted too: one hold writes several times under the same token, and
//! tokens are unique per grant, so an equal token is the newest holder.
//!
//! Protocol, one line each way: `W <resource> <token> <worker>` →
//! `OK <highest>` or `STALE <highest>` (the highest token after the write).
//! Every write is logged (in memory and, as it happens, to `fenced.log`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::history::now_us;

/// One write the server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencedWrite {
    pub resource: String,
    pub token: u64,
    pub accepted: bool,
    pub worker: String,
    pub at_us: u64,
}

#[derive(Default)]
struct State {
    highest: BTreeMap<String, u64>,
    log: Vec<FencedWrite>,
    file: Option<File>,
}

/// The running server. Its threads live as long as the test process; they
/// only ever serve loopback connections of the test's workers.
pub struct FencedServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FencedServer {
    /// Starts it on 127.0.0.1:0, logging to `log_path`.
    pub fn start(log_path: &Path) -> FencedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fenced server");
        let addr = listener.local_addr().expect("local addr");
        let file = File::create(log_path).expect("create fenced.log");
        let state = Arc::new(Mutex::new(State {
            file: Some(file),
            ..State::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        FencedServer { addr, state }
    }

    /// Every write so far, in the order the server decided them.
    pub fn log(&self) -> Vec<FencedWrite> {
        self.state.lock().expect("fenced state").log.clone()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let reply = match parse_write(&line) {
            Some((resource, token, worker)) => decide(state, resource, token, worker),
            None => format!("ERR bad request {line:?}"),
        };
        if writeln!(writer, "{reply}").is_err() {
            return;
        }
    }
}

fn parse_write(line: &str) -> Option<(&str, u64, &str)> {
    let mut words = line.split(' ');
    if words.next()? != "W" {
        return None;
    }
    let resource = words.next()?;
    let token = words.next()?.parse().ok()?;
    let worker = words.next()?;
    Some((resource, token, worker))
}

/// Accepts the write when its token is at least the highest accepted so
/// far; answers with the verdict and the highest token after it.
fn decide(state: &Mutex<State>, resource: &str, token: u64, worker: &str) -> String {
    let mut state = state.lock().expect("fenced state");
    let highest = state.highest.entry(resource.to_string()).or_insert(0);
    let accepted = token >= *highest;
    if accepted {
        *highest = token;
    }
    let highest = *highest;
    let write = FencedWrite {
        resource: resource.to_string(),
        token,
        accepted,
        worker: worker.to_string(),
        at_us: now_us(),
    };
    if let Some(file) = state.file.as_mut() {
        let _ = writeln!(
            file,
            "{} {} {} {} {}",
            write.at_us,
            write.resource,
            write.token,
            if accepted { "accepted" } else { "STALE" },
            write.worker
        );
    }
    state.log.push(write);
    format!("{} {highest}", if accepted { "OK" } else { "STALE" })
}
