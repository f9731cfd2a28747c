//! Key layouts shared by the spaces keyed by subject.

/// `subject\0`: every key of one subject in a subject-keyed space starts with this.
pub fn subject_prefix(subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 1);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k
}

/// `subject\0rest`.
pub fn subject_key(subject: &str, rest: &str) -> Vec<u8> {
    let mut k = subject_prefix(subject);
    k.extend_from_slice(rest.as_bytes());
    k
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // An all-0xff prefix has no upper bound short of infinity; this is past any key we write.
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_tight() {
        assert_eq!(prefix_end(b"s1\0"), b"s1\x01");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert!(subject_key("s1", "zzz") < prefix_end(&subject_prefix("s1")));
        assert!(subject_prefix("s10") >= prefix_end(&subject_prefix("s1")));
    }
}
