//! The running log: the committer thread that chains drafts and writes each group durably.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{summary, AuditEntry, Decision, Draft, Head, GENESIS};
use crate::domain::{rfc3339, Clock};
use crate::layout;
use crate::store::{Batch, Space, Store, StoreError};

/// Most jobs folded into one group commit.
const MAX_GROUP: usize = 256;

/// The audit log could not take an entry; the request it records must fail (fail closed).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The committer stopped, the vault is shutting down, or the write failed (the reason).
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// The group's write may or may not have committed, and the store could not tell which
    /// ([`StoreError::OutcomeUnknown`]): the request is neither done nor not done.
    #[error("audit log: the outcome of the write is unknown: {0}")]
    OutcomeUnknown(String),
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
    /// Called once the batch is applied (`true`) or refused (`false`), before the reply.
    after: Option<AfterCommit>,
}

/// What the committer calls once a job's batch is applied (`true`) or refused (`false`), on its
/// own thread and before it answers the job: e.g. a writer's subject lock is let go here (so
/// the next writer reads what this one wrote, even if no one awaits the answer) and the subject
/// cache given the view the write left. It must not block.
pub type AfterCommit = Box<dyn FnOnce(bool) + Send>;

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

    /// [`PendingCommit::durable`] for a blocking thread (it panics on an async worker).
    pub fn wait(self) -> Outcome {
        self.0.blocking_recv().map_err(|_| AuditError::Unavailable("committer stopped".into()))?
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
        summary::note_start(&store, head.0.seq)?;
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
        self.enqueue(Job { drafts, batch, reply: Reply::Blocking(reply), after: None })?;
        Ok(Queued(wait))
    }

    /// Hands `drafts` and `batch` to the committer (waiting for room if the queue is full) and
    /// returns; await or wait for the result before acting on the commit. `after` is called
    /// once `batch` is written or refused, even if no one awaits the result.
    pub fn submit(&self, drafts: Vec<Draft>, batch: Batch, after: Option<AfterCommit>) -> Result<PendingCommit, AuditError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.enqueue(Job { drafts, batch, reply: Reply::Async(reply), after })?;
        Ok(PendingCommit(wait))
    }

    /// [`AuditLog::submit`] that never waits: `None` if the queue is full or the committer has
    /// stopped, and nothing was queued (`after` is dropped uncalled).
    pub fn try_submit(&self, drafts: Vec<Draft>, batch: Batch, after: Option<AfterCommit>) -> Option<PendingCommit> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let (reply, wait) = tokio::sync::oneshot::channel();
        tx.try_send(Job { drafts, batch, reply: Reply::Async(reply), after }).ok()?;
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

/// The chain's head, and the head record as stored (what the next group expects to replace).
type StoredHead = (Head, Option<Vec<u8>>);

fn load_head(store: &Store) -> Result<StoredHead, StoreError> {
    let corrupt = |what| StoreError::Corrupt { space: "audit", what };
    match store.get(Space::Keyring, layout::AUDIT_HEAD)? {
        Some(v) => Ok((serde_json::from_slice(&v).map_err(|_| corrupt("chain head"))?, Some(v))),
        None => match store.last(Space::Audit)? {
            // A log without a head record: continue from its last entry.
            Some((_, v)) => {
                let e: AuditEntry = serde_json::from_slice(&v).map_err(|_| corrupt("entry"))?;
                Ok((Head { seq: e.seq, hash: e.hash }, None))
            }
            None => Ok((Head { seq: 0, hash: GENESIS.to_string() }, None)),
        },
    }
}

fn committer(
    rx: Receiver<Job>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    faults: Arc<FaultSwitch>,
    head: StoredHead,
    healthy: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
) {
    // `None` after a failed write: the head is read again before the next group is sealed (a
    // write whose outcome was unknown may have moved it; another writer may have).
    let mut stored: Option<StoredHead> = Some(head);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (head, head_record) = match stored.take().map_or_else(|| load_head(&store), Ok) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit chain head; requests refused");
                healthy.store(false, Ordering::SeqCst);
                for job in group {
                    if let Some(after) = job.after {
                        after(false);
                    }
                    job.reply.send(Err(AuditError::Unavailable(e.to_string())));
                }
                continue;
            }
        };
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
            for mut e in job.drafts.drain(..) {
                // Sealing: the draft's place in the chain.
                e.seq = next.seq + 1;
                e.time = time.clone();
                // `next` is replaced below: its hash moves into the link.
                e.prev_hash = std::mem::take(&mut next.hash);
                e.hash = e.compute_hash();
                let decision = if e.decision == Decision::Allow { "allow" } else { "deny" };
                let purpose = match e.purpose.as_deref() {
                    None => "",
                    Some(p) if stats.purposes.contains(p) => p,
                    Some(_) => "other",
                };
                match decided.iter_mut().find(|(a, p, d, _)| *a == e.action && p == purpose && *d == decision) {
                    Some(seen) => seen.3 += 1,
                    None => decided.push((e.action.to_string(), purpose.to_owned(), decision, 1)),
                }
                tracing::debug!(seq = e.seq, caller = %e.caller, action = %e.action, subject = ?e.subject, purpose = ?e.purpose, fields = e.fields.len(), decision = ?e.decision, "audit entry");
                if let Some(s) = &e.subject {
                    batch.put(Space::AuditIndex, layout::audit_index(s, e.seq), Vec::new());
                }
                // In the entry's batch: the summary has every access that is in the log.
                if let Some((s, op)) = summary::operand(&e) {
                    batch.merge(Space::Access, summary::key(s), op);
                }
                batch.put(Space::Audit, layout::audit_entry(e.seq), e.to_json());
                next = Head { seq: e.seq, hash: e.hash };
                mine.push(next.seq);
            }
            seqs.push(mine);
        }
        // A compare-and-set: a group sealed on a head someone else moved applies nothing.
        batch.expect(Space::Keyring, layout::AUDIT_HEAD.to_vec(), head_record);
        let next_record = serde_json::to_vec(&next).expect("head serialises");
        batch.put(Space::Keyring, layout::AUDIT_HEAD.to_vec(), next_record.clone());
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
                stored = Some((next, Some(next_record)));
                healthy.store(true, Ordering::SeqCst);
                for (job, s) in group.into_iter().zip(seqs) {
                    // First: whoever the reply wakes may write the same subject next.
                    if let Some(after) = job.after {
                        after(true);
                    }
                    job.reply.send(Ok(s));
                }
            }
            Err(e) => {
                // Nothing of the group is applied (or, outcome unknown, perhaps all of it): the
                // head is read again before the next group.
                stats.failures.fetch_add(1, Ordering::Relaxed);
                decided.clear();
                healthy.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "audit write failed; requests refused");
                let unknown = matches!(e, StoreError::OutcomeUnknown(_));
                for job in group {
                    if let Some(after) = job.after {
                        // Told "not applied" only when it is known not to be.
                        after(false);
                    }
                    job.reply.send(Err(if unknown {
                        AuditError::OutcomeUnknown(e.to_string())
                    } else {
                        AuditError::Unavailable(e.to_string())
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::test_support::draft;
    use crate::audit::verify;
    use crate::domain::SystemClock;

    #[test]
    fn decisions_are_counted_per_entry_within_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), summary::merge).unwrap());
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
    fn a_failed_write_applies_nothing_and_keeps_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), summary::merge).unwrap());
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
