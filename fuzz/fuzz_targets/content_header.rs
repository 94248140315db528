//! Content header properties (flags + property list) with nested field tables and
//! arrays, and bare field tables (as in queue arguments and headers).
//!
//! Invariants: decoding never panics or overflows the stack however deep the nesting
//! (refused past MAX_DEPTH); a table never claims more bytes than it was given; decode-
//! encode-decode is stable (compared on encodings, so NaN floats compare equal); a
//! table's (and the properties') `encoded_len` is what `encode` writes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qgate::content::{FieldTable, Properties};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(p) = Properties::decode(rest) {
            let once = p.to_bytes();
            assert_eq!(once.len(), p.encoded_len());
            let again = Properties::decode(&once).expect("encoded properties decode");
            assert_eq!(again.to_bytes(), once, "decode-encode-decode is not stable");
            assert_eq!(again.flags(), p.flags());
        }
    } else {
        let mut cursor = rest;
        if let Ok(t) = FieldTable::decode(&mut cursor) {
            let used = rest.len() - cursor.len();
            assert!(used <= rest.len());
            let mut once = BytesMut::new();
            t.encode(&mut once);
            assert_eq!(once.len(), t.encoded_len());
            let mut c = &once[..];
            let again = FieldTable::decode(&mut c).expect("an encoded table decodes");
            assert!(c.is_empty());
            let mut twice = BytesMut::new();
            again.encode(&mut twice);
            assert_eq!(twice, once, "decode-encode-decode is not stable");
        }
    }
});
