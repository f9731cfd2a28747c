//! Idempotency keys (issue #23): a caller that sends `Idempotency-Key` with a mutating request
//! and retries it (after a 408, a lost connection, a 503) gets the first answer again instead
//! of a second effect.
//!
//! **Invariants.**
//! - A record is kept per caller: the store key is a digest of the caller's name and its key,
//!   so caller A's key never finds caller B's record.
//! - A success's record rides in the same write batch as the operation's changes and its audit
//!   entry ([`Vault::remember`]): "committed" and "key recorded" cannot diverge. A success that
//!   changed nothing is recorded on its own afterwards (there is nothing to diverge from).
//! - Only successes are recorded; a refusal or failure leaves the key unused, so a retry runs
//!   the request again.
//! - A record holds the request's fingerprint, the first request id and what the answer needs
//!   to be given again: ids, statuses, times, field *names*. Never field values (a disclosure's
//!   record keeps the disclosure record, not the values disclosed) and never a credential (a
//!   privacy-session record keeps the session's expiry, not its link).
//! - Same-key requests of one caller run one at a time: a second one while the first is in
//!   flight is refused ([`VaultError::IdempotencyInFlight`], 409), never run beside it.
//! - Records are kept at least [`RETENTION`] (24 h), then removed by the retention sweep; an
//!   erasure removes the subject's records in its shred batch.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::{Answer, Mode, Refused};
pub(super) use super::replay::Replayable;
use super::{Ctx, Vault, VaultError};
use crate::domain::hex_string;
use crate::layout;
use crate::policy::Action;
use crate::store::{Batch, Space, StoreError, Tier};

/// How long a record is kept at least; the retention sweep removes it after that.
pub const RETENTION: time::Duration = time::Duration::hours(24);

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A caller's `Idempotency-Key`: 1 to [`MAX_KEY_LEN`] printable ASCII characters (space to
/// `~`). `Debug` shows its length only: the key is the caller's text, kept nowhere in plain.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(key: &str) -> Result<Self, VaultError> {
        let printable = key.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if key.is_empty() || key.len() > MAX_KEY_LEN || !printable {
            return Err(VaultError::Invalid(super::error::Invalid::IdempotencyKey { max_len: MAX_KEY_LEN }));
        }
        Ok(Self(key.to_owned()))
    }
}

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdempotencyKey(<{} chars>)", self.0.len())
    }
}

/// The idempotency key of a request and the fingerprint of what it asks
/// ([`Idempotency::fingerprint`]); carried by [`Ctx`]. Clones share one flag that says whether
/// the answer was a replay, for the HTTP layer to mark it.
#[derive(Clone, Debug)]
pub struct Idempotency {
    key: IdempotencyKey,
    fingerprint: [u8; 32],
    replayed: Arc<AtomicBool>,
}

impl Idempotency {
    pub fn new(key: IdempotencyKey, fingerprint: [u8; 32]) -> Self {
        Self { key, fingerprint, replayed: Arc::default() }
    }

    /// SHA-256 of the method, the route, the path (its parameters) and the canonical body
    /// ([`canonical_json`]), each length-prefixed so no two requests' parts run together.
    pub fn fingerprint(method: &str, route: &str, path: &str, body: &[u8]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [method.as_bytes(), route.as_bytes(), path.as_bytes(), body] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    /// Whether the vault answered this request with the first answer to its key.
    pub fn replayed(&self) -> bool {
        self.replayed.load(Ordering::SeqCst)
    }

    /// The store key of the caller's record: a digest, so neither the key nor the caller is
    /// kept in plain, and callers never share a record.
    fn slot(&self, caller: &str) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"qoima.idempotency.v1\0");
        ctx.update(caller.as_bytes());
        ctx.update(b"\0");
        ctx.update(self.key.0.as_bytes());
        ctx.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
    }
}

/// JSON with every object's keys sorted and no whitespace: two bodies that mean the same get
/// the same bytes (and so the same fingerprint).
pub fn canonical_json(v: &Value) -> Vec<u8> {
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, k).expect("a string serialises");
                    out.push(b':');
                    write(&m[k], out);
                }
                out.push(b'}');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(x, out);
                }
                out.push(b']');
            }
            other => serde_json::to_writer(&mut *out, other).expect("a value serialises"),
        }
    }
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

/// Keys of requests in flight (digests, as [`Idempotency::slot`]).
#[derive(Default)]
pub(super) struct InFlight(Arc<Mutex<HashSet<[u8; 32]>>>);

/// A claim on a key in flight, given up when dropped (by the request, or by the audit committer
/// once an async write's batch is applied).
pub(super) struct Claim {
    set: Arc<Mutex<HashSet<[u8; 32]>>>,
    slot: [u8; 32],
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.slot);
    }
}

impl InFlight {
    fn claim(&self, slot: [u8; 32]) -> Option<Claim> {
        let inserted = self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(slot);
        // Made only when the slot was free: a `Claim` dropped frees the slot.
        inserted.then(|| Claim { set: self.0.clone(), slot })
    }
}

/// What [`Vault::claim_key`] found for a request's idempotency key.
pub(super) enum Keyed<T> {
    /// No key, or a fresh one (with its claim): the operation runs.
    Fresh(Option<Claim>),
    /// A refusal or a replay: this is the answer, and the operation does not run.
    Answered(Answer<T>),
}

/// A record as stored (`k` + slot).
#[derive(Serialize, Deserialize)]
struct Stored {
    /// Hex SHA-256 of the first request ([`Idempotency::fingerprint`]).
    fingerprint: String,
    created_at: i64,
    /// The first request's id, named in the audit entry of a replay.
    request_id: String,
    /// The subject the request was about ("" for none): the index erasure removes.
    scope: String,
    /// What [`Replayable::kept`] kept of the answer.
    outcome: Value,
}

/// A time-index entry past retention: its key, the record's creation time, slot and scope.
/// (The three kinds of key, record, by subject and by time, are laid out in src/layout.rs.)
type Due = (Vec<u8>, i64, [u8; 32], String);

impl Vault {
    /// Runs `op` at most once per idempotency key of the caller (`ctx.idempotency`; without
    /// one, `op` simply runs), on a blocking thread. A key seen before gets the first answer or
    /// a refusal ([`Vault::claim_key`]). `op` records its success in its own commit with
    /// [`Vault::remember`]; a success that committed nothing is recorded here.
    pub(super) fn once<T: Replayable>(
        &self,
        ctx: &Ctx,
        action: Action,
        scope: Option<&str>,
        op: impl FnOnce() -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let Some(idem) = &ctx.idempotency else { return op() };
        self.gate(ctx, action, scope)?;
        let _claim = match self.claim_key::<T>(Mode::Wait, ctx, action, scope)? {
            Keyed::Answered(answer) => return answer.wait(),
            Keyed::Fresh(claim) => claim,
        };
        let answer = op()?;
        if self.idempotency_record(Tier::Any, &idem.slot(ctx.caller.name.as_str()))?.is_none() {
            // Nothing was committed with it (an operation that had nothing to change).
            let mut batch = Batch::default();
            self.remember(ctx, scope, &mut batch, &answer.kept())?;
            // Through the committer like every other write (one group each: what the tests
            // count to see that an operation's record rode in its own batch).
            self.audit.commit(Vec::new(), batch)?;
        }
        Ok(answer)
    }

    /// Claims the caller's idempotency key for this request, in `mode`. Without a key, or with a
    /// key free and never used, the operation runs ([`Keyed::Fresh`]), keeping the claim until
    /// its batch (which carries the record, [`Vault::remember`]) is applied or refused. A key in
    /// flight is refused (409); a key used for another request is refused (422); a key used for
    /// this request gets the first answer again, audited as a replay. In [`Mode::NoWait`] a
    /// used key would block: its record is read from the disk.
    pub(super) fn claim_key<T: Replayable>(
        &self,
        mode: Mode,
        ctx: &Ctx,
        action: Action,
        scope: Option<&str>,
    ) -> Result<Keyed<T>, VaultError> {
        let Some(idem) = &ctx.idempotency else { return Ok(Keyed::Fresh(None)) };
        let refused = Refused { ctx, action, subject: scope, purpose: None, fields: vec![] };
        let slot = idem.slot(ctx.caller.name.as_str());
        let Some(claim) = self.in_flight.claim(slot) else {
            let err = VaultError::IdempotencyInFlight;
            return Ok(Keyed::Answered(self.refusal(mode, refused, err)));
        };
        let Some(first) = self.idempotency_record(mode.tier(), &slot)? else { return Ok(Keyed::Fresh(Some(claim))) };
        if mode == Mode::NoWait {
            return Err(VaultError::WouldBlock);
        }
        if first.fingerprint != hex_string(&idem.fingerprint) {
            let err = VaultError::IdempotencyKeyReused;
            return Ok(Keyed::Answered(self.refusal(mode, refused, err)));
        }
        let kept: T::Kept =
            serde_json::from_value(first.outcome).map_err(|_| StoreError::Corrupt { space: "idempotency", what: "outcome" })?;
        let answer = T::replay(self, kept)?;
        let reason = format!("replayed the answer of request {} (same Idempotency-Key)", first.request_id);
        self.audit.record(self.draft(ctx, action, scope, reason))?;
        idem.replayed.store(true, Ordering::SeqCst);
        Ok(Keyed::Answered(Answer::now(Ok(answer))))
    }

    /// Adds the idempotency record of `ctx`'s key, keeping `kept` of the answer, to `batch`:
    /// called by an operation just before it commits its changes in `batch`, with the subject
    /// it is about (whose erasure removes the record). Without a key, nothing.
    pub(super) fn remember(&self, ctx: &Ctx, scope: Option<&str>, batch: &mut Batch, kept: &impl Serialize) -> Result<(), VaultError> {
        let Some(idem) = &ctx.idempotency else { return Ok(()) };
        let slot = idem.slot(ctx.caller.name.as_str());
        let created_at = self.clock.now().unix_timestamp();
        let scope = scope.unwrap_or_default();
        let stored = Stored {
            fingerprint: hex_string(&idem.fingerprint),
            created_at,
            request_id: ctx.request_id.as_str().to_owned(),
            scope: scope.to_owned(),
            outcome: serde_json::to_value(kept).map_err(|_| VaultError::Internal(super::error::Internal::Outcome))?,
        };
        batch.put(Space::Idempotency, layout::idempotency_record(&slot), serde_json::to_vec(&stored).expect("serialises"));
        batch.put(Space::Idempotency, layout::idempotency_scope(scope, &slot), Vec::new());
        batch.put(Space::Idempotency, layout::idempotency_time(created_at, &slot), scope.as_bytes().to_vec());
        Ok(())
    }

    fn idempotency_record(&self, tier: Tier, slot: &[u8; 32]) -> Result<Option<Stored>, VaultError> {
        let found = self.store.get_in(tier, Space::Idempotency, &layout::idempotency_record(slot))?;
        Ok(found
            .map(|v| serde_json::from_slice::<Stored>(&v).map_err(|_| StoreError::Corrupt { space: "idempotency", what: "record" }))
            .transpose()?)
    }

    /// Adds the deletion of every idempotency record about `subject` to `batch` (an erasure's
    /// shred; the caller holds the subject's lock). Their time-index entries hold only the
    /// subject id and go with the next sweep.
    pub(super) fn forget_idempotency_of(&self, subject: &str, batch: &mut Batch) -> Result<(), VaultError> {
        let prefix = layout::idempotency_scope_prefix(subject);
        let mut slots = Vec::new();
        self.store.scan_prefix(Space::Idempotency, &prefix, |k, _| {
            if let Some((_, slot)) = layout::parse_idempotency_scope(k) {
                slots.push(slot.to_vec());
            }
            true
        })?;
        for slot in slots {
            batch.delete(Space::Idempotency, layout::idempotency_record(&slot));
        }
        batch.delete_prefix(Space::Idempotency, &prefix);
        Ok(())
    }

    /// Removes idempotency records older than [`RETENTION`] (part of the retention sweep).
    /// Returns how many were removed.
    pub fn sweep_idempotency(&self) -> Result<usize, VaultError> {
        let before = (self.clock.now() - RETENTION).unix_timestamp();
        let (from, to) = layout::idempotency_created_before(before);
        // (time-index key, creation time, slot, scope) of each record due.
        let mut due: Vec<Due> = Vec::new();
        self.store.scan(Space::Idempotency, &from, &to, |k, v| {
            if let Some((at, slot)) = layout::parse_idempotency_time(k) {
                // The scope was written from a `&str`.
                due.push((k.to_vec(), at, slot, String::from_utf8_lossy(v).into_owned()));
            }
            due.len() < 10_000
        })?;
        let mut batch = Batch::default();
        let mut removed = 0;
        for (tk, at, slot, scope) in due {
            batch.delete(Space::Idempotency, tk);
            // Only the record this entry was written with (a key used again after an erasure
            // removed the first record has a record of its own).
            if self.idempotency_record(Tier::Any, &slot)?.is_some_and(|r| r.created_at == at) {
                batch.delete(Space::Idempotency, layout::idempotency_record(&slot));
                batch.delete(Space::Idempotency, layout::idempotency_scope(&scope, &slot));
                removed += 1;
            }
        }
        if !batch.is_empty() {
            self.store.write(&batch)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_printable_ascii_and_never_shown() {
        for good in ["a", "550e8400-e29b-41d4-a716-446655440000", "with space ~!", &"x".repeat(MAX_KEY_LEN)] {
            assert!(IdempotencyKey::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", "tab\t", "nul\0", "ключ", &"x".repeat(MAX_KEY_LEN + 1)] {
            assert!(matches!(IdempotencyKey::parse(bad), Err(VaultError::Invalid(_))), "{bad:?}");
        }
        assert_eq!(format!("{:?}", IdempotencyKey::parse("secret-ish").unwrap()), "IdempotencyKey(<10 chars>)");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[{"d":2,"c":1}],"x":"\u00e9"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"é","y":[{"c":1,"d":2}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(String::from_utf8(canonical_json(&a)).unwrap(), r#"{"a":{"x":"é","y":[{"c":1,"d":2}]},"b":1}"#);
        let c: Value = serde_json::from_str(r#"{"b":2,"a":{"x":"é","y":[{"c":1,"d":2}]}}"#).unwrap();
        assert_ne!(canonical_json(&a), canonical_json(&c));
    }

    #[test]
    fn fingerprints_and_slots_keep_their_parts_apart() {
        // Length prefixes: moving a byte from one part to the next changes the fingerprint.
        assert_ne!(Idempotency::fingerprint("POST", "/a", "/ab", b"{}"), Idempotency::fingerprint("POST", "/a/", "ab", b"{}"));
        assert_eq!(Idempotency::fingerprint("PUT", "/r", "/p", b"1"), Idempotency::fingerprint("PUT", "/r", "/p", b"1"));
        let k = |key: &str| Idempotency::new(IdempotencyKey::parse(key).unwrap(), [0; 32]);
        assert_ne!(k("key").slot("caller-a"), k("key").slot("caller-b"), "per caller");
        assert_eq!(k("key").slot("a"), k("key").slot("a"));
    }
}
