//! The memcache request decoder the session reads with (`MemcacheCodec`, tokio-util's
//! `Decoder`), fed the stream in arbitrary chunks.
//!
//! Input: byte 0 seeds the chunk sizes, the rest is the stream. Invariants:
//! - `Ok(None)` until a request is whole; every `Some` consumes at least one byte and
//!   nothing beyond the input, and a set's data range lies inside its frame;
//! - the input buffered never exceeds max_line + max_message + 2 plus one read, however
//!   large a `<bytes>` the client announces or however long a line it sends, and
//!   nothing is kept while the codec discards;
//! - chunking does not change the answers: the same requests and errors, in the same
//!   order, as decoding the whole stream at once.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qgate::memcache::codec::{Decoded, MemcacheCodec};
use qgate::memcache::command::{ProtocolError, Request};
use qgate::memcache::parser::Limits;
use tokio_util::codec::Decoder;

const LIMITS: Limits = Limits {
    max_line: 2048,
    max_message: 4096,
};

#[derive(Debug, PartialEq)]
enum Outcome {
    Request(Request, Vec<u8>),
    Error(ProtocolError),
}

/// Decodes everything `buf` holds now, checking the per-call invariants.
fn decode_buffered(codec: &mut MemcacheCodec, buf: &mut BytesMut, out: &mut Vec<Outcome>) {
    loop {
        let before = buf.len();
        let Ok(decoded) = codec.decode(buf) else {
            panic!("the codec never fails");
        };
        let Some(decoded) = decoded else {
            if !codec.discarding().is_done() {
                assert!(buf.is_empty(), "{} bytes kept while discarding", buf.len());
            }
            return;
        };
        assert!(buf.len() < before, "no progress");
        out.push(match decoded {
            Decoded::Request { request, frame } => {
                assert!(frame.len() <= before, "frame {} of {before}", frame.len());
                let body = match &request {
                    Request::Set { data, .. } => {
                        assert!(data.start <= data.end && data.end <= frame.len());
                        frame[data.clone()].to_vec()
                    }
                    _ => Vec::new(),
                };
                Outcome::Request(request, body)
            }
            Decoded::Error(error) => Outcome::Error(error),
        });
    }
}

fn run(stream: &[u8], mut seed: u32) -> Vec<Outcome> {
    let mut codec = MemcacheCodec::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut last_read = 0;
    loop {
        decode_buffered(&mut codec, &mut buf, &mut out);
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

/// The whole stream in one read.
fn run_whole(stream: &[u8]) -> Vec<Outcome> {
    let mut codec = MemcacheCodec::new(LIMITS);
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    decode_buffered(&mut codec, &mut buf, &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let chunked = run(stream, seed as u32);
    let whole = run_whole(stream);
    assert_eq!(chunked, whole, "chunking changed the answers");
});
