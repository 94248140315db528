//! Requests as parsed from the wire, and the answers written back.
//!
//! [`Request`] is what [`parser::parse_request`](super::parser::parse_request) yields for
//! a well-formed command; [`ProtocolError`] is every answer the session owes for a
//! malformed one. The `write_*` functions append one response straight into the
//! connection's outbound [`BytesMut`], with no intermediate allocation.

use std::fmt;
use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `set <queue> <flags> <exptime> <bytes> [noreply]` + data block: enqueue.
    Set {
        /// The queue name (printable ASCII, no space, no `/`, 1..=250 bytes).
        key: String,
        /// Opaque client flags, returned on `get`.
        flags: u32,
        /// memcached expiry: 0 (or negative) none, up to 30 days relative seconds,
        /// above that a unix time. Interpreting it is the session's job.
        exptime: i64,
        /// Where the data block lies, as offsets into the buffer given to
        /// `parse_request` (always inside its `consumed` prefix). Zero-copy use:
        /// `let frame = buf.split_to(consumed).freeze(); let body = frame.slice(data);`
        data: Range<usize>,
        /// `noreply` was given: send no `STORED`.
        noreply: bool,
    },
    /// `get <key>...`: dequeue one message per key, in order.
    Get {
        /// At least one key.
        keys: Vec<GetKey>,
    },
    /// `delete <queue> [0] [noreply]`: delete the queue.
    Delete {
        /// The queue name.
        key: String,
        /// `noreply` was given.
        noreply: bool,
    },
    /// `stats` or `stats queue`.
    Stats(StatsKind),
    /// `version`.
    Version,
    /// `verbosity <level> [noreply]`.
    Verbosity {
        /// The requested level (accepted and ignored, as memcacheq does).
        level: u32,
        /// `noreply` was given: send no `OK`.
        noreply: bool,
    },
    /// `quit`: close the connection, no answer.
    Quit,
}

/// Which statistics `stats` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsKind {
    /// `stats`: general server statistics.
    General,
    /// `stats queue`: one `STAT <queue> <enqueued>/<dequeued>` line per queue.
    Queue,
    /// `stats reset`: zero the global counters, answer `RESET`.
    Reset,
}

/// One key of a `get`: a queue name and its Kestrel-style options (`q/open`, `q/t=500`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetKey {
    /// The key as the client wrote it, options included (`q/t=500/open`): the `VALUE`
    /// line of a hit names it so, as memcached echoes the key it was asked for.
    pub key: String,
    /// The queue name, without options.
    pub queue: String,
    /// The options after the name.
    pub options: GetOptions,
}

/// Options of a `get` key, already checked for consistency (see [`GetOptions::from_options`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// `/open`: a reliable read; the message stays unacked until `/close` or `/abort`.
    pub open: bool,
    /// `/close`: ack the message of the previous `/open` on this queue.
    pub close: bool,
    /// `/abort`: requeue the message of the previous `/open`.
    pub abort: bool,
    /// `/peek`: return the head without removing it.
    pub peek: bool,
    /// `/t=<ms>`: wait up to this many milliseconds for a message.
    pub timeout_ms: Option<u64>,
}

/// One option of a `get` key, as written after a `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetOption {
    /// `open`
    Open,
    /// `close`
    Close,
    /// `abort`
    Abort,
    /// `peek`
    Peek,
    /// `t=<ms>`
    Timeout(u64),
}

/// A set of `get` options that does not make sense together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid combination of get options")]
pub struct InvalidGetOptions;

impl GetOptions {
    /// Combines the options of one key, checking the rules of the grammar's `get-key`:
    /// each option at most once; `abort` alone; `peek` only with a timeout; `open` and
    /// `close` with each other and a timeout; a timeout only on a read that fetches
    /// (plain, `open`, `close/open` or `peek`).
    pub fn from_options<I>(options: I) -> Result<GetOptions, InvalidGetOptions>
    where
        I: IntoIterator<Item = GetOption>,
    {
        let mut o = GetOptions::default();
        for option in options {
            let seen = match option {
                GetOption::Open => std::mem::replace(&mut o.open, true),
                GetOption::Close => std::mem::replace(&mut o.close, true),
                GetOption::Abort => std::mem::replace(&mut o.abort, true),
                GetOption::Peek => std::mem::replace(&mut o.peek, true),
                GetOption::Timeout(ms) => o.timeout_ms.replace(ms).is_some(),
            };
            if seen {
                return Err(InvalidGetOptions);
            }
        }
        let valid = if o.abort {
            !(o.open || o.close || o.peek || o.timeout_ms.is_some())
        } else if o.peek {
            !(o.open || o.close)
        } else {
            // plain, open, close, close/open: a timeout needs something to fetch
            !(o.close && !o.open && o.timeout_ms.is_some())
        };
        if valid {
            Ok(o)
        } else {
            Err(InvalidGetOptions)
        }
    }

    /// Whether this read takes (or peeks at) a message, i.e. it is not `close` alone
    /// nor `abort`.
    pub fn fetches(&self) -> bool {
        !self.abort && (self.open || !self.close)
    }
}

/// A malformed or refused request: what to answer, as memcached/memcacheq answer it.
///
/// `Display` gives the answer line without its CRLF; [`ProtocolError::answer`] gives
/// the exact bytes. Errors are answered even when the request said `noreply`
/// (a silently dropped `set` would lose the message without notice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Unknown command, empty line, wrong number of arguments, unsupported command
    /// (`gets`, `incr`, `touch`, ...) or `stats` argument.
    #[error("ERROR")]
    Error,
    /// A known command whose arguments do not follow the grammar: bad key, a number
    /// that is not a decimal or out of range, an unknown or inconsistent get option.
    #[error("CLIENT_ERROR bad command line format")]
    BadCommandLine,
    /// `delete` with extra arguments other than `0` and `noreply` (memcached's wording).
    #[error("CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]")]
    DeleteUsage,
    /// The octets after a set's data block were not CRLF.
    #[error("CLIENT_ERROR bad data chunk")]
    BadDataChunk,
    /// A command line longer than `Limits::max_line`. memcached has no answer for this
    /// (it closes the connection); this wording is qgate's.
    #[error("CLIENT_ERROR line too long")]
    LineTooLong,
    /// A set's data block larger than `Limits::max_message` (memcacheq's wording).
    #[error("SERVER_ERROR out of memory storing object")]
    TooLarge,
}

impl ProtocolError {
    /// The exact answer bytes, CRLF included.
    pub fn answer(&self) -> &'static [u8] {
        match self {
            ProtocolError::Error => b"ERROR\r\n",
            ProtocolError::BadCommandLine => b"CLIENT_ERROR bad command line format\r\n",
            ProtocolError::DeleteUsage => {
                b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
            }
            ProtocolError::BadDataChunk => b"CLIENT_ERROR bad data chunk\r\n",
            ProtocolError::LineTooLong => b"CLIENT_ERROR line too long\r\n",
            ProtocolError::TooLarge => b"SERVER_ERROR out of memory storing object\r\n",
        }
    }

    /// Appends the answer to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.extend_from_slice(self.answer());
    }
}

const CRLF: &[u8] = b"\r\n";

/// Appends `n` in decimal, without allocating.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `VALUE <key> <flags> <bytes>\r\n<data>\r\n`: one hit of a `get`.
pub fn write_value(out: &mut BytesMut, key: &[u8], flags: u32, data: &[u8]) {
    out.reserve(key.len() + data.len() + 32);
    write_value_header(out, key, flags, data.len());
    out.put_slice(data);
    out.put_slice(CRLF);
}

/// `VALUE <key> <flags> <bytes>\r\n` only: for a session that sends the body as a
/// separate buffer (e.g. a shared `Bytes`, vectored write) followed by `\r\n`.
pub fn write_value_header(out: &mut BytesMut, key: &[u8], flags: u32, len: usize) {
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    out.put_u8(b' ');
    put_decimal(out, u64::from(flags));
    out.put_u8(b' ');
    put_decimal(out, len as u64);
    out.put_slice(CRLF);
}

/// The answers that are one fixed line: `write_<name>(out)` appends it.
macro_rules! fixed_lines {
    ($($(#[$doc:meta])* $name:ident => $line:literal;)*) => {$(
        $(#[$doc])*
        pub fn $name(out: &mut BytesMut) {
            out.extend_from_slice($line);
        }
    )*};
}

fixed_lines! {
    /// `END\r\n`: closes a `get` or `stats` answer.
    write_end => b"END\r\n";
    /// `STORED\r\n`
    write_stored => b"STORED\r\n";
    /// `NOT_STORED\r\n`
    write_not_stored => b"NOT_STORED\r\n";
    /// `DELETED\r\n`
    write_deleted => b"DELETED\r\n";
    /// `NOT_FOUND\r\n`
    write_not_found => b"NOT_FOUND\r\n";
    /// `RESET\r\n`: the answer to `stats reset`.
    write_reset => b"RESET\r\n";
    /// `OK\r\n`: the answer to `verbosity`.
    write_ok => b"OK\r\n";
    /// `ERROR\r\n`
    write_error => b"ERROR\r\n";
}

/// `STAT <name> <value>\r\n`; `value` is anything printable (`12`, `3/1`, `0.5`).
pub fn write_stat(out: &mut BytesMut, name: &str, value: impl fmt::Display) {
    use std::fmt::Write as _;
    out.put_slice(b"STAT ");
    out.put_slice(name.as_bytes());
    out.put_u8(b' ');
    // Writing into a BytesMut cannot fail.
    let _ = write!(out, "{value}");
    out.put_slice(CRLF);
}

/// `VERSION <version>\r\n`
pub fn write_version(out: &mut BytesMut, version: &str) {
    out.put_slice(b"VERSION ");
    out.put_slice(version.as_bytes());
    out.put_slice(CRLF);
}

/// `CLIENT_ERROR <message>\r\n`; `message` must not contain CR or LF.
pub fn write_client_error(out: &mut BytesMut, message: &str) {
    write_error_line(out, b"CLIENT_ERROR ", message);
}

/// `SERVER_ERROR <message>\r\n`; `message` must not contain CR or LF.
pub fn write_server_error(out: &mut BytesMut, message: &str) {
    write_error_line(out, b"SERVER_ERROR ", message);
}

fn write_error_line(out: &mut BytesMut, class: &[u8], message: &str) {
    debug_assert!(!message.contains(['\r', '\n']));
    out.put_slice(class);
    out.put_slice(message.as_bytes());
    out.put_slice(CRLF);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut out);
        out.to_vec()
    }

    #[test]
    fn encoders_write_exact_bytes() {
        assert_eq!(
            written(|o| write_value(o, b"q", 4294967295, b"a\r\nb")),
            b"VALUE q 4294967295 4\r\na\r\nb\r\n"
        );
        assert_eq!(
            written(|o| write_value_header(o, b"q", 0, 0)),
            b"VALUE q 0 0\r\n"
        );
        assert_eq!(written(write_end), b"END\r\n");
        assert_eq!(written(write_stored), b"STORED\r\n");
        assert_eq!(written(write_not_stored), b"NOT_STORED\r\n");
        assert_eq!(written(write_deleted), b"DELETED\r\n");
        assert_eq!(written(write_not_found), b"NOT_FOUND\r\n");
        assert_eq!(written(write_ok), b"OK\r\n");
        assert_eq!(written(write_error), b"ERROR\r\n");
        assert_eq!(
            written(|o| write_stat(o, "q", format_args!("{}/{}", 3, 1))),
            b"STAT q 3/1\r\n"
        );
        assert_eq!(written(|o| write_stat(o, "pid", 42)), b"STAT pid 42\r\n");
        assert_eq!(written(|o| write_version(o, "0.1.0")), b"VERSION 0.1.0\r\n");
        assert_eq!(
            written(|o| write_client_error(o, "x y")),
            b"CLIENT_ERROR x y\r\n"
        );
        assert_eq!(
            written(|o| write_server_error(o, "x")),
            b"SERVER_ERROR x\r\n"
        );
    }

    #[test]
    fn error_answers_match_display() {
        for e in [
            ProtocolError::Error,
            ProtocolError::BadCommandLine,
            ProtocolError::DeleteUsage,
            ProtocolError::BadDataChunk,
            ProtocolError::LineTooLong,
            ProtocolError::TooLarge,
        ] {
            assert_eq!(e.answer(), format!("{e}\r\n").as_bytes());
            assert_eq!(written(|o| e.write_to(o)), e.answer());
        }
    }

    #[test]
    fn get_option_combinations() {
        use GetOption::*;
        let ok = |v: &[GetOption]| GetOptions::from_options(v.iter().copied());
        assert_eq!(ok(&[]).unwrap(), GetOptions::default());
        assert!(ok(&[Open]).unwrap().open);
        assert!(ok(&[Close, Open]).unwrap().fetches());
        assert!(!ok(&[Close]).unwrap().fetches());
        assert!(ok(&[Open, Close]).is_ok());
        assert_eq!(ok(&[Timeout(5), Open]).unwrap().timeout_ms, Some(5));
        assert!(ok(&[Peek, Timeout(5)]).is_ok());
        assert!(!ok(&[Abort]).unwrap().fetches());
        assert!(ok(&[Open, Abort]).is_err());
        assert!(ok(&[Abort, Timeout(1)]).is_err());
        assert!(ok(&[Peek, Open]).is_err());
        assert!(ok(&[Peek, Close]).is_err());
        assert!(ok(&[Open, Open]).is_err());
        assert!(ok(&[Timeout(1), Timeout(2)]).is_err());
        assert!(ok(&[Close, Timeout(1)]).is_err());
    }
}
