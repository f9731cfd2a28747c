//! `qoima import FILE.jsonl`: a lender's existing borrowers into a running vault, in batches of
//! `POST /v1/subjects:batch` (docs/operator-guide.md, "Importing subjects").
//!
//! Resuming: after each batch the vault acknowledged, a checkpoint beside the file
//! (`FILE.jsonl.qoima-import`, written atomically) records how many lines (and bytes) are done
//! and a digest of those bytes. A new run over the same file (the done part unchanged, lines
//! perhaps appended) skips them. Each batch carries an `Idempotency-Key` made of the file's
//! identity and the batch's first line number, so a batch whose answer was lost (the run
//! stopped after sending it) is answered again by the vault, not applied twice.
//!
//! Nothing here prints a value: a refused line is named by its number and the reason (the
//! vault's problem title and detail, or what is wrong with its shape).

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Failure;
use crate::client::{BatchItem, Client};
use crate::domain::hex_string;
use crate::vault::import::MAX_BATCH;

/// Subjects per request unless `--batch` says otherwise.
pub const DEFAULT_BATCH: usize = 500;

/// How much of the file's start names it (its identity, in the idempotency keys).
const IDENTITY_BYTES: u64 = 64 * 1024;

/// The options of `qoima import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The JSON Lines file: one `{"subject": "…", "fields": {…}}` object per line.
    pub file: PathBuf,
    /// The running vault's base URL.
    #[arg(long, default_value_t = format!("http://{}", crate::config::DEFAULT_LISTEN))]
    pub url: String,
    /// A file holding the service caller's bearer token (else the QOIMA_TOKEN environment
    /// variable). The token is never taken on the command line, nor printed.
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Subjects per request, 1 to 1000.
    #[arg(long = "batch", default_value_t = DEFAULT_BATCH, value_parser = batch_size)]
    pub batch: usize,
}

fn batch_size(s: &str) -> Result<usize, String> {
    s.parse().ok().filter(|n| (1..=MAX_BATCH).contains(n)).ok_or_else(|| format!("a batch is 1 to {MAX_BATCH} subjects"))
}

/// What a run has done so far, saved after each acknowledged batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    /// Hex SHA-256 of the file's first bytes when the import began: its identity.
    file_id: String,
    /// Lines acknowledged (answered by the vault, or refused here).
    lines: u64,
    /// Bytes of those lines.
    bytes: u64,
    /// Hex SHA-256 of those bytes: the done part must be unchanged to resume.
    done_sha256: String,
}

/// A line refused, here or by the vault: its number and why (never its content).
#[derive(Debug, PartialEq, Eq)]
struct RefusedLine {
    line: u64,
    reason: String,
}

#[derive(Debug, Default)]
struct Summary {
    imported: u64,
    updated: u64,
    refused: Vec<RefusedLine>,
    /// Lines a previous run acknowledged, skipped.
    skipped: u64,
}

impl Summary {
    fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        if self.skipped > 0 {
            writeln!(out, "resumed: {} lines already acknowledged were skipped", self.skipped)?;
        }
        writeln!(out, "imported: {} (created)", self.imported)?;
        writeln!(out, "updated:  {}", self.updated)?;
        writeln!(out, "refused:  {}", self.refused.len())?;
        for r in &self.refused {
            writeln!(out, "  line {}: {}", r.line, r.reason)?;
        }
        Ok(())
    }
}

/// The checkpoint's path: beside the file, named after it.
fn checkpoint_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".qoima-import");
    file.with_file_name(name)
}

fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, Failure> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| Failure(2, format!("{} is not an import checkpoint; remove it to start over", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure(2, format!("{}: {e}", path.display()))),
    }
}

/// Writes the checkpoint atomically: a temporary file beside it, synced, then renamed over it.
fn write_checkpoint(path: &Path, c: &Checkpoint) -> std::io::Result<()> {
    let tmp = path.with_extension("qoima-import.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(c).expect("serialises"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename itself durable (best effort: not every platform opens folders).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The file's identity: SHA-256 of its first [`IDENTITY_BYTES`].
fn file_identity(file: &Path) -> std::io::Result<String> {
    let mut buf = Vec::new();
    std::fs::File::open(file)?.take(IDENTITY_BYTES).read_to_end(&mut buf)?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"qoima.import.v1\0");
    ctx.update(&buf);
    Ok(hex_string(ctx.finish().as_ref()))
}

/// The idempotency key of the batch starting at `first_line` of the file `file_id`.
fn batch_key(file_id: &str, first_line: u64) -> String {
    format!("qoima-import-{}-{first_line}", &file_id[..32])
}

/// One line's subject, or why the line is refused here (naming no value).
fn parse_line(line: &str) -> Result<BatchItem, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON (column {})", e.column()))?;
    let Value::Object(mut m) = v else { return Err("not a JSON object".into()) };
    let subject = match m.remove("subject") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("\"subject\" is not a string".into()),
        None => return Err("no \"subject\"".into()),
    };
    let fields = match m.remove("fields") {
        Some(Value::Object(f)) => f.into_iter().collect(),
        Some(_) => return Err("\"fields\" is not an object".into()),
        None => return Err("no \"fields\"".into()),
    };
    if !m.is_empty() {
        return Err("keys other than \"subject\" and \"fields\"".into());
    }
    Ok(BatchItem { subject, fields })
}

/// Shows how far the import is: a bar on a terminal, else a line every few seconds.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: Instant,
}

impl Progress {
    fn new(file: &Path, done: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None, last: Instant::now() };
        }
        let total = std::fs::File::open(file).map(|f| BufReader::new(f).lines().count() as u64).unwrap_or(0);
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("import [{bar:40}] {pos}/{len} lines, {per_sec}, eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_position(done);
        Self { bar: Some(bar), last: Instant::now() }
    }

    fn at(&mut self, lines: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(lines),
            None if self.last.elapsed() >= Duration::from_secs(5) => {
                eprintln!("qoima import: {lines} lines acknowledged");
                self.last = Instant::now();
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The service caller's token: from `token_file`, else `QOIMA_TOKEN` (never an argument).
pub(super) fn service_token(token_file: Option<&std::path::Path>) -> Result<String, Failure> {
    let token = match token_file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| Failure(2, format!("{}: {e}", f.display())))?,
        None => {
            std::env::var("QOIMA_TOKEN").map_err(|_| Failure(2, "give the service token with --token-file FILE or QOIMA_TOKEN".into()))?
        }
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(Failure(2, "the service token is empty".into()));
    }
    Ok(token)
}

pub(super) fn import(args: ImportArgs) -> Result<ExitCode, Failure> {
    let token = service_token(args.token_file.as_deref())?;
    let client = Client::new(&args.url, &token);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(4, format!("cannot start the HTTP client: {e}")))?;
    let mut summary = Summary::default();
    let result = rt.block_on(run(&client, &args, &mut summary));
    summary.print(&mut std::io::stdout().lock()).map_err(|e| Failure(4, format!("stdout: {e}")))?;
    result?;
    Ok(if summary.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Reads the file past its checkpoint and sends it batch by batch, counting into `summary`.
async fn run(client: &Client, args: &ImportArgs, summary: &mut Summary) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure(2, format!("{}: {e}", args.file.display()));
    let cp_path = checkpoint_path(&args.file);
    let mut reader = BufReader::new(std::fs::File::open(&args.file).map_err(io)?);
    let mut done = digest::Context::new(&digest::SHA256);
    let mut cp = match read_checkpoint(&cp_path)? {
        Some(cp) => {
            // The done part must be the bytes acknowledged before.
            let mut prefix = Vec::new();
            (&mut reader).take(cp.bytes).read_to_end(&mut prefix).map_err(io)?;
            done.update(&prefix);
            if prefix.len() as u64 != cp.bytes || hex_string(done.clone().finish().as_ref()) != cp.done_sha256 {
                return Err(Failure(
                    2,
                    format!(
                        "{} changed in the {} lines already imported; remove {} to import it as a new file",
                        args.file.display(),
                        cp.lines,
                        cp_path.display()
                    ),
                ));
            }
            summary.skipped = cp.lines;
            cp
        }
        None => Checkpoint {
            version: 1,
            file_id: file_identity(&args.file).map_err(io)?,
            lines: 0,
            bytes: 0,
            done_sha256: hex_string(digest::digest(&digest::SHA256, b"").as_ref()),
        },
    };
    let mut progress = Progress::new(&args.file, cp.lines);
    let mut line = String::new();
    let mut eof = false;
    while !eof {
        // One batch: up to `--batch` subjects, their line numbers, and the lines it covers.
        let (mut items, mut numbers) = (Vec::new(), Vec::new());
        let (mut lines, mut bytes) = (cp.lines, cp.bytes);
        let mut first = None;
        while items.len() < args.batch {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io)?;
            if n == 0 {
                eof = true;
                break;
            }
            done.update(line.as_bytes());
            lines += 1;
            bytes += n as u64;
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            match parse_line(text) {
                Ok(item) => {
                    first.get_or_insert(lines);
                    items.push(item);
                    numbers.push(lines);
                }
                Err(reason) => summary.refused.push(RefusedLine { line: lines, reason }),
            }
        }
        if let Some(first) = first {
            let key = batch_key(&cp.file_id, first);
            let answer = client.put_batch(&items, Some(&key)).await;
            let answer = answer.map_err(|e| Failure(4, format!("the batch from line {first} was not imported: {e}")))?;
            if answer.results.len() != items.len() {
                return Err(Failure(4, format!("the vault answered the batch from line {first} with the wrong number of results")));
            }
            for (r, line) in answer.results.iter().zip(&numbers) {
                match (r.status, &r.problem) {
                    (201, _) => summary.imported += 1,
                    (200, _) => summary.updated += 1,
                    (status, p) => summary.refused.push(RefusedLine {
                        line: *line,
                        reason: p
                            .as_ref()
                            .map_or_else(|| format!("status {status}"), |p| format!("{} {}: {}", p.status, p.title, p.detail)),
                    }),
                }
            }
        }
        if lines > cp.lines {
            cp = Checkpoint { lines, bytes, done_sha256: hex_string(done.clone().finish().as_ref()), ..cp };
            write_checkpoint(&cp_path, &cp).map_err(|e| Failure(4, format!("{}: {e}", cp_path.display())))?;
            progress.at(lines);
        }
    }
    progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_refused_without_repeating_them() {
        assert!(parse_line(r#"{"subject":"b-1","fields":{"identity.full_name":"Aigerim"}}"#).is_ok());
        for (bad, why) in [
            (r#"{"subject":"b-1","fields":{"x":"Aigerim"}"#, "not JSON"),
            (r#"["Aigerim"]"#, "not a JSON object"),
            (r#"{"fields":{"identity.full_name":"Aigerim"}}"#, "no \"subject\""),
            (r#"{"subject":900101300017,"fields":{}}"#, "\"subject\" is not a string"),
            (r#"{"subject":"b-1"}"#, "no \"fields\""),
            (r#"{"subject":"b-1","fields":{},"iin":"900101300017"}"#, "keys other than"),
        ] {
            let reason = parse_line(bad).unwrap_err();
            assert!(reason.starts_with(why), "{bad}: {reason}");
            assert!(!reason.contains("Aigerim") && !reason.contains("900101300017"), "{reason}");
        }
    }

    #[test]
    fn the_checkpoint_sits_beside_the_file_and_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("borrowers.jsonl");
        let cp = checkpoint_path(&file);
        assert_eq!(cp, dir.path().join("borrowers.jsonl.qoima-import"));
        assert!(matches!(read_checkpoint(&cp), Ok(None)));
        let c = Checkpoint { version: 1, file_id: "ab".repeat(32), lines: 3, bytes: 120, done_sha256: "00".repeat(32) };
        write_checkpoint(&cp, &c).unwrap();
        write_checkpoint(&cp, &Checkpoint { lines: 4, ..c.clone() }).unwrap();
        assert!(matches!(read_checkpoint(&cp), Ok(Some(c)) if c.lines == 4));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn batch_keys_name_the_file_and_the_first_line() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(batch_key(&id, 501), "qoima-import-0123456789abcdef0123456789abcdef-501");
        assert!(crate::vault::IdempotencyKey::parse(&batch_key(&id, u64::MAX)).is_ok());
    }
}
