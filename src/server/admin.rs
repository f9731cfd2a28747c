//! The local admin socket, `<data_dir>/admin.sock` (mode 0600): lets the CLI take backups and
//! run key operations (rotate, rewrap, destroy) on a running vault. Reaching it takes the vault user's own file access,
//! which already reads the data directory, so it grants nothing new; callers are audited by uid.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::domain::{CallerName, RequestId, Role};
use crate::policy::Caller;
use crate::vault::{Ctx, Vault};

/// Where the socket of the vault on `data_dir` listens.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// A request on the admin socket (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Backup { dir: PathBuf },
    Rotate,
    RewrapStart,
    RewrapProgress,
    Destroy { generation: u32 },
}

/// The answer (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    /// A key change committed whose keyring escrow copy is still to be written (retried in
    /// the background), as `escrow_pending` in the HTTP answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escrow_pending: bool,
}

impl Response {
    fn refused(message: String) -> Self {
        Self { ok: false, message, escrow_pending: false }
    }
}

pub struct Handle {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Handle {
    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn listen(vault: Arc<Vault>) -> std::io::Result<Handle> {
    let path = socket_path(&vault.settings().data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, vault.clone()));
                }
                // EMFILE and the like pass; ending the loop would end the admin socket.
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed; pausing");
                    tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                }
            }
        }
    });
    Ok(Handle { task, path })
}

async fn serve(stream: UnixStream, vault: Arc<Vault>) {
    let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(64 * 1024);
    let response = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let ctx = Ctx {
                    caller: std::sync::Arc::new(Caller {
                        name: CallerName::parse(&format!("local.uid{uid}")).expect("valid name"),
                        roles: [Role::Security].into(),
                        purposes: Default::default(),
                    }),
                    request_id: RequestId::generate(),
                    client_request_id: None,
                    via: None,
                    idempotency: None,
                };
                let answer = tokio::task::spawn_blocking(move || -> Result<Response, crate::vault::VaultError> {
                    let (text, key_change) = match request {
                        Request::Backup { dir } => (serde_json::to_string(&vault.create_backup(&ctx, &dir)?), false),
                        Request::Rotate => (serde_json::to_string(&vault.rotate_kek(&ctx)?), true),
                        Request::RewrapStart => (serde_json::to_string(&vault.start_rewrap(&ctx)?), false),
                        Request::RewrapProgress => (serde_json::to_string(&vault.rewrap_progress(&ctx)?), false),
                        Request::Destroy { generation } => (serde_json::to_string(&vault.destroy_generation(&ctx, generation)?), true),
                    };
                    let escrow_pending = key_change && vault.escrow_pending();
                    Ok(Response { ok: true, message: text.unwrap_or_default(), escrow_pending })
                })
                .await;
                match answer {
                    Ok(Ok(response)) => response,
                    Ok(Err(e)) => Response::refused(e.to_string()),
                    Err(e) => Response::refused(format!("task failed: {e}")),
                }
            }
            Err(e) => Response::refused(format!("bad request: {e}")),
        },
        Err(e) => Response::refused(format!("cannot read request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

/// Sends one request to the vault on `data_dir` and waits for its answer.
pub async fn call(data_dir: &Path, request: &Request) -> std::io::Result<Response> {
    let stream = UnixStream::connect(socket_path(data_dir)).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}
