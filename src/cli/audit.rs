//! `qoima audit`: verify the hash chain, export entries.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{load_config, open_store_for_reading, Failure};

pub(super) fn verify(config_path: &Option<PathBuf>, anchor: Option<String>) -> Result<ExitCode, Failure> {
    let (config, _) = load_config(config_path)?;
    let anchor = anchor.map(|a| crate::api::parse_anchor(&a).map_err(|e| Failure(2, e.detail))).transpose()?;
    let store = open_store_for_reading(&config)?;
    let v = crate::audit::verify(&store, anchor.as_ref().map(|(s, h)| (*s, h.as_str())))?;
    match v.first_broken {
        None => {
            println!("audit chain intact: {} entries, head {}:{}", v.entries, v.entries, v.head);
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!("audit chain BROKEN at entry {}: {}", b.seq, b.reason);
            Ok(ExitCode::from(1))
        }
    }
}

pub(super) fn export(config_path: &Option<PathBuf>, after: u64, subject: Option<String>) -> Result<ExitCode, Failure> {
    let (config, _) = load_config(config_path)?;
    if let Some(s) = &subject {
        crate::domain::SubjectId::parse(s).map_err(|e| Failure(2, e.to_string()))?;
    }
    let store = open_store_for_reading(&config)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after = after;
    loop {
        let page = crate::audit::query(&store, &crate::audit::Query { subject: subject.clone(), caller: None, after, limit: 10_000 })?;
        for e in &page {
            use std::io::Write;
            serde_json::to_writer(&mut out, e).map_err(|e| Failure(4, e.to_string()))?;
            out.write_all(b"\n").map_err(|e| Failure(4, e.to_string()))?;
        }
        match page.last() {
            Some(e) if page.len() == 10_000 => after = e.seq,
            _ => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}
