//! The AMQP frame decoder fed a byte stream in arbitrary chunks, as the connection reads it.
//!
//! Input: byte 0 picks frame_max (0 = unlimited, or 4096..), byte 1 seeds the chunk
//! sizes, the rest is the stream. Invariants:
//! - `Ok(None)` consumes nothing; `Ok(Some)` consumes exactly one whole frame, never
//!   more than was buffered, and never a frame larger than frame_max;
//! - the buffer never reserves more than 1 MiB ahead of what arrived, whatever size a
//!   header announces (twice that as BytesMut grows by doubling);
//! - chunking does not change the frames decoded (same as the whole stream at once);
//! - every decoded frame re-encodes to bytes that decode to the same frame (compared
//!   on their encodings, so NaN floats in tables compare equal).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qgate::amqp::frame::{encode_frame, parse_frame, Frame};

const MAX_AHEAD: usize = 1 << 20;

fn frame_max(b: u8) -> u32 {
    match b % 4 {
        0 => 0,
        1 => 4096,
        2 => 131_072,
        _ => 4096 + b as u32 * 61,
    }
}

fn encoded(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(&mut out, f);
    out
}

/// Parses `stream` fed `chunks` at a time; returns the frames and whether it ended in error.
fn run(stream: &[u8], max: u32, mut seed: u32) -> (Vec<Frame>, bool) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            let before = buf.len();
            match parse_frame(&mut buf, max) {
                Ok(None) => {
                    assert_eq!(buf.len(), before, "need-more consumed input");
                    // BytesMut doubles when it grows: a trickled frame may leave the
                    // buffer at twice the reservation, never more.
                    assert!(
                        buf.capacity() <= 2 * (before + MAX_AHEAD) + 4096,
                        "reserved {} for {} buffered bytes",
                        buf.capacity(),
                        before
                    );
                    break;
                }
                Ok(Some(f)) => {
                    let used = before - buf.len();
                    assert!(used >= 8 && used <= before, "consumed {used} of {before}");
                    if max != 0 {
                        assert!(used <= max as usize, "frame of {used} over frame_max {max}");
                    }
                    frames.push(f);
                }
                Err(_) => return (frames, true),
            }
        }
        if fed == stream.len() {
            return (frames, false);
        }
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (seed >> 16) as usize % 300).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = frame_max(data[0]);
    let stream = &data[2..];
    let (chunked, chunked_err) = run(stream, max, data[1] as u32);
    let (whole, whole_err) = run(stream, max, u32::MAX);
    assert_eq!(chunked_err, whole_err);
    assert_eq!(chunked.len(), whole.len());
    for (a, b) in chunked.iter().zip(&whole) {
        assert_eq!(encoded(a), encoded(b));
    }
    for f in &chunked {
        let once = encoded(f);
        let mut again = once.clone();
        let g = parse_frame(&mut again, 0)
            .expect("re-encoded frame decodes")
            .expect("re-encoded frame is whole");
        assert!(again.is_empty());
        assert_eq!(encoded(&g), once, "decode-encode-decode is not stable");
    }
});
