//! `qoima keys`: KEK status, rotation, rewrap, destruction, root-key rotation, and the
//! escrow-copy state of a committed key change.

use std::path::PathBuf;
use std::process::ExitCode;

use super::target::{ask, ask_for, finish, parse_answer, target, Target};
use super::{cli_ctx, load_config, open_store_for_reading, Failure};
use crate::config::Config;
use crate::server::admin;
use crate::vault::KekInfo;
use crate::vault::Vault;

pub(super) fn status(config_path: &Option<PathBuf>) -> Result<ExitCode, Failure> {
    let (config, _) = load_config(config_path)?;
    let store = open_store_for_reading(&config)?;
    println!("{:<11} {:<13} {:>10}  {:<25} {:<25}", "GENERATION", "STATE", "DEKS", "CREATED", "ACTIVATED");
    for (i, n) in crate::vault::keyring::read_infos(&store)? {
        let state = serde_json::to_value(i.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let activated = i.activated_at.map(crate::domain::rfc3339).unwrap_or_else(|| "-".into());
        println!("{:<11} {:<13} {:>10}  {:<25} {:<25}", i.generation, state, n, crate::domain::rfc3339(i.created_at), activated);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn rotate(config_path: &Option<PathBuf>) -> Result<ExitCode, Failure> {
    let (config, _) = load_config(config_path)?;
    let (info, escrow): (KekInfo, EscrowCopy) = key_change(&config, &admin::Request::Rotate, |v| v.rotate_kek(&cli_ctx()))?;
    println!("KEK generation {} created and active; run `qoima keys rewrap` to move existing DEKs onto it", info.generation);
    escrow.say();
    Ok(ExitCode::SUCCESS)
}

pub(super) fn destroy(config_path: &Option<PathBuf>, generation: u32) -> Result<ExitCode, Failure> {
    let (config, _) = load_config(config_path)?;
    let (_, escrow): (KekInfo, EscrowCopy) =
        key_change(&config, &admin::Request::Destroy { generation }, |v| v.destroy_generation(&cli_ctx(), generation))?;
    match escrow {
        EscrowCopy::Written => {
            println!("KEK generation {generation} destroyed: its key bytes are gone from the store and the keyring escrow")
        }
        pending => {
            println!("KEK generation {generation} destroyed: its key bytes are gone from the store");
            pending.say();
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn rotate_root(config_path: &Option<PathBuf>, new_root_key: PathBuf) -> Result<ExitCode, Failure> {
    let (config, _) = load_config(config_path)?;
    let new_root = qoima_keys::RootKeySource::File(new_root_key.clone()).load().map_err(|e| Failure(3, e.to_string()))?;
    let Target::Offline(v) = target(&config)? else {
        return Err(Failure(4, "the vault is running: root-key rotation is offline; stop it first".into()));
    };
    let n = finish(&v, v.rotate_root(&cli_ctx(), &new_root))?;
    println!(
                "{n} KEK generation(s) now wrapped by root key {:08x}; set root_key.file = \"{}\" and restart; the old root key is no longer needed",
                new_root.id(),
                new_root_key.display()
            );
    Ok(ExitCode::SUCCESS)
}

/// Whether a committed key change's keyring escrow copy is written.
enum EscrowCopy {
    Written,
    /// Not yet: the running vault retries it in the background.
    RetriedByTheVault,
    /// Not yet: this offline run could not write it; the vault writes it when it opens.
    AtTheNextStart,
}

impl EscrowCopy {
    /// One line when the copy is behind; nothing when it is written.
    fn say(&self) {
        match self {
            EscrowCopy::Written => {}
            EscrowCopy::RetriedByTheVault => println!(
                "the change is committed; its keyring escrow copy is not written yet and the vault retries it in the background (metric qoima_keyring_escrow_pending)"
            ),
            EscrowCopy::AtTheNextStart => {
                println!("the change is committed; its keyring escrow copy could not be written and the vault writes it when it next starts")
            }
        }
    }
}

/// A KEK rotation or destruction, offline or through the running vault's admin socket, with
/// the state of its escrow copy.
fn key_change<T: serde::de::DeserializeOwned>(
    config: &Config,
    request: &admin::Request,
    offline: impl FnOnce(&Vault) -> Result<T, crate::vault::VaultError>,
) -> Result<(T, EscrowCopy), Failure> {
    match target(config)? {
        Target::Offline(v) => {
            let r = offline(&v).map(|t| (t, if v.escrow_pending() { EscrowCopy::AtTheNextStart } else { EscrowCopy::Written }));
            finish(&v, r)
        }
        Target::Online(rt) => {
            let answer = ask_for(&rt, config, request)?;
            let escrow = if answer.escrow_pending { EscrowCopy::RetriedByTheVault } else { EscrowCopy::Written };
            Ok((parse_answer(answer.message)?, escrow))
        }
    }
}

pub(super) fn rewrap(config: &Option<PathBuf>) -> Result<ExitCode, Failure> {
    use crate::vault::rewrap::{RewrapJob, RewrapState};
    let (config, _) = load_config(config)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("rewrap to generation {msg} [{bar:40}] {pos}/{len} DEKs, {per_sec}, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let show = |job: &RewrapJob| {
        bar.set_message(job.target.to_string());
        bar.set_length(job.total);
        bar.set_position(job.done);
    };
    let job: RewrapJob = match target(&config)? {
        Target::Offline(v) => {
            let r = v.run_rewrap(&cli_ctx(), show);
            finish(&v, r)?
        }
        Target::Online(rt) => {
            let mut p: crate::vault::rewrap::RewrapJob = parse_answer(ask(&rt, &config, &admin::Request::RewrapStart)?)?;
            while p.state == RewrapState::Running {
                show(&p);
                std::thread::sleep(std::time::Duration::from_millis(200));
                p = parse_answer(ask(&rt, &config, &admin::Request::RewrapProgress)?)?;
            }
            show(&p);
            p
        }
    };
    bar.finish_and_clear();
    println!(
        "rewrap to generation {} {}: {} of {} DEKs moved",
        job.target,
        if job.state == RewrapState::Complete { "complete" } else { "stopped" },
        job.done,
        job.total
    );
    Ok(ExitCode::SUCCESS)
}
