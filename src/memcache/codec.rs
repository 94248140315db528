//! The memcache request decoder, on tokio-util's [`Decoder`] contract: bytes in, one
//! [`Decoded`] request or protocol error out, the bytes it used consumed.
//!
//! [`MemcacheCodec`] owns the two things the byte stream needs between calls: the
//! [`Limits`] (longest line, largest data block) and the [`Discard`] state an error
//! leaves behind (the rest of an over-size data block or of an overlong line, dropped
//! as it arrives so that it is never buffered whole). The grammar and the choice of
//! answer for each malformed input are [`parse_request`]'s; this is the only place that
//! drives it over a stream.
//!
//! ```
//! use bytes::BytesMut;
//! use tokio_util::codec::Decoder;
//! use qgate::memcache::codec::{Decoded, MemcacheCodec};
//! use qgate::memcache::command::{ProtocolError, Request};
//! use qgate::memcache::parser::Limits;
//!
//! let limits = Limits { max_line: 2048, max_message: 4 };
//! let mut codec = MemcacheCodec::new(limits);
//! // A set too large for the limits, whose block arrives in two reads.
//! let mut buf = BytesMut::from(&b"set q 0 0 8\r\nabc"[..]);
//! assert_eq!(codec.decode(&mut buf).unwrap(), Some(Decoded::Error(ProtocolError::TooLarge)));
//! assert_eq!(codec.decode(&mut buf).unwrap(), None); // the rest is still to come
//! buf.extend_from_slice(b"defgh\r\nset q 0 0 2\r\nhi\r\n");
//! let Some(Decoded::Request { request: Request::Set { key, data, .. }, frame }) =
//!     codec.decode(&mut buf).unwrap()
//! else {
//!     panic!("expected the second set");
//! };
//! assert_eq!((key.as_str(), &frame[data]), ("q", &b"hi"[..])); // zero-copy body
//! assert!(buf.is_empty());
//! ```

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::command::{ProtocolError, Request};
use super::parser::{parse_request, Discard, Limits, Parsed};

/// What one call of [`MemcacheCodec::decode`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A well-formed request and the bytes it came in: a set's body is
    /// `frame.slice(data)`, without a copy.
    Request {
        /// The request.
        request: Request,
        /// Its bytes, command line and data block.
        frame: Bytes,
    },
    /// A malformed or refused request: answer `error.answer()`. Whatever more of it
    /// must be dropped, the codec drops as it arrives.
    Error(ProtocolError),
}

/// Decodes memcache requests from a client's byte stream.
#[derive(Debug, Clone)]
pub struct MemcacheCodec {
    limits: Limits,
    discard: Discard,
}

impl MemcacheCodec {
    /// A codec for a new connection.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            discard: Discard::Nothing,
        }
    }

    /// The limits it applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The input still to drop for an earlier error ([`Discard::Nothing`] when none).
    pub fn discarding(&self) -> Discard {
        self.discard
    }
}

impl Decoder for MemcacheCodec {
    type Item = Decoded;
    type Error = std::io::Error;

    /// Never fails: every malformed input is a [`Decoded::Error`]. `Ok(None)` means
    /// read more; what is buffered then is at most `max_line + max_message + 2` bytes
    /// (less whatever is being discarded, which is never kept).
    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Decoded>> {
        let n = self.discard.feed(buf);
        buf.advance(n);
        if !self.discard.is_done() {
            return Ok(None);
        }
        let Ok(parsed) = parse_request(buf, &self.limits);
        let Some((consumed, parsed)) = parsed else {
            return Ok(None);
        };
        let frame = buf.split_to(consumed).freeze();
        Ok(Some(match parsed {
            Parsed::Request(request) => Decoded::Request { request, frame },
            Parsed::Error { error, discard } => {
                self.discard = discard;
                Decoded::Error(error)
            }
        }))
    }

    /// At the end of the stream a request cut short is dropped unanswered (nobody is
    /// left to read the answer), as memcached does, rather than tokio-util's default
    /// of an error for leftover bytes.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Decoded>> {
        let decoded = self.decode(buf)?;
        if decoded.is_none() {
            buf.clear();
        }
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memcache::command::GetKey;

    fn decode_all(codec: &mut MemcacheCodec, buf: &mut BytesMut) -> Vec<Decoded> {
        std::iter::from_fn(|| codec.decode(buf).unwrap()).collect()
    }

    fn limits() -> Limits {
        Limits {
            max_line: 32,
            max_message: 8,
        }
    }

    #[test]
    fn an_overlong_line_is_dropped_across_reads() {
        let mut codec = MemcacheCodec::new(limits());
        let mut buf = BytesMut::from(&[b'x'; 40][..]);
        let got = decode_all(&mut codec, &mut buf);
        assert_eq!(got, vec![Decoded::Error(ProtocolError::LineTooLong)]);
        assert!(buf.is_empty());
        assert_eq!(codec.discarding(), Discard::ThroughNewline);
        buf.extend_from_slice(&[b'y'; 100]);
        assert!(decode_all(&mut codec, &mut buf).is_empty());
        assert!(buf.is_empty(), "discarded input is never kept");
        buf.extend_from_slice(b"yy\r\nversion\r\n");
        let got = decode_all(&mut codec, &mut buf);
        assert!(matches!(
            &got[..],
            [Decoded::Request {
                request: Request::Version,
                ..
            }]
        ));
        assert!(codec.discarding().is_done());
    }

    #[test]
    fn an_oversize_block_is_dropped_as_it_arrives() {
        let mut codec = MemcacheCodec::new(limits());
        let mut buf = BytesMut::from(&b"set q 0 0 20\r\n0123"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![Decoded::Error(ProtocolError::TooLarge)]
        );
        assert_eq!(codec.discarding(), Discard::Bytes(18));
        buf.extend_from_slice(b"456789");
        assert!(decode_all(&mut codec, &mut buf).is_empty());
        assert_eq!(codec.discarding(), Discard::Bytes(12));
        buf.extend_from_slice(b"0123456789\r\nget q/open\r\n");
        let got = decode_all(&mut codec, &mut buf);
        let [Decoded::Request {
            request: Request::Get { keys },
            frame,
        }] = &got[..]
        else {
            panic!("{got:?}");
        };
        assert_eq!(&frame[..], b"get q/open\r\n");
        let [GetKey {
            key,
            queue,
            options,
        }] = &keys[..]
        else {
            panic!("{keys:?}");
        };
        assert_eq!((key.as_str(), queue.as_str()), ("q/open", "q"));
        assert!(options.open);
    }

    #[test]
    fn eof_drops_a_request_cut_short() {
        let mut codec = MemcacheCodec::new(limits());
        let mut buf = BytesMut::from(&b"version\r\nset q 0 0 5\r\nab"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf).unwrap(),
            Some(Decoded::Request {
                request: Request::Version,
                ..
            })
        ));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }
}
