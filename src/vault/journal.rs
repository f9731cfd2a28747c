//! The erasure journal: an append-only list of erasures kept outside the data directory, so a
//! restore from an older backup replays them (see `erasure.rs`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::StoreError;

/// One line of the erasure journal. No personal data: an opaque subject id and a receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub subject: String,
    /// `requested` (pending behind a hold) or `erased`.
    pub event: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub receipt: String,
}

/// The append-only erasure journal (JSON lines, fsynced per entry).
///
/// An append that fails part-way (a full disk, an I/O error) or a crash mid-append can leave a
/// torn record: the bytes of a line that never got its newline. Appends never build on one:
/// opening repairs a torn tail, and a failed append is cut off before the next one writes, so
/// every later record starts on a line of its own. Reading skips (and reports) torn records
/// and keeps every whole one.
pub struct ErasureJournal {
    path: PathBuf,
    file: Mutex<JournalFile>,
}

struct JournalFile {
    file: File,
    /// Bytes of whole records: where the next record starts.
    len: u64,
    /// A failed append may have left bytes past `len`.
    torn: bool,
}

/// How much of a journal's end opening reads to find its last whole record (records are a few
/// hundred bytes).
const TAIL_WINDOW: u64 = 64 * 1024;

impl ErasureJournal {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut opts = OpenOptions::new();
        opts.create(true).read(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let io = |e: std::io::Error| StoreError::Io(format!("cannot open erasure journal {}: {e}", path.display()));
        let mut file = opts.open(path).map_err(io)?;
        let len = repair_tail(&mut file, path).map_err(io)?;
        Ok(Self { path: path.to_path_buf(), file: Mutex::new(JournalFile { file, len, torn: false }) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and syncs it to disk before returning.
    pub fn append(&self, subject: &str, event: &str, time: OffsetDateTime, receipt: &str) -> Result<(), StoreError> {
        let entry = JournalEntry { subject: subject.to_owned(), event: event.to_owned(), time, receipt: receipt.to_owned() };
        self.append_entries(std::slice::from_ref(&entry))
    }

    /// Appends entries with one sync at the end (a restore seeding a new journal).
    pub fn append_entries(&self, entries: &[JournalEntry]) -> Result<(), StoreError> {
        let mut lines = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut lines, entry).expect("serialises");
            lines.push(b'\n');
        }
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let err = |e: std::io::Error| StoreError::Io(format!("cannot append to the erasure journal: {e}"));
        if g.torn {
            // What a failed append left goes before anything is written after it.
            let len = g.len;
            g.file.set_len(len).and_then(|_| g.file.sync_data()).map_err(err)?;
            g.torn = false;
        }
        match g.file.write_all(&lines).and_then(|_| g.file.sync_data()) {
            Ok(()) => {
                g.len += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut it off now if possible; otherwise the next append does.
                let len = g.len;
                g.torn = g.file.set_len(len).is_err();
                Err(err(e))
            }
        }
    }

    /// Reads a journal: every whole record, in order. A torn record (a failed or interrupted
    /// append: the start of a record, or zero bytes a crash left, with a whole record possibly
    /// written after it on the same line) is skipped and reported; the last line may be
    /// anything. Any other bad line is an error, since silently skipping an erasure would
    /// resurrect someone.
    pub fn read(path: &Path) -> Result<Vec<JournalEntry>, StoreError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io(format!("cannot read erasure journal {}: {e}", path.display()))),
        };
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let last = lines.iter().rposition(|l| !l.trim_ascii().is_empty());
        let mut out = Vec::with_capacity(lines.len());
        let mut torn = 0usize;
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            if let Ok(e) = serde_json::from_slice(line) {
                out.push(e);
                continue;
            }
            // A torn record with the next whole one written straight after it.
            let after_torn = memrchr_record(line)
                .filter(|&at| at > 0 && is_torn(&line[..at]))
                .and_then(|at| serde_json::from_slice::<JournalEntry>(&line[at..]).ok());
            if let Some(e) = after_torn {
                out.push(e);
            } else if !(Some(i) == last || is_torn(line)) {
                return Err(StoreError::Io(format!("erasure journal {} line {} is corrupt", path.display(), i + 1)));
            }
            torn += 1;
        }
        if torn > 0 {
            tracing::warn!(journal = %path.display(), torn, "erasure journal: skipped torn record(s) of failed appends; every whole record kept");
        }
        Ok(out)
    }
}

/// Where the last record in `line` starts (every record begins with its subject).
fn memrchr_record(line: &[u8]) -> Option<usize> {
    const START: &[u8] = b"{\"subject\":";
    line.windows(START.len()).rposition(|w| w == START)
}

/// Whether `bytes` is what a torn append leaves: zeros, or the unfinished start of a record.
fn is_torn(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
        || (bytes.starts_with(b"{") && serde_json::from_slice::<serde_json::Value>(bytes).err().is_some_and(|e| e.is_eof()))
}

/// Makes a journal end on a record boundary: a whole record missing only its newline gets it
/// (it may be an erasure a crash interrupted: over-stating is safe), anything else after the last
/// newline is cut off, reported. Returns the repaired length.
fn repair_tail(file: &mut File, path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let from = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    file.read_to_end(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        return Ok(len);
    }
    let cut = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => from + i as u64 + 1,
        None if from == 0 => 0,
        None => return Err(std::io::Error::other("its last 64 KiB hold no line break: not a journal")),
    };
    let segment = &tail[(cut - from) as usize..];
    if serde_json::from_slice::<JournalEntry>(segment.trim_ascii()).is_ok() {
        file.write_all(b"\n")?;
        file.sync_data()?;
        return Ok(len + 1);
    }
    tracing::warn!(journal = %path.display(), bytes = len - cut, "erasure journal ended in a torn record (a failed append); cut it off");
    file.set_len(cut)?;
    file.sync_data()?;
    Ok(cut)
}

#[cfg(test)]
mod journal_tests {
    use super::*;

    fn line(subject: &str) -> String {
        format!("{{\"subject\":\"{subject}\",\"event\":\"erased\",\"time\":\"2026-01-01T00:00:00Z\",\"receipt\":\"rcpt_{subject}\"}}")
    }

    #[test]
    fn torn_records_are_skipped_and_whole_ones_kept_but_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let torn = "{\"subject\":\"x\",\"ev";
        let text = format!("{}\n{torn}{}\n\0\0\0{}\n{}\n{torn}", line("a"), line("b"), line("c"), line("d"));
        std::fs::write(&path, text).unwrap();
        let subjects: Vec<String> = ErasureJournal::read(&path).unwrap().into_iter().map(|e| e.subject).collect();
        assert_eq!(subjects, ["a", "b", "c", "d"]);

        // A line no failed append could leave, before the end: an error, never skipped.
        std::fs::write(&path, format!("{}\nnot a record\n{}\n", line("a"), line("b"))).unwrap();
        let err = ErasureJournal::read(&path).unwrap_err().to_string();
        assert!(err.contains("line 2 is corrupt"), "{err}");
    }

    #[test]
    fn opening_repairs_the_tail_so_the_next_record_has_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        // A whole record missing only its newline keeps it (over-stating is safe)…
        std::fs::write(&path, line("a")).unwrap();
        ErasureJournal::open(&path).unwrap().append("b", "erased", OffsetDateTime::UNIX_EPOCH, "rcpt_b").unwrap();
        // …a torn one is cut off.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"subject\":\"x\",\"ev").unwrap();
        ErasureJournal::open(&path).unwrap().append("c", "erased", OffsetDateTime::UNIX_EPOCH, "rcpt_c").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().all(|l| serde_json::from_str::<JournalEntry>(l).is_ok()), "{text}");
        assert!(!text.contains("\"x\""));
    }
}
