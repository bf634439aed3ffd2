//! Key ranges as etcdctl users express them (`--prefix`, `--from-key`, `--range-end`), turned
//! into the `(key, range_end)` pair of the wire API.
//!
//! Wire semantics (SPEC §3.1): an empty `range_end` selects the single `key`; `"\0"` selects
//! everything from `key` to the end of the table; otherwise `[key, range_end)`.
//! Armada refuses empty keys, so "the whole table" is `key = "\0", range_end = "\0"`: every
//! valid key (1..=1024 bytes) sorts at or after `"\0"`.

use prost::bytes::Bytes;

/// `range_end` meaning "to the end of the table".
pub const END_OF_TABLE: &[u8] = b"\0";

/// How the keys to read or delete are chosen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RangeSelector {
    /// The key alone.
    #[default]
    Single,
    /// Every key starting with the key.
    Prefix,
    /// Every key from the key to the end of the table.
    FromKey,
    /// `[key, end)`.
    Until(Bytes),
}

/// The smallest key greater than every key starting with `prefix`, as etcd computes it:
/// drop trailing `0xff` bytes and increment the last remaining byte. A prefix of only `0xff`
/// bytes (or an empty one) has no such key, so the range runs to the end of the table.
pub fn prefix_range_end(prefix: &[u8]) -> Bytes {
    match prefix.iter().rposition(|&byte| byte < 0xff) {
        Some(last) => {
            let mut end = prefix[..=last].to_vec();
            end[last] += 1;
            Bytes::from(end)
        }
        None => Bytes::from_static(END_OF_TABLE),
    }
}

/// The `(key, range_end)` pair to send for `key` and `selector`.
pub fn key_and_range_end(key: Bytes, selector: &RangeSelector) -> (Bytes, Bytes) {
    match selector {
        RangeSelector::Single => (key, Bytes::new()),
        RangeSelector::Prefix if key.is_empty() => (
            Bytes::from_static(END_OF_TABLE),
            Bytes::from_static(END_OF_TABLE),
        ),
        RangeSelector::Prefix => {
            let end = prefix_range_end(&key);
            (key, end)
        }
        RangeSelector::FromKey if key.is_empty() => (
            Bytes::from_static(END_OF_TABLE),
            Bytes::from_static(END_OF_TABLE),
        ),
        RangeSelector::FromKey => (key, Bytes::from_static(END_OF_TABLE)),
        RangeSelector::Until(end) => (key, end.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_increments_last_byte() {
        assert_eq!(prefix_range_end(b"abc"), &b"abd"[..]);
        assert_eq!(prefix_range_end(b"a"), &b"b"[..]);
        assert_eq!(prefix_range_end(b"a\x00"), &b"a\x01"[..]);
    }

    #[test]
    fn prefix_carries_over_trailing_ff() {
        assert_eq!(prefix_range_end(b"a\xff"), &b"b"[..]);
        assert_eq!(prefix_range_end(b"a\xfe\xff\xff"), &b"a\xff"[..]);
        assert_eq!(prefix_range_end(b"\x01\xff"), &b"\x02"[..]);
    }

    #[test]
    fn prefix_without_successor_runs_to_the_end() {
        assert_eq!(prefix_range_end(b"\xff"), END_OF_TABLE);
        assert_eq!(prefix_range_end(b"\xff\xff\xff"), END_OF_TABLE);
        assert_eq!(prefix_range_end(b""), END_OF_TABLE);
    }

    #[test]
    fn selectors() {
        let key = Bytes::from_static(b"k");
        assert_eq!(
            key_and_range_end(key.clone(), &RangeSelector::Single),
            (key.clone(), Bytes::new())
        );
        assert_eq!(
            key_and_range_end(key.clone(), &RangeSelector::Prefix),
            (key.clone(), Bytes::from_static(b"l"))
        );
        assert_eq!(
            key_and_range_end(key.clone(), &RangeSelector::FromKey),
            (key.clone(), Bytes::from_static(b"\0"))
        );
        assert_eq!(
            key_and_range_end(key.clone(), &RangeSelector::Until(Bytes::from_static(b"z"))),
            (key, Bytes::from_static(b"z"))
        );
    }

    #[test]
    fn empty_prefix_selects_the_whole_table() {
        let whole = (Bytes::from_static(b"\0"), Bytes::from_static(b"\0"));
        assert_eq!(
            key_and_range_end(Bytes::new(), &RangeSelector::Prefix),
            whole
        );
        assert_eq!(
            key_and_range_end(Bytes::new(), &RangeSelector::FromKey),
            whole
        );
    }
}
