//! Streaming nom parser for `grammar/memcache.abnf`, with no I/O.
//!
//! Two layers:
//!
//! - **One `pub fn` per grammar rule**, named after it (`set-line` -> [`set_line`]).
//!   Rules inside a command line (`key`, `flags`, `sep`, `eol`, the `*-cmd` lines ...)
//!   run on a line that has already been found, so they are nom *complete* parsers.
//!   Rules that span lines or a data block ([`set_cmd`], [`data_block`], [`request`],
//!   the responses) are *streaming*: a prefix of a valid input gives
//!   `Err(nom::Err::Incomplete(_))`.
//! - **[`parse_request`]**, the contract the codec drives: framing, [`Limits`], and the
//!   choice of the answer memcached/memcacheq give to each malformed input. Every
//!   outcome is a value ([`Parsed`]); it never fails and never panics.
//!
//! [`MemcacheCodec`](super::codec::MemcacheCodec) runs it over a byte stream: it drops
//! what an error's [`Discard`] asks to drop, as it arrives, then calls
//! [`parse_request`] on what is left and splits off the consumed bytes.

use std::convert::Infallible;

use nom::branch::alt;
use nom::bytes::complete::{tag as ctag, take_while, take_while1};
use nom::bytes::streaming::{tag, take};
use nom::character::complete::digit1;
use nom::combinator::{all_consuming, map, opt, recognize, value, verify};
use nom::error::{Error, ErrorKind};
use nom::multi::{many0, many1};
use nom::sequence::{pair, preceded, terminated, tuple};
use nom::{FindSubstring, IResult, Needed};

use super::command::{GetKey, GetOption, GetOptions, ProtocolError, Request, StatsKind};

/// What the rule functions return.
pub type Res<'a, T> = IResult<&'a [u8], T>;

/// Longest key (memcached's `KEY_MAX_LENGTH`).
pub const MAX_KEY: usize = 250;
/// Largest `<bytes>` a set may declare at all (memcached: `INT_MAX - 2`); above it the
/// line is a bad command line, below it and above [`Limits::max_message`] the block is
/// swallowed with `SERVER_ERROR out of memory storing object`.
pub const MAX_BYTES: usize = i32::MAX as usize - 2;
/// Default [`Limits::max_line`] (memcached's 2048).
pub const DEFAULT_MAX_LINE: usize = 2048;
/// Default [`Limits::max_message`]: 1 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1024 * 1024;

/// Bounds on what [`parse_request`] buffers.
///
/// The codec never needs more than `max_line + max_message + 2` bytes of input
/// buffered: longer lines and larger data blocks are refused and discarded as they
/// arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted command line, CRLF included. This bounds `get` too (a multi-key
    /// get must fit).
    pub max_line: usize,
    /// Largest accepted data block of a `set`, in bytes (`--memcache-max-message`).
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: DEFAULT_MAX_LINE,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

/// The outcome of [`parse_request`] for the `consumed` bytes at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A well-formed request.
    Request(Request),
    /// A malformed or refused request: write `error.answer()`, then drop further input
    /// as `discard` says (usually [`Discard::Nothing`]).
    Error {
        /// What to answer.
        error: ProtocolError,
        /// Input still to drop after the consumed bytes, as it arrives.
        discard: Discard,
    },
}

impl Parsed {
    fn error(error: ProtocolError) -> Parsed {
        Parsed::Error {
            error,
            discard: Discard::Nothing,
        }
    }
}

/// Input to drop after an error, possibly spanning several reads, so that a refused
/// line or data block is never buffered whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Nothing more.
    Nothing,
    /// The next `n` bytes (the rest of an over-size data block and its CRLF).
    Bytes(usize),
    /// Everything up to and including the next `\n` (the rest of an overlong line).
    ThroughNewline,
}

impl Discard {
    /// Whether there is nothing left to drop.
    pub fn is_done(&self) -> bool {
        matches!(self, Discard::Nothing)
    }

    /// How many bytes at the front of `buf` to drop now; updates what is left.
    pub fn feed(&mut self, buf: &[u8]) -> usize {
        match *self {
            Discard::Nothing => 0,
            Discard::Bytes(n) => {
                let now = n.min(buf.len());
                *self = if now == n {
                    Discard::Nothing
                } else {
                    Discard::Bytes(n - now)
                };
                now
            }
            Discard::ThroughNewline => match buf.find_substring(&b"\n"[..]) {
                Some(nl) => {
                    *self = Discard::Nothing;
                    nl + 1
                }
                None => buf.len(),
            },
        }
    }
}

/// Parses at most one request from the front of `buf`.
///
/// - `Ok(None)`: incomplete; nothing is consumed and nothing allocated. Read more
///   and call again with the grown buffer.
/// - `Ok(Some((consumed, parsed)))`: the first `consumed` bytes (always at least 1)
///   form this request or error; the caller advances past them. For a `set`,
///   `Request::Set::data` gives the body's offsets within those bytes.
/// - `Err` cannot happen: every malformed input is a [`Parsed::Error`] value.
///
/// What is consumed for each error (memcached's choices unless said otherwise):
/// - a bad command line (`ERROR`, `CLIENT_ERROR bad command line format`): the line
///   only. For a bad `set` line the data block is *not* skipped: its length is not
///   trusted, so the next line is parsed as a command (usually answered `ERROR`).
/// - a data block not followed by CRLF (`CLIENT_ERROR bad data chunk`): the line plus
///   `<bytes> + 2` bytes, as memcached and memcacheq 0.2.1 read them; what follows is parsed as the next
///   command line (so `set q 0 0 3\r\nabcdef\r\n` is answered `CLIENT_ERROR bad data
///   chunk` then `ERROR` for `f\r\n`). Nothing is stored.
/// - a data block over `max_message` (`SERVER_ERROR out of memory storing object`): the
///   line plus whatever of the `<bytes> + 2` bytes is already in `buf`; the rest is a
///   [`Discard::Bytes`]. Decided on the line alone, before any of the block is buffered.
/// - a line with no `\n` in its first `max_line` bytes (`CLIENT_ERROR line too long`):
///   through its `\n` if `buf` holds it, else all of `buf` and a
///   [`Discard::ThroughNewline`]. Not memcached's choice: memcached 1.6 closes the
///   connection on such a line (and lets a long `get` grow its buffer); qgate keeps the
///   connection usable and bounds every line, `get` included.
///
/// Errors are answered even when the line said `noreply`.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(usize, Parsed)>, Infallible> {
    if buf.is_empty() {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(limits.max_line)];
    let Some(nl) = window.find_substring(&b"\n"[..]) else {
        if buf.len() < limits.max_line {
            return Ok(None);
        }
        let too_long = ProtocolError::LineTooLong;
        return Ok(Some(match buf.find_substring(&b"\n"[..]) {
            Some(nl) => (nl + 1, Parsed::error(too_long)),
            None => (
                buf.len(),
                Parsed::Error {
                    error: too_long,
                    discard: Discard::ThroughNewline,
                },
            ),
        }));
    };
    let line_len = nl + 1;
    let line = &buf[..line_len];
    let tokens = Tokens::of(line);
    let body = &line[tokens.leading..];
    let n = tokens.count;
    let word = |i: usize| tokens.get(i);

    // Two steps, as memcached: the command word and the number of words pick the
    // command (anything else is `ERROR`); then the command's grammar rule checks the
    // arguments (a failure is a `CLIENT_ERROR`).
    let parsed = match word(0) {
        b"set" if (5..=6).contains(&n) => return Ok(set_request(buf, line_len, body, limits)),
        b"get" if n >= 2 => match all_consuming(get_cmd)(body) {
            Ok((_, keys)) => Parsed::Request(Request::Get { keys }),
            Err(_) => Parsed::error(ProtocolError::BadCommandLine),
        },
        b"delete" if (2..=4).contains(&n) => delete_request(&tokens, body),
        b"stats" if n == 1 || (n == 2 && matches!(word(1), b"queue" | b"reset")) => {
            match all_consuming(stats_cmd)(body) {
                Ok((_, kind)) => Parsed::Request(Request::Stats(kind)),
                Err(_) => Parsed::error(ProtocolError::Error),
            }
        }
        b"version" if n == 1 => match all_consuming(version_cmd)(body) {
            Ok(_) => Parsed::Request(Request::Version),
            Err(_) => Parsed::error(ProtocolError::Error),
        },
        b"quit" if n == 1 => match all_consuming(quit_cmd)(body) {
            Ok(_) => Parsed::Request(Request::Quit),
            Err(_) => Parsed::error(ProtocolError::Error),
        },
        b"verbosity" if (2..=3).contains(&n) => match all_consuming(verbosity_cmd)(body) {
            Ok((_, (level, noreply))) => Parsed::Request(Request::Verbosity { level, noreply }),
            Err(_) => Parsed::error(ProtocolError::BadCommandLine),
        },
        // Unknown or unserved commands (gets, incr, decr, touch, ...), an empty line,
        // and served commands with a wrong number of arguments.
        _ => Parsed::error(ProtocolError::Error),
    };
    done(line_len, parsed)
}

/// A `set` line with 4 or 5 arguments, and its data block.
/// `None`: the data block has not all arrived yet.
fn set_request(
    buf: &[u8],
    line_len: usize,
    body: &[u8],
    limits: &Limits,
) -> Option<(usize, Parsed)> {
    let Ok((_, set)) = all_consuming(set_line)(body) else {
        return Some((line_len, Parsed::error(ProtocolError::BadCommandLine)));
    };
    let block = set.bytes + 2;
    if set.bytes > limits.max_message {
        // Refuse on the line alone; drop what of the block is here, the rest later.
        let now = block.min(buf.len() - line_len);
        let discard = if now == block {
            Discard::Nothing
        } else {
            Discard::Bytes(block - now)
        };
        let error = ProtocolError::TooLarge;
        return Some((line_len + now, Parsed::Error { error, discard }));
    }
    let end = line_len + block;
    if buf.len() < end {
        return None;
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Some((end, Parsed::error(ProtocolError::BadDataChunk)));
    }
    let request = Request::Set {
        key: ascii_string(set.key),
        flags: set.flags,
        exptime: set.exptime,
        data: line_len..line_len + set.bytes,
        noreply: set.noreply,
    };
    Some((end, Parsed::Request(request)))
}

/// A `delete` line with 1 to 3 arguments. The extra arguments are checked first, as
/// memcached does, for its distinct usage answer.
fn delete_request(tokens: &Tokens<'_>, body: &[u8]) -> Parsed {
    let n = tokens.count;
    let hold_zero = n >= 3 && tokens.get(2) == b"0";
    let noreply = n >= 3 && tokens.get(n - 1) == b"noreply";
    let args_ok = match n {
        2 => true,
        3 => hold_zero || noreply,
        _ => hold_zero && noreply,
    };
    if !args_ok {
        return Parsed::error(ProtocolError::DeleteUsage);
    }
    match all_consuming(delete_cmd)(body) {
        Ok((_, (key, noreply))) => Parsed::Request(Request::Delete {
            key: ascii_string(key),
            noreply,
        }),
        Err(_) => Parsed::error(ProtocolError::BadCommandLine),
    }
}

fn done(consumed: usize, parsed: Parsed) -> Result<Option<(usize, Parsed)>, Infallible> {
    debug_assert!(consumed > 0);
    Ok(Some((consumed, parsed)))
}

/// The space-separated words of a command line, as memcached's tokenizer sees them
/// (only `' '` separates; the line end, `\n` and one `\r` before it, is not part of the
/// last word). Keeps the first few words; counts them all.
struct Tokens<'a> {
    first: [&'a [u8]; 4],
    last: &'a [u8],
    count: usize,
    leading: usize,
}

impl<'a> Tokens<'a> {
    fn of(line: &'a [u8]) -> Tokens<'a> {
        let mut content = &line[..line.len() - 1];
        if let [rest @ .., b'\r'] = content {
            content = rest;
        }
        let leading = content.iter().take_while(|&&b| b == b' ').count();
        let mut t = Tokens {
            first: [&[]; 4],
            last: &[],
            count: 0,
            leading,
        };
        for w in content.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
            if t.count < t.first.len() {
                t.first[t.count] = w;
            }
            t.last = w;
            t.count += 1;
        }
        t
    }

    fn get(&self, i: usize) -> &'a [u8] {
        if i + 1 == self.count {
            self.last
        } else {
            self.first.get(i).copied().unwrap_or(&[])
        }
    }
}

/// Keys are checked to be printable ASCII, so this never replaces anything.
fn ascii_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn fail<T>(input: &[u8], kind: ErrorKind) -> Res<'_, T> {
    Err(nom::Err::Error(Error::new(input, kind)))
}

/// A whole line, through its `\n` (streaming: `Incomplete` until the `\n` is there).
fn line(input: &[u8]) -> Res<'_, &[u8]> {
    match input.find_substring(&b"\n"[..]) {
        Some(nl) => Ok((&input[nl + 1..], &input[..=nl])),
        None => Err(nom::Err::Incomplete(Needed::Unknown)),
    }
}

fn decimal_u64(input: &[u8]) -> Res<'_, u64> {
    let (rest, digits) = digit1(input)?;
    let mut n: u64 = 0;
    for &d in digits {
        match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
        {
            Some(v) => n = v,
            None => return fail(input, ErrorKind::TooLarge),
        }
    }
    Ok((rest, n))
}

fn decimal_u32(input: &[u8]) -> Res<'_, u32> {
    let (rest, n) = decimal_u64(input)?;
    match u32::try_from(n) {
        Ok(n) => Ok((rest, n)),
        Err(_) => fail(input, ErrorKind::TooLarge),
    }
}

fn is_key_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

fn is_name_char(b: u8) -> bool {
    is_key_char(b) && b != b'/'
}

// ------------------------------------------------------------------ requests

/// `request = *SP ( set-cmd / get-cmd / delete-cmd / stats-cmd / version-cmd /
/// verbosity-cmd / quit-cmd )`, streaming, with no limits applied (that is
/// [`parse_request`]'s job). A set's `data` range is relative to `input`.
pub fn request(input: &[u8]) -> Res<'_, Request> {
    let start = input.as_ptr() as usize;
    let (body, _) = take_while(|b| b == b' ')(input)?;
    // Streaming: the line rules below are complete parsers, so wait for the whole line.
    line(body)?;
    alt((
        map(set_cmd, move |(set, data)| {
            let at = data.as_ptr() as usize - start;
            Request::Set {
                key: ascii_string(set.key),
                flags: set.flags,
                exptime: set.exptime,
                data: at..at + data.len(),
                noreply: set.noreply,
            }
        }),
        map(get_cmd, |keys| Request::Get { keys }),
        map(delete_cmd, |(key, noreply)| Request::Delete {
            key: ascii_string(key),
            noreply,
        }),
        map(stats_cmd, Request::Stats),
        value(Request::Version, version_cmd),
        map(verbosity_cmd, |(level, noreply)| Request::Verbosity {
            level,
            noreply,
        }),
        value(Request::Quit, quit_cmd),
    ))(body)
}

/// A parsed `set-line`, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetLine<'a> {
    /// The queue name.
    pub key: &'a [u8],
    /// Client flags.
    pub flags: u32,
    /// Expiry, as sent.
    pub exptime: i64,
    /// Declared data block length.
    pub bytes: usize,
    /// `noreply` was given.
    pub noreply: bool,
}

/// `set-cmd = set-line data-block` (streaming). Returns the line and the data.
pub fn set_cmd(input: &[u8]) -> Res<'_, (SetLine<'_>, &[u8])> {
    let (rest, l) = line(input)?;
    let (_, set) = all_consuming(set_line)(l)?;
    let (rest, data) = data_block(set.bytes)(rest)?;
    Ok((rest, (set, data)))
}

/// `set-line = "set" sep queue-name sep flags sep exptime sep bytes [sep noreply] eol`
pub fn set_line(input: &[u8]) -> Res<'_, SetLine<'_>> {
    map(
        tuple((
            ctag("set"),
            preceded(sep, queue_name),
            preceded(sep, flags),
            preceded(sep, exptime),
            preceded(sep, bytes),
            opt(preceded(sep, noreply)),
            eol,
        )),
        |(_, key, flags, exptime, bytes, noreply, _)| SetLine {
            key,
            flags,
            exptime,
            bytes,
            noreply: noreply.is_some(),
        },
    )(input)
}

/// `data-block = *OCTET CRLF` with exactly `len` octets before the CRLF (streaming).
pub fn data_block(len: usize) -> impl Fn(&[u8]) -> Res<'_, &[u8]> {
    move |input| terminated(take(len), tag("\r\n"))(input)
}

/// `get-cmd = "get" 1*(sep get-key) eol`
pub fn get_cmd(input: &[u8]) -> Res<'_, Vec<GetKey>> {
    preceded(ctag("get"), terminated(many1(preceded(sep, get_key)), eol))(input)
}

/// `delete-cmd = "delete" sep queue-name [sep "0"] [sep noreply] eol`; returns the
/// name and whether `noreply` was given.
pub fn delete_cmd(input: &[u8]) -> Res<'_, (&[u8], bool)> {
    map(
        tuple((
            ctag("delete"),
            preceded(sep, queue_name),
            opt(preceded(sep, ctag("0"))),
            opt(preceded(sep, noreply)),
            eol,
        )),
        |(_, key, _, noreply, _)| (key, noreply.is_some()),
    )(input)
}

/// `stats-cmd = "stats" [sep ( "queue" / "reset" )] eol`
pub fn stats_cmd(input: &[u8]) -> Res<'_, StatsKind> {
    map(
        tuple((
            ctag("stats"),
            opt(preceded(
                sep,
                alt((
                    value(StatsKind::Queue, ctag("queue")),
                    value(StatsKind::Reset, ctag("reset")),
                )),
            )),
            eol,
        )),
        |(_, kind, _)| kind.unwrap_or(StatsKind::General),
    )(input)
}

/// `version-cmd = "version" eol`
pub fn version_cmd(input: &[u8]) -> Res<'_, ()> {
    value((), pair(ctag("version"), eol))(input)
}

/// `verbosity-cmd = "verbosity" sep level [sep noreply] eol`; returns the level and
/// whether `noreply` was given.
pub fn verbosity_cmd(input: &[u8]) -> Res<'_, (u32, bool)> {
    map(
        tuple((
            ctag("verbosity"),
            preceded(sep, level),
            opt(preceded(sep, noreply)),
            eol,
        )),
        |(_, level, noreply, _)| (level, noreply.is_some()),
    )(input)
}

/// `quit-cmd = "quit" eol`
pub fn quit_cmd(input: &[u8]) -> Res<'_, ()> {
    value((), pair(ctag("quit"), eol))(input)
}

// ------------------------------------------------------------------ keys

/// `key = 1*250( %x21-7E )`
pub fn key(input: &[u8]) -> Res<'_, &[u8]> {
    verify(take_while1(is_key_char), |k: &[u8]| k.len() <= MAX_KEY)(input)
}

/// `queue-name = 1*250( %x21-2E / %x30-7E )`: a key without `/`.
pub fn queue_name(input: &[u8]) -> Res<'_, &[u8]> {
    verify(take_while1(is_name_char), |k: &[u8]| k.len() <= MAX_KEY)(input)
}

/// `get-key = queue-name *( "/" get-option )`, at most 250 bytes, with the option
/// rules of [`GetOptions::from_options`]. An inconsistent option set is a
/// `nom::Err::Failure` (no other reading of the key exists).
pub fn get_key(input: &[u8]) -> Res<'_, GetKey> {
    let (rest, (queue, options)) = pair(queue_name, many0(preceded(ctag("/"), get_option)))(input)?;
    let key = &input[..input.len() - rest.len()];
    if key.len() > MAX_KEY {
        return fail(input, ErrorKind::TooLarge);
    }
    match GetOptions::from_options(options) {
        Ok(options) => Ok((
            rest,
            GetKey {
                key: ascii_string(key),
                queue: ascii_string(queue),
                options,
            },
        )),
        Err(_) => Err(nom::Err::Failure(Error::new(input, ErrorKind::Verify))),
    }
}

/// `get-option = "open" / "close" / "abort" / "peek" / timeout`
pub fn get_option(input: &[u8]) -> Res<'_, GetOption> {
    alt((
        value(GetOption::Open, ctag("open")),
        value(GetOption::Close, ctag("close")),
        value(GetOption::Abort, ctag("abort")),
        value(GetOption::Peek, ctag("peek")),
        map(timeout, GetOption::Timeout),
    ))(input)
}

/// `timeout = "t=" 1*DIGIT`: milliseconds, fitting in 64 bits.
pub fn timeout(input: &[u8]) -> Res<'_, u64> {
    preceded(ctag("t="), decimal_u64)(input)
}

// ------------------------------------------------------------------ numbers

/// `flags = 1*DIGIT`, 0 ..= 2^32-1.
pub fn flags(input: &[u8]) -> Res<'_, u32> {
    decimal_u32(input)
}

/// `exptime = [ "-" ] 1*DIGIT`, a signed 64-bit value.
pub fn exptime(input: &[u8]) -> Res<'_, i64> {
    let (rest, (minus, magnitude)) = pair(opt(ctag("-")), decimal_u64)(input)?;
    let v = if minus.is_some() {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    };
    match v {
        Some(v) => Ok((rest, v)),
        None => fail(input, ErrorKind::TooLarge),
    }
}

/// `bytes = 1*DIGIT`, 0 ..= [`MAX_BYTES`].
pub fn bytes(input: &[u8]) -> Res<'_, usize> {
    let (rest, n) = decimal_u64(input)?;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_BYTES => Ok((rest, n)),
        _ => fail(input, ErrorKind::TooLarge),
    }
}

/// `level = 1*DIGIT`, 0 ..= 2^32-1.
pub fn level(input: &[u8]) -> Res<'_, u32> {
    decimal_u32(input)
}

/// `noreply = "noreply"`
pub fn noreply(input: &[u8]) -> Res<'_, ()> {
    value((), ctag("noreply"))(input)
}

// ------------------------------------------------------------------ separators

/// `sep = 1*SP`
pub fn sep(input: &[u8]) -> Res<'_, ()> {
    value((), take_while1(|b| b == b' '))(input)
}

/// `eol = *SP [CR] LF`
pub fn eol(input: &[u8]) -> Res<'_, ()> {
    value(
        (),
        tuple((take_while(|b| b == b' '), opt(ctag("\r")), ctag("\n"))),
    )(input)
}

// ------------------------------------------------------------------ responses
// Streaming: a client reading a reply stream gets `Incomplete` for a prefix. The token
// rules inside them are complete parsers; the streaming literal that must follow each
// token (SP, CRLF) is what asks for more input.

/// A token rule in a streaming context: at the end of the input the token may still
/// arrive, so that is `Incomplete`, not an error.
fn more<'a, T>(rule: impl Fn(&'a [u8]) -> Res<'a, T>) -> impl Fn(&'a [u8]) -> Res<'a, T> {
    move |input: &'a [u8]| {
        if input.is_empty() {
            Err(nom::Err::Incomplete(Needed::new(1)))
        } else {
            rule(input)
        }
    }
}

fn crlf(input: &[u8]) -> Res<'_, &[u8]> {
    tag("\r\n")(input)
}

/// `response = get-response / stats-response / stored-reply / ... / server-error-reply`;
/// returns the whole response's bytes.
pub fn response(input: &[u8]) -> Res<'_, &[u8]> {
    alt((
        recognize(get_response),
        recognize(stats_response),
        recognize(stored_reply),
        recognize(not_stored_reply),
        recognize(deleted_reply),
        recognize(not_found_reply),
        recognize(version_reply),
        recognize(ok_reply),
        recognize(reset_reply),
        recognize(error_reply),
        recognize(client_error_reply),
        recognize(server_error_reply),
    ))(input)
}

/// One `VALUE` of a get response: key, flags, data.
pub type Value<'a> = (&'a [u8], u32, &'a [u8]);

/// `get-response = *value-reply end-reply`
pub fn get_response(input: &[u8]) -> Res<'_, Vec<Value<'_>>> {
    terminated(many0(value_reply), end_reply)(input)
}

/// `value-reply = "VALUE" SP key SP flags SP bytes CRLF data-block`
pub fn value_reply(input: &[u8]) -> Res<'_, Value<'_>> {
    let (i, (_, key, _, flags, _, len, _)) = tuple((
        tag("VALUE "),
        more(key),
        tag(" "),
        more(flags),
        tag(" "),
        more(bytes),
        crlf,
    ))(input)?;
    let (i, data) = data_block(len)(i)?;
    Ok((i, (key, flags, data)))
}

/// `stats-response = *stat-reply end-reply`
pub fn stats_response(input: &[u8]) -> Res<'_, Vec<(&[u8], &[u8])>> {
    terminated(many0(stat_reply), end_reply)(input)
}

/// `stat-reply = "STAT" SP stat-name SP stat-value CRLF`
pub fn stat_reply(input: &[u8]) -> Res<'_, (&[u8], &[u8])> {
    map(
        tuple((
            tag("STAT "),
            more(stat_name),
            tag(" "),
            more(stat_value),
            crlf,
        )),
        |(_, name, _, value, _)| (name, value),
    )(input)
}

/// `stat-name = 1*( %x21-7E )`
pub fn stat_name(input: &[u8]) -> Res<'_, &[u8]> {
    take_while1(is_key_char)(input)
}

/// `stat-value = 1*( %x20-7E )`
pub fn stat_value(input: &[u8]) -> Res<'_, &[u8]> {
    take_while1(|b| (0x20..=0x7e).contains(&b))(input)
}

/// `version-reply = "VERSION" SP 1*( %x21-7E ) CRLF`
pub fn version_reply(input: &[u8]) -> Res<'_, &[u8]> {
    preceded(
        tag("VERSION "),
        terminated(more(take_while1(is_key_char)), crlf),
    )(input)
}

/// The reply rules that are one fixed line: `name(input)` matches it.
macro_rules! fixed_line_rules {
    ($($(#[$doc:meta])* $name:ident => $line:literal;)*) => {$(
        $(#[$doc])*
        pub fn $name(input: &[u8]) -> Res<'_, ()> {
            value((), tag($line))(input)
        }
    )*};
}

fixed_line_rules! {
    /// `stored-reply = "STORED" CRLF`
    stored_reply => "STORED\r\n";
    /// `not-stored-reply = "NOT_STORED" CRLF`
    not_stored_reply => "NOT_STORED\r\n";
    /// `deleted-reply = "DELETED" CRLF`
    deleted_reply => "DELETED\r\n";
    /// `not-found-reply = "NOT_FOUND" CRLF`
    not_found_reply => "NOT_FOUND\r\n";
    /// `end-reply = "END" CRLF`
    end_reply => "END\r\n";
    /// `ok-reply = "OK" CRLF`
    ok_reply => "OK\r\n";
    /// `reset-reply = "RESET" CRLF`
    reset_reply => "RESET\r\n";
    /// `error-reply = "ERROR" CRLF`
    error_reply => "ERROR\r\n";
}

/// `client-error-reply = "CLIENT_ERROR" SP error-text CRLF`; returns the text.
pub fn client_error_reply(input: &[u8]) -> Res<'_, &[u8]> {
    error_text_reply("CLIENT_ERROR ", input)
}

/// `server-error-reply = "SERVER_ERROR" SP error-text CRLF`; returns the text.
pub fn server_error_reply(input: &[u8]) -> Res<'_, &[u8]> {
    error_text_reply("SERVER_ERROR ", input)
}

fn error_text_reply<'a>(class: &'static str, input: &'a [u8]) -> Res<'a, &'a [u8]> {
    preceded(tag(class), terminated(more(error_text), crlf))(input)
}

/// `error-text = 1*( %x20-7E )`
pub fn error_text(input: &[u8]) -> Res<'_, &[u8]> {
    take_while1(|b| (0x20..=0x7e).contains(&b))(input)
}
