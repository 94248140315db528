//! The AMQP 0-9-1 codec on tokio-util's [`Decoder`] / [`Encoder`] contract: the client's
//! protocol header once, then frames bounded by the negotiated `frame_max`. No I/O: the
//! connection owns the socket and the read buffer and hands the buffer to
//! [`Decoder::decode`]; [`super::frame`] does the byte work.
//!
//! ```text
//! stream = protocol-header *frame        protocol-header = "AMQP" %d0 %d0 %d9 %d1
//! ```
//!
//! The limit is the codec's own state because it changes during the handshake: the
//! client's first methods are read under the server's proposal (at least
//! [`FRAME_MIN_SIZE`](super::methods::FRAME_MIN_SIZE)), everything after tune-ok under
//! the negotiated value.

use std::io;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{encode_frame, parse_frame, parse_protocol_header, Frame, FrameError};

/// What the codec reads: the protocol header once, first, then frames.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The client's 8 bytes `AMQP 0 0 9 1` were consumed; frames follow.
    ProtocolHeader,
    /// One frame, consumed exactly.
    Frame(Frame),
}

/// Where the codec is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet: the next 8 bytes must be the protocol header.
    ProtocolHeader,
    /// Past the header: frames.
    Frames,
}

/// Why the stream cannot be read any further.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Malformed input; the connection must close (see [`FrameError::reply_code`]).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed (required by tokio-util's contract; [`Decoder::decode`] itself
    /// never returns it).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The server side of an AMQP stream. Streaming contract as [`parse_frame`]: incomplete
/// input is `Ok(None)` with nothing consumed, a complete item is consumed exactly,
/// malformed input is an error (nothing consumed) after which the connection must close.
#[derive(Debug, Clone)]
pub struct AmqpCodec {
    state: State,
    frame_max: u32,
}

impl AmqpCodec {
    /// A codec for a new client connection: it expects the protocol header first, then
    /// frames no larger than `frame_max` (0 = no limit).
    pub fn new(frame_max: u32) -> Self {
        Self {
            state: State::ProtocolHeader,
            frame_max,
        }
    }

    /// A codec for a stream already past its protocol header (the header was exchanged
    /// elsewhere, or the stream is a server's).
    pub fn frames(frame_max: u32) -> Self {
        Self {
            state: State::Frames,
            frame_max,
        }
    }

    /// The largest frame (payload + 8) accepted; 0 = no limit.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Changes the limit for the frames decoded from now on.
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }
}

impl Decoder for AmqpCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        match self.state {
            State::ProtocolHeader => {
                if parse_protocol_header(src)?.is_none() {
                    return Ok(None);
                }
                self.state = State::Frames;
                Ok(Some(Incoming::ProtocolHeader))
            }
            State::Frames => Ok(parse_frame(src, self.frame_max)?.map(Incoming::Frame)),
        }
    }
}

/// Frames are encoded as they would arrive (see [`encode_frame`]); the caller keeps body
/// frames within the peer's `frame_max` (the connection's writer splits content).
impl Encoder<&Frame> for AmqpCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(dst, frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::frame::{encode_heartbeat, PROTOCOL_HEADER};
    use crate::amqp::methods::{ConnectionStartOk, Method};

    fn start_ok() -> Frame {
        Frame::Method {
            channel: 0,
            method: Method::ConnectionStartOk(ConnectionStartOk {
                mechanism: "PLAIN".into(),
                response: bytes::Bytes::from_static(b"\0guest\0guest"),
                locale: "en_US".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn header_then_frames_fed_one_byte_at_a_time() {
        let mut codec = AmqpCodec::new(4096);
        let mut stream = BytesMut::from(&PROTOCOL_HEADER[..]);
        codec.encode(&start_ok(), &mut stream).unwrap();
        encode_heartbeat(&mut stream);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in stream.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                got.push(item);
            }
        }
        assert_eq!(
            got,
            vec![
                Incoming::ProtocolHeader,
                Incoming::Frame(start_ok()),
                Incoming::Frame(Frame::Heartbeat { channel: 0 }),
            ]
        );
        assert!(buf.is_empty());
    }

    /// The contract tokio-util's `FramedRead` relies on: fed by a reader, the codec
    /// yields the header, the frames, then the end of the stream.
    #[tokio::test]
    async fn works_under_framed_read() {
        use futures_lite::StreamExt;
        use tokio_util::codec::FramedRead;

        let mut stream = BytesMut::from(&PROTOCOL_HEADER[..]);
        encode_heartbeat(&mut stream);
        AmqpCodec::frames(0)
            .encode(&start_ok(), &mut stream)
            .unwrap();
        let mut framed = FramedRead::new(&stream[..], AmqpCodec::new(4096));
        assert_eq!(
            framed.next().await.unwrap().unwrap(),
            Incoming::ProtocolHeader
        );
        assert_eq!(
            framed.next().await.unwrap().unwrap(),
            Incoming::Frame(Frame::Heartbeat { channel: 0 })
        );
        assert_eq!(
            framed.next().await.unwrap().unwrap(),
            Incoming::Frame(start_ok())
        );
        assert!(framed.next().await.is_none());
    }

    #[test]
    fn bad_protocol_header_consumes_nothing() {
        let mut codec = AmqpCodec::new(0);
        let mut buf = BytesMut::from(&b"AMQP\x00\x00\x08"[..]);
        let e = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            e,
            CodecError::Frame(FrameError::BadProtocolHeader)
        ));
        assert_eq!(buf.len(), 7);
    }

    #[test]
    fn a_second_protocol_header_is_a_bad_frame() {
        let mut codec = AmqpCodec::frames(0);
        let mut buf = BytesMut::from(&PROTOCOL_HEADER[..]);
        let e = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            e,
            CodecError::Frame(FrameError::UnknownFrameType(b'A'))
        ));
    }

    #[test]
    fn frame_max_applies_from_when_it_is_set() {
        let mut codec = AmqpCodec::frames(0);
        let mut big = BytesMut::new();
        crate::amqp::frame::encode_body(&mut big, 1, &[0u8; 5000]);
        let mut buf = big.clone();
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Frame(Frame::Body { .. }))
        ));
        codec.set_frame_max(4096);
        assert_eq!(codec.frame_max(), 4096);
        let mut buf = big;
        let e = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            e,
            CodecError::Frame(FrameError::TooLarge {
                size: 5008,
                max: 4096
            })
        ));
    }
}
