//! The root key: the top of the hierarchy, never stored in the data directory.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::digest;
use zeroize::Zeroizing;

use crate::envelope::{Aad, Envelope, Header, Kind};
use crate::index::{IndexKey, WrappedIndexKey};
use crate::kek::{unwrap, wrap, GcmKey, Generation, Kek, WrappedKek};
use crate::secret::Secret;
use crate::Error;

/// Where the root key comes from. A KMS or HSM backend would be one more variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootKeySource {
    /// A file holding 64 hex characters; refused unless its mode is 0600 or 0400.
    File(PathBuf),
    /// An environment variable holding 64 hex characters.
    Env(String),
    /// A systemd credential (`LoadCredential=` or, encrypted at rest by the host key or TPM,
    /// `LoadCredentialEncrypted=`): the file of this name in `$CREDENTIALS_DIRECTORY`, which
    /// systemd fills when the unit starts and mounts read-only, readable by the unit's user.
    Credential(CredentialName),
}

/// The name of a systemd credential: what `LoadCredential=NAME:…` gives, a plain file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialName(String);

impl CredentialName {
    pub fn parse(name: &str) -> Result<Self, Error> {
        let ok = !name.is_empty()
            && name.len() <= 255
            && name != "."
            && name != ".."
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':'));
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(Error::RootKeyUnreadable {
                source_name: "a systemd credential".into(),
                reason: "a credential name is a plain file name: letters, digits and . _ - @ : only".into(),
                absent: false,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RootKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootKeySource::File(p) => write!(f, "file {}", p.display()),
            RootKeySource::Env(v) => write!(f, "environment variable {v}"),
            RootKeySource::Credential(c) => write!(f, "systemd credential {}", c.as_str()),
        }
    }
}

impl RootKeySource {
    /// Reads and parses the root key.
    pub fn load(&self) -> Result<RootKey, Error> {
        let name = self.to_string();
        let text = match self {
            RootKeySource::File(path) => read_key_file(path, FILE_MODES)?,
            RootKeySource::Credential(c) => read_credential(std::env::var_os("CREDENTIALS_DIRECTORY").as_deref(), c)?,
            RootKeySource::Env(var) => Zeroizing::new(std::env::var(var).map_err(|e| Error::RootKeyUnreadable {
                source_name: name.clone(),
                reason: e.to_string(),
                absent: e == std::env::VarError::NotPresent,
            })?),
        };
        RootKey::from_hex(text.trim(), &name)
    }
}

/// Modes a root-key file may have: its owner's alone.
const FILE_MODES: &[u32] = &[0o600, 0o400];
/// Modes of a systemd credential file: systemd writes it 0400 and grants the unit's user read
/// access with an ACL, whose mask then shows as the group bits (0440). Never writable, never
/// readable by others.
const CREDENTIAL_MODES: &[u32] = &[0o400, 0o440];

fn read_credential(dir: Option<&std::ffi::OsStr>, name: &CredentialName) -> Result<Zeroizing<String>, Error> {
    let dir = dir.filter(|d| !d.is_empty()).ok_or_else(|| Error::RootKeyUnreadable {
        source_name: format!("systemd credential {}", name.as_str()),
        reason: "CREDENTIALS_DIRECTORY is not set: start the vault from a systemd unit with LoadCredential= or \
                 LoadCredentialEncrypted= (docs/operator-guide.md)"
            .into(),
        absent: true,
    })?;
    read_key_file(&Path::new(dir).join(name.as_str()), CREDENTIAL_MODES)
}

fn read_key_file(path: &Path, modes: &[u32]) -> Result<Zeroizing<String>, Error> {
    let unreadable = |e: std::io::Error| Error::RootKeyUnreadable {
        source_name: format!("file {}", path.display()),
        reason: e.to_string(),
        absent: e.kind() == std::io::ErrorKind::NotFound,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if !modes.contains(&mode) {
            return Err(Error::RootKeyPermissions { path: path.to_path_buf(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = modes;
    #[cfg(not(unix))]
    let _ = meta;
    Ok(Zeroizing::new(std::fs::read_to_string(path).map_err(unreadable)?))
}

/// The unwrapped root key. It only wraps and unwraps KEK generations.
pub struct RootKey {
    cipher: GcmKey,
    id: u32,
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootKey(id {:08x}, <redacted>)", self.id)
    }
}

impl RootKey {
    fn from_secret(secret: Secret) -> Self {
        let cipher = GcmKey::new(secret.expose());
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"qoima root key id v1");
        ctx.update(secret.expose());
        let d = ctx.finish();
        let id = u32::from_be_bytes([d.as_ref()[0], d.as_ref()[1], d.as_ref()[2], d.as_ref()[3]]);
        // `secret` drops (and zeroizes) here; the cipher's key schedule zeroizes on drop (`GcmKey`).
        Self { cipher, id }
    }

    fn from_hex(text: &str, source_name: &str) -> Result<Self, Error> {
        let format_err = || Error::RootKeyFormat { source_name: source_name.to_string() };
        if text.len() != 64 {
            return Err(format_err());
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text, bytes.as_mut()).map_err(|_| format_err())?;
        Ok(Self::from_secret(Secret::from_bytes(&mut bytes)))
    }

    /// Creates a new random root key in a new file with mode 0600 (refusing to overwrite one).
    /// For development set-ups and root-key rotation; production keys come from the operator.
    pub fn generate_file(path: &Path) -> Result<Self, Error> {
        let err = |e: std::io::Error| Error::RootKeyUnreadable {
            source_name: format!("file {}", path.display()),
            reason: e.to_string(),
            absent: e.kind() == std::io::ErrorKind::NotFound,
        };
        let secret = Secret::random()?;
        let text = Zeroizing::new(hex::encode(secret.expose()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(err)?;
        file.write_all(text.as_bytes()).and_then(|_| file.write_all(b"\n")).and_then(|_| file.sync_all()).map_err(err)?;
        Ok(Self::from_secret(secret))
    }

    /// A short public id of this root key (derived by hashing; reveals nothing), written into
    /// every wrapped KEK so the wrong root key is named as such rather than as corruption.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Wraps a KEK generation.
    pub fn wrap_kek(&self, kek: &Kek) -> Result<WrappedKek, Error> {
        let header = Header::new(Kind::Kek, self.id);
        let aad = kek_aad(&header.to_bytes(), kek.generation());
        Ok(WrappedKek(wrap(&self.cipher, header, aad, kek.secret().expose())?))
    }

    /// Unwraps KEK `generation`.
    pub fn unwrap_kek(&self, generation: Generation, wrapped: &WrappedKek) -> Result<Kek, Error> {
        let env = Envelope::parse_kind(&wrapped.0, Kind::Kek)?;
        if env.header.key_id != self.id {
            return Err(Error::WrongKey {
                expected: format!("root key {:08x}", self.id),
                found: format!("root key {:08x}", env.header.key_id),
            });
        }
        let aad = kek_aad(env.header_bytes, generation);
        Ok(Kek::from_secret(generation, unwrap(&self.cipher, &env, aad)?))
    }
}

impl RootKey {
    /// Wraps a generation's blind-index key.
    pub fn wrap_index_key(&self, key: &IndexKey) -> Result<WrappedIndexKey, Error> {
        key.wrap_with(&self.cipher, self.id)
    }

    /// Unwraps the blind-index key of `generation`.
    pub fn unwrap_index_key(&self, generation: Generation, wrapped: &WrappedIndexKey) -> Result<IndexKey, Error> {
        IndexKey::unwrap_with(&self.cipher, self.id, generation, wrapped)
    }
}

fn kek_aad(header: &[u8], generation: Generation) -> Aad {
    Aad::new(header, "qoima.kek").u64(u64::from(generation.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_source_round_trip_and_permissions() {
        let dir = std::env::temp_dir().join(format!("qoima-root-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("root.key");
        let _ = std::fs::remove_file(&path);
        let made = RootKey::generate_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(RootKey::generate_file(&path).is_err(), "never overwrites a root key");

        let loaded = RootKeySource::File(path.clone()).load().unwrap();
        assert_eq!(loaded.id(), made.id());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(RootKeySource::File(path.clone()).load().is_ok());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = RootKeySource::File(path.clone()).load().unwrap_err();
        assert!(matches!(err, Error::RootKeyPermissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("must be 0600 or 0400"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn index_keys_wrap_under_the_root_bound_to_their_generation() {
        let dir = std::env::temp_dir().join(format!("qoima-root-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("root.key"));
        let root = RootKey::generate_file(&dir.join("root.key")).unwrap();
        let key = IndexKey::generate(Generation(3)).unwrap();
        let wrapped = root.wrap_index_key(&key).unwrap();
        let back = root.unwrap_index_key(Generation(3), &wrapped).unwrap();
        assert_eq!(back.blind("f", b"v"), key.blind("f", b"v"));
        assert!(root.unwrap_index_key(Generation(4), &wrapped).is_err(), "bound to its generation");
        let kek = Kek::generate(Generation(3)).unwrap();
        let wrapped_kek = root.wrap_kek(&kek).unwrap();
        assert!(root.unwrap_index_key(Generation(3), &WrappedIndexKey(wrapped_kek.0)).is_err(), "a KEK is no index key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn systemd_credential_source() {
        let dir = std::env::temp_dir().join(format!("qoima-cred-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = RootKey::generate_file(&dir.join("qoima-root-key")).unwrap();
        let name = CredentialName::parse("qoima-root-key").unwrap();
        let load = |mode: u32| {
            std::fs::set_permissions(dir.join("qoima-root-key"), std::fs::Permissions::from_mode(mode)).unwrap();
            read_credential(Some(dir.as_os_str()), &name).and_then(|t| RootKey::from_hex(t.trim(), "test"))
        };
        // What systemd writes: 0400, or 0440 where an ACL grants the unit's user read access.
        assert_eq!(load(0o400).unwrap().id(), made.id());
        assert_eq!(load(0o440).unwrap().id(), made.id());
        for bad in [0o444, 0o640, 0o600, 0o660] {
            assert!(matches!(load(bad), Err(Error::RootKeyPermissions { .. })), "mode {bad:o} must be refused");
        }
        let err = read_credential(None, &name).unwrap_err().to_string();
        assert!(err.contains("CREDENTIALS_DIRECTORY is not set") && err.contains("systemd credential qoima-root-key"), "{err}");
        for bad in ["", ".", "..", "../root.key", "a/b", "key name"] {
            assert!(CredentialName::parse(bad).is_err(), "{bad:?} is no credential name");
        }
        assert_eq!(RootKeySource::Credential(name).to_string(), "systemd credential qoima-root-key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_source_and_format() {
        let var = "QOIMA_TEST_ROOT_KEY_FORMAT";
        std::env::set_var(var, "zz");
        let err = RootKeySource::Env(var.into()).load().unwrap_err();
        assert!(matches!(err, Error::RootKeyFormat { .. }));
        assert!(!err.to_string().contains("zz"), "the bad value is not echoed");
        std::env::set_var(var, "00".repeat(31) + "0g");
        assert!(matches!(RootKeySource::Env(var.into()).load(), Err(Error::RootKeyFormat { .. })));
        std::env::set_var(var, "ab".repeat(32));
        assert!(RootKeySource::Env(var.into()).load().is_ok());
        std::env::remove_var(var);
        assert!(matches!(RootKeySource::Env(var.into()).load(), Err(Error::RootKeyUnreadable { .. })));
    }

    #[test]
    fn kek_wrap_binds_generation_and_root() {
        let root = RootKey::from_hex(&"11".repeat(32), "test").unwrap();
        let kek = Kek::generate(Generation(5)).unwrap();
        let wrapped = root.wrap_kek(&kek).unwrap();
        assert_eq!(root.unwrap_kek(Generation(5), &wrapped).unwrap().generation(), Generation(5));
        assert!(matches!(root.unwrap_kek(Generation(6), &wrapped), Err(Error::Decrypt)));
        let other = RootKey::from_hex(&"22".repeat(32), "test").unwrap();
        let err = other.unwrap_kek(Generation(5), &wrapped).unwrap_err();
        assert!(matches!(err, Error::WrongKey { .. }), "{err}");
        assert_eq!(format!("{root:?}"), format!("RootKey(id {:08x}, <redacted>)", root.id()));
    }
}
