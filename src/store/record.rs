//! On-disk record framing.
//!
//! Every record is `magic u32 | len u32 | crc32c u32 | body[len]`, little endian, where
//! the CRC covers the four length bytes and the body, and the body starts with a type
//! byte. The magic lets a reader resynchronise on the next valid record after a corrupt
//! region; the CRC over the length protects against a torn or flipped length field.

/// Record magic (arbitrary, chosen to be unlikely in text payloads).
pub(crate) const MAGIC: u32 = 0xC39E_51A7;
/// Bytes before the body.
pub(crate) const HEADER: usize = 12;
/// Largest body accepted (1 GiB); anything larger is treated as corruption.
pub(crate) const MAX_BODY: usize = 1 << 30;

pub(crate) const T_PUBLISH: u8 = 1;
pub(crate) const T_ACK: u8 = 2;
pub(crate) const T_DELIVERED: u8 = 3;
pub(crate) const T_QUEUE_DELETED: u8 = 4;
pub(crate) const T_MAX_ID: u8 = 5;
pub(crate) const T_PUBLISH_SHARED: u8 = 6;
/// The core let go of a message it took in memory (a fanout's shared record routed to a
/// queue that pages): meaningful only to the running store's index, ignored by
/// recovery, which decides afresh what the core holds.
pub(crate) const T_PAGED: u8 = 7;

/// Publish flag: the message has been handed to a consumer at least once.
pub(crate) const FLAG_DELIVERED: u8 = 1;
/// Publish flag: a transient message paged out of memory (or a message of a
/// non-durable queue); recovery drops it, as a restart drops transient messages.
pub(crate) const FLAG_TRANSIENT: u8 = 2;
/// Publish flag: when written, the core did not keep the message in memory (it reads it
/// back with `Store::read_paged`). Meaningful only in the running store's index:
/// recovery decides afresh what the core holds.
pub(crate) const FLAG_PAGED: u8 = 4;

/// Fixed part of a publish body: type, flags, queue, msg id.
pub(crate) const PUBLISH_FIXED: usize = 1 + 1 + 8 + 8;
/// Offset of the payload from the start of a publish record.
pub(crate) const PUBLISH_PAYLOAD_OFF: usize = HEADER + PUBLISH_FIXED;

/// Most queues one shared publish record may name (a fanout wider than this is
/// written as several records).
pub(crate) const MAX_SHARED_QUEUES: usize = 4096;
/// Bytes per queue in a shared publish's trailing list: queue id, flags.
const SHARED_ENTRY: usize = 9;

/// A decoded record, borrowing from the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rec<'a> {
    Publish {
        queue: u64,
        id: u64,
        flags: u8,
        payload: &'a [u8],
    },
    Ack {
        queue: u64,
        id: u64,
    },
    Delivered {
        queue: u64,
        id: u64,
    },
    Paged {
        queue: u64,
        id: u64,
    },
    QueueDeleted {
        queue: u64,
    },
    MaxId(u64),
    /// One message body for several queues (a fanout): `queues` is the raw trailing
    /// list of `(queue u64, flags u8)` entries, read with [`shared_queues`].
    PublishShared {
        id: u64,
        payload: &'a [u8],
        queues: &'a [u8],
    },
}

/// The `(queue, flags)` entries of a [`Rec::PublishShared`].
pub(crate) fn shared_queues(raw: &[u8]) -> impl Iterator<Item = (u64, u8)> + '_ {
    raw.chunks_exact(SHARED_ENTRY).map(|e| (u64_at(e, 0), e[8]))
}

fn begin(buf: &mut Vec<u8>, ty: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    buf.push(ty);
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - HEADER) as u32;
    let len_le = len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_le), &buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&len_le);
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// A message body as the store copies it into a record: one buffer, or the pieces of
/// one (the core's message record is written straight from the message's own parts,
/// without assembling a copy first).
pub trait Payload {
    /// Total length in bytes.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends the bytes to `buf`.
    fn put(&self, buf: &mut Vec<u8>);
}

impl Payload for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn put(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self);
    }
}

impl Payload for bytes::Bytes {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn put(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self);
    }
}

impl Payload for Vec<u8> {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn put(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self);
    }
}

impl<const N: usize> Payload for [u8; N] {
    fn len(&self) -> usize {
        N
    }
    fn put(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self);
    }
}

impl<T: Payload + ?Sized> Payload for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn put(&self, buf: &mut Vec<u8>) {
        (**self).put(buf);
    }
}

impl<const N: usize> Payload for [&[u8]; N] {
    fn len(&self) -> usize {
        self.iter().map(|p| p.len()).sum()
    }
    fn put(&self, buf: &mut Vec<u8>) {
        for p in self {
            buf.extend_from_slice(p);
        }
    }
}

/// Appends a publish record.
pub(crate) fn encode_publish<P: Payload + ?Sized>(
    buf: &mut Vec<u8>,
    queue: u64,
    id: u64,
    flags: u8,
    payload: &P,
) {
    buf.reserve(PUBLISH_PAYLOAD_OFF + payload.len());
    let start = begin(buf, T_PUBLISH);
    buf.push(flags);
    buf.extend_from_slice(&queue.to_le_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    payload.put(buf);
    finish(buf, start);
}

/// Sets `flag` on the publish record at `at` of a buffer we encoded (not yet written),
/// and seals it again.
pub(crate) fn set_publish_flag(buf: &mut [u8], at: usize, flag: u8) {
    debug_assert_eq!(buf[at + HEADER], T_PUBLISH);
    buf[at + HEADER + 1] |= flag;
    let len = u32_at(buf, at + 4) as usize;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&buf[at + 4..at + 8]),
        &buf[at + HEADER..at + HEADER + len],
    );
    buf[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Length of the record at `at` of a buffer we encoded.
pub(crate) fn len_at(buf: &[u8], at: usize) -> usize {
    HEADER + u32_at(buf, at + 4) as usize
}

/// Removes the records at `offsets` (sorted, distinct, each the start of a record) from
/// `buf`, moving what follows down. `positions` (record boundaries) move with it.
pub(crate) fn remove_records(buf: &mut Vec<u8>, offsets: &[usize], positions: &mut [usize]) {
    let Some(&first) = offsets.first() else {
        return;
    };
    let mut removed: Vec<(usize, usize)> = Vec::with_capacity(offsets.len());
    let (mut write, mut read) = (first, first);
    for &at in offsets {
        debug_assert!(at >= read);
        let len = len_at(buf, at);
        buf.copy_within(read..at, write);
        write += at - read;
        read = at + len;
        removed.push((at, len));
    }
    let end = buf.len();
    buf.copy_within(read..end, write);
    buf.truncate(write + (end - read));
    for pos in positions {
        let gone: usize = removed
            .iter()
            .take_while(|&&(at, _)| at < *pos)
            .map(|&(_, len)| len)
            .sum();
        *pos -= gone;
    }
}

/// Appends a shared publish record: one body, several queues. The payload sits where a
/// plain publish has it ([`PUBLISH_PAYLOAD_OFF`]), so that an index entry's payload is
/// found the same way for both; the queue list follows the payload, and the 8 bytes
/// where a plain publish has its queue hold the payload length and the queue count.
pub(crate) fn encode_publish_shared<P: Payload + ?Sized>(
    buf: &mut Vec<u8>,
    queues: impl ExactSizeIterator<Item = (u64, u8)>,
    id: u64,
    payload: &P,
) {
    let n = queues.len();
    debug_assert!(n > 0 && n <= MAX_SHARED_QUEUES);
    buf.reserve(PUBLISH_PAYLOAD_OFF + payload.len() + n * SHARED_ENTRY);
    let start = begin(buf, T_PUBLISH_SHARED);
    buf.push(0);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(n as u32).to_le_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    payload.put(buf);
    for (q, flags) in queues {
        buf.extend_from_slice(&q.to_le_bytes());
        buf.push(flags);
    }
    finish(buf, start);
}

/// Appends an ack, delivered or paged record.
pub(crate) fn encode_pair(buf: &mut Vec<u8>, ty: u8, queue: u64, id: u64) {
    let start = begin(buf, ty);
    buf.extend_from_slice(&queue.to_le_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    finish(buf, start);
}

/// Appends a record with a single u64 (queue deleted, max id).
pub(crate) fn encode_one(buf: &mut Vec<u8>, ty: u8, v: u64) {
    let start = begin(buf, ty);
    buf.extend_from_slice(&v.to_le_bytes());
    finish(buf, start);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes a body (type byte first). `None` if the type is unknown or sizes mismatch.
pub(crate) fn decode_body(body: &[u8]) -> Option<Rec<'_>> {
    let ty = *body.first()?;
    match ty {
        T_PUBLISH if body.len() >= PUBLISH_FIXED => Some(Rec::Publish {
            flags: body[1],
            queue: u64_at(body, 2),
            id: u64_at(body, 10),
            payload: &body[PUBLISH_FIXED..],
        }),
        T_ACK | T_DELIVERED | T_PAGED if body.len() == 17 => {
            let queue = u64_at(body, 1);
            let id = u64_at(body, 9);
            Some(match ty {
                T_ACK => Rec::Ack { queue, id },
                T_DELIVERED => Rec::Delivered { queue, id },
                _ => Rec::Paged { queue, id },
            })
        }
        T_QUEUE_DELETED if body.len() == 9 => Some(Rec::QueueDeleted {
            queue: u64_at(body, 1),
        }),
        T_MAX_ID if body.len() == 9 => Some(Rec::MaxId(u64_at(body, 1))),
        T_PUBLISH_SHARED if body.len() >= PUBLISH_FIXED => {
            let plen = u32_at(body, 2) as usize;
            let n = u32_at(body, 6) as usize;
            let end = PUBLISH_FIXED.checked_add(plen)?;
            if n == 0 || n > MAX_SHARED_QUEUES || body.len() != end.checked_add(n * SHARED_ENTRY)? {
                return None;
            }
            Some(Rec::PublishShared {
                id: u64_at(body, 10),
                payload: &body[PUBLISH_FIXED..end],
                queues: &body[end..],
            })
        }
        _ => None,
    }
}

/// Length of the record at `pos` if it is complete, intact and well formed.
pub(crate) fn check_at(buf: &[u8], pos: usize) -> Option<usize> {
    if buf.len().saturating_sub(pos) < HEADER {
        return None;
    }
    if u32_at(buf, pos) != MAGIC {
        return None;
    }
    let len = u32_at(buf, pos + 4) as usize;
    if len == 0 || len > MAX_BODY || buf.len() - pos - HEADER < len {
        return None;
    }
    let body = &buf[pos + HEADER..pos + HEADER + len];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[pos + 4..pos + 8]), body);
    if crc != u32_at(buf, pos + 8) {
        return None;
    }
    decode_body(body)?;
    Some(HEADER + len)
}

/// Decodes the record at `pos` of a trusted buffer (one we encoded ourselves).
pub(crate) fn decode_trusted(buf: &[u8], pos: usize) -> (usize, Rec<'_>) {
    let len = u32_at(buf, pos + 4) as usize;
    let rec = decode_body(&buf[pos + HEADER..pos + HEADER + len]).expect("own record");
    (HEADER + len, rec)
}

/// What a scan of one segment found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ScanReport {
    /// End of the last valid record: everything after it is a torn or corrupt tail.
    pub valid_end: usize,
    /// Corrupt regions skipped in the middle (followed by a valid record).
    pub corrupt_regions: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
}

/// Walks every valid record of `buf`, resynchronising on the magic after corruption.
/// `f(offset, record_len, record)`.
pub(crate) fn scan(buf: &[u8], mut f: impl FnMut(usize, usize, Rec<'_>)) -> ScanReport {
    let magic = MAGIC.to_le_bytes();
    let mut rep = ScanReport::default();
    let mut pos = 0;
    while pos < buf.len() {
        if let Some(len) = check_at(buf, pos) {
            let rec = decode_body(&buf[pos + HEADER..pos + len]).expect("checked");
            f(pos, len, rec);
            pos += len;
            rep.valid_end = pos;
            continue;
        }
        // Corrupt or torn: look for the next record that validates.
        let mut next = None;
        let mut from = pos + 1;
        while from + HEADER <= buf.len() {
            match buf[from..].windows(4).position(|w| w == magic) {
                Some(i) => {
                    let cand = from + i;
                    if check_at(buf, cand).is_some() {
                        next = Some(cand);
                        break;
                    }
                    from = cand + 1;
                }
                None => break,
            }
        }
        match next {
            Some(n) => {
                rep.corrupt_regions += 1;
                rep.corrupt_bytes += (n - pos) as u64;
                pos = n;
            }
            None => break,
        }
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_resync() {
        let mut b = Vec::new();
        encode_publish(&mut b, 7, 42, FLAG_DELIVERED, &b"hello"[..]);
        let second = b.len();
        encode_pair(&mut b, T_ACK, 7, 41);
        let third = b.len();
        encode_one(&mut b, T_QUEUE_DELETED, 9);
        encode_one(&mut b, T_MAX_ID, 100);
        let mut seen = Vec::new();
        let rep = scan(&b, |off, _, r| seen.push((off, format!("{r:?}"))));
        assert_eq!(seen.len(), 4);
        assert_eq!(rep.valid_end, b.len());
        assert_eq!(rep.corrupt_regions, 0);

        // Flip a byte inside the second record: it is skipped, the rest is read.
        let mut c = b.clone();
        c[second + HEADER + 3] ^= 0x55;
        let mut n = 0;
        let rep = scan(&c, |_, _, _| n += 1);
        assert_eq!(n, 3);
        assert_eq!(rep.corrupt_regions, 1);
        assert_eq!(rep.corrupt_bytes, (third - second) as u64);

        // Torn tail.
        let t = &b[..b.len() - 3];
        let mut n = 0;
        let rep = scan(t, |_, _, _| n += 1);
        assert_eq!(n, 3);
        assert!(rep.valid_end < t.len());
    }

    #[test]
    fn shared_publish_roundtrip_and_bad_lengths() {
        let mut b = Vec::new();
        encode_publish_shared(
            &mut b,
            [(3, 0), (9, FLAG_DELIVERED)].into_iter(),
            77,
            &b"body"[..],
        );
        let (len, r) = decode_trusted(&b, 0);
        assert_eq!(len, b.len());
        let Rec::PublishShared {
            id,
            payload,
            queues,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!((id, payload), (77, &b"body"[..]));
        assert_eq!(
            shared_queues(queues).collect::<Vec<_>>(),
            vec![(3, 0), (9, FLAG_DELIVERED)]
        );
        // The payload is where a plain publish has it.
        assert_eq!(&b[PUBLISH_PAYLOAD_OFF..PUBLISH_PAYLOAD_OFF + 4], b"body");
        // A body whose lengths disagree is not a record.
        let body = &b[HEADER..];
        assert!(decode_body(&body[..body.len() - 1]).is_none());
        let mut zero = body.to_vec();
        zero[6..10].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode_body(&zero).is_none());
        let mut huge = body.to_vec();
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_body(&huge).is_none());
    }

    #[test]
    fn decode_publish() {
        let mut b = Vec::new();
        encode_publish(&mut b, 1, 2, 0, &b"xyz"[..]);
        let (len, r) = decode_trusted(&b, 0);
        assert_eq!(len, b.len());
        assert_eq!(
            r,
            Rec::Publish {
                queue: 1,
                id: 2,
                flags: 0,
                payload: b"xyz"
            }
        );
    }

    #[test]
    fn payload_pieces_encode_like_one_buffer() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_publish(&mut a, 1, 2, 0, &b"header|body"[..]);
        encode_publish(&mut b, 1, 2, 0, &[&b"head"[..], b"er|", b"", b"body"]);
        assert_eq!(a, b);
    }

    #[test]
    fn flag_set_in_place_keeps_the_record_valid() {
        let mut b = Vec::new();
        encode_pair(&mut b, T_ACK, 1, 1);
        let at = b.len();
        encode_publish(&mut b, 7, 42, 0, &b"hello"[..]);
        set_publish_flag(&mut b, at, FLAG_DELIVERED);
        assert_eq!(check_at(&b, at), Some(b.len() - at));
        let (_, r) = decode_trusted(&b, at);
        assert!(
            matches!(
                r,
                Rec::Publish {
                    flags: FLAG_DELIVERED,
                    id: 42,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn removed_records_leave_the_rest_intact() {
        let mut b = Vec::new();
        let mut starts = Vec::new();
        for i in 0..6u64 {
            starts.push(b.len());
            encode_publish(&mut b, 1, i, 0, &vec![i as u8; i as usize * 3][..]);
        }
        // Positions at record boundaries: before 2, before 5, the end.
        let mut pos = [starts[2], starts[5], b.len()];
        remove_records(&mut b, &[starts[0], starts[3], starts[4]], &mut pos);
        let mut ids = Vec::new();
        let mut at = 0;
        let mut bounds = vec![0];
        while at < b.len() {
            assert_eq!(check_at(&b, at), Some(len_at(&b, at)));
            let (len, r) = decode_trusted(&b, at);
            let Rec::Publish { id, payload, .. } = r else {
                panic!()
            };
            assert_eq!(payload, &vec![id as u8; id as usize * 3][..]);
            ids.push(id);
            at += len;
            bounds.push(at);
        }
        assert_eq!(ids, vec![1, 2, 5]);
        assert_eq!(pos, [bounds[1], bounds[2], b.len()]);
        let before = b.clone();
        remove_records(&mut b, &[], &mut []);
        assert_eq!(b, before);
    }
}
