//! etcdctl-style transaction scripts, as `armada kv txn` reads them from stdin:
//!
//! ```text
//! value("config/mode") = "blue"
//! mod("config/mode") > 5
//!
//! put config/mode green
//! get config/ --prefix
//!
//! put config/mode blue
//! ```
//!
//! Three sections separated by blank lines: compares, operations run on success, operations run
//! on failure. Each separator is one blank line, so two blank lines in a row mean an empty
//! section. Lines starting with `#` are comments.
//!
//! - Compare: `TARGET(KEY) OP OPERAND` with TARGET `value`|`val` (bytes), `mod`|`m` or
//!   `create`|`c` (revisions, an Armada extension), OP `=` (`==`), `!=`, `<`, `>`.
//! - Operations: `put KEY VALUE [--prev-kv]`,
//!   `get KEY [RANGE_END] [--prefix|--from-key] [--limit N] [--keys-only] [--count-only]`,
//!   `del KEY [RANGE_END] [--prefix|--from-key] [--prev-kv]`.
//! - Words are separated by spaces; `"..."` quotes a word with escapes (`\"`, `\\`, `\n`, `\t`,
//!   `\r`, `\0`, `\xNN`), `'...'` quotes one literally. A quoted word is never a flag.

use armada_proto::mvcc::v1::{
    Compare, RequestOp,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::{self, Request},
};
use prost::bytes::Bytes;

use crate::key_range::{RangeSelector, key_and_range_end};

/// The three parts of a transaction, ready to put into a `TxnRequest`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TxnScript {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

/// A line of the script that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("txn line {line}: {reason}")]
pub struct TxnScriptError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// Parses a whole script.
pub fn parse_txn_script(text: &str) -> Result<TxnScript, TxnScriptError> {
    let mut script = TxnScript::default();
    let mut section = 0;
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed.is_empty() {
            section += 1;
            continue;
        }
        let error = |reason: String| TxnScriptError {
            line: line_number,
            reason,
        };
        match section {
            0 => script.compare.push(parse_compare(trimmed).map_err(error)?),
            1 => script
                .success
                .push(parse_operation(trimmed).map_err(error)?),
            2 => script
                .failure
                .push(parse_operation(trimmed).map_err(error)?),
            _ => {
                return Err(error(
                    "unexpected line after the failure section (sections: compares, success, \
                     failure, separated by one blank line)"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(script)
}

/// One word of a line; `quoted` words are never flags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    bytes: Vec<u8>,
    quoted: bool,
}

impl Word {
    fn flag(&self) -> Option<&str> {
        if self.quoted {
            return None;
        }
        std::str::from_utf8(&self.bytes)
            .ok()
            .filter(|text| text.starts_with("--"))
    }
}

/// Splits `text` into words (see the module documentation for quoting).
fn split_words(text: &str) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut bytes = Vec::new();
        let quoted = first == '"' || first == '\'';
        if quoted {
            chars.next();
            read_quoted(&mut chars, first, &mut bytes)?;
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err("a closing quote must end the word".to_owned());
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                push_char(&mut bytes, c);
            }
        }
        words.push(Word { bytes, quoted });
    }
}

fn read_quoted(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
    bytes: &mut Vec<u8>,
) -> Result<(), String> {
    while let Some(c) = chars.next() {
        if c == quote {
            return Ok(());
        }
        if c != '\\' || quote == '\'' {
            push_char(bytes, c);
            continue;
        }
        match chars.next() {
            Some('n') => bytes.push(b'\n'),
            Some('t') => bytes.push(b'\t'),
            Some('r') => bytes.push(b'\r'),
            Some('0') => bytes.push(0),
            Some('x') => {
                let high = chars.next().and_then(|c| c.to_digit(16));
                let low = chars.next().and_then(|c| c.to_digit(16));
                match (high, low) {
                    (Some(high), Some(low)) => bytes.push((high * 16 + low) as u8),
                    _ => return Err("\\x must be followed by two hex digits".to_owned()),
                }
            }
            Some(other @ ('\\' | '"' | '\'')) => push_char(bytes, other),
            Some(other) => return Err(format!("unknown escape \\{other}")),
            None => break,
        }
    }
    Err(format!("missing closing {quote}"))
}

fn push_char(bytes: &mut Vec<u8>, c: char) {
    let mut buffer = [0; 4];
    bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
}

/// `TARGET(KEY) OP OPERAND`.
fn parse_compare(line: &str) -> Result<Compare, String> {
    let malformed = || format!("malformed compare {line:?} (expected e.g. value(\"key\") = \"v\")");
    let (target_name, rest) = line.split_once('(').ok_or_else(malformed)?;
    let (key_text, rest) = rest.rsplit_once(')').ok_or_else(malformed)?;
    let key = single_word(key_text).map_err(|reason| format!("compare key: {reason}"))?;
    if key.is_empty() {
        return Err("compare key is empty".to_owned());
    }
    let rest = rest.trim_start();
    let operator_length = rest
        .find(|c: char| !matches!(c, '=' | '!' | '<' | '>'))
        .unwrap_or(rest.len());
    let (operator, operand_text) = rest.split_at(operator_length);
    let result = match operator {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        "" => return Err(malformed()),
        other => {
            return Err(format!(
                "unknown compare operator {other:?} (use =, !=, <, >)"
            ));
        }
    };
    let operand =
        single_word(operand_text).map_err(|reason| format!("compare operand: {reason}"))?;
    let (target, target_union) = match target_name.trim() {
        "value" | "val" => (
            CompareTarget::Value,
            TargetUnion::Value(Bytes::from(operand)),
        ),
        "mod" | "m" => (
            CompareTarget::Mod,
            TargetUnion::ModRevision(revision(&operand)?),
        ),
        "create" | "c" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(revision(&operand)?),
        ),
        "version" | "ver" | "lease" => {
            return Err(format!(
                "compare target {:?} is not supported (use value, mod or create)",
                target_name.trim()
            ));
        }
        other => {
            return Err(format!(
                "unknown compare target {other:?} (use value, mod or create)"
            ));
        }
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: Bytes::from(key),
        target_union: Some(target_union),
        range_end: Bytes::new(),
    })
}

fn single_word(text: &str) -> Result<Vec<u8>, String> {
    let mut words = split_words(text)?;
    match words.len() {
        1 => Ok(words.remove(0).bytes),
        0 => Err("missing".to_owned()),
        _ => Err(format!(
            "expected one word, got {:?} (quote it)",
            text.trim()
        )),
    }
}

fn revision(operand: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(operand)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .filter(|revision| *revision >= 0)
        .ok_or_else(|| {
            format!(
                "revision {:?} is not a non-negative integer",
                String::from_utf8_lossy(operand)
            )
        })
}

/// Flags and positional words of an operation, validated against what the verb allows.
#[derive(Debug, Default)]
struct OperationWords {
    positional: Vec<Vec<u8>>,
    prefix: bool,
    from_key: bool,
    prev_kv: bool,
    keys_only: bool,
    count_only: bool,
    limit: i64,
}

fn collect_words(words: Vec<Word>, allowed_flags: &[&str]) -> Result<OperationWords, String> {
    let mut collected = OperationWords::default();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let Some(flag) = word.flag() else {
            collected.positional.push(word.bytes);
            continue;
        };
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        if !allowed_flags.contains(&name) {
            return Err(format!(
                "unknown flag {name} (allowed: {})",
                allowed_flags.join(" ")
            ));
        }
        match name {
            "--prefix" => collected.prefix = true,
            "--from-key" => collected.from_key = true,
            "--prev-kv" => collected.prev_kv = true,
            "--keys-only" => collected.keys_only = true,
            "--count-only" => collected.count_only = true,
            "--limit" => {
                let value = match inline_value {
                    Some(value) => value,
                    None => words
                        .next()
                        .map(|word| String::from_utf8_lossy(&word.bytes).into_owned())
                        .ok_or("--limit needs a value")?,
                };
                collected.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|limit| *limit >= 0)
                    .ok_or_else(|| format!("--limit {value:?} is not a non-negative integer"))?;
            }
            _ => unreachable!("flag {name} is allowed but not handled"),
        }
    }
    Ok(collected)
}

/// The `(key, range_end)` of a `get`/`del` from its positional words and flags.
fn key_range(words: &OperationWords, verb: &str) -> Result<(Bytes, Bytes), String> {
    let (key, explicit_end) = match words.positional.as_slice() {
        [key] => (key.clone(), None),
        [key, end] => (key.clone(), Some(end.clone())),
        _ => return Err(format!("{verb} takes KEY [RANGE_END]")),
    };
    let chosen = [words.prefix, words.from_key, explicit_end.is_some()];
    if chosen.iter().filter(|chosen| **chosen).count() > 1 {
        return Err(format!(
            "{verb}: use only one of RANGE_END, --prefix, --from-key"
        ));
    }
    let selector = if words.prefix {
        RangeSelector::Prefix
    } else if words.from_key {
        RangeSelector::FromKey
    } else if let Some(end) = explicit_end {
        RangeSelector::Until(Bytes::from(end))
    } else {
        RangeSelector::Single
    };
    if key.is_empty() && selector == RangeSelector::Single {
        return Err(format!("{verb}: the key is empty"));
    }
    Ok(key_and_range_end(Bytes::from(key), &selector))
}

/// `put ...`, `get ...` or `del ...`.
fn parse_operation(line: &str) -> Result<RequestOp, String> {
    let mut words = split_words(line)?;
    let verb = String::from_utf8_lossy(&words.remove(0).bytes).into_owned();
    let request = match verb.as_str() {
        "put" => {
            let words = collect_words(words, &["--prev-kv"])?;
            let [key, value] = <[Vec<u8>; 2]>::try_from(words.positional)
                .map_err(|_| "put takes KEY VALUE".to_owned())?;
            if key.is_empty() {
                return Err("put: the key is empty".to_owned());
            }
            Request::RequestPut(request_op::Put {
                key: Bytes::from(key),
                value: Bytes::from(value),
                prev_kv: words.prev_kv,
            })
        }
        "get" => {
            let words = collect_words(
                words,
                &[
                    "--prefix",
                    "--from-key",
                    "--limit",
                    "--keys-only",
                    "--count-only",
                ],
            )?;
            if words.keys_only && words.count_only {
                return Err("get: use only one of --keys-only and --count-only".to_owned());
            }
            let (key, range_end) = key_range(&words, "get")?;
            Request::RequestRange(request_op::Range {
                key,
                range_end,
                limit: words.limit,
                keys_only: words.keys_only,
                count_only: words.count_only,
            })
        }
        "del" | "delete" => {
            let words = collect_words(words, &["--prefix", "--from-key", "--prev-kv"])?;
            let (key, range_end) = key_range(&words, "del")?;
            Request::RequestDeleteRange(request_op::DeleteRange {
                key,
                range_end,
                prev_kv: words.prev_kv,
                count: false,
            })
        }
        other => return Err(format!("unknown operation {other:?} (use put, get or del)")),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(request_op::Put {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                prev_kv: false,
            })),
        }
    }

    fn range(op: &RequestOp) -> &request_op::Range {
        match &op.request {
            Some(Request::RequestRange(range)) => range,
            other => panic!("not a range: {other:?}"),
        }
    }

    #[test]
    fn full_script() {
        let script =
            parse_txn_script("value(\"k\") = \"v\"\nmod(\"k\") > 5\n\nput k v2\nget k\n\ndel k\n")
                .unwrap();
        assert_eq!(script.compare.len(), 2);
        assert_eq!(script.compare[0].target, CompareTarget::Value as i32);
        assert_eq!(script.compare[0].result, CompareResult::Equal as i32);
        assert_eq!(
            script.compare[0].target_union,
            Some(TargetUnion::Value(Bytes::from_static(b"v")))
        );
        assert_eq!(script.compare[1].target, CompareTarget::Mod as i32);
        assert_eq!(script.compare[1].result, CompareResult::Greater as i32);
        assert_eq!(
            script.compare[1].target_union,
            Some(TargetUnion::ModRevision(5))
        );
        assert_eq!(
            script.success,
            vec![put("k", "v2"), script.success[1].clone()]
        );
        assert_eq!(range(&script.success[1]).key, &b"k"[..]);
        assert!(range(&script.success[1]).range_end.is_empty());
        assert!(matches!(
            &script.failure[0].request,
            Some(Request::RequestDeleteRange(delete)) if delete.key == b"k"[..]
        ));
    }

    #[test]
    fn empty_sections() {
        let script = parse_txn_script("\n\nput a b\n").unwrap();
        assert!(script.compare.is_empty());
        assert!(script.success.is_empty());
        assert_eq!(script.failure, vec![put("a", "b")]);
        assert_eq!(parse_txn_script("").unwrap(), TxnScript::default());
        let only_success = parse_txn_script("\nput a b").unwrap();
        assert_eq!(only_success.success, vec![put("a", "b")]);
    }

    #[test]
    fn comments_and_trailing_blank_lines() {
        let script = parse_txn_script("# check\nvalue(k) != x\n\nput a b\n\n\n").unwrap();
        assert_eq!(script.compare[0].result, CompareResult::NotEqual as i32);
        assert_eq!(script.compare[0].key, &b"k"[..]);
    }

    #[test]
    fn quoting_and_escapes() {
        let script = parse_txn_script(
            "value(\"a b\") = \"x\\x00\\xffy\"\n\nput \"key with space\" 'raw \\n' --prev-kv\n",
        )
        .unwrap();
        assert_eq!(script.compare[0].key, &b"a b"[..]);
        assert_eq!(
            script.compare[0].target_union,
            Some(TargetUnion::Value(Bytes::from_static(b"x\x00\xffy")))
        );
        match &script.success[0].request {
            Some(Request::RequestPut(put)) => {
                assert_eq!(put.key, &b"key with space"[..]);
                assert_eq!(put.value, &b"raw \\n"[..]);
                assert!(put.prev_kv);
            }
            other => panic!("{other:?}"),
        }
        // A quoted "--prev-kv" is a value, not a flag.
        let quoted = parse_txn_script("\nput k \"--prev-kv\"").unwrap();
        assert_eq!(quoted.success, vec![put("k", "--prev-kv")]);
    }

    #[test]
    fn revision_compares() {
        let script = parse_txn_script("create(\"k\") < \"7\"\nm(k) == 0\n").unwrap();
        assert_eq!(script.compare[0].target, CompareTarget::Create as i32);
        assert_eq!(script.compare[0].result, CompareResult::Less as i32);
        assert_eq!(
            script.compare[0].target_union,
            Some(TargetUnion::CreateRevision(7))
        );
        assert_eq!(
            script.compare[1].target_union,
            Some(TargetUnion::ModRevision(0))
        );
    }

    #[test]
    fn get_with_flags() {
        let script =
            parse_txn_script("\nget a --prefix --limit 10 --keys-only\nget a z\nget a --from-key --count-only\nget \"\" --prefix --limit=3")
                .unwrap();
        let prefix = range(&script.success[0]);
        assert_eq!(
            (&prefix.key[..], &prefix.range_end[..]),
            (&b"a"[..], &b"b"[..])
        );
        assert_eq!(prefix.limit, 10);
        assert!(prefix.keys_only);
        let explicit = range(&script.success[1]);
        assert_eq!(&explicit.range_end[..], b"z");
        let from_key = range(&script.success[2]);
        assert_eq!(&from_key.range_end[..], b"\0");
        assert!(from_key.count_only);
        let everything = range(&script.success[3]);
        assert_eq!(
            (&everything.key[..], &everything.range_end[..]),
            (&b"\0"[..], &b"\0"[..])
        );
        assert_eq!(everything.limit, 3);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("value(k) ~ v", 1),
            ("bogus(k) = v", 1),
            ("version(k) = 1", 1),
            ("mod(k) > x", 1),
            ("mod(k) > -1", 1),
            ("value k = v", 1),
            ("value(k) =", 1),
            ("\nput k", 2),
            ("\nput k v extra", 2),
            ("\nput \"\" v", 2),
            ("\nfrob k", 2),
            ("\nget k --prefix --from-key", 2),
            ("\nget k --keys-only --count-only", 2),
            ("\nget k --limit", 2),
            ("\nget k --limit -1", 2),
            ("\ndel k --limit 1", 2),
            ("\nput \"k v", 2),
            ("\nput \"k\\q\" v", 2),
            ("\n\n\nput a b", 4),
        ];
        for (text, line) in cases {
            let error = parse_txn_script(text).expect_err(text);
            assert_eq!(error.line, line, "{text:?}: {error}");
        }
    }
}
