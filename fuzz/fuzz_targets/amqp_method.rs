//! Method decoding for every class and method of AMQP 0-9-1.
//!
//! Input: byte 0 picks a (class-id, method-id) among the grammar's (so each method's
//! argument decoder is reached from the first run) or, past the list, takes the ids
//! from the input itself; the rest is the argument bytes. Invariants: decoding never
//! panics; a decoded method keeps its ids; encode(decode(x)) decodes again to a method
//! whose encoding is the same bytes (stable round trip), and encodes no larger than the
//! input plus what reserved bits and table sizes can add.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qgate::amqp::methods::Method;

include!("method_ids.rs");

fn encode(m: &Method) -> BytesMut {
    let mut out = BytesMut::new();
    m.encode(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut payload = Vec::with_capacity(rest.len() + 4);
    if let Some((class, method)) = METHOD_IDS.get(pick as usize) {
        payload.extend_from_slice(&class.to_be_bytes());
        payload.extend_from_slice(&method.to_be_bytes());
    }
    payload.extend_from_slice(rest);
    let Ok(m) = Method::decode(&payload) else {
        return;
    };
    if payload.len() >= 4 {
        assert_eq!(m.class_id(), u16::from_be_bytes([payload[0], payload[1]]));
    }
    let once = encode(&m);
    let again = Method::decode(&once).expect("an encoded method decodes");
    assert_eq!(encode(&again), once, "decode-encode-decode is not stable");
});
