//! The basic class, except publishing ([`super::publish`]): qos, consume, cancel, get,
//! the settle methods (ack, nack, reject) and recover, with the channel's delivery tags
//! and unacknowledged deliveries.

use super::{fail, unexpected, Channel, ConnCtx, DIRECT_REPLY_TO};
use crate::amqp::error::AmqpError;
use crate::amqp::methods::*;
use crate::amqp::writer::Out;
use crate::core::{Consumer, Delivered};

pub(super) fn handle(ch: &mut Channel, ctx: &ConnCtx, method: &Method) -> Result<(), AmqpError> {
    match method {
        Method::BasicAck(m) => ch.settle_method(ctx, m.delivery_tag, m.multiple, Settle::Ack)?,
        Method::BasicNack(m) => {
            ch.settle_method(ctx, m.delivery_tag, m.multiple, settle_kind(m.requeue))?
        }
        Method::BasicReject(m) => {
            ch.settle_method(ctx, m.delivery_tag, false, settle_kind(m.requeue))?
        }
        Method::BasicQos(m) => {
            if m.prefetch_size != 0 {
                return Err(fail(
                    reply::NOT_IMPLEMENTED,
                    format!("prefetch_size!=0 ({})", m.prefetch_size),
                ));
            }
            if m.global {
                ch.credit.set_limit(m.prefetch_count as u32);
                ch.poke_consumers();
            } else {
                ch.prefetch = m.prefetch_count as u32;
            }
            ch.reply(ctx, BasicQosOk {});
        }
        Method::BasicConsume(m) => ch.consume(ctx, m)?,
        Method::BasicCancel(m) => {
            if let Some((q, c)) = ch.consumers.remove(&m.consumer_tag) {
                ctx.vhost.cancel_consumer(&q, &c);
            }
            if !m.no_wait {
                ch.reply(
                    ctx,
                    BasicCancelOk {
                        consumer_tag: m.consumer_tag.clone(),
                    },
                );
            }
        }
        Method::BasicGet(m) => ch.get(ctx, m)?,
        Method::BasicRecover(m) => {
            // recover-ok goes out before the redeliveries: clients drop deliveries that
            // precede it.
            let list = ch.recoverable(m.requeue)?;
            ch.reply(ctx, BasicRecoverOk {});
            list.into_iter().for_each(|(_, d)| d.requeue());
        }
        Method::BasicRecoverAsync(m) => {
            ch.recoverable(m.requeue)?
                .into_iter()
                .for_each(|(_, d)| d.requeue());
        }
        other => return Err(unexpected(other)),
    }
    Ok(())
}

/// Deliveries taken off the unacked list by one ack, nack, reject or recover: a single
/// one without a heap allocation, or a run of them.
pub(super) struct Taken {
    one: Option<(u64, Delivered)>,
    many: Vec<(u64, Delivered)>,
}

impl IntoIterator for Taken {
    type Item = (u64, Delivered);
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<(u64, Delivered)>,
        std::vec::IntoIter<(u64, Delivered)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.one.into_iter().chain(self.many)
    }
}

/// What a settle method does with the deliveries it names.
#[derive(Clone, Copy)]
pub(super) enum Settle {
    Ack,
    Requeue,
    Discard,
}

fn settle_kind(requeue: bool) -> Settle {
    if requeue {
        Settle::Requeue
    } else {
        Settle::Discard
    }
}

impl Channel {
    /// basic.ack / nack / reject: settled now, or at commit in a transaction.
    fn settle_method(
        &mut self,
        ctx: &ConnCtx,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), AmqpError> {
        let list = self.take_unacked(tag, multiple)?;
        match &mut self.tx {
            Some(ops) => ops.push(super::tx::TxOp::Settle(how, list)),
            None => self.settle(ctx, how, list),
        }
        Ok(())
    }

    fn consume(&mut self, ctx: &ConnCtx, m: &BasicConsume) -> Result<(), AmqpError> {
        let queue = if m.queue == DIRECT_REPLY_TO {
            // RabbitMQ's direct reply-to: a hidden per-channel queue stands in for the
            // pseudo-queue; publishes from this channel with reply_to set to the
            // pseudo-queue name are rewritten to point at it.
            if !m.no_ack {
                return Err(fail(
                    reply::PRECONDITION_FAILED,
                    "reply consumer cannot acknowledge",
                ));
            }
            let q = ctx.vhost.declare_reply_queue(ctx.conn_id)?;
            self.reply_queue = Some(q.name.clone());
            q
        } else {
            ctx.vhost
                .queue(&self.default_queue(&m.queue)?, ctx.conn_id)?
        };
        let tag = if m.consumer_tag.is_empty() {
            ctx.broker.generate_name("amq.ctag-")
        } else {
            m.consumer_tag.clone()
        };
        // A consumer cancelled by its queue's deletion leaves a stale entry behind.
        self.consumers.retain(|_, (_, c)| c.is_active());
        if self.consumers.contains_key(&tag) {
            return Err(fail(
                reply::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let consumer = Consumer::new(
            tag.clone(),
            m.no_ack,
            m.exclusive,
            ctx.conn_id,
            self.prefetch,
            self.credit.clone(),
            self.sink.clone(),
        );
        // Registered inactive so that consume-ok reaches the client before any delivery.
        consumer.set_active(false);
        queue.add_consumer(consumer.clone())?;
        if !m.no_wait {
            self.reply(
                ctx,
                BasicConsumeOk {
                    consumer_tag: tag.clone(),
                },
            );
        }
        consumer.set_active(true);
        queue.dispatch();
        self.consumers.insert(tag, (queue, consumer));
        Ok(())
    }

    fn get(&mut self, ctx: &ConnCtx, m: &BasicGet) -> Result<(), AmqpError> {
        let queue = ctx
            .vhost
            .queue(&self.default_queue(&m.queue)?, ctx.conn_id)?;
        let counters = ctx.broker.counters();
        match queue.get(m.no_ack) {
            None => {
                counters.get_empty.inc();
                self.reply(
                    ctx,
                    BasicGetEmpty {
                        reserved_1: String::new(),
                    },
                );
            }
            Some((d, remaining)) => {
                if m.no_ack {
                    counters.delivered_get_auto_ack.inc();
                } else {
                    counters.delivered_get_manual_ack.inc();
                }
                if d.redelivered() {
                    counters.redelivered.inc();
                }
                counters
                    .protocol(crate::amqp::PROTOCOL)
                    .messages_delivered
                    .inc();
                let mut st = self.sink.state.lock();
                st.next_tag += 1;
                let tag = st.next_tag;
                let out = Out::GetOk {
                    channel: self.id,
                    delivery_tag: tag,
                    redelivered: d.redelivered(),
                    message_count: remaining as u32,
                    msg: d.entry.msg.clone(),
                };
                if !m.no_ack {
                    st.unacked.push_back((tag, d));
                }
                drop(st);
                let _ = ctx.out.send(out);
            }
        }
        Ok(())
    }

    /// Takes the unacked deliveries a settle method refers to.
    fn take_unacked(&self, tag: u64, multiple: bool) -> Result<Taken, AmqpError> {
        let mut st = self.sink.state.lock();
        let unacked = &mut st.unacked;
        if multiple {
            let n = if tag == 0 {
                unacked.len()
            } else {
                unacked.partition_point(|(t, _)| *t <= tag)
            };
            if n == 0 && tag != 0 {
                return Err(fail(
                    reply::PRECONDITION_FAILED,
                    format!("unknown delivery tag {tag}"),
                ));
            }
            Ok(Taken {
                one: None,
                many: unacked.drain(..n).collect(),
            })
        } else {
            match unacked.binary_search_by_key(&tag, |(t, _)| *t) {
                // The common single ack allocates nothing.
                Ok(i) => Ok(Taken {
                    one: unacked.remove(i),
                    many: Vec::new(),
                }),
                Err(_) => Err(fail(
                    reply::PRECONDITION_FAILED,
                    format!("unknown delivery tag {tag}"),
                )),
            }
        }
    }

    /// Acks, requeues or discards what a settle method took.
    pub(super) fn settle(&mut self, ctx: &ConnCtx, how: Settle, list: Taken) {
        let counters = ctx.broker.counters();
        for (_, d) in list {
            match how {
                Settle::Ack => {
                    counters.acknowledged.inc();
                    d.ack();
                }
                Settle::Requeue => d.requeue(),
                Settle::Discard => d.discard(),
            }
        }
        if self.credit.limit() > 0 {
            self.poke_consumers();
        }
    }

    /// Puts deliveries a rolled-back transaction had taken back on the unacked list,
    /// in tag order: their messages stay unacked, as before the transaction.
    pub(super) fn untake(&self, list: Taken) {
        let mut st = self.sink.state.lock();
        for (tag, d) in list {
            let pos = st.unacked.partition_point(|(t, _)| *t < tag);
            st.unacked.insert(pos, (tag, d));
        }
    }

    /// The unacked deliveries basic.recover gives back (requeue=false is refused with
    /// 540, as RabbitMQ does).
    fn recoverable(&mut self, requeue: bool) -> Result<Taken, AmqpError> {
        if !requeue {
            return Err(fail(reply::NOT_IMPLEMENTED, "requeue=false"));
        }
        self.take_unacked(0, true)
    }

    /// Channel-wide credit was freed or raised: let every queue we consume from dispatch.
    fn poke_consumers(&self) {
        for (q, _) in self.consumers.values() {
            q.dispatch();
        }
    }
}
