//! The one container for key bytes inside this crate.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroize;

/// 32 bytes of key material on the heap, zeroized when dropped, never printed.
/// Only this crate can look inside.
pub struct Secret(SecretBox<[u8; 32]>);

impl Secret {
    pub(crate) fn random() -> Result<Self, crate::Error> {
        let mut bytes = Box::new([0u8; 32]);
        crate::rand::fill(bytes.as_mut())?;
        Ok(Self(SecretBox::new(bytes)))
    }

    /// Takes ownership of `bytes` and wipes the caller's copy.
    pub(crate) fn from_bytes(bytes: &mut [u8; 32]) -> Self {
        let boxed = Box::new(*bytes);
        bytes.zeroize();
        Self(SecretBox::new(boxed))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let mut raw = [0xabu8; 32];
        let s = Secret::from_bytes(&mut raw);
        assert_eq!(raw, [0u8; 32], "the source copy is wiped");
        let printed = format!("{s:?}");
        assert_eq!(printed, "Secret(<redacted>)");
        assert!(!printed.to_lowercase().contains("ab"));
    }
}
