use std::path::PathBuf;

/// Everything that can go wrong with keys. Decryption failures carry no detail on purpose: a
/// wrong key, a moved ciphertext and a flipped bit look the same to a caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ciphertext did not authenticate under this key and context.
    #[error("ciphertext failed to authenticate")]
    Decrypt,
    /// The bytes are not a ciphertext envelope this version understands.
    #[error("malformed ciphertext envelope: {0}")]
    Malformed(&'static str),
    /// The envelope was made for another kind of key or another key id.
    #[error("ciphertext was sealed under {found}, expected {expected}")]
    WrongKey { expected: String, found: String },
    /// A root-key file is readable by more than its owner.
    #[error("root key file {path} has mode {mode:o}; it must be 0600 or 0400 (run: chmod 600 {path})")]
    RootKeyPermissions { path: PathBuf, mode: u32 },
    /// A root-key source could not be read; `absent` when it is simply not on this machine
    /// (no such file, variable or credentials directory), as when a config is checked elsewhere.
    #[error("cannot read root key from {source_name}: {reason}")]
    RootKeyUnreadable { source_name: String, reason: String, absent: bool },
    /// A root-key source held something other than 64 hex characters.
    #[error("root key from {source_name} must be exactly 64 hex characters (32 bytes)")]
    RootKeyFormat { source_name: String },
    /// The operating system's random source failed.
    #[error("the OS random number generator failed")]
    Random,
}
