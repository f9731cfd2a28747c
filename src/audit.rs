//! The tamper-evident audit log: a hash chain of entries in the store, appended by one
//! committer thread that groups concurrent requests into one fsynced write (group commit).
//!
//! **Invariant:** an entry is durable before the request it records may return plaintext. The
//! caller's own changes ride in the same write batch as its entry, so an operation and its
//! audit entry are applied together or not at all. Entries hold ids and field *names*, never
//! values, tokens or key bytes. An entry that hands a subject's fields out also adds to that
//! subject's access summary ([`summary`]), in the same batch.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::domain::{hex_string, push_json_str, rfc3339, Clock};
use crate::store::{subject_key, Batch, Space, Store, StoreError};

pub mod summary;

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HEAD_KEY: &[u8] = b"audit/head";
/// Most jobs folded into one group commit.
const MAX_GROUP: usize = 256;
/// Room for an entry's JSON (a read of a dozen fields takes ~550 bytes), so serialising it
/// does not grow the buffer several times.
const ENTRY_CAPACITY: usize = 768;

/// Allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

/// One audit entry as stored and served. A stored entry with a field the vault does not write
/// does not parse ([`verify`] reports it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    pub caller: String,
    pub action: String,
    pub subject: Option<String>,
    pub purpose: Option<String>,
    pub fields: Vec<String>,
    pub decision: Decision,
    pub reason: String,
    /// The vault's own id of the request.
    pub request_id: String,
    /// The id the client sent (`x-request-id`), if it sent a plain one. Absent, it is left out
    /// of the entry and of its hash (entries from before it existed verify as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

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

/// An entry before the committer gives it a place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub caller: String,
    pub action: &'static str,
    pub subject: Option<String>,
    pub purpose: Option<String>,
    pub fields: Vec<String>,
    pub decision: Decision,
    pub reason: String,
    pub request_id: String,
    /// The client's own id of the request, if it sent one.
    pub client_request_id: Option<String>,
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
        self.action = action;
        self
    }
}

/// The audit log could not take an entry; the request it records must fail (fail closed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}

type Outcome = Result<Vec<u64>, AuditError>;

/// Where the committer sends a job's outcome: a blocked thread, or an awaiting task.
enum Reply {
    Blocking(SyncSender<Outcome>),
    Async(tokio::sync::oneshot::Sender<Outcome>),
}

impl Reply {
    fn send(self, outcome: Outcome) {
        let _ = match self {
            Reply::Blocking(tx) => tx.send(outcome).map_err(|_| ()),
            Reply::Async(tx) => tx.send(outcome).map_err(|_| ()),
        };
    }
}

struct Job {
    drafts: Vec<Draft>,
    batch: Batch,
    reply: Reply,
    /// Held until the batch is applied (or refused), then dropped: a subject's lock taken by
    /// an async writer, so the next writer reads what this one wrote.
    hold: Option<Hold>,
}

/// Something the committer keeps until a job's batch is written or refused (see
/// [`AuditLog::try_submit`]), then releases, saying which.
pub type Hold = Box<dyn Release>;

/// A [`Hold`]'s end, once its batch is written (`applied`) or refused.
pub trait Release: Send {
    fn release(self: Box<Self>, applied: bool);
}

/// A commit queued by [`AuditLog::queue`]; [`Queued::wait`] blocks until it is durable.
#[must_use = "a queued commit is not durable until waited for"]
pub struct Queued(Receiver<Outcome>);

impl Queued {
    pub fn wait(self) -> Outcome {
        self.0.recv().map_err(|_| AuditError::Unavailable("committer stopped".into()))?
    }
}

/// A commit handed to the committer; resolves once the group holding it is durable.
pub struct PendingCommit(tokio::sync::oneshot::Receiver<Outcome>);

impl PendingCommit {
    pub async fn durable(self) -> Outcome {
        self.0.await.map_err(|_| AuditError::Unavailable("committer stopped".into()))?
    }
}

/// A switch tests flip to make audit writes fail (fault injection; never set in production).
/// The second makes erasure purges fail, after their shred committed.
#[derive(Debug, Default)]
pub struct FaultSwitch(AtomicBool, AtomicBool);

impl FaultSwitch {
    pub fn set(&self, failing: bool) {
        self.0.store(failing, Ordering::SeqCst);
    }

    pub fn set_purges_failing(&self, failing: bool) {
        self.1.store(failing, Ordering::SeqCst);
    }

    pub(crate) fn purges_failing(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }

    fn failing(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the committer measures, for /metrics.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Time of each group's durable write.
    pub commit_seconds: crate::metrics::Histogram,
    /// Entries by action, purpose and decision.
    pub decisions: crate::metrics::CounterFamily,
    /// The configured purposes: the only `purpose` label values besides `other` and none, so
    /// no request can add a label set (an entry may name any well-formed purpose it refused).
    pub purposes: BTreeSet<String>,
    pub groups: AtomicU64,
    pub entries: AtomicU64,
    pub failures: AtomicU64,
}

/// The running audit log.
pub struct AuditLog {
    tx: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    healthy: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
}

impl AuditLog {
    /// Starts the committer, continuing the chain found in `store`.
    /// `purposes` are the configured purposes, the `purpose` label values of the decision
    /// counters.
    pub fn start(
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        faults: Arc<FaultSwitch>,
        purposes: BTreeSet<String>,
    ) -> Result<Self, StoreError> {
        let head = load_head(&store)?;
        summary::note_start(&store, head.seq)?;
        let (tx, rx) = sync_channel::<Job>(4096);
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(AuditStats { purposes, ..AuditStats::default() });
        let (h, st) = (healthy.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("qoima-audit".into())
            .spawn(move || committer(rx, store, clock, faults, head, h, st))
            .map_err(|e| StoreError::Io(format!("cannot start the audit committer: {e}")))?;
        Ok(Self { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), healthy, stats })
    }

    /// Appends `drafts` and applies `batch` in one durable write. Blocks until done; returns
    /// the entries' sequence numbers.
    pub fn commit(&self, drafts: Vec<Draft>, batch: Batch) -> Result<Vec<u64>, AuditError> {
        self.queue(drafts, batch)?.wait()
    }

    /// [`AuditLog::commit`] in two steps, for a blocking thread: queued now (waiting for room
    /// if the queue is full), so it is ordered before whatever is queued after, then awaited
    /// with [`Queued::wait`] (e.g. once a subject's lock is let go).
    pub fn queue(&self, drafts: Vec<Draft>, batch: Batch) -> Result<Queued, AuditError> {
        let (reply, wait) = sync_channel(1);
        self.enqueue(Job { drafts, batch, reply: Reply::Blocking(reply), hold: None })?;
        Ok(Queued(wait))
    }

    /// Hands `drafts` and `batch` to the committer and returns at once; await the result
    /// before acting on the commit (the thread is free for other work meanwhile).
    pub fn submit(&self, drafts: Vec<Draft>, batch: Batch) -> Result<PendingCommit, AuditError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.enqueue(Job { drafts, batch, reply: Reply::Async(reply), hold: None })?;
        Ok(PendingCommit(wait))
    }

    /// [`AuditLog::submit`] that never waits: `None` if the queue is full or the committer has
    /// stopped, and nothing was queued (the caller takes the blocking path, which waits or reports).
    /// `hold` is dropped once `batch` is written or refused, even if no one awaits the result.
    pub fn try_submit(&self, drafts: Vec<Draft>, batch: Batch, hold: Option<Hold>) -> Option<PendingCommit> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let (reply, wait) = tokio::sync::oneshot::channel();
        tx.try_send(Job { drafts, batch, reply: Reply::Async(reply), hold }).ok()?;
        Some(PendingCommit(wait))
    }

    fn enqueue(&self, job: Job) -> Result<(), AuditError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let tx = tx.ok_or_else(|| AuditError::Unavailable("the vault is shutting down".into()))?;
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            // Backpressure: a full queue blocks the submitter (a blocking thread) until room.
            Err(TrySendError::Full(job)) => tx.send(job).map_err(|_| AuditError::Unavailable("committer stopped".into())),
            Err(TrySendError::Disconnected(_)) => Err(AuditError::Unavailable("committer stopped".into())),
        }
    }

    /// Appends one entry with no other changes.
    pub fn record(&self, draft: Draft) -> Result<u64, AuditError> {
        Ok(self.commit(vec![draft], Batch::default())?[0])
    }

    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// Whether the last write succeeded (for readiness).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Stops taking entries, lets the committer finish what it has, and waits for it.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn load_head(store: &Store) -> Result<Head, StoreError> {
    let corrupt = |what| StoreError::Corrupt { space: "audit", what };
    match store.get(Space::Keyring, HEAD_KEY)? {
        Some(v) => serde_json::from_slice(&v).map_err(|_| corrupt("chain head")),
        None => match store.last(Space::Audit)? {
            // A log without a head record: continue from its last entry.
            Some((_, v)) => {
                let e: AuditEntry = serde_json::from_slice(&v).map_err(|_| corrupt("entry"))?;
                Ok(Head { seq: e.seq, hash: e.hash })
            }
            None => Ok(Head { seq: 0, hash: GENESIS.to_string() }),
        },
    }
}

fn committer(
    rx: Receiver<Job>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    faults: Arc<FaultSwitch>,
    mut head: Head,
    healthy: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let time = rfc3339(clock.now());
        let mut batch = Batch::default();
        let mut next = head.clone();
        let mut seqs: Vec<Vec<u64>> = Vec::with_capacity(group.len());
        // Decisions of the group by (action, purpose, outcome), counted once per group so an
        // entry costs the counters no allocation.
        let mut decided: Vec<(String, String, &'static str, u64)> = Vec::new();
        for job in &mut group {
            batch.extend(std::mem::take(&mut job.batch));
            let mut mine = Vec::with_capacity(job.drafts.len());
            for d in job.drafts.drain(..) {
                let mut e = AuditEntry {
                    seq: next.seq + 1,
                    time: time.clone(),
                    caller: d.caller,
                    action: d.action.to_string(),
                    subject: d.subject,
                    purpose: d.purpose,
                    fields: d.fields,
                    decision: d.decision,
                    reason: d.reason,
                    request_id: d.request_id,
                    client_request_id: d.client_request_id,
                    // `next` is replaced below: its hash moves into the link.
                    prev_hash: std::mem::take(&mut next.hash),
                    hash: String::new(),
                };
                e.hash = e.compute_hash();
                let decision = if e.decision == Decision::Allow { "allow" } else { "deny" };
                let purpose = match e.purpose.as_deref() {
                    None => "",
                    Some(p) if stats.purposes.contains(p) => p,
                    Some(_) => "other",
                };
                match decided.iter_mut().find(|(a, p, d, _)| *a == e.action && p == purpose && *d == decision) {
                    Some(seen) => seen.3 += 1,
                    None => decided.push((e.action.clone(), purpose.to_owned(), decision, 1)),
                }
                tracing::debug!(seq = e.seq, caller = %e.caller, action = %e.action, subject = ?e.subject, purpose = ?e.purpose, fields = e.fields.len(), decision = ?e.decision, "audit entry");
                if let Some(s) = &e.subject {
                    batch.put(Space::AuditIndex, index_key(s, e.seq), Vec::new());
                }
                // In the entry's batch: the summary has every access that is in the log.
                if let Some((s, op)) = summary::operand(&e) {
                    batch.merge(Space::Access, summary::key(s), op);
                }
                batch.put(Space::Audit, e.seq.to_be_bytes().to_vec(), e.to_json());
                next = Head { seq: e.seq, hash: e.hash };
                mine.push(next.seq);
            }
            seqs.push(mine);
        }
        batch.put(Space::Keyring, HEAD_KEY.to_vec(), serde_json::to_vec(&next).expect("head serialises"));
        let started = std::time::Instant::now();
        let result = if faults.failing() { Err(StoreError::Io("injected audit write failure".into())) } else { store.write(&batch) };
        match result {
            Ok(()) => {
                stats.commit_seconds.observe(started.elapsed());
                tracing::trace!(jobs = group.len(), last_seq = next.seq, ops = batch.len(), "audit group committed");
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats.entries.fetch_add(next.seq - head.seq, Ordering::Relaxed);
                for (action, purpose, decision, n) in decided.drain(..) {
                    stats.decisions.add(vec![("action", action), ("purpose", purpose), ("decision", decision.to_owned())], n);
                }
                head = next;
                healthy.store(true, Ordering::SeqCst);
                for (job, s) in group.into_iter().zip(seqs) {
                    // Release first: whoever the reply wakes may write the same subject next.
                    if let Some(hold) = job.hold {
                        hold.release(true);
                    }
                    job.reply.send(Ok(s));
                }
            }
            Err(e) => {
                // Nothing of the group is applied; the chain head stays where it was.
                stats.failures.fetch_add(1, Ordering::Relaxed);
                decided.clear();
                healthy.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "audit write failed; requests refused");
                for job in group {
                    if let Some(hold) = job.hold {
                        hold.release(false);
                    }
                    job.reply.send(Err(AuditError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

fn index_key(subject: &str, seq: u64) -> Vec<u8> {
    let mut k = subject_key(subject, "");
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub entries: u64,
    /// The hash of the last entry: record it outside the vault and pass it back as an anchor.
    pub head: String,
    pub first_broken: Option<Broken>,
}

/// The first entry where the chain breaks, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub seq: u64,
    pub reason: String,
}

/// Recomputes the whole chain. Detects an edited entry (hash), a deleted or reordered one
/// (sequence gap or broken link), a deleted tail (head record) and, given an `anchor`
/// (seq, hash) recorded earlier outside the vault, a rewrite of the log up to that point.
pub fn verify(store: &Store, anchor: Option<(u64, &str)>) -> Result<Verification, StoreError> {
    let mut expected_seq = 1u64;
    let mut prev = GENESIS.to_string();
    let mut broken: Option<Broken> = None;
    let mut entries = 0u64;
    let mut anchor_seen = false;
    store.scan(Space::Audit, &[], &[0xff; 9], |k, v| {
        entries += 1;
        let key_seq = k.try_into().map(u64::from_be_bytes).unwrap_or(0);
        let fail = |reason: String| Broken { seq: key_seq.max(expected_seq), reason };
        let entry: AuditEntry = match serde_json::from_slice(v) {
            Ok(e) => e,
            // An added field is covered by no hash: a place to smuggle text into the log.
            Err(e) if e.to_string().starts_with("unknown field") => {
                broken = Some(fail("entry holds a field the vault does not write".into()));
                return false;
            }
            Err(_) => {
                broken = Some(fail("entry does not parse".into()));
                return false;
            }
        };
        if key_seq != expected_seq {
            broken = Some(Broken { seq: expected_seq, reason: format!("entry {expected_seq} is missing (next stored is {key_seq})") });
            return false;
        }
        if entry.seq != key_seq {
            broken = Some(fail(format!("entry stored at {key_seq} claims sequence {}", entry.seq)));
            return false;
        }
        if entry.prev_hash != prev {
            broken = Some(fail("previous-hash link does not match the entry before it".into()));
            return false;
        }
        if entry.compute_hash() != entry.hash {
            broken = Some(fail("content does not match its hash (edited)".into()));
            return false;
        }
        if let Some((aseq, ahash)) = anchor {
            if aseq == entry.seq {
                anchor_seen = true;
                if entry.hash != ahash {
                    broken = Some(fail("hash differs from the recorded anchor (log rewritten)".into()));
                    return false;
                }
            }
        }
        prev = entry.hash;
        expected_seq += 1;
        true
    })?;
    if broken.is_none() {
        // The head record itself, never the last entry standing in for it: without it, a
        // deleted tail would pass.
        let stored = store.get(Space::Keyring, HEAD_KEY)?;
        let stored_head = stored.as_deref().and_then(|v| serde_json::from_slice::<Head>(v).ok());
        let last = expected_seq - 1;
        match stored_head {
            None if stored.is_none() && last == 0 => {}
            None if stored.is_none() => broken = Some(Broken { seq: last, reason: "the chain head record is missing".into() }),
            Some(h) if h.seq == last && h.hash == prev => {}
            Some(h) if h.seq > last => {
                broken = Some(Broken {
                    seq: last + 1,
                    reason: format!("entries {}..={} are missing (chain head says {})", last + 1, h.seq, h.seq),
                })
            }
            _ => broken = Some(Broken { seq: last, reason: "the chain head record does not match the last entry".into() }),
        }
    }
    if broken.is_none() {
        if let Some((aseq, _)) = anchor {
            if !anchor_seen {
                broken = Some(Broken { seq: aseq, reason: "the anchored entry is no longer in the log".into() });
            }
        }
    }
    Ok(Verification { ok: broken.is_none(), entries, head: prev, first_broken: broken })
}

/// Which entries to list.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub subject: Option<String>,
    pub caller: Option<String>,
    /// Only entries with a sequence number greater than this.
    pub after: u64,
    pub limit: usize,
}

/// Entries matching `q`, oldest first.
pub fn query(store: &Store, q: &Query) -> Result<Vec<AuditEntry>, StoreError> {
    let mut out = Vec::new();
    let keep = |e: &AuditEntry| q.caller.as_deref().is_none_or(|c| c == e.caller);
    let corrupt = || StoreError::Corrupt { space: "audit", what: "entry" };
    match &q.subject {
        Some(s) => {
            let from = index_key(s, q.after.saturating_add(1));
            let to = crate::store::prefix_end(&subject_key(s, ""));
            let mut seqs = Vec::new();
            store.scan(Space::AuditIndex, &from, &to, |k, _| {
                if let Ok(b) = k[k.len() - 8..].try_into() {
                    seqs.push(u64::from_be_bytes(b));
                }
                true
            })?;
            for chunk in seqs.chunks(256) {
                let keys: Vec<Vec<u8>> = chunk.iter().map(|s| s.to_be_bytes().to_vec()).collect();
                for v in store.get_many(Space::Audit, &keys)?.into_iter().flatten() {
                    let e: AuditEntry = serde_json::from_slice(&v).map_err(|_| corrupt())?;
                    if keep(&e) {
                        out.push(e);
                        if out.len() >= q.limit {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        None => {
            let mut err = None;
            store.scan(Space::Audit, &q.after.saturating_add(1).to_be_bytes(), &[0xff; 9], |_, v| {
                match serde_json::from_slice::<AuditEntry>(v) {
                    Ok(e) if keep(&e) => out.push(e),
                    Ok(_) => {}
                    Err(_) => err = Some(corrupt()),
                }
                err.is_none() && out.len() < q.limit
            })?;
            if let Some(e) = err {
                return Err(e);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SystemClock;

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

    fn draft(subject: &str, reason: &str) -> Draft {
        Draft {
            caller: "svc".into(),
            action: "subject.read",
            subject: Some(subject.into()),
            purpose: Some("loan_issuance".into()),
            fields: vec!["identity.phone".into()],
            decision: Decision::Allow,
            reason: reason.into(),
            request_id: "r".into(),
            client_request_id: None,
        }
    }

    fn log_with(n: usize) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Arc::default(), Default::default()).unwrap();
        std::thread::scope(|s| {
            for i in 0..n {
                let log = &log;
                s.spawn(move || log.record(draft(&format!("s{}", i % 3), &format!("r{i}"))).unwrap());
            }
        });
        log.shutdown();
        (dir, store)
    }

    fn tamper(store: &Store, seq: u64, f: impl FnOnce(&mut AuditEntry)) {
        let mut e: AuditEntry = serde_json::from_slice(&store.get(Space::Audit, &seq.to_be_bytes()).unwrap().unwrap()).unwrap();
        f(&mut e);
        let mut b = Batch::default();
        b.put(Space::Audit, seq.to_be_bytes().to_vec(), serde_json::to_vec(&e).unwrap());
        store.write(&b).unwrap();
    }

    #[test]
    fn concurrent_appends_form_one_chain() {
        let (_d, store) = log_with(50);
        let v = verify(&store, None).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.entries, 50);
        let s1 = query(&store, &Query { subject: Some("s1".into()), limit: 100, ..Default::default() }).unwrap();
        assert!(s1.len() >= 16 && s1.iter().all(|e| e.subject.as_deref() == Some("s1")));
        let page = query(&store, &Query { after: 10, limit: 5, ..Default::default() }).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [11, 12, 13, 14, 15]);
    }

    #[test]
    fn decisions_are_counted_per_entry_within_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = AuditLog::start(store, Arc::new(SystemClock), Arc::default(), ["loan_issuance".to_owned()].into()).unwrap();
        let advertising = |d: Draft| Draft { purpose: Some("advertising".into()), ..d };
        // One job, so one group of five entries.
        let drafts = vec![draft("s1", "a"), draft("s2", "b"), draft("s1", "c").deny(), advertising(draft("s3", "d")), draft("s3", "e")];
        log.commit(drafts, Batch::default()).unwrap();
        let mut text = String::new();
        log.stats().decisions.render(&mut text, "d");
        assert_eq!(
            text,
            "d{action=\"subject.read\",purpose=\"loan_issuance\",decision=\"allow\"} 3\n\
             d{action=\"subject.read\",purpose=\"loan_issuance\",decision=\"deny\"} 1\n\
             d{action=\"subject.read\",purpose=\"other\",decision=\"allow\"} 1\n",
            "a purpose outside the configured set is labelled `other`"
        );
        log.shutdown();
    }

    #[test]
    fn editing_any_entry_is_detected() {
        for seq in 1..=5 {
            let (_d, store) = log_with(5);
            tamper(&store, seq, |e| e.fields.push("identity.iin".into()));
            let v = verify(&store, None).unwrap();
            assert_eq!(v.first_broken.unwrap().seq, seq, "edit of {seq}");
        }
        // Rehashing the edited entry breaks the link of the next one instead.
        let (_d, store) = log_with(5);
        tamper(&store, 2, |e| {
            e.reason = "nothing to see".into();
            e.hash = e.compute_hash();
        });
        assert_eq!(verify(&store, None).unwrap().first_broken.unwrap().seq, 3);
    }

    #[test]
    fn deleting_any_entry_is_detected() {
        for seq in 1..=5u64 {
            let (_d, store) = log_with(5);
            let mut b = Batch::default();
            b.delete(Space::Audit, seq.to_be_bytes().to_vec());
            store.write(&b).unwrap();
            let v = verify(&store, None).unwrap();
            assert!(!v.ok, "deleting {seq}");
            assert_eq!(v.first_broken.unwrap().seq, seq);
        }
    }

    #[test]
    fn reordering_entries_is_detected() {
        let (_d, store) = log_with(5);
        let a = store.get(Space::Audit, &2u64.to_be_bytes()).unwrap().unwrap();
        let b = store.get(Space::Audit, &3u64.to_be_bytes()).unwrap().unwrap();
        let mut batch = Batch::default();
        batch.put(Space::Audit, 2u64.to_be_bytes().to_vec(), b);
        batch.put(Space::Audit, 3u64.to_be_bytes().to_vec(), a);
        store.write(&batch).unwrap();
        assert_eq!(verify(&store, None).unwrap().first_broken.unwrap().seq, 2);
    }

    #[test]
    fn anchor_catches_a_full_rewrite() {
        let (_d, store) = log_with(3);
        let v = verify(&store, None).unwrap();
        // Rewrite entry 2 and re-chain everything after it, head included: only an anchor sees it.
        let mut prev =
            store.get(Space::Audit, &1u64.to_be_bytes()).map(|v| serde_json::from_slice::<AuditEntry>(&v.unwrap()).unwrap().hash).unwrap();
        for seq in 2..=3u64 {
            tamper(&store, seq, |e| {
                e.reason = "rewritten".into();
                e.prev_hash = prev.clone();
                e.hash = e.compute_hash();
                prev = e.hash.clone();
            });
        }
        let mut b = Batch::default();
        b.put(Space::Keyring, HEAD_KEY.to_vec(), serde_json::to_vec(&Head { seq: 3, hash: prev }).unwrap());
        store.write(&b).unwrap();
        assert!(verify(&store, None).unwrap().ok, "a consistent rewrite passes without an anchor");
        let r = verify(&store, Some((3, &v.head))).unwrap();
        assert_eq!(r.first_broken.unwrap().seq, 3);
    }

    #[test]
    fn a_missing_head_record_is_detected() {
        let (_d, store) = log_with(4);
        let mut b = Batch::default();
        b.delete(Space::Keyring, HEAD_KEY.to_vec());
        store.write(&b).unwrap();
        let v = verify(&store, None).unwrap();
        assert!(!v.ok, "{v:?}");
        let broken = v.first_broken.unwrap();
        assert_eq!((broken.seq, broken.reason.as_str()), (4, "the chain head record is missing"));
        // With the tail deleted too, the head no longer gives it away: its absence does.
        let mut b = Batch::default();
        b.delete(Space::Audit, 4u64.to_be_bytes().to_vec());
        store.write(&b).unwrap();
        assert_eq!(verify(&store, None).unwrap().first_broken.unwrap().seq, 3);
        // An empty log has no head to miss.
        let dir = tempfile::tempdir().unwrap();
        assert!(verify(&Store::open(dir.path()).unwrap(), None).unwrap().ok);
    }

    #[test]
    fn a_field_the_vault_does_not_write_is_detected() {
        let (_d, store) = log_with(4);
        // Added to the stored object, covered by no hash.
        let mut v: serde_json::Value = serde_json::from_slice(&store.get(Space::Audit, &3u64.to_be_bytes()).unwrap().unwrap()).unwrap();
        v["note"] = "nothing happened".into();
        let mut b = Batch::default();
        b.put(Space::Audit, 3u64.to_be_bytes().to_vec(), serde_json::to_vec(&v).unwrap());
        store.write(&b).unwrap();
        let r = verify(&store, None).unwrap();
        let broken = r.first_broken.unwrap();
        assert_eq!((broken.seq, broken.reason.as_str()), (3, "entry holds a field the vault does not write"));
    }

    #[test]
    fn an_entry_with_the_clients_request_id_verifies_and_hashes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Arc::default(), Default::default()).unwrap();
        log.record(draft("a", "old form")).unwrap();
        log.record(Draft { client_request_id: Some("summary".into()), ..draft("a", "new form") }).unwrap();
        log.shutdown();
        assert!(verify(&store, None).unwrap().ok);
        let raw = store.get(Space::Audit, &1u64.to_be_bytes()).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("client_request_id"), "left out when absent");
        tamper(&store, 2, |e| e.client_request_id = Some("other".into()));
        assert_eq!(verify(&store, None).unwrap().first_broken.unwrap().seq, 2, "the client's id is covered by the hash");
    }

    #[test]
    fn refusals_never_push_accesses_out_of_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Arc::default(), Default::default()).unwrap();
        log.record(draft("s", "first read")).unwrap();
        // Refusals, other actions and reads naming no field are not accesses.
        let refusals: Vec<Draft> = (0..1000).map(|i| draft("s", &format!("no {i}")).deny()).collect();
        log.commit(refusals, Batch::default()).unwrap();
        log.record(draft("s", "put").named("subject.put")).unwrap();
        log.record(draft("s", "empty").fields(vec![])).unwrap();
        let other = Draft { caller: "svc-2".into(), ..draft("s", "second read") }.fields(vec!["identity.iin".into()]);
        log.record(other).unwrap();
        log.record(draft("s", "third read").fields(vec!["identity.email".into()])).unwrap();
        log.shutdown();
        let s = summary::load(&store, "s").unwrap();
        let groups: Vec<(&str, u64, &[String])> = s.groups.iter().map(|g| (g.caller.as_str(), g.count, g.fields.as_slice())).collect();
        assert_eq!(
            groups,
            [
                ("svc", 2, ["identity.email".to_string(), "identity.phone".to_string()].as_slice()),
                ("svc-2", 1, ["identity.iin".to_string()].as_slice())
            ]
        );
        assert_eq!(s.recent.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 1004, 1005]);
        assert_eq!(summary::load(&store, "t").unwrap(), summary::Summary::default());
    }

    #[test]
    fn a_store_from_before_the_summaries_is_backfilled_once() {
        let (_d, store) = log_with(30);
        let kept: Vec<summary::Summary> = ["s0", "s1", "s2"].iter().map(|s| summary::load(&store, s).unwrap()).collect();
        assert_eq!(kept.iter().map(|s| s.groups[0].count).sum::<u64>(), 30);
        // As an older vault left it: entries, no summaries, no progress.
        let mut b = Batch::default();
        for s in ["s0", "s1", "s2"] {
            b.delete(Space::Access, summary::key(s));
        }
        b.delete(Space::Jobs, b"audit/access_summary".to_vec());
        store.write(&b).unwrap();
        assert_eq!(summary::load(&store, "s1").unwrap(), summary::Summary::default());
        // Restarted: the committer owes nothing before its start, the backfill everything.
        let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Arc::default(), Default::default()).unwrap();
        log.record(draft("s1", "after")).unwrap();
        assert_eq!(summary::backfill(&store, |s| s == "s2").unwrap(), 30);
        assert_eq!(summary::backfill(&store, |_| false).unwrap(), 0, "once");
        log.shutdown();
        assert_eq!(summary::load(&store, "s0").unwrap(), kept[0]);
        let s1 = summary::load(&store, "s1").unwrap();
        assert_eq!(s1.groups[0].count, kept[1].groups[0].count + 1);
        assert_eq!(summary::load(&store, "s2").unwrap(), summary::Summary::default(), "an erased subject gets none");
    }

    #[test]
    fn a_failed_write_applies_nothing_and_keeps_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let faults = Arc::new(FaultSwitch::default());
        let log = AuditLog::start(store.clone(), Arc::new(SystemClock), faults.clone(), Default::default()).unwrap();
        log.record(draft("a", "1")).unwrap();
        faults.set(true);
        let mut b = Batch::default();
        b.put(Space::Records, b"a\0x".to_vec(), b"v".to_vec());
        assert!(log.commit(vec![draft("a", "2")], b).is_err());
        assert!(!log.healthy());
        assert_eq!(store.get(Space::Records, b"a\0x").unwrap(), None, "the request's changes were not applied");
        faults.set(false);
        assert_eq!(log.record(draft("a", "3")).unwrap(), 2);
        log.shutdown();
        assert!(verify(&store, None).unwrap().ok);
    }
}
