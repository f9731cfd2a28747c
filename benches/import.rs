//! Bulk import rate (issue #25): `qoima import` of a JSON Lines file of 100,000 synthetic
//! borrowers (about 400 bytes of fields each, every IIN, phone and e-mail distinct) into the
//! real `qoima` binary (the bench profile's build) over loopback, through
//! `POST /v1/subjects:batch`; reports subjects/s. The figure is recorded by hand in
//! docs/performance.md ("Bulk import").
//!
//! Run: `cargo bench --bench import` (options after `--`: `--subjects N`, `--batch N`,
//! `--dir DIR` for the data directory's disk, `--keep`).

#[allow(dead_code)]
#[path = "load/qoima_proc.rs"]
mod qoima_proc;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "import", about = "Qoima bulk import rate: cargo bench --bench import -- [OPTIONS]")]
struct Opts {
    /// Subjects to import.
    #[arg(long, default_value_t = 100_000)]
    subjects: usize,
    /// Subjects per request (`qoima import --batch`).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Where the temporary data directory goes (the vault's fsyncs hit this disk).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directory for inspection.
    #[arg(long)]
    keep: bool,
    /// Set by `cargo bench`; without it (e.g. `cargo test --benches`) the bench does nothing.
    #[arg(long, hide = true)]
    bench: bool,
    /// Name filters of `cargo bench -- FILTER`: the bench runs only if one matches "import".
    #[arg(hide = true)]
    filters: Vec<String>,
}

pub fn say(msg: impl AsRef<str>) {
    eprintln!("[import] {}", msg.as_ref());
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if !opts.bench {
        eprintln!("import bench: run it with `cargo bench --bench import` (it starts a server and imports 100,000 subjects)");
        return ExitCode::SUCCESS;
    }
    if !opts.filters.is_empty() && !opts.filters.iter().any(|f| "import".contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("import bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `n`-th distinct valid IIN (eleven digits counting up from a 1990 birth date, skipping
/// those that have no check digit).
fn iins(n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut k: u64 = 90_010_100_000;
    while out.len() < n {
        let first: Vec<u32> = format!("{k:011}").chars().map(|c| c.to_digit(10).expect("digit")).collect();
        if let Some(check) = qoima::schema::iin_check_digit(&first) {
            out.push(format!("{k:011}{check}"));
        }
        k += 1;
    }
    out
}

fn write_file(path: &std::path::Path, n: usize) -> Result<u64, String> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
    for (i, iin) in iins(n).into_iter().enumerate() {
        let line = json!({"subject": format!("imp-{i:08}"), "fields": {
            "identity.full_name": format!("Imported Borrower {i:08}"),
            "identity.iin": iin,
            "identity.birth_date": "1990-01-01",
            "identity.phone": format!("+7701{:07}", i % 10_000_000),
            "identity.email": format!("borrower.{i:08}@example.kz"),
            "identity.address": format!("Almaty, Abay avenue {}, flat {}", i % 300, i % 97),
            "questionnaire.employer": "Example employer LLP",
            "questionnaire.monthly_income": 350_000 + (i % 1000) as u64,
            "questionnaire.dependants": i % 4,
        }});
        writeln!(f, "{line}").map_err(|e| e.to_string())?;
    }
    f.flush().map_err(|e| e.to_string())?;
    Ok(std::fs::metadata(path).map_err(|e| e.to_string())?.len())
}

fn run(opts: &Opts) -> Result<(), String> {
    let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new().prefix("qoima-import-").tempdir_in(&base).map_err(|e| e.to_string())?;
    let home = qoima_proc::Home::prepare(&tmp.path().join("qoima"))?;
    let file = tmp.path().join("borrowers.jsonl");
    let bytes = write_file(&file, opts.subjects)?;
    say(format!("{} subjects, {:.1} MiB of JSON Lines", opts.subjects, bytes as f64 / 1048576.0));
    let server = home.spawn(Some("warn"))?;
    say(format!("qoima serving on {} (pid {})", server.addr, server.pid));
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_qoima"))
        .arg("import")
        .arg(&file)
        .args(["--url", &server.addr, "--batch", &opts.batch.to_string()])
        .env("QOIMA_TOKEN", &home.token)
        .output()
        .map_err(|e| format!("cannot run qoima import: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("qoima import failed ({}):\n{summary}{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    let imported = format!("imported: {} (created)", opts.subjects);
    if !summary.contains(&imported) {
        return Err(format!("not every subject was created:\n{summary}"));
    }
    server.stop()?;
    let audit = home.verify_audit();
    println!(
        "bulk import: {} subjects in {secs:.1} s = {:.0} subjects/s ({} per request, `qoima import` over loopback); audit: {audit}",
        opts.subjects,
        opts.subjects as f64 / secs,
        opts.batch
    );
    if opts.keep {
        say(format!("kept {}", tmp.keep().display()));
    }
    Ok(())
}
