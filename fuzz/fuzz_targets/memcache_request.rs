//! The memcache request parser fed the stream in arbitrary chunks, with the session's
//! discard handling (src/memcache/session.rs reads the same way).
//!
//! Input: byte 0 seeds the chunk sizes, the rest is the stream. Invariants:
//! - `Ok(None)` until a request is whole; `Ok(Some((n, _)))` has 1 <= n <= buffered,
//!   and a set's data range lies inside those n bytes;
//! - the input buffered never exceeds max_line + max_message + 2 plus one read, however
//!   large a `<bytes>` the client announces or however long a line it sends;
//! - chunking does not change the answers: the same requests and errors, in the same
//!   order, as parsing the whole stream at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qgate::memcache::command::{ProtocolError, Request};
use qgate::memcache::parser::{parse_request, Discard, Limits, Parsed};

const LIMITS: Limits = Limits {
    max_line: 2048,
    max_message: 4096,
};

#[derive(Debug, PartialEq)]
enum Outcome {
    Request(Request, Vec<u8>),
    Error(ProtocolError),
}

fn run(stream: &[u8], mut seed: u32) -> Vec<Outcome> {
    let mut buf: Vec<u8> = Vec::new();
    let mut discard = Discard::Nothing;
    let mut out = Vec::new();
    let mut fed = 0;
    let mut last_read = 0;
    loop {
        loop {
            let d = discard.feed(&buf);
            buf.drain(..d);
            if !discard.is_done() {
                break;
            }
            let Ok(parsed) = parse_request(&buf, &LIMITS);
            let Some((n, parsed)) = parsed else {
                break;
            };
            assert!(n >= 1 && n <= buf.len(), "consumed {n} of {}", buf.len());
            match parsed {
                Parsed::Request(r) => {
                    let body = match &r {
                        Request::Set { data, .. } => {
                            assert!(data.start <= data.end && data.end <= n);
                            buf[data.clone()].to_vec()
                        }
                        _ => Vec::new(),
                    };
                    out.push(Outcome::Request(r, body));
                }
                Parsed::Error { error, discard: d } => {
                    out.push(Outcome::Error(error));
                    discard = d;
                }
            }
            buf.drain(..n);
        }
        assert!(
            buf.len() <= LIMITS.max_line + LIMITS.max_message + 2 + last_read,
            "{} bytes buffered",
            buf.len()
        );
        if fed == stream.len() {
            return out;
        }
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (seed >> 16) as usize % 64).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        last_read = n;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let chunked = run(stream, seed as u32);
    let whole = run_whole(stream);
    assert_eq!(chunked, whole, "chunking changed the answers");
});

/// The whole stream in one read.
fn run_whole(stream: &[u8]) -> Vec<Outcome> {
    let mut buf = stream.to_vec();
    let mut discard = Discard::Nothing;
    let mut out = Vec::new();
    loop {
        let d = discard.feed(&buf);
        buf.drain(..d);
        if !discard.is_done() {
            return out;
        }
        let Ok(parsed) = parse_request(&buf, &LIMITS);
        let Some((n, parsed)) = parsed else {
            return out;
        };
        match parsed {
            Parsed::Request(r) => {
                let body = match &r {
                    Request::Set { data, .. } => buf[data.clone()].to_vec(),
                    _ => Vec::new(),
                };
                out.push(Outcome::Request(r, body));
            }
            Parsed::Error { error, discard: d } => {
                out.push(Outcome::Error(error));
                discard = d;
            }
        }
        buf.drain(..n);
    }
}
