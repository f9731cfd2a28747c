//! Caller authentication: bearer tokens are known only by their SHA-256 digests, and a
//! presented token is compared against every digest in constant time.

use std::sync::Arc;

use ring::digest;
use subtle::ConstantTimeEq;

use crate::assertion::SubjectAssertions;
use crate::policy::Caller;

/// A configured caller: the digest of its token and/or of its client certificate.
#[derive(Clone, Debug)]
pub struct CallerEntry {
    /// Shared with every request it makes (a request clones the `Arc`, not the caller).
    pub caller: Arc<Caller>,
    pub token_sha256: Option<[u8; 32]>,
    pub client_cert_sha256: Option<[u8; 32]>,
    /// Reads of personal data allowed per minute (`max_reads_per_minute`); none: unlimited.
    pub max_reads_per_minute: Option<u32>,
    /// The fields it may write (`writes`, patterns as in purposes); none: what its purposes read.
    pub writes: Option<Vec<String>>,
    /// Requests about a subject must carry an assertion for it (`subject_assertion`).
    pub subject_assertion: Option<Arc<SubjectAssertions>>,
}

/// Every configured caller.
#[derive(Clone, Debug, Default)]
pub struct Callers(Vec<CallerEntry>);

/// SHA-256 of a token.
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl Callers {
    pub fn new(entries: Vec<CallerEntry>) -> Self {
        Self(entries)
    }

    /// The caller whose token this is. Every digest is compared, in constant time, whether or
    /// not an earlier one matched, so timing says nothing about which caller (if any) matched
    /// or how much of a digest did.
    pub fn authenticate(&self, token: &str) -> Option<&Arc<Caller>> {
        let presented = token_digest(token);
        self.find(|e| e.token_sha256.as_ref(), &presented)
    }

    /// The caller whose client certificate has this SHA-256 fingerprint (the TLS layer has
    /// already verified the certificate against the configured CA).
    pub fn authenticate_certificate(&self, fingerprint: &[u8; 32]) -> Option<&Arc<Caller>> {
        self.find(|e| e.client_cert_sha256.as_ref(), fingerprint)
    }

    fn find(&self, digest: impl Fn(&CallerEntry) -> Option<&[u8; 32]>, presented: &[u8; 32]) -> Option<&Arc<Caller>> {
        let mut found: Option<&Arc<Caller>> = None;
        for e in &self.0 {
            // Compare against every entry (a fixed, unmatchable digest where there is none).
            let stored = digest(e).copied().unwrap_or([0xffu8; 32]);
            let hit = bool::from(presented.ct_eq(&stored)) && digest(e).is_some();
            if hit {
                found = Some(&e.caller);
            }
        }
        found
    }

    pub fn entries(&self) -> &[CallerEntry] {
        &self.0
    }

    /// The assertion verifier of `caller`, if it is configured to need subject assertions.
    pub fn subject_assertion(&self, caller: &Caller) -> Option<&SubjectAssertions> {
        self.0.iter().find(|e| e.caller.name == caller.name).and_then(|e| e.subject_assertion.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CallerName, Role};

    #[test]
    fn tokens_match_only_their_caller() {
        let mk = |name: &str, token: &str| CallerEntry {
            caller: Arc::new(Caller {
                name: CallerName::parse(name).unwrap(),
                roles: [Role::Service].into(),
                purposes: Default::default(),
            }),
            token_sha256: Some(token_digest(token)),
            client_cert_sha256: None,
            max_reads_per_minute: None,
            writes: None,
            subject_assertion: None,
        };
        let c = Callers::new(vec![mk("a", "token-a"), mk("b", "token-b")]);
        assert_eq!(c.authenticate("token-a").unwrap().name.as_str(), "a");
        assert_eq!(c.authenticate("token-b").unwrap().name.as_str(), "b");
        assert!(c.authenticate("token-c").is_none());
        assert!(c.authenticate("").is_none());
        assert!(c.authenticate("token-a ").is_none());
    }

    /// The time to authenticate does not depend on how much of a stored digest the presented
    /// token's digest matches. A table of 1,000 callers magnifies any early exit: 31 matching
    /// bytes per entry against none.
    #[test]
    fn timing_does_not_depend_on_the_prefix_matched() {
        let token = "qv1_timing-probe";
        let d = token_digest(token);
        let table = |flip: usize| {
            Callers::new(
                (0..1000)
                    .map(|i| {
                        let mut digest = d;
                        digest[flip] ^= 0x5a;
                        CallerEntry {
                            caller: Arc::new(Caller {
                                name: CallerName::parse(&format!("c{i}")).unwrap(),
                                roles: [Role::Service].into(),
                                purposes: Default::default(),
                            }),
                            token_sha256: Some(digest),
                            client_cert_sha256: None,
                            max_reads_per_minute: None,
                            writes: None,
                            subject_assertion: None,
                        }
                    })
                    .collect(),
            )
        };
        let (late, early) = (table(31), table(0));
        let time = |c: &Callers| {
            let t = std::time::Instant::now();
            for _ in 0..8 {
                assert!(c.authenticate(std::hint::black_box(token)).is_none());
            }
            t.elapsed().as_nanos()
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..201 {
            a.push(time(&late));
            b.push(time(&early));
        }
        a.sort_unstable();
        b.sort_unstable();
        let ratio = a[100] as f64 / b[100] as f64;
        assert!((0.8..1.25).contains(&ratio), "median 31-byte-prefix / 0-byte-prefix = {ratio:.3}");
    }
}
