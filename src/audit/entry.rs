//! An audit entry: its stored JSON form and its hash; as a draft, what the committer chains.

use std::borrow::Cow;
use std::io::Write as _;

use ring::digest;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{hex_string, push_json_str};

/// Room for an entry's JSON (a read of a dozen fields takes ~550 bytes), so serialising it
/// does not grow the buffer several times.
const ENTRY_CAPACITY: usize = 768;

/// Allowed or denied. A blank draft is a denial until it says otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    #[default]
    Deny,
}

/// One audit entry as stored and served. A stored entry with a field the vault does not write
/// does not parse ([`verify`](super::verify()) reports it).
///
/// Before the committer seals it, an entry is a [`Draft`]: `seq`, `time`, `prev_hash` and `hash`
/// are left empty (`..Default::default()`) and the committer fills them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    pub caller: String,
    /// A policy action's name, or a more specific one (`keys.rotate`); borrowed from the
    /// policy's names, so a draft does not allocate it.
    #[schema(value_type = String)]
    pub action: Cow<'static, str>,
    pub subject: Option<String>,
    pub purpose: Option<String>,
    pub fields: Vec<String>,
    pub decision: Decision,
    pub reason: String,
    /// The vault's own id of the request (echoed in the response's `x-request-id`).
    pub request_id: String,
    /// The id the client sent in `x-request-id`, if it sent a plain one (at most 64 of
    /// `A-Za-z0-9._:-`). Left out of the entry and of its hash when absent (entries from before
    /// it existed verify as they were); covered by the hash when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// An entry before the committer gives it a place in the chain (see [`AuditEntry`]).
pub type Draft = AuditEntry;

impl AuditEntry {
    /// SHA-256 over every field but `hash`, serialised as a JSON array (fixed order).
    pub fn compute_hash(&self) -> String {
        let mut bytes = Vec::with_capacity(ENTRY_CAPACITY);
        self.write_json(&mut bytes, Form::HashBody);
        hex_string(digest::digest(&digest::SHA256, &bytes).as_ref())
    }

    /// The entry as stored: the JSON object serde_json writes for it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ENTRY_CAPACITY);
        self.write_json(&mut bytes, Form::Stored);
        bytes
    }

    /// Writes the entry byte for byte as serde_json writes it (the tests hold the two equal: the
    /// chain's hashes were computed over serde_json's bytes), without serde_json's
    /// byte-at-a-time escaping of every string: an entry's strings are ids, names and hashes,
    /// which need no escape and are copied whole (that loop was 6 % of the instructions of a
    /// create and a fetch).
    fn write_json(&self, out: &mut Vec<u8>, form: Form) {
        let mut first = true;
        let mut key = |out: &mut Vec<u8>, name: &str| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            if form == Form::Stored {
                push_json_str(out, name);
                out.push(b':');
            }
        };
        out.push(if form == Form::Stored { b'{' } else { b'[' });
        key(out, "seq");
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{}", self.seq);
        key(out, "time");
        push_json_str(out, &self.time);
        key(out, "caller");
        push_json_str(out, &self.caller);
        key(out, "action");
        push_json_str(out, &self.action);
        key(out, "subject");
        push_json_opt(out, self.subject.as_deref());
        key(out, "purpose");
        push_json_opt(out, self.purpose.as_deref());
        key(out, "fields");
        out.push(b'[');
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(out, f);
        }
        out.push(b']');
        key(out, "decision");
        push_json_str(out, if self.decision == Decision::Allow { "allow" } else { "deny" });
        key(out, "reason");
        push_json_str(out, &self.reason);
        key(out, "request_id");
        push_json_str(out, &self.request_id);
        if let Some(c) = &self.client_request_id {
            key(out, "client_request_id");
            push_json_str(out, c);
        }
        key(out, "prev_hash");
        push_json_str(out, &self.prev_hash);
        if form == Form::Stored {
            key(out, "hash");
            push_json_str(out, &self.hash);
        }
        out.push(if form == Form::Stored { b'}' } else { b']' });
    }
}

/// The two JSON forms of an entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Every field but the hash, as an array: what the hash covers.
    HashBody,
    /// Every field, as an object: what the store holds and the API serves.
    Stored,
}

fn push_json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

impl Draft {
    pub fn purpose(mut self, purpose: Option<&str>) -> Self {
        self.purpose = purpose.map(str::to_owned);
        self
    }

    pub fn fields(mut self, fields: Vec<String>) -> Self {
        self.fields = fields;
        self
    }

    pub fn deny(mut self) -> Self {
        self.decision = Decision::Deny;
        self
    }

    /// Records under a more specific action name than the policy's (e.g. `keys.rotate`).
    pub fn named(mut self, action: &'static str) -> Self {
        self.action = Cow::Borrowed(action);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::GENESIS;

    #[test]
    fn an_entry_is_written_byte_for_byte_as_serde_json_writes_it() {
        let plain = AuditEntry {
            seq: 18_446_744_073_709_551_615,
            time: "2026-12-01T12:00:00Z".into(),
            caller: "svc".into(),
            action: "subject.read".into(),
            subject: Some("b-1042".into()),
            purpose: Some("loan_issuance".into()),
            fields: vec!["identity.full_name".into(), "identity.phone".into()],
            decision: Decision::Allow,
            reason: "contract c-1 active".into(),
            request_id: "0123456789abcdef01234567".into(),
            client_request_id: Some("client-7:a.b_c".into()),
            prev_hash: GENESIS.into(),
            hash: "ab".repeat(32),
        };
        let odd = AuditEntry {
            seq: 0,
            caller: "Айгерім \"quoted\" \\ back\nslash\u{1}\u{7f}".into(),
            subject: None,
            purpose: None,
            fields: vec![],
            decision: Decision::Deny,
            reason: "tab\there".into(),
            request_id: String::new(),
            client_request_id: None,
            ..plain.clone()
        };
        for e in [plain, odd] {
            let mut body =
                serde_json::json!([e.seq, e.time, e.caller, e.action, e.subject, e.purpose, e.fields, e.decision, e.reason, e.request_id]);
            // The client's id is hashed only when there is one: older entries keep their hashes.
            if let Some(c) = &e.client_request_id {
                body.as_array_mut().unwrap().push(c.as_str().into());
            }
            body.as_array_mut().unwrap().push(e.prev_hash.as_str().into());
            let mut hashed = Vec::new();
            e.write_json(&mut hashed, Form::HashBody);
            assert_eq!(String::from_utf8(hashed).unwrap(), serde_json::to_string(&body).unwrap());
            assert_eq!(String::from_utf8(e.to_json()).unwrap(), serde_json::to_string(&e).unwrap());
            assert_eq!(e.compute_hash(), hex::encode(digest::digest(&digest::SHA256, &serde_json::to_vec(&body).unwrap())));
        }
    }
}
