//! Where a key or backup command runs (offline, or through the running vault's admin socket).

use super::Failure;
use crate::config::Config;
use crate::server::{self, admin, Options};
use crate::store::{EngineChoice, Store, StoreError};
use crate::vault::Vault;

/// Where a key or backup command runs: in this process on a stopped vault, or in the running
/// vault through its admin socket.
pub(super) enum Target {
    Offline(Box<Vault>),
    Online(tokio::runtime::Runtime),
}

pub(super) fn target(config: &Config) -> Result<Target, Failure> {
    let running = match &config.storage {
        // RocksDB's lock says whether a vault runs on the store.
        EngineChoice::RocksDb => match Store::open(&config.data_dir, crate::audit::summary::merge) {
            Ok(_) => false,
            Err(StoreError::Locked(_)) => true,
            Err(e) => return Err(e.into()),
        },
        // A shared store has no such lock: a vault on this machine answers on its socket (one
        // on another node holds the active lease, and the offline vault cannot take it).
        _ => std::os::unix::net::UnixStream::connect(admin::socket_path(&config.data_dir)).is_ok(),
    };
    if !running {
        return Ok(Target::Offline(Box::new(open_vault_offline(config)?)));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Failure(4, e.to_string()))?;
    Ok(Target::Online(rt))
}

/// Closes an offline vault after one operation.
pub(super) fn finish<T>(vault: &Vault, result: Result<T, crate::vault::VaultError>) -> Result<T, Failure> {
    vault.close();
    result.map_err(|e| Failure(4, e.to_string()))
}

pub(super) fn ask(rt: &tokio::runtime::Runtime, config: &Config, request: &admin::Request) -> Result<String, Failure> {
    ask_for(rt, config, request).map(|a| a.message)
}

pub(super) fn ask_for(rt: &tokio::runtime::Runtime, config: &Config, request: &admin::Request) -> Result<admin::Response, Failure> {
    let answer = rt.block_on(admin::call(&config.data_dir, request)).map_err(|e| {
        Failure(
            4,
            format!("the vault is running but its admin socket {} does not answer: {e}", admin::socket_path(&config.data_dir).display()),
        )
    })?;
    if answer.ok {
        Ok(answer)
    } else {
        Err(Failure(4, answer.message))
    }
}

pub(super) fn parse_answer<T: serde::de::DeserializeOwned>(text: String) -> Result<T, Failure> {
    serde_json::from_str(&text).map_err(|e| Failure(4, format!("unexpected answer from the vault: {e}")))
}

pub(super) fn open_vault_offline(config: &Config) -> Result<Vault, Failure> {
    server::open_vault(config, &Options::default()).map_err(|e| match e {
        server::StartError::Vault(e @ crate::vault::VaultError::InUse(_)) => {
            Failure(4, format!("{e}; this command runs offline, or use the HTTP API of the running vault"))
        }
        e => Failure(4, e.to_string()),
    })
}
