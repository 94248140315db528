//! The 14 basic properties of a message and their encoding.
//!
//! Wire format (a content header frame's payload after class-id, weight and body-size,
//! which is also how the store keeps them): one or more `u16` property-flag words, then
//! the present properties in flag order. In the first word bit 15 is `content-type`,
//! bit 14 `content-encoding`, ... bit 2 `cluster-id`; bit 0 set means another flag word
//! follows. qgate knows no properties beyond the 14, so extra flag words are read and
//! ignored, and [`Properties::encode`] always writes exactly one word.

use bytes::{BufMut, Bytes, BytesMut};

use super::value::wire;
use super::{DecodeError, FieldTable};

/// The basic class's 14 content properties; `None` = flag clear, property absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    /// `content-type` (MIME type), flag bit 15.
    pub content_type: Option<String>,
    /// `content-encoding` (MIME encoding), flag bit 14.
    pub content_encoding: Option<String>,
    /// `headers`, flag bit 13.
    pub headers: Option<FieldTable>,
    /// `delivery-mode`: 1 transient, 2 persistent; flag bit 12.
    pub delivery_mode: Option<u8>,
    /// `priority` (0-9), flag bit 11.
    pub priority: Option<u8>,
    /// `correlation-id`, flag bit 10.
    pub correlation_id: Option<String>,
    /// `reply-to`, flag bit 9.
    pub reply_to: Option<String>,
    /// `expiration` (per-message TTL in milliseconds, as a string), flag bit 8.
    pub expiration: Option<String>,
    /// `message-id`, flag bit 7.
    pub message_id: Option<String>,
    /// `timestamp` (seconds since the epoch), flag bit 6.
    pub timestamp: Option<u64>,
    /// `type` (message type name), flag bit 5.
    pub kind: Option<String>,
    /// `user-id`, flag bit 4.
    pub user_id: Option<String>,
    /// `app-id`, flag bit 3.
    pub app_id: Option<String>,
    /// `cluster-id` (deprecated), flag bit 2.
    pub cluster_id: Option<String>,
}

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
const CONTINUATION: u16 = 1;

impl Properties {
    /// Decodes property flags (with their continuation chain) and the property list.
    /// Bytes after the last present property are ignored.
    pub fn decode(raw: &[u8]) -> Result<Properties, DecodeError> {
        let input = &mut &raw[..];
        let flags = wire::get_u16(input)?;
        let mut more = flags & CONTINUATION != 0;
        while more {
            more = wire::get_u16(input)? & CONTINUATION != 0;
        }
        let s = |bit: u16, input: &mut &[u8]| -> Result<Option<String>, DecodeError> {
            if flags & bit != 0 {
                wire::get_shortstr(input).map(Some)
            } else {
                Ok(None)
            }
        };
        let u8_if = |bit: u16, input: &mut &[u8]| -> Result<Option<u8>, DecodeError> {
            if flags & bit != 0 {
                wire::get_u8(input).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Properties {
            content_type: s(CONTENT_TYPE, input)?,
            content_encoding: s(CONTENT_ENCODING, input)?,
            headers: if flags & HEADERS != 0 {
                Some(FieldTable::decode(input)?)
            } else {
                None
            },
            delivery_mode: u8_if(DELIVERY_MODE, input)?,
            priority: u8_if(PRIORITY, input)?,
            correlation_id: s(CORRELATION_ID, input)?,
            reply_to: s(REPLY_TO, input)?,
            expiration: s(EXPIRATION, input)?,
            message_id: s(MESSAGE_ID, input)?,
            timestamp: if flags & TIMESTAMP != 0 {
                Some(wire::get_u64(input)?)
            } else {
                None
            },
            kind: s(TYPE, input)?,
            user_id: s(USER_ID, input)?,
            app_id: s(APP_ID, input)?,
            cluster_id: s(CLUSTER_ID, input)?,
        })
    }

    /// The property-flags word for the present properties.
    pub fn flags(&self) -> u16 {
        let bit = |present: bool, b: u16| if present { b } else { 0 };
        bit(self.content_type.is_some(), CONTENT_TYPE)
            | bit(self.content_encoding.is_some(), CONTENT_ENCODING)
            | bit(self.headers.is_some(), HEADERS)
            | bit(self.delivery_mode.is_some(), DELIVERY_MODE)
            | bit(self.priority.is_some(), PRIORITY)
            | bit(self.correlation_id.is_some(), CORRELATION_ID)
            | bit(self.reply_to.is_some(), REPLY_TO)
            | bit(self.expiration.is_some(), EXPIRATION)
            | bit(self.message_id.is_some(), MESSAGE_ID)
            | bit(self.timestamp.is_some(), TIMESTAMP)
            | bit(self.kind.is_some(), TYPE)
            | bit(self.user_id.is_some(), USER_ID)
            | bit(self.app_id.is_some(), APP_ID)
            | bit(self.cluster_id.is_some(), CLUSTER_ID)
    }

    /// Appends one flag word and the present properties. Strings longer than 255 bytes
    /// are truncated on a character boundary (see [`wire::put_shortstr`]).
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.flags());
        let s = |out: &mut BytesMut, v: &Option<String>| {
            if let Some(v) = v {
                wire::put_shortstr(out, v);
            }
        };
        s(out, &self.content_type);
        s(out, &self.content_encoding);
        if let Some(h) = &self.headers {
            h.encode(out);
        }
        if let Some(v) = self.delivery_mode {
            out.put_u8(v);
        }
        if let Some(v) = self.priority {
            out.put_u8(v);
        }
        s(out, &self.correlation_id);
        s(out, &self.reply_to);
        s(out, &self.expiration);
        s(out, &self.message_id);
        if let Some(v) = self.timestamp {
            out.put_u64(v);
        }
        s(out, &self.kind);
        s(out, &self.user_id);
        s(out, &self.app_id);
        s(out, &self.cluster_id);
    }

    /// The encoded form as one `Bytes` (what a content header frame carries raw).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len_hint());
        self.encode(&mut out);
        out.freeze()
    }

    fn encoded_len_hint(&self) -> usize {
        let s = |v: &Option<String>| v.as_ref().map_or(0, |v| 1 + v.len().min(255));
        2 + s(&self.content_type)
            + s(&self.content_encoding)
            + self.headers.as_ref().map_or(0, FieldTable::encoded_len)
            + 2
            + s(&self.correlation_id)
            + s(&self.reply_to)
            + s(&self.expiration)
            + s(&self.message_id)
            + 8
            + s(&self.kind)
            + s(&self.user_id)
            + s(&self.app_id)
            + s(&self.cluster_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_properties_are_one_zero_word() {
        assert_eq!(&Properties::default().to_bytes()[..], &[0, 0]);
        assert_eq!(Properties::decode(&[0, 0]).unwrap(), Properties::default());
    }

    #[test]
    fn delivery_mode_only() {
        let p = Properties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        assert_eq!(&p.to_bytes()[..], &[0x10, 0x00, 2]);
    }

    #[test]
    fn continuation_words_are_skipped() {
        // content-type + continuation, then a second word with no known flags.
        let raw = [0x80, 0x01, 0x00, 0x00, 1, b'x'];
        let p = Properties::decode(&raw).unwrap();
        assert_eq!(p.content_type.as_deref(), Some("x"));
    }

    #[test]
    fn truncated_is_an_error() {
        assert_eq!(Properties::decode(&[0x80]), Err(DecodeError::Truncated));
        assert_eq!(
            Properties::decode(&[0x80, 0, 5, b'a']),
            Err(DecodeError::Truncated)
        );
    }
}
