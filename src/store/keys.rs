//! Byte-level key helpers. What keys mean is the vault's and the audit's (src/layout.rs).

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
        assert!(b"s1\0zzz".as_slice() < prefix_end(b"s1\0").as_slice());
        assert!(b"s10\0".as_slice() >= prefix_end(b"s1\0").as_slice());
    }
}
