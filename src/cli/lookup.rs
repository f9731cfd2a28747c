//! `qoima lookup`: the blind index's build and the duplicate values of unique fields it found
//! (read straight from the store, so both work offline and beside a running vault), and a
//! lookup through a running vault's HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{load_config, open_store_for_reading, Failure};
use crate::vault::index_job::{read_job, IndexJob, IndexJobState};

fn job(config_path: &Option<PathBuf>) -> Result<IndexJob, Failure> {
    let (config, _) = load_config(config_path)?;
    let store = open_store_for_reading(&config)?;
    read_job(&store)?.ok_or_else(|| Failure(4, "this data directory has no index record yet: start the vault once".into()))
}

/// Where the build stands.
pub(super) fn status(config_path: &Option<PathBuf>) -> Result<ExitCode, Failure> {
    let job = job(config_path)?;
    match job.state {
        IndexJobState::Complete => println!("blind index complete: {}", job.fields.join(", ")),
        IndexJobState::Running => println!(
            "building the blind index of {}: {} of {} subjects; complete: {}",
            job.building.join(", "),
            job.done,
            job.total,
            if job.fields.is_empty() { "none".to_string() } else { job.fields.join(", ") }
        ),
    }
    println!("{} duplicate value(s) of unique fields found (`qoima lookup duplicates`)", job.duplicates_found);
    Ok(ExitCode::SUCCESS)
}

/// One line per value of a unique field that more than one live subject held when the build
/// indexed it: the field and the subjects' ids (never the value).
pub(super) fn duplicates(config_path: &Option<PathBuf>) -> Result<ExitCode, Failure> {
    let job = job(config_path)?;
    for d in &job.duplicates {
        println!("{}\t{}", d.field, d.subjects.join(" "));
    }
    let kept = job.duplicates.len() as u64;
    if job.duplicates_found > kept {
        eprintln!("{} more duplicate value(s) found and not listed", job.duplicates_found - kept);
    }
    if job.state == IndexJobState::Running {
        eprintln!("the index build is still running ({} of {} subjects): more may be found", job.done, job.total);
    }
    Ok(ExitCode::SUCCESS)
}

/// Looks the value on stdin's first line up through a running vault (`POST /v1/lookup`).
pub(super) fn find(field: &str, purpose: &str, url: &str, token_file: Option<&std::path::Path>) -> Result<ExitCode, Failure> {
    let token = super::import::service_token(token_file)?;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line).map_err(|e| Failure(2, format!("cannot read the value from stdin: {e}")))?;
    let value = line.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(Failure(2, "give the value on stdin (e.g. `read -s v; printf '%s\\n' \"$v\" | qoima lookup find …`)".into()));
    }
    let client = crate::client::Client::new(url, &token);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(4, format!("cannot start the HTTP client: {e}")))?;
    let subjects = rt.block_on(client.lookup(field, value, purpose)).map_err(|e| Failure(4, e.to_string()))?;
    for s in &subjects {
        println!("{s}");
    }
    Ok(if subjects.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
