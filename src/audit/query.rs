//! Listing entries, by subject (through the index) or in sequence order.

use super::AuditEntry;
use crate::layout;
use crate::store::{Space, Store, StoreError};

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
            let (from, to) = layout::audit_index_from(s, q.after.saturating_add(1));
            let mut seqs = Vec::new();
            store.scan(Space::AuditIndex, &from, &to, |k, _| {
                seqs.extend(layout::parse_audit_index(k));
                true
            })?;
            for chunk in seqs.chunks(256) {
                let keys: Vec<Vec<u8>> = chunk.iter().map(|s| layout::audit_entry(*s)).collect();
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
            store.scan(Space::Audit, &layout::audit_entry(q.after.saturating_add(1)), layout::AUDIT_END, |_, v| {
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
    use crate::audit::test_support::log_with;
    use crate::audit::verify;

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
}
