//! The connection's single writer: everything bound for the client (replies, deliveries,
//! heartbeats) goes through one unbounded queue to this task, which encodes whatever is
//! pending into one buffer and writes it with one syscall, flushing when the queue runs dry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{encode_content, encode_heartbeat, encode_method};
use super::methods::{BasicGetOk, BasicReturn, Method, FRAME_END, FRAME_METHOD};
use crate::core::{ConnectionInfo, Consumer, Message, Queue};

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
        /// For a no-ack consumer: the queue to dispatch again once this is written.
        window: Option<Arc<Queue>>,
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

/// Sender half handed to channels and consumers.
pub(crate) type OutTx = mpsc::UnboundedSender<Out>;

const BATCH_BYTES: usize = 256 * 1024;

fn put_shortstr(out: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(255)];
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

/// basic.deliver encoded by hand: it is the hot path, and this avoids building a
/// method struct (three owned strings) per delivery.
pub(crate) fn encode_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    let size_at = out.len();
    out.put_u32(0);
    let start = out.len();
    out.put_u16(60);
    out.put_u16(60);
    put_shortstr(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_shortstr(out, exchange);
    put_shortstr(out, routing_key);
    let size = (out.len() - start) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

fn encode(out: &mut BytesMut, item: Out, frame_max: u32) {
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
            encode_deliver(
                out,
                channel,
                &consumer.tag,
                delivery_tag,
                redelivered,
                msg.exchange(),
                msg.routing_key(),
            );
            encode_content(out, channel, 60, msg.properties(), msg.body(), frame_max);
            if let Some(queue) = window {
                if consumer.written() {
                    queue.dispatch();
                }
            }
        }
        Out::GetOk {
            channel,
            delivery_tag,
            redelivered,
            message_count,
            msg,
        } => {
            let m = Method::BasicGetOk(BasicGetOk {
                delivery_tag,
                redelivered,
                exchange: msg.exchange().to_string(),
                routing_key: msg.routing_key().to_string(),
                message_count,
            });
            encode_method(out, channel, &m);
            encode_content(out, channel, 60, msg.properties(), msg.body(), frame_max);
        }
        Out::Return {
            channel,
            reply_code,
            reply_text,
            msg,
        } => {
            let m = Method::BasicReturn(BasicReturn {
                reply_code,
                reply_text,
                exchange: msg.exchange().to_string(),
                routing_key: msg.routing_key().to_string(),
            });
            encode_method(out, channel, &m);
            encode_content(out, channel, 60, msg.properties(), msg.body(), frame_max);
        }
    }
}

/// Runs until `done` is cancelled (then flushes what is queued) or the socket fails.
/// Returns the socket, still open: the connection decides when to close it.
pub(crate) async fn run(
    mut socket: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
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
            item = rx.recv() => match item {
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
        encode(&mut buf, first, frame_max);
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(item) => encode(&mut buf, item, frame_max),
                Err(_) => break,
            }
        }
        if flush(&mut socket, &mut buf, &info).await.is_err() {
            done.cancel();
            return socket;
        }
        wrote_since_tick = true;
    }
    // Drain what was queued before the end (e.g. connection.close).
    while let Ok(item) = rx.try_recv() {
        encode(&mut buf, item, frame_max);
    }
    let _ = flush(&mut socket, &mut buf, &info).await;
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
    use crate::amqp::methods::BasicDeliver;

    #[test]
    fn hand_encoded_deliver_matches_generated() {
        let mut a = BytesMut::new();
        encode_deliver(&mut a, 7, "ctag", 42, true, "ex", "rk");
        let mut b = BytesMut::new();
        let m = Method::BasicDeliver(BasicDeliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        });
        encode_method(&mut b, 7, &m);
        assert_eq!(a, b);
    }
}
