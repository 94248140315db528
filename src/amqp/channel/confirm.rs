//! The confirm class (RabbitMQ's publisher confirms): confirm.select, and the task that
//! sends each publish's ack or nack in publish order.

use tokio::sync::mpsc;

use super::{precondition, unexpected, Channel, ConnCtx};
use crate::amqp::error::AmqpError;
use crate::amqp::methods::*;
use crate::amqp::writer::{Out, OutTx};
use crate::core::Durable;
use crate::core::{Broker, Routed};

pub(super) fn handle(ch: &mut Channel, ctx: &ConnCtx, method: &Method) -> Result<(), AmqpError> {
    let Method::ConfirmSelect(m) = method else {
        return Err(unexpected(method));
    };
    precondition(ch.tx.is_none(), "cannot switch from tx to confirm mode")?;
    if ch.confirm.is_none() {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(confirm_task(rx, ctx.out.clone(), ch.id, ctx.broker.clone()));
        ch.confirm = Some(Confirms { next_seq: 1, tx });
    }
    if !m.no_wait {
        ch.reply(ctx, ConfirmSelectOk {});
    }
    Ok(())
}

/// A channel in confirm mode: the sequence number of its next publish, and the queue to
/// its confirm task.
pub(super) struct Confirms {
    next_seq: u64,
    tx: mpsc::UnboundedSender<Pending>,
}

impl Confirms {
    /// A publish was routed: its confirm follows once it is safe.
    pub(super) fn published(&mut self, routed: Routed) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let _ = self.tx.send(Pending {
            seq,
            ticket: routed.durable,
            rejected: routed.rejected,
        });
    }
}

/// One publish awaiting its confirm.
struct Pending {
    seq: u64,
    /// Completes when the message is on disk (persistent into a durable queue).
    ticket: Option<Durable>,
    /// A queue refused it: the confirm is a nack.
    rejected: bool,
}

/// Sends publisher confirms in publish order, coalescing ready ones into one
/// `basic.ack(multiple)`. A publish waiting for the disk holds back later confirms only
/// until its fsync returns; group commit makes that one fsync for many publishes.
async fn confirm_task(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    out: OutTx,
    channel: u16,
    broker: Broker,
) {
    let send_ack = |upto: u64| {
        let _ = out.send(Out::Method(
            channel,
            Method::BasicAck(BasicAck {
                delivery_tag: upto,
                multiple: true,
            }),
        ));
    };
    while let Some(first) = rx.recv().await {
        let mut pending = Some(first);
        let mut acked: Option<u64> = None;
        let mut count = 0u64;
        while let Some(Pending {
            seq,
            ticket,
            rejected,
        }) = pending.take()
        {
            let ok = !rejected
                && match ticket {
                    Some(t) => t.wait().await.is_ok(),
                    None => true,
                };
            if ok {
                acked = Some(seq);
                count += 1;
            } else {
                if let Some(upto) = acked.take() {
                    send_ack(upto);
                }
                let _ = out.send(Out::Method(
                    channel,
                    Method::BasicNack(BasicNack {
                        delivery_tag: seq,
                        multiple: false,
                        requeue: false,
                    }),
                ));
            }
            pending = rx.try_recv().ok();
        }
        if let Some(upto) = acked {
            send_ack(upto);
        }
        broker.counters().messages_confirmed.add(count);
    }
}
