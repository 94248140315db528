//! AMQP 0-9-1 frames: the streaming parser and the encoders. No I/O and no tokio; the
//! connection reads into a `BytesMut` and decodes it with [`super::codec::AmqpCodec`],
//! which calls [`parse_frame`] with the `frame_max` in force; the writer encodes replies
//! into its write buffer.
//!
//! ```text
//! frame   = type:u8 channel:u16 size:u32 payload[size] 0xCE
//! method  = class-id:u16 method-id:u16 arguments          (type 1)
//! header  = class-id:u16 weight:u16 body-size:u64 flags+properties   (type 2)
//! body    = bytes                                         (type 3)
//! heartbeat = empty payload                               (type 8)
//! ```
//!
//! Streaming contract (as everywhere in qgate): incomplete input is `Ok(None)` with
//! nothing consumed; a complete frame is consumed exactly; malformed input is an error
//! after which the connection must close. The size is checked against `frame_max` from
//! the 7-byte header alone, before any payload is waited for.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::methods::{reply, Method, MethodError};
pub use super::methods::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE,
};

/// The protocol header a client sends first (and that the server sends back before
/// closing when it does not speak the client's version).
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Bytes a frame adds around its payload: 7-byte header plus the end octet.
pub const FRAME_OVERHEAD: usize = 8;

/// Most [`parse_frame`] reserves ahead for an incomplete frame.
const MAX_RESERVE: usize = 1 << 20;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame (type 1).
    Method {
        /// Channel number (0 = the connection).
        channel: u16,
        /// The decoded method.
        method: Method,
    },
    /// A content header frame (type 2).
    Header {
        /// Channel number.
        channel: u16,
        /// Class of the content (basic's, the only one with content in 0-9-1).
        class_id: u16,
        /// Total size of the body frames that follow.
        body_size: u64,
        /// Property flags and list, undecoded (zero-copy slice of the read buffer); decode
        /// with [`crate::content::Properties::decode`] when needed.
        properties: Bytes,
    },
    /// A content body frame (type 3): zero-copy slice of the read buffer.
    Body {
        /// Channel number.
        channel: u16,
        /// This frame's part of the body.
        payload: Bytes,
    },
    /// A heartbeat frame (type 8). The spec requires channel 0; checking that is left
    /// to the connection.
    Heartbeat {
        /// Channel number as received.
        channel: u16,
    },
}

impl Frame {
    /// The frame's channel.
    pub fn channel(&self) -> u16 {
        match *self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => channel,
        }
    }
}

/// Malformed input at the frame level; the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The client's first 8 bytes are not `AMQP 0 0 9 1`.
    #[error("bad protocol header")]
    BadProtocolHeader,
    /// The octet after the payload is not 0xCE.
    #[error("frame end octet is not 0xCE")]
    BadFrameEnd,
    /// The frame (payload + 8) is larger than the negotiated `frame_max`.
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    TooLarge {
        /// Whole frame size the header announces (payload + 8), saturated at `u32::MAX`.
        size: u32,
        /// The `frame_max` in force.
        max: u32,
    },
    /// The frame type is not 1, 2, 3 or 8.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A content header payload shorter than class-id, weight, body-size and one flag word.
    #[error("malformed content header frame")]
    BadHeader,
    /// The method frame's payload did not decode.
    #[error(transparent)]
    Method(#[from] MethodError),
}

impl FrameError {
    /// Reply code for the `connection.close`: 501 FRAME_ERROR for framing problems,
    /// the method error's own code otherwise.
    pub fn reply_code(&self) -> u16 {
        match self {
            FrameError::Method(e) => e.reply_code(),
            _ => reply::FRAME_ERROR,
        }
    }
}

/// Parses the client's protocol header. `Ok(None)`: need more bytes (the ones present
/// match so far); `Ok(Some(()))`: the 8 bytes were consumed; `Err(BadProtocolHeader)` as
/// soon as a byte differs (nothing consumed, so the caller may log it).
pub fn parse_protocol_header(buf: &mut BytesMut) -> Result<Option<()>, FrameError> {
    let n = buf.len().min(PROTOCOL_HEADER.len());
    if buf[..n] != PROTOCOL_HEADER[..n] {
        return Err(FrameError::BadProtocolHeader);
    }
    if n < PROTOCOL_HEADER.len() {
        return Ok(None);
    }
    buf.advance(PROTOCOL_HEADER.len());
    Ok(Some(()))
}

/// Parses one frame from the front of `buf`. `Ok(None)`: need more bytes, nothing
/// consumed; `Ok(Some(frame))`: exactly that frame was consumed (header, body and
/// body frames share the buffer's memory); `Err`: malformed, close the connection.
/// A frame whose payload + 8 exceeds `frame_max` is refused as soon as its 7-byte header
/// is in, before its payload is waited for; `frame_max == 0` means no limit.
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::UnknownFrameType(kind));
    }
    let whole = size as u64 + FRAME_OVERHEAD as u64;
    if frame_max != 0 && whole > frame_max as u64 {
        return Err(FrameError::TooLarge {
            size: u32::try_from(whole).unwrap_or(u32::MAX),
            max: frame_max,
        });
    }
    let whole = whole as usize;
    if buf.len() < whole {
        // Room for the rest of the frame, bounded so that an unlimited frame_max cannot
        // make a hostile size allocate before the bytes exist.
        buf.reserve((whole - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    if buf[whole - 1] != FRAME_END {
        return Err(FrameError::BadFrameEnd);
    }
    let frame = match kind {
        FRAME_METHOD => {
            let method = Method::decode(&buf[7..whole - 1])?;
            buf.advance(whole);
            Frame::Method { channel, method }
        }
        FRAME_HEADER => {
            if size < 14 {
                return Err(FrameError::BadHeader);
            }
            let mut payload = take_payload(buf, whole);
            let class_id = payload.get_u16();
            let _weight = payload.get_u16();
            let body_size = payload.get_u64();
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties: payload,
            }
        }
        FRAME_BODY => Frame::Body {
            channel,
            payload: take_payload(buf, whole),
        },
        _ => {
            buf.advance(whole);
            Frame::Heartbeat { channel }
        }
    };
    Ok(Some(frame))
}

/// Splits the whole frame off `buf` and returns its payload without copying.
fn take_payload(buf: &mut BytesMut, whole: usize) -> Bytes {
    let mut frame = buf.split_to(whole);
    frame.truncate(whole - 1);
    frame.advance(7);
    frame.freeze()
}

/// Writes the 7-byte frame header with a zero size; returns the size's offset.
#[inline]
fn begin_frame(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

/// Patches the size at `at` to cover everything written after it, then writes 0xCE.
#[inline]
fn end_frame(out: &mut BytesMut, at: usize) {
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn encode_method(out: &mut BytesMut, channel: u16, method: &Method) {
    out.reserve(64);
    let at = begin_frame(out, FRAME_METHOD, channel);
    method.encode(out);
    end_frame(out, at);
}

/// Appends a content header frame for `body.len()` bytes, then the body in frames whose
/// whole size stays within `frame_max` (payload <= frame_max - 8; `frame_max == 0` means
/// one body frame). An empty body emits no body frame. `properties_raw` is the encoded
/// flags + property list (e.g. [`crate::content::Properties::to_bytes`]).
pub fn encode_content(
    out: &mut BytesMut,
    channel: u16,
    class_id: u16,
    properties_raw: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let chunk = if frame_max == 0 {
        body.len().max(1)
    } else {
        (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
    };
    let frames = body.len().div_ceil(chunk);
    out.reserve(FRAME_OVERHEAD + 12 + properties_raw.len() + body.len() + frames * FRAME_OVERHEAD);

    encode_content_header(out, channel, class_id, body.len() as u64, properties_raw);
    for part in body.chunks(chunk) {
        encode_body(out, channel, part);
    }
}

/// Appends one content header frame (weight 0). `properties_raw` is flags + list.
pub fn encode_content_header(
    out: &mut BytesMut,
    channel: u16,
    class_id: u16,
    body_size: u64,
    properties_raw: &[u8],
) {
    out.reserve(FRAME_OVERHEAD + 12 + properties_raw.len());
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32((12 + properties_raw.len()) as u32);
    out.put_u16(class_id);
    out.put_u16(0);
    out.put_u64(body_size);
    out.put_slice(properties_raw);
    out.put_u8(FRAME_END);
}

/// Appends one body frame carrying `payload` as is; the caller keeps it within
/// `frame_max - 8` (see [`encode_content`], which splits).
pub fn encode_body(out: &mut BytesMut, channel: u16, payload: &[u8]) {
    out.reserve(FRAME_OVERHEAD + payload.len());
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.put_u8(FRAME_END);
}

/// Appends any [`Frame`] as it would arrive (body frames are not split here; a heartbeat
/// keeps its channel).
pub fn encode_frame(out: &mut BytesMut, frame: &Frame) {
    match frame {
        Frame::Method { channel, method } => encode_method(out, *channel, method),
        Frame::Header {
            channel,
            class_id,
            body_size,
            properties,
        } => encode_content_header(out, *channel, *class_id, *body_size, properties),
        Frame::Body { channel, payload } => encode_body(out, *channel, payload),
        Frame::Heartbeat { channel } => {
            out.put_u8(FRAME_HEARTBEAT);
            out.put_u16(*channel);
            out.put_slice(&[0, 0, 0, 0, FRAME_END]);
        }
    }
}

/// Appends a heartbeat frame: `08 00 00 00 00 00 00 CE`.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::methods::ConnectionTuneOk;

    #[test]
    fn heartbeat_bytes() {
        let mut out = BytesMut::new();
        encode_heartbeat(&mut out);
        assert_eq!(&out[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
        assert_eq!(
            parse_frame(&mut out, 0).unwrap(),
            Some(Frame::Heartbeat { channel: 0 })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn too_large_before_payload() {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x10, 0][..]);
        assert_eq!(
            parse_frame(&mut buf, 4096),
            Err(FrameError::TooLarge {
                size: 4104,
                max: 4096
            })
        );
        assert_eq!(buf.len(), 7);
    }

    #[test]
    fn method_round_trip() {
        let m: Method = ConnectionTuneOk {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
        }
        .into();
        let mut out = BytesMut::new();
        encode_method(&mut out, 0, &m);
        let f = parse_frame(&mut out, 4096).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Method {
                channel: 0,
                method: m
            }
        );
    }
}
