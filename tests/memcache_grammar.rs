//! The memcache grammar and its parser:
//! - `grammar/memcache.abnf` parses with the `abnf` crate, every rule has a parser
//!   function (table below) and positive and negative vectors in
//!   `grammar/memcache.examples`, and every vector gives the expected result;
//! - `parse_request`: exact answers and consumed/discarded byte counts for every error,
//!   every truncation, and property tests (no panic, always progress or "need more",
//!   round trips);
//! - `MemcacheCodec`, the decoder the session reads with: 1-byte and random chunking
//!   give the same requests and errors as one read, buffering stays bounded, and what
//!   an error discards is never kept.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use bytes::BytesMut;
use nom::IResult;
use proptest::prelude::*;
use qgate::memcache::codec::{Decoded, MemcacheCodec};
use qgate::memcache::command::{GetKey, GetOptions, ProtocolError, Request, StatsKind};
use qgate::memcache::parser::{self as p, parse_request, Discard, Limits, Parsed};
use tokio_util::codec::Decoder;

const ABNF: &str = include_str!("../grammar/memcache.abnf");
const EXAMPLES: &str = include_str!("../grammar/memcache.examples");
/// The length `data-block` examples are run with (documented in the examples file).
const DATA_BLOCK_EXAMPLE_LEN: usize = 5;

// ------------------------------------------------------------------ grammar coverage

/// What a rule function made of a whole example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Matched, nothing left over.
    Full,
    /// Matched a prefix only.
    Partial,
    /// Rejected (nom Error or Failure).
    Rejected,
    /// Needs more input.
    Incomplete,
}

fn outcome<T>(r: IResult<&[u8], T>) -> Outcome {
    match r {
        Ok((&[], _)) => Outcome::Full,
        Ok(_) => Outcome::Partial,
        Err(nom::Err::Incomplete(_)) => Outcome::Incomplete,
        Err(_) => Outcome::Rejected,
    }
}

type RuleFn = fn(&[u8]) -> Outcome;

/// Grammar rule name -> its parser function.
fn rule_table() -> BTreeMap<&'static str, RuleFn> {
    macro_rules! rules {
        ($($name:literal => $f:expr),* $(,)?) => {{
            let mut t: BTreeMap<&'static str, RuleFn> = BTreeMap::new();
            $(
                let f: RuleFn = |i| outcome($f(i));
                assert!(t.insert($name, f).is_none(), "duplicate {}", $name);
            )*
            t
        }};
    }
    rules! {
        "request" => p::request,
        "set-cmd" => p::set_cmd,
        "set-line" => p::set_line,
        "data-block" => |i| p::data_block(DATA_BLOCK_EXAMPLE_LEN)(i),
        "get-cmd" => p::get_cmd,
        "delete-cmd" => p::delete_cmd,
        "stats-cmd" => p::stats_cmd,
        "version-cmd" => p::version_cmd,
        "verbosity-cmd" => p::verbosity_cmd,
        "quit-cmd" => p::quit_cmd,
        "key" => p::key,
        "queue-name" => p::queue_name,
        "get-key" => p::get_key,
        "get-option" => p::get_option,
        "timeout" => p::timeout,
        "flags" => p::flags,
        "exptime" => p::exptime,
        "bytes" => p::bytes,
        "level" => p::level,
        "noreply" => p::noreply,
        "sep" => p::sep,
        "eol" => p::eol,
        "response" => p::response,
        "get-response" => p::get_response,
        "value-reply" => p::value_reply,
        "stats-response" => p::stats_response,
        "stat-reply" => p::stat_reply,
        "stat-name" => p::stat_name,
        "stat-value" => p::stat_value,
        "version-reply" => p::version_reply,
        "stored-reply" => p::stored_reply,
        "not-stored-reply" => p::not_stored_reply,
        "deleted-reply" => p::deleted_reply,
        "not-found-reply" => p::not_found_reply,
        "end-reply" => p::end_reply,
        "ok-reply" => p::ok_reply,
        "reset-reply" => p::reset_reply,
        "error-reply" => p::error_reply,
        "client-error-reply" => p::client_error_reply,
        "server-error-reply" => p::server_error_reply,
        "error-text" => p::error_text,
    }
}

fn grammar_rules() -> Vec<abnf::types::Rule> {
    abnf::rulelist(ABNF).unwrap_or_else(|e| panic!("grammar/memcache.abnf: {e}"))
}

fn referenced(node: &abnf::types::Node, out: &mut BTreeSet<String>) {
    use abnf::types::Node;
    match node {
        Node::Alternatives(v) | Node::Concatenation(v) => v.iter().for_each(|n| referenced(n, out)),
        Node::Repetition { node, .. } | Node::Group(node) | Node::Optional(node) => {
            referenced(node, out)
        }
        Node::Rulename(name) => {
            out.insert(name.clone());
        }
        Node::String(_) | Node::TerminalValues(_) | Node::Prose(_) => {}
    }
}

struct Example {
    line: usize,
    sign: char,
    rule: String,
    bytes: Vec<u8>,
}

fn unescape(s: &str, line: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b's') => out.push(b' '),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = [it.next(), it.next()];
                let hex: Vec<u8> = hex.iter().map(|h| h.expect("\\x needs 2 digits")).collect();
                let hex = std::str::from_utf8(&hex).unwrap();
                out.push(
                    u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("line {line}: bad \\x")),
                );
            }
            other => panic!("line {line}: unknown escape {other:?}"),
        }
    }
    out
}

fn examples() -> Vec<Example> {
    let mut v = Vec::new();
    for (n, l) in EXAMPLES.lines().enumerate() {
        let line = n + 1;
        if l.trim().is_empty() || l.starts_with('#') {
            continue;
        }
        let mut parts = l.splitn(3, ' ');
        let sign = parts.next().unwrap();
        let rule = parts
            .next()
            .unwrap_or_else(|| panic!("line {line}: no rule"));
        let bytes = unescape(parts.next().unwrap_or(""), line);
        let sign = match sign {
            "+" | "-" | "~" => sign.chars().next().unwrap(),
            _ => panic!("line {line}: sign must be +, - or ~"),
        };
        v.push(Example {
            line,
            sign,
            rule: rule.to_string(),
            bytes,
        });
    }
    v
}

#[test]
fn grammar_parses_and_is_closed() {
    let rules = grammar_rules();
    let defined: BTreeSet<String> = rules.iter().map(|r| r.name().to_string()).collect();
    assert_eq!(defined.len(), rules.len(), "a rule is defined twice");
    let core: BTreeSet<String> = ["SP", "CR", "LF", "CRLF", "DIGIT", "OCTET"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut used = BTreeSet::new();
    for r in &rules {
        referenced(r.node(), &mut used);
    }
    for name in &used {
        assert!(
            defined.contains(name) || core.contains(name),
            "rule {name} is used but not defined"
        );
    }
}

#[test]
fn every_rule_has_a_parser_and_examples() {
    let table = rule_table();
    let defined: BTreeSet<String> = grammar_rules()
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    let listed: BTreeSet<String> = table.keys().map(|s| s.to_string()).collect();
    assert_eq!(defined, listed, "grammar rules vs. parser table");

    let examples = examples();
    for rule in &defined {
        for sign in ['+', '-'] {
            assert!(
                examples.iter().any(|e| &e.rule == rule && e.sign == sign),
                "rule {rule} has no {sign} example"
            );
        }
    }
}

#[test]
fn examples_give_the_expected_result() {
    let table = rule_table();
    let mut failures = Vec::new();
    for e in examples() {
        let f = table
            .get(e.rule.as_str())
            .unwrap_or_else(|| panic!("line {}: unknown rule {}", e.line, e.rule));
        let got = f(&e.bytes);
        let ok = match e.sign {
            '+' => got == Outcome::Full,
            '-' => matches!(got, Outcome::Rejected | Outcome::Partial),
            _ => got == Outcome::Incomplete,
        };
        if !ok {
            failures.push(format!(
                "line {}: {} {} {:?} gave {:?}",
                e.line,
                e.sign,
                e.rule,
                String::from_utf8_lossy(&e.bytes),
                got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ------------------------------------------------------------------ parse_request

fn small() -> Limits {
    Limits {
        max_line: 32,
        max_message: 8,
    }
}

fn parse(buf: &[u8]) -> Option<(usize, Parsed)> {
    parse_request(buf, &Limits::default()).unwrap()
}

fn err(error: ProtocolError) -> Parsed {
    Parsed::Error {
        error,
        discard: Discard::Nothing,
    }
}

fn plain(queue: &str) -> GetKey {
    GetKey {
        key: queue.into(),
        queue: queue.into(),
        options: GetOptions::default(),
    }
}

fn set(key: &str, flags: u32, exptime: i64, data: Range<usize>, noreply: bool) -> Parsed {
    Parsed::Request(Request::Set {
        key: key.into(),
        flags,
        exptime,
        data,
        noreply,
    })
}

#[test]
fn well_formed_requests() {
    let cases: Vec<(&[u8], usize, Parsed)> = vec![
        (b"set q 1 2 3\r\nabc\r\n", 18, set("q", 1, 2, 13..16, false)),
        (b"set q 0 0 0\r\n\r\n", 15, set("q", 0, 0, 13..13, false)),
        (
            b"set q 4294967295 -1 2 noreply\r\nab\r\nX",
            35,
            set("q", u32::MAX, -1, 31..33, true),
        ),
        (
            b"set q 0 0 4\n\r\n\0\n\r\n",
            18,
            set("q", 0, 0, 12..16, false),
        ),
        (
            b"  set   q 0 0 1  \r\nx\r\n",
            22,
            set("q", 0, 0, 19..20, false),
        ),
        (
            b"get q\r\n",
            7,
            Parsed::Request(Request::Get {
                keys: vec![plain("q")],
            }),
        ),
        (
            b"get q\n",
            6,
            Parsed::Request(Request::Get {
                keys: vec![plain("q")],
            }),
        ),
        (
            b"get a b a\r\n",
            11,
            Parsed::Request(Request::Get {
                keys: vec![plain("a"), plain("b"), plain("a")],
            }),
        ),
        (
            b"get q/t=500/open r/close/open s/abort t/peek\r\n",
            46,
            Parsed::Request(Request::Get {
                keys: vec![
                    GetKey {
                        key: "q/t=500/open".into(),
                        queue: "q".into(),
                        options: GetOptions {
                            open: true,
                            timeout_ms: Some(500),
                            ..Default::default()
                        },
                    },
                    GetKey {
                        key: "r/close/open".into(),
                        queue: "r".into(),
                        options: GetOptions {
                            open: true,
                            close: true,
                            ..Default::default()
                        },
                    },
                    GetKey {
                        key: "s/abort".into(),
                        queue: "s".into(),
                        options: GetOptions {
                            abort: true,
                            ..Default::default()
                        },
                    },
                    GetKey {
                        key: "t/peek".into(),
                        queue: "t".into(),
                        options: GetOptions {
                            peek: true,
                            ..Default::default()
                        },
                    },
                ],
            }),
        ),
        (
            b"delete q\r\n",
            10,
            Parsed::Request(Request::Delete {
                key: "q".into(),
                noreply: false,
            }),
        ),
        (
            b"delete q 0\r\n",
            12,
            Parsed::Request(Request::Delete {
                key: "q".into(),
                noreply: false,
            }),
        ),
        (
            b"delete q noreply\r\n",
            18,
            Parsed::Request(Request::Delete {
                key: "q".into(),
                noreply: true,
            }),
        ),
        (
            b"delete q 0 noreply\r\n",
            20,
            Parsed::Request(Request::Delete {
                key: "q".into(),
                noreply: true,
            }),
        ),
        (
            b"stats\r\n",
            7,
            Parsed::Request(Request::Stats(StatsKind::General)),
        ),
        (
            b"stats queue\r\n",
            13,
            Parsed::Request(Request::Stats(StatsKind::Queue)),
        ),
        (
            b"stats reset\r\n",
            13,
            Parsed::Request(Request::Stats(StatsKind::Reset)),
        ),
        (b"version\r\n", 9, Parsed::Request(Request::Version)),
        (
            b"verbosity 1\r\n",
            13,
            Parsed::Request(Request::Verbosity {
                level: 1,
                noreply: false,
            }),
        ),
        (
            b"verbosity 0 noreply\r\n",
            21,
            Parsed::Request(Request::Verbosity {
                level: 0,
                noreply: true,
            }),
        ),
        (b"quit\r\n", 6, Parsed::Request(Request::Quit)),
    ];
    for (input, consumed, expected) in cases {
        let got = parse(input);
        assert_eq!(
            got,
            Some((consumed, expected)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn data_is_a_zero_copy_range() {
    let mut buf = BytesMut::from(&b"set q 0 0 5\r\nh\r\n\0o\r\nget q\r\n"[..]);
    let base = buf.as_ptr();
    let (consumed, parsed) = parse(&buf).unwrap();
    let Parsed::Request(Request::Set { data, .. }) = parsed else {
        panic!("{parsed:?}")
    };
    let frame = buf.split_to(consumed).freeze();
    let body = frame.slice(data);
    assert_eq!(&body[..], b"h\r\n\0o");
    assert_eq!(
        body.as_ptr(),
        base.wrapping_add(13),
        "the body is not copied"
    );
    assert_eq!(&buf[..], b"get q\r\n");
}

#[test]
fn errors_answer_exactly_and_consume_the_line() {
    use ProtocolError::*;
    let long_key = "k".repeat(251);
    let key250 = "k".repeat(250);
    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (b"foo\r\n".to_vec(), Error),
        (b"\r\n".to_vec(), Error),
        (b"\n".to_vec(), Error),
        (b"   \r\n".to_vec(), Error),
        (b"get\r\n".to_vec(), Error),
        (b"get \r\n".to_vec(), Error),
        (b"gets q\r\n".to_vec(), Error),
        (b"incr q 1\r\n".to_vec(), Error),
        (b"decr q 1\r\n".to_vec(), Error),
        (b"touch q 0\r\n".to_vec(), Error),
        (b"stats bogus\r\n".to_vec(), Error),
        (b"stats queue x\r\n".to_vec(), Error),
        (b"SET q 0 0 1\r\n".to_vec(), Error),
        (b"set q 0 0\r\n".to_vec(), Error),
        (b"set q 0 0 1 noreply x\r\n".to_vec(), Error),
        (b"delete\r\n".to_vec(), Error),
        (b"delete q 0 noreply x\r\n".to_vec(), Error),
        (b"version x\r\n".to_vec(), Error),
        (b"quit now\r\n".to_vec(), Error),
        (b"verbosity\r\n".to_vec(), Error),
        (format!("get {long_key}\r\n").into_bytes(), BadCommandLine),
        (
            format!("get a {long_key} b\r\n").into_bytes(),
            BadCommandLine,
        ),
        (
            format!("set {long_key} 0 0 1\r\n").into_bytes(),
            BadCommandLine,
        ),
        (b"set q x 0 1\r\n".to_vec(), BadCommandLine),
        (b"set q 4294967296 0 1\r\n".to_vec(), BadCommandLine),
        (b"set q -1 0 1\r\n".to_vec(), BadCommandLine),
        (b"set q 0 x 1\r\n".to_vec(), BadCommandLine),
        (b"set q 0 0 -1\r\n".to_vec(), BadCommandLine),
        (b"set q 0 0 1x\r\n".to_vec(), BadCommandLine),
        (b"set q 0 0 2147483646\r\n".to_vec(), BadCommandLine),
        (b"set q 0 0 1 norply\r\n".to_vec(), BadCommandLine),
        (b"set a/b 0 0 1\r\n".to_vec(), BadCommandLine),
        (b"set q\x01 0 0 1\r\n".to_vec(), BadCommandLine),
        (b"set q 0 0 1\r\r\n".to_vec(), BadCommandLine),
        (b"get q/open/abort\r\n".to_vec(), BadCommandLine),
        (b"get q/bogus\r\n".to_vec(), BadCommandLine),
        (b"get q/t=x\r\n".to_vec(), BadCommandLine),
        (b"get q/\r\n".to_vec(), BadCommandLine),
        (b"get a/b\r\n".to_vec(), BadCommandLine),
        (
            format!("get {}/open\r\n", &key250[..246]).into_bytes(),
            BadCommandLine,
        ),
        (b"delete a/b\r\n".to_vec(), BadCommandLine),
        (
            format!("delete {long_key}\r\n").into_bytes(),
            BadCommandLine,
        ),
        (b"delete q 5\r\n".to_vec(), DeleteUsage),
        (b"delete q noreply 0\r\n".to_vec(), DeleteUsage),
        (b"delete q 0 0\r\n".to_vec(), DeleteUsage),
        (b"verbosity x\r\n".to_vec(), BadCommandLine),
        (b"verbosity 1 x\r\n".to_vec(), BadCommandLine),
    ];
    for (input, error) in cases {
        // Each input is exactly one line.
        let consumed = input.len();
        // Followed by more input: only the line is consumed.
        let mut buf = input.clone();
        buf.extend_from_slice(b"x\r\nget q\r\n");
        let got = parse(&buf);
        assert_eq!(
            got,
            Some((consumed, err(error))),
            "{:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

#[test]
fn exact_answer_bytes() {
    let expected: [(ProtocolError, &[u8]); 6] = [
        (ProtocolError::Error, b"ERROR\r\n"),
        (
            ProtocolError::BadCommandLine,
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        (
            ProtocolError::DeleteUsage,
            b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
        ),
        (
            ProtocolError::BadDataChunk,
            b"CLIENT_ERROR bad data chunk\r\n",
        ),
        (
            ProtocolError::LineTooLong,
            b"CLIENT_ERROR line too long\r\n",
        ),
        (
            ProtocolError::TooLarge,
            b"SERVER_ERROR out of memory storing object\r\n",
        ),
    ];
    for (e, bytes) in expected {
        assert_eq!(e.answer(), bytes);
    }
}

#[test]
fn bad_set_line_leaves_the_data_line_to_be_parsed_as_a_command() {
    // As memcached: the data block of a refused set line is not skipped.
    let stream = b"set q x 0 5\r\nhello\r\n";
    let events = drive(&[stream], &Limits::default());
    assert_eq!(
        events,
        vec![
            Event::Error(ProtocolError::BadCommandLine),
            Event::Error(ProtocolError::Error),
        ]
    );
}

#[test]
fn bad_data_chunk_consumes_bytes_plus_two() {
    // Longer than declared: "abc" + "de" read as the block, "f\r\n" is the next line.
    let buf = b"set q 0 0 3\r\nabcdef\r\nget q\r\n";
    assert_eq!(parse(buf), Some((18, err(ProtocolError::BadDataChunk))));
    assert_eq!(parse(&buf[18..]), Some((3, err(ProtocolError::Error))));
    assert_eq!(
        parse(&buf[21..]),
        Some((
            7,
            Parsed::Request(Request::Get {
                keys: vec![plain("q")]
            })
        ))
    );
    // Shorter than declared: "abc\r\nge" is the block, "t q\r\n" the next line.
    let buf = b"set q 0 0 5\r\nabc\r\nget q\r\n";
    assert_eq!(parse(buf), Some((20, err(ProtocolError::BadDataChunk))));
    assert_eq!(parse(&buf[20..]), Some((5, err(ProtocolError::Error))));
    // A bare LF after the block is not enough (memcached checks for "\r\n").
    assert_eq!(
        parse(b"set q 0 0 3\r\nabc\nX"),
        Some((18, err(ProtocolError::BadDataChunk)))
    );
    // The check waits for the two bytes after the block.
    assert_eq!(parse(b"set q 0 0 3\r\nabcd"), None);
    assert_eq!(parse(b"set q 0 0 3\r\nabc\r"), None);
}

#[test]
fn too_large_is_swallowed_without_buffering() {
    let limits = small(); // max_message 8
    let line = b"set q 0 0 10\r\n";
    // Only the line has arrived: answered at once, the whole block still to discard.
    assert_eq!(
        parse_request(line, &limits).unwrap(),
        Some((
            14,
            Parsed::Error {
                error: ProtocolError::TooLarge,
                discard: Discard::Bytes(12)
            }
        ))
    );
    // Part of the block has arrived: that part is consumed, the rest discarded later.
    assert_eq!(
        parse_request(b"set q 0 0 10\r\n0123", &limits).unwrap(),
        Some((
            18,
            Parsed::Error {
                error: ProtocolError::TooLarge,
                discard: Discard::Bytes(8)
            }
        ))
    );
    // All of it has arrived: consumed, nothing left to discard.
    assert_eq!(
        parse_request(b"set q 0 0 10\r\n0123456789\r\nget q\r\n", &limits).unwrap(),
        Some((26, err(ProtocolError::TooLarge)))
    );
    // The default limit (1 MiB): a 2 MB set is refused on its line alone.
    assert_eq!(
        parse(b"set q 0 0 2000000\r\n"),
        Some((
            19,
            Parsed::Error {
                error: ProtocolError::TooLarge,
                discard: Discard::Bytes(2_000_002)
            }
        ))
    );
    // Exactly max_message is accepted.
    assert!(matches!(
        parse_request(b"set q 0 0 8\r\n01234567\r\n", &limits).unwrap(),
        Some((23, Parsed::Request(Request::Set { .. })))
    ));
    // The connection stays usable: the swallowed block, split over reads, then a get.
    let events = drive(
        &[b"set q 0 0 10\r\n01", b"23456", b"789\r", b"\nget q\r\n"],
        &limits,
    );
    assert_eq!(
        events,
        vec![
            Event::Error(ProtocolError::TooLarge),
            Event::Request(
                Request::Get {
                    keys: vec![plain("q")]
                },
                vec![]
            ),
        ]
    );
}

#[test]
fn line_too_long_is_discarded_through_its_newline() {
    let limits = small(); // max_line 32
    let line31 = format!("get {}\r\n", "q".repeat(25)); // 31 bytes with CRLF
    let line32 = format!("get {}\r\n", "q".repeat(26));
    let line33 = format!("get {}\r\n", "q".repeat(27));
    assert_eq!(line32.len(), 32);
    // A line of exactly max_line bytes is accepted.
    for l in [&line31, &line32] {
        assert!(matches!(
            parse_request(l.as_bytes(), &limits).unwrap(),
            Some((n, Parsed::Request(Request::Get { .. }))) if n == l.len()
        ));
    }
    // Fewer than max_line bytes without a newline: wait.
    assert_eq!(
        parse_request(&line33.as_bytes()[..31], &limits).unwrap(),
        None
    );
    // max_line bytes without a newline: refused at once, the rest to be discarded.
    assert_eq!(
        parse_request(&line33.as_bytes()[..32], &limits).unwrap(),
        Some((
            32,
            Parsed::Error {
                error: ProtocolError::LineTooLong,
                discard: Discard::ThroughNewline
            }
        ))
    );
    // Its newline already in the buffer: consumed through it.
    let mut buf = line33.clone().into_bytes();
    buf.extend_from_slice(b"get q\r\n");
    assert_eq!(
        parse_request(&buf, &limits).unwrap(),
        Some((33, err(ProtocolError::LineTooLong)))
    );
    // Over several reads, never buffering more than max_line bytes.
    let junk = vec![b'x'; 1000];
    let events = drive(&[&junk[..], &junk[..], b"yy\r", b"\nversion\r\n"], &limits);
    assert_eq!(
        events,
        vec![
            Event::Error(ProtocolError::LineTooLong),
            Event::Request(Request::Version, vec![]),
        ]
    );
}

#[test]
fn discard_feeds_across_reads() {
    let mut d = Discard::Bytes(5);
    assert_eq!(d.feed(b"abc"), 3);
    assert_eq!(d, Discard::Bytes(2));
    assert_eq!(d.feed(b""), 0);
    assert_eq!(d.feed(b"defg"), 2);
    assert!(d.is_done());
    assert_eq!(d.feed(b"zzz"), 0);
    let mut d = Discard::ThroughNewline;
    assert_eq!(d.feed(b"abc"), 3);
    assert!(!d.is_done());
    assert_eq!(d.feed(b"d\nget"), 2);
    assert!(d.is_done());
}

// ------------------------------------------------------------------ streaming

/// What a session would see.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A request, with the bytes of a set's data block.
    Request(Request, Vec<u8>),
    /// An answer owed for a malformed request.
    Error(ProtocolError),
}

/// Runs the session's decoder over `chunks`, checking the contract on the way:
/// progress on every `Some`, ranges inside the consumed bytes, bounded buffering, and
/// nothing kept of what is being discarded.
fn drive(chunks: &[&[u8]], limits: &Limits) -> Vec<Event> {
    let mut codec = MemcacheCodec::new(*limits);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let Some(decoded) = codec.decode(&mut buf).unwrap() else {
                if codec.discarding().is_done() {
                    assert!(
                        buf.len() < limits.max_line.max(1) + limits.max_message + 2,
                        "buffered {} bytes",
                        buf.len()
                    );
                } else {
                    assert!(buf.is_empty());
                }
                break;
            };
            assert!(buf.len() < before, "no progress");
            events.push(match decoded {
                Decoded::Request { request, frame } => {
                    assert!(frame.len() <= before);
                    let data = match &request {
                        Request::Set { data, .. } => {
                            assert!(data.end + 2 <= frame.len());
                            frame.slice(data.clone()).to_vec()
                        }
                        _ => Vec::new(),
                    };
                    Event::Request(request, data)
                }
                Decoded::Error(error) => Event::Error(error),
            });
        }
    }
    events
}

fn pipelined_stream() -> (Vec<u8>, Vec<usize>) {
    let parts: [&[u8]; 10] = [
        b"set q 7 0 6\r\na\r\n\0b\n\r\n",
        b"get q q/open r/t=10/open\r\n",
        b"set q 0 0 3 noreply\r\nabc\r\n",
        b"delete q noreply\r\n",
        b"stats queue\r\n",
        b"verbosity 1\n",
        b"version\r\n",
        b"get q/close\r\n",
        b"get q/peek/t=5\r\n",
        b"quit\r\n",
    ];
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for p in parts {
        stream.extend_from_slice(p);
        ends.push(stream.len());
    }
    (stream, ends)
}

#[test]
fn every_truncation_is_incomplete_until_a_request_is_whole() {
    let (stream, ends) = pipelined_stream();
    let limits = Limits::default();
    for cut in 0..=stream.len() {
        let buf = &stream[..cut];
        let mut at = 0;
        let mut parsed = 0;
        while let Some((consumed, p)) = parse_request(&buf[at..], &limits).unwrap() {
            assert!(matches!(p, Parsed::Request(_)), "cut {cut}: {p:?}");
            at += consumed;
            assert_eq!(at, ends[parsed], "cut {cut}");
            parsed += 1;
        }
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(parsed, whole, "cut {cut}");
    }
}

#[test]
fn one_byte_chunks_give_the_same_events() {
    let (mut stream, _) = pipelined_stream();
    // Errors too, each recoverable.
    stream.extend_from_slice(b"bogus\r\nset q 0 0 2\r\nabc\r\nset q 0 0 9\r\n123456789\r\n");
    stream.extend_from_slice(&[b'z'; 40]);
    stream.extend_from_slice(b"\r\nget q\r\n");
    let limits = small();
    let whole = drive(&[&stream], &limits);
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(drive(&bytes, &limits), whole);
    assert_eq!(whole.len(), 10 + 5 + 1);
    assert_eq!(
        whole[0],
        Event::Request(
            Request::Set {
                key: "q".into(),
                flags: 7,
                exptime: 0,
                data: 13..19,
                noreply: false
            },
            b"a\r\n\0b\n".to_vec()
        )
    );
    assert_eq!(
        &whole[10..],
        &[
            Event::Error(ProtocolError::Error),
            Event::Error(ProtocolError::BadDataChunk),
            Event::Error(ProtocolError::Error), // the "\n" left after the 2+2 bytes
            Event::Error(ProtocolError::TooLarge),
            Event::Error(ProtocolError::LineTooLong),
            Event::Request(
                Request::Get {
                    keys: vec![plain("q")]
                },
                vec![]
            ),
        ]
    );
}

// ------------------------------------------------------------------ properties

/// Encodes a request the way a client would.
fn encode(r: &Request, data: &[u8]) -> Vec<u8> {
    let nr = |b: bool| if b { " noreply" } else { "" };
    match r {
        Request::Set {
            key,
            flags,
            exptime,
            noreply,
            ..
        } => {
            let mut v = format!(
                "set {key} {flags} {exptime} {}{}\r\n",
                data.len(),
                nr(*noreply)
            )
            .into_bytes();
            v.extend_from_slice(data);
            v.extend_from_slice(b"\r\n");
            v
        }
        Request::Get { keys } => {
            let mut s = String::from("get");
            for k in keys {
                s.push(' ');
                s.push_str(&k.key);
            }
            s.push_str("\r\n");
            s.into_bytes()
        }
        Request::Delete { key, noreply } => {
            format!("delete {key}{}\r\n", nr(*noreply)).into_bytes()
        }
        Request::Stats(StatsKind::General) => b"stats\r\n".to_vec(),
        Request::Stats(StatsKind::Queue) => b"stats queue\r\n".to_vec(),
        Request::Stats(StatsKind::Reset) => b"stats reset\r\n".to_vec(),
        Request::Version => b"version\r\n".to_vec(),
        Request::Verbosity { level, noreply } => {
            format!("verbosity {level}{}\r\n", nr(*noreply)).into_bytes()
        }
        Request::Quit => b"quit\r\n".to_vec(),
    }
}

/// A get key as a client writes it: the queue name, then its options.
fn key_text(queue: &str, o: &GetOptions) -> String {
    let mut s = queue.to_owned();
    for (on, name) in [
        (o.close, "/close"),
        (o.open, "/open"),
        (o.abort, "/abort"),
        (o.peek, "/peek"),
    ] {
        if on {
            s.push_str(name);
        }
    }
    if let Some(t) = o.timeout_ms {
        s.push_str(&format!("/t={t}"));
    }
    s
}

fn queue_name() -> impl Strategy<Value = String> {
    "[!-.0-~]{1,20}"
}

fn get_options() -> impl Strategy<Value = GetOptions> {
    let t = proptest::option::of(0u64..100_000);
    prop_oneof![
        t.clone().prop_map(|timeout_ms| GetOptions {
            timeout_ms,
            ..Default::default()
        }),
        t.clone().prop_map(|timeout_ms| GetOptions {
            open: true,
            timeout_ms,
            ..Default::default()
        }),
        t.clone().prop_map(|timeout_ms| GetOptions {
            open: true,
            close: true,
            timeout_ms,
            ..Default::default()
        }),
        t.prop_map(|timeout_ms| GetOptions {
            peek: true,
            timeout_ms,
            ..Default::default()
        }),
        Just(GetOptions {
            close: true,
            ..Default::default()
        }),
        Just(GetOptions {
            abort: true,
            ..Default::default()
        }),
    ]
}

fn request_and_data() -> impl Strategy<Value = (Request, Vec<u8>)> {
    let set = (
        queue_name(),
        any::<u32>(),
        any::<i64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(|(key, flags, exptime, data, noreply)| {
            (
                Request::Set {
                    key,
                    flags,
                    exptime,
                    data: 0..0, // fixed up after parsing
                    noreply,
                },
                data,
            )
        });
    let get = proptest::collection::vec(
        (queue_name(), get_options()).prop_map(|(queue, options)| GetKey {
            key: key_text(&queue, &options),
            queue,
            options,
        }),
        1..5,
    )
    .prop_map(|keys| (Request::Get { keys }, vec![]));
    prop_oneof![
        set,
        get,
        (queue_name(), any::<bool>())
            .prop_map(|(key, noreply)| (Request::Delete { key, noreply }, vec![])),
        Just((Request::Stats(StatsKind::General), vec![])),
        Just((Request::Stats(StatsKind::Queue), vec![])),
        Just((Request::Version, vec![])),
        (any::<u32>(), any::<bool>())
            .prop_map(|(level, noreply)| (Request::Verbosity { level, noreply }, vec![])),
        Just((Request::Quit, vec![])),
    ]
}

fn without_range(r: &Request) -> Request {
    let mut r = r.clone();
    if let Request::Set { data, .. } = &mut r {
        *data = 0..0;
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_and_always_progress(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        max_line in 0usize..80,
        max_message in 0usize..40,
    ) {
        let limits = Limits { max_line, max_message };
        let mut at = 0;
        while let Some((consumed, parsed)) = parse_request(&bytes[at..], &limits).unwrap() {
            prop_assert!(consumed > 0);
            prop_assert!(at + consumed <= bytes.len());
            if let Parsed::Request(Request::Set { data, .. }) = &parsed {
                prop_assert!(data.end + 2 <= consumed);
            }
            at += consumed;
        }
        // Ok(None) leaves at most a line and a data block unparsed.
        prop_assert!(bytes.len() - at < max_line.max(1) + max_message + 2);
    }

    #[test]
    fn protocol_token_soup_chunked_like_whole(
        tokens in proptest::collection::vec(
            prop_oneof![
                Just(&b"set "[..]), Just(&b"get "[..]), Just(&b"delete "[..]), Just(&b"stats"[..]),
                Just(&b"queue"[..]), Just(&b"q"[..]), Just(&b"/open"[..]), Just(&b"/t=5"[..]),
                Just(&b" 0"[..]), Just(&b" 3"[..]), Just(&b" 99"[..]), Just(&b" noreply"[..]),
                Just(&b"\r\n"[..]), Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b" "[..]),
                Just(&b"abc"[..]), Just(&b"\0"[..]), Just(&b"version"[..]), Just(&b"quit"[..]),
            ],
            0..60,
        ),
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        let stream: Vec<u8> = tokens.concat();
        let limits = Limits { max_line: 24, max_message: 16 };
        let whole = drive(&[&stream], &limits);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([stream.len()]) {
            chunks.push(&stream[prev..c]);
            prev = c;
        }
        prop_assert_eq!(drive(&chunks, &limits), whole);
    }

    #[test]
    fn valid_requests_round_trip(reqs in proptest::collection::vec(request_and_data(), 1..6)) {
        let mut stream = Vec::new();
        for (r, data) in &reqs {
            stream.extend_from_slice(&encode(r, data));
        }
        let events = drive(&[&stream], &Limits::default());
        prop_assert_eq!(events.len(), reqs.len());
        for (event, (r, data)) in events.iter().zip(&reqs) {
            match event {
                Event::Request(got, got_data) => {
                    prop_assert_eq!(&without_range(got), r);
                    prop_assert_eq!(got_data, data);
                }
                Event::Error(e) => prop_assert!(false, "{:?} for {:?}", e, r),
            }
        }
        // And byte by byte.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(drive(&bytes, &Limits::default()), events);
    }
}

// ------------------------------------------------------------------ responses

#[test]
fn encoders_round_trip_through_the_response_rules() {
    use qgate::memcache::command::*;
    let mut out = BytesMut::new();
    write_value(&mut out, b"q", 7, b"a\r\nb");
    write_value(&mut out, b"r", 0, b"");
    write_end(&mut out);
    let (rest, values) = p::get_response(&out).unwrap();
    assert!(rest.is_empty());
    assert_eq!(
        values,
        vec![(&b"q"[..], 7, &b"a\r\nb"[..]), (&b"r"[..], 0, &b""[..])]
    );

    let mut out = BytesMut::new();
    write_stat(&mut out, "pid", 42);
    write_stat(&mut out, "q", "3/1");
    write_end(&mut out);
    let (rest, stats) = p::stats_response(&out).unwrap();
    assert!(rest.is_empty());
    assert_eq!(
        stats,
        vec![(&b"pid"[..], &b"42"[..]), (&b"q"[..], &b"3/1"[..])]
    );

    let singles: Vec<fn(&mut BytesMut)> = vec![
        write_stored,
        write_not_stored,
        write_deleted,
        write_not_found,
        write_ok,
        write_reset,
        write_error,
        write_end,
        |o| write_version(o, "0.1.0"),
        |o| write_client_error(o, "bad data chunk"),
        |o| write_server_error(o, "out of memory storing object"),
    ];
    for w in singles {
        let mut out = BytesMut::new();
        w(&mut out);
        assert_eq!(p::response(&out), Ok((&b""[..], &out[..])), "{out:?}");
    }
    for e in [
        ProtocolError::Error,
        ProtocolError::BadCommandLine,
        ProtocolError::DeleteUsage,
        ProtocolError::BadDataChunk,
        ProtocolError::LineTooLong,
        ProtocolError::TooLarge,
    ] {
        assert_eq!(p::response(e.answer()), Ok((&b""[..], e.answer())));
    }
}

proptest! {
    #[test]
    fn other_responses_prefixes_ask_for_more(
        name in "[!-~]{1,20}",
        value in "[ -~]{1,20}",
        text in "[ -~]{1,40}",
    ) {
        use qgate::memcache::command::*;
        let mut stats = BytesMut::new();
        write_stat(&mut stats, &name, &value);
        write_end(&mut stats);
        let mut client = BytesMut::new();
        write_client_error(&mut client, &text);
        let mut server = BytesMut::new();
        write_server_error(&mut server, &text);
        let mut version = BytesMut::new();
        write_version(&mut version, &name);
        for bytes in [stats, client, server, version] {
            prop_assert_eq!(p::response(&bytes), Ok((&b""[..], &bytes[..])));
            for cut in 0..bytes.len() {
                prop_assert!(
                    matches!(p::response(&bytes[..cut]), Err(nom::Err::Incomplete(_))),
                    "{:?}",
                    String::from_utf8_lossy(&bytes[..cut])
                );
            }
        }
    }

    #[test]
    fn write_value_round_trips(
        key in "[!-~]{1,250}",
        flags in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut out = BytesMut::new();
        qgate::memcache::command::write_value(&mut out, key.as_bytes(), flags, &data);
        qgate::memcache::command::write_end(&mut out);
        let (rest, values) = p::get_response(&out).unwrap();
        prop_assert!(rest.is_empty());
        prop_assert_eq!(values, vec![(key.as_bytes(), flags, &data[..])]);
        // Every strict prefix asks for more.
        for cut in 0..out.len() {
            prop_assert!(matches!(p::get_response(&out[..cut]), Err(nom::Err::Incomplete(_))), "cut {}", cut);
        }
    }
}
