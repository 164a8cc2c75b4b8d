//! Power cuts for tests of the real `syncd` binary.
//!
//! `shim.c` is an `LD_PRELOAD` library that journals, before each write to
//! a file under the data directory, how to undo it, and records each sync;
//! [`rollback::roll_back`], run after `kill -9`, undoes every write no
//! fsync/fdatasync covered. The data directory is then what a power cut
//! could have left (see `shim.c` for the model and what it leaves out).
//! The shim is compiled when a test runs, with the machine's `cc`.

pub mod journal;
pub mod load;
pub mod rollback;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The compiled shim, in a temporary directory of its own.
pub struct Shim {
    lib: PathBuf,
    _dir: tempfile::TempDir,
}

impl Shim {
    /// Compiles `tests/powercut/shim.c`. `None` (after saying why on
    /// stderr) when there is no `cc`; a compile error fails the test.
    pub fn build() -> Option<Shim> {
        let dir = tempfile::tempdir().expect("temp dir");
        let lib = dir.path().join("libpowercut.so");
        compile("shim.c", &lib, &["-shared", "-fPIC", "-ldl"])?;
        Some(Shim { lib, _dir: dir })
    }

    /// Compiles the scripted writer `tests/powercut/probe.c` beside the
    /// shim.
    pub fn probe(&self) -> PathBuf {
        let probe = self.lib.with_file_name("probe");
        compile("probe.c", &probe, &[]).expect("cc was there for the shim");
        probe
    }

    /// The environment that loads the shim into a process and tracks the
    /// files under `data`, journaling to `journal`. `trust_sync_file_range`
    /// counts `sync_file_range` as a sync (the control run).
    pub fn env(
        &self,
        data: &Path,
        journal: &Path,
        trust_sync_file_range: bool,
    ) -> Vec<(String, String)> {
        let trust = if trust_sync_file_range { "1" } else { "0" };
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            ("POWERCUT_DIR".into(), data.display().to_string()),
            ("POWERCUT_JOURNAL".into(), journal.display().to_string()),
            ("POWERCUT_TRUST_SYNC_FILE_RANGE".into(), trust.into()),
        ]
    }
}

/// `cc -O2 -Wall -o OUT tests/powercut/SOURCE FLAGS`; `None` without `cc`.
fn compile(source: &str, out: &Path, flags: &[&str]) -> Option<()> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/powercut")
        .join(source);
    let mut command = Command::new("cc");
    command.args(["-O2", "-Wall", "-o"]).arg(out).arg(&source);
    command.args(flags);
    let output = match command.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED: no `cc` on this machine to compile {}",
                source.display()
            );
            return None;
        }
        Err(e) => panic!("cannot run cc: {e}"),
    };
    assert!(
        output.status.success(),
        "cc failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the probe under the shim in a fresh data directory; returns
    /// the directory and what the rollback made of it.
    fn probe(
        shim: &Shim,
        args: &[&str],
    ) -> (tempfile::TempDir, Result<rollback::Rollback, String>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let journal = dir.path().join("journal");
        let status = Command::new(shim.probe())
            .arg(&data)
            .args(args)
            .envs(shim.env(&data, &journal, false))
            .status()
            .expect("run the probe");
        assert!(status.success(), "probe failed: {status}");
        let rollback = rollback::roll_back(&journal, &data);
        (dir, rollback)
    }

    #[test]
    fn the_shim_journals_every_kind_of_write_and_each_sync() {
        let Some(shim) = Shim::build() else { return };
        let (dir, rollback) = probe(&shim, &[]);
        let rollback = rollback.expect("rollback");
        let read = |name: &str| std::fs::read(dir.path().join("data").join(name)).unwrap();
        assert_eq!(read("f"), b"abbaccdd", "{rollback:?}");
        assert_eq!(read("g"), b"");
        assert_eq!(read("h"), b"x");
        assert_eq!(rollback.sync_file_ranges, 1, "{rollback:?}");
        assert_eq!(rollback.syncs.values().sum::<usize>(), 3, "{rollback:?}");
        assert_eq!(rollback.undone_total(), 5, "{rollback:?}");
    }

    #[test]
    fn a_writable_shared_mapping_makes_the_rollback_refuse() {
        let Some(shim) = Shim::build() else { return };
        let (_dir, rollback) = probe(&shim, &["mmap"]);
        let refused = rollback.expect_err("refused");
        assert!(refused.contains("does not cover"), "{refused}");
    }
}
