//! The connection's single writer: everything bound for the client (replies, deliveries,
//! heartbeats) goes through one queue to this task, which encodes whatever is pending
//! into one buffer and writes it with one syscall, flushing when the queue runs dry.
//!
//! The queue itself is unbounded (queues call into it under their locks and must never
//! wait), but what waits in it is: deliveries by each consumer's write window (see
//! [`crate::core::consumer::WriteWindow`]), everything else (answers to the client's own
//! requests: basic.get-ok, returns, confirms) by [`OutTx::backlogged`], which the
//! connection checks before it reads the next request. Every byte waiting here counts
//! in the broker's memory alarm.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::frame::{encode_content, encode_heartbeat, encode_method};
use super::methods::{BasicDeliver, BasicGetOk, BasicReturn, Method, FRAME_END, FRAME_METHOD};
use crate::core::{Broker, ConnectionInfo, Consumer, Message, Queue};

/// Something to send to the client.
pub(crate) enum Out {
    /// A method frame.
    Method(u16, Method),
    /// basic.deliver + content.
    Deliver {
        channel: u16,
        consumer: Arc<Consumer>,
        delivery_tag: u64,
        redelivered: bool,
        msg: Arc<Message>,
        /// The queue to dispatch again once this is written and the consumer's write
        /// window has room again.
        window: Arc<Queue>,
    },
    /// basic.get-ok + content.
    GetOk {
        channel: u16,
        delivery_tag: u64,
        redelivered: bool,
        message_count: u32,
        msg: Arc<Message>,
    },
    /// basic.return + content.
    Return {
        channel: u16,
        reply_code: u16,
        reply_text: String,
        msg: Arc<Message>,
    },
}

/// Answers to the client's requests that may wait in one connection's write queue before
/// the connection stops reading requests from it.
pub(crate) const BACKLOG_BYTES: usize = 1024 * 1024;

/// Estimated bytes an item holds while it waits (the message is shared, but a delivery
/// keeps it alive after the queue let go of it).
fn cost(item: &Out) -> usize {
    match item {
        Out::Method(..) => 64,
        Out::Deliver { msg, .. } | Out::GetOk { msg, .. } | Out::Return { msg, .. } => {
            64 + msg.properties().len() + msg.body().len()
        }
    }
}

/// What waits in one connection's write queue.
struct Backlog {
    /// All items, deliveries included.
    bytes: AtomicUsize,
    /// Items other than deliveries: what the client's own requests produced.
    answers: AtomicUsize,
    drained: Notify,
    broker: Broker,
}

impl Backlog {
    fn add(&self, n: usize, answer: bool) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
        if answer {
            self.answers.fetch_add(n, Ordering::AcqRel);
        }
        self.broker.flow().add_buffered(n as u64);
    }

    fn sub(&self, n: usize, answers: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        if answers > 0 {
            let before = self.answers.fetch_sub(answers, Ordering::AcqRel);
            if before >= BACKLOG_BYTES && before - answers < BACKLOG_BYTES {
                self.drained.notify_waiters();
            }
        }
        self.broker.flow().sub_buffered(n as u64);
    }
}

/// Sender half handed to channels and consumers.
#[derive(Clone)]
pub(crate) struct OutTx {
    tx: mpsc::UnboundedSender<Out>,
    backlog: Arc<Backlog>,
}

/// Receiver half, for [`run`].
pub(crate) struct OutRx {
    rx: mpsc::UnboundedReceiver<Out>,
    backlog: Arc<Backlog>,
}

/// A connection's write queue.
pub(crate) fn channel(broker: &Broker) -> (OutTx, OutRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog {
        bytes: AtomicUsize::new(0),
        answers: AtomicUsize::new(0),
        drained: Notify::new(),
        broker: broker.clone(),
    });
    (
        OutTx {
            tx,
            backlog: backlog.clone(),
        },
        OutRx { rx, backlog },
    )
}

impl OutTx {
    /// Queues an item for the writer; fails once the writer is gone.
    pub(crate) fn send(&self, item: Out) -> Result<(), mpsc::error::SendError<Out>> {
        let n = cost(&item);
        let answer = !matches!(item, Out::Deliver { .. });
        self.backlog.add(n, answer);
        self.tx.send(item).inspect_err(|_| {
            self.backlog.sub(n, if answer { n } else { 0 });
        })
    }

    /// True while the answers waiting for the client exceed [`BACKLOG_BYTES`]: the client
    /// is not reading them, so its next requests should wait.
    pub(crate) fn backlogged(&self) -> bool {
        self.backlog.answers.load(Ordering::Acquire) >= BACKLOG_BYTES
    }

    /// Waits until [`OutTx::backlogged`] is false.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.backlog.drained.notified();
            if !self.backlogged() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for OutRx {
    fn drop(&mut self) {
        // Items never written no longer hold memory: release their share of the alarm.
        self.rx.close();
        let mut n = 0;
        let mut answers = 0;
        while let Ok(item) = self.rx.try_recv() {
            let c = cost(&item);
            n += c;
            if !matches!(item, Out::Deliver { .. }) {
                answers += c;
            }
        }
        self.backlog.sub(n, answers);
    }
}

const BATCH_BYTES: usize = 256 * 1024;

/// Appends a method frame whose arguments `args` writes (given the message's exchange
/// and routing key), then `msg` as its content: the methods that carry a message to the
/// client, encoded from borrowed values (`encode_args_borrowed`) rather than method
/// structs with owned strings.
fn encode_with_content(
    out: &mut BytesMut,
    channel: u16,
    (class_id, method_id): (u16, u16),
    args: impl FnOnce(&mut BytesMut, &str, &str),
    msg: &Message,
    frame_max: u32,
) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    let size_at = out.len();
    out.put_u32(0);
    let start = out.len();
    out.put_u16(class_id);
    out.put_u16(method_id);
    args(out, msg.exchange(), msg.routing_key());
    let size = (out.len() - start) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
    let (properties, body) = (msg.properties(), msg.body());
    encode_content(out, channel, class_id, properties, body, frame_max);
}

/// What an encoded item held while it waited: (all, answers).
#[derive(Default)]
struct Encoded(usize, usize);

fn encode(out: &mut BytesMut, item: Out, frame_max: u32, done: &mut Encoded) {
    let c = cost(&item);
    done.0 += c;
    if !matches!(item, Out::Deliver { .. }) {
        done.1 += c;
    }
    match item {
        Out::Method(channel, m) => encode_method(out, channel, &m),
        Out::Deliver {
            channel,
            consumer,
            delivery_tag,
            redelivered,
            msg,
            window,
        } => {
            let ids = (BasicDeliver::CLASS_ID, BasicDeliver::METHOD_ID);
            let tag = &consumer.tag;
            let args = |out: &mut BytesMut, ex: &str, rk: &str| {
                BasicDeliver::encode_args_borrowed(out, tag, delivery_tag, redelivered, ex, rk)
            };
            encode_with_content(out, channel, ids, args, &msg, frame_max);
            if consumer.written(msg.body().len()) {
                window.dispatch();
            }
        }
        Out::GetOk {
            channel,
            delivery_tag,
            redelivered,
            message_count,
            msg,
        } => {
            let ids = (BasicGetOk::CLASS_ID, BasicGetOk::METHOD_ID);
            let (tag, count) = (delivery_tag, message_count);
            let args = |out: &mut BytesMut, ex: &str, rk: &str| {
                BasicGetOk::encode_args_borrowed(out, tag, redelivered, ex, rk, count)
            };
            encode_with_content(out, channel, ids, args, &msg, frame_max);
        }
        Out::Return {
            channel,
            reply_code,
            reply_text,
            msg,
        } => {
            let ids = (BasicReturn::CLASS_ID, BasicReturn::METHOD_ID);
            let args = |out: &mut BytesMut, ex: &str, rk: &str| {
                BasicReturn::encode_args_borrowed(out, reply_code, &reply_text, ex, rk)
            };
            encode_with_content(out, channel, ids, args, &msg, frame_max);
        }
    }
}

/// Runs until `done` is cancelled (then flushes what is queued) or the socket fails.
/// Returns the socket, still open: the connection decides when to close it.
pub(crate) async fn run(
    mut socket: OwnedWriteHalf,
    mut rx: OutRx,
    frame_max: u32,
    heartbeat: u16,
    info: Arc<ConnectionInfo>,
    done: CancellationToken,
) -> OwnedWriteHalf {
    // Grows with the traffic; an idle connection keeps almost nothing.
    let mut buf = BytesMut::new();
    let period = if heartbeat > 0 {
        Duration::from_millis(heartbeat as u64 * 500)
    } else {
        Duration::from_secs(3600 * 24 * 365)
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut wrote_since_tick = false;
    loop {
        let first = tokio::select! {
            biased;
            item = rx.rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
            _ = ticker.tick(), if heartbeat > 0 => {
                if !wrote_since_tick {
                    encode_heartbeat(&mut buf);
                    if flush(&mut socket, &mut buf, &info).await.is_err() {
                        break;
                    }
                }
                wrote_since_tick = false;
                continue;
            }
            _ = done.cancelled() => break,
        };
        let mut encoded = Encoded::default();
        encode(&mut buf, first, frame_max, &mut encoded);
        while buf.len() < BATCH_BYTES {
            match rx.rx.try_recv() {
                Ok(item) => encode(&mut buf, item, frame_max, &mut encoded),
                Err(_) => break,
            }
        }
        let flushed = flush(&mut socket, &mut buf, &info).await;
        // Only now is the memory gone (the batch sat in `buf` while the socket was full).
        rx.backlog.sub(encoded.0, encoded.1);
        if flushed.is_err() {
            done.cancel();
            return socket;
        }
        wrote_since_tick = true;
    }
    // Drain what was queued before the end (e.g. connection.close).
    let mut encoded = Encoded::default();
    while let Ok(item) = rx.rx.try_recv() {
        encode(&mut buf, item, frame_max, &mut encoded);
    }
    let _ = flush(&mut socket, &mut buf, &info).await;
    rx.backlog.sub(encoded.0, encoded.1);
    socket
}

async fn flush(
    socket: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    info: &ConnectionInfo,
) -> std::io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    socket.write_all(buf).await?;
    info.bytes_out
        .fetch_add(buf.len() as u64, Ordering::Relaxed);
    buf.clear();
    if buf.capacity() > 4 * BATCH_BYTES {
        *buf = BytesMut::new();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::frame::{parse_frame, Frame};
    use crate::amqp::methods::class;
    use crate::content::Properties;
    use crate::core::message::Names;

    /// The borrowed encoders write what the generic method encoder writes, content
    /// frames included; a routing key over 255 bytes is cut on a character boundary by
    /// both.
    #[test]
    fn borrowed_encoders_match_the_method_structs() {
        let props = Properties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        let rk = "\u{20AC}".repeat(100);
        let names = Names::new("ex", &rk);
        let msg = Message::new(1, names, &props.to_bytes(), &props, b"body");
        let deliver = BasicDeliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "ex".into(),
            routing_key: rk.clone(),
        };
        let get_ok = BasicGetOk {
            delivery_tag: 7,
            redelivered: false,
            exchange: "ex".into(),
            routing_key: rk.clone(),
            message_count: 3,
        };
        let ret = BasicReturn {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "ex".into(),
            routing_key: rk.clone(),
        };
        type Args = Box<dyn Fn(&mut BytesMut, &str, &str)>;
        let cases: [(Method, (u16, u16), Args); 3] = [
            (
                deliver.into(),
                (BasicDeliver::CLASS_ID, BasicDeliver::METHOD_ID),
                Box::new(|out, ex, rk| {
                    BasicDeliver::encode_args_borrowed(out, "ctag", 42, true, ex, rk)
                }),
            ),
            (
                get_ok.into(),
                (BasicGetOk::CLASS_ID, BasicGetOk::METHOD_ID),
                Box::new(|out, ex, rk| BasicGetOk::encode_args_borrowed(out, 7, false, ex, rk, 3)),
            ),
            (
                ret.into(),
                (BasicReturn::CLASS_ID, BasicReturn::METHOD_ID),
                Box::new(|out, ex, rk| {
                    BasicReturn::encode_args_borrowed(out, 312, "NO_ROUTE", ex, rk)
                }),
            ),
        ];
        for (method, ids, args) in cases {
            let mut borrowed = BytesMut::new();
            encode_with_content(&mut borrowed, 7, ids, args, &msg, 4096);
            let mut generic = BytesMut::new();
            encode_method(&mut generic, 7, &method);
            encode_content(
                &mut generic,
                7,
                class::BASIC,
                msg.properties(),
                msg.body(),
                4096,
            );
            assert_eq!(borrowed, generic, "{}", method.name());
            let frame = parse_frame(&mut borrowed, 4096).unwrap();
            let Some(Frame::Method { method: back, .. }) = frame else {
                panic!("{}: not a method frame", method.name());
            };
            assert_eq!(back.name(), method.name());
        }
    }
}
