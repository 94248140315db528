//! One AMQP channel: its methods, content assembly, deliveries and their tags,
//! prefetch, publisher confirms and transactions.
//!
//! Grammar (AMQP 0-9-1, channel class):
//! `channel = open-channel *use-channel close-channel`;
//! `open-channel = C:OPEN S:OPEN-OK`; `close-channel = C:CLOSE S:CLOSE-OK / S:CLOSE C:CLOSE-OK`.
//! A publish is `C:PUBLISH content` where `content = header *body` until body-size bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::error::AmqpError;
use super::methods::*;
use super::writer::{Out, OutTx};
use crate::content::Properties;
use crate::core::message::Names;
use crate::core::{
    Broker, ConnectionInfo, Consumer, Credit, Delivered, DeliverySink, ExchangeOptions, Message,
    Queue, QueueOptions, VHost,
};
use crate::store::SyncTicket;

/// What a channel needs from its connection.
pub(crate) struct ConnCtx {
    pub broker: Broker,
    pub vhost: Arc<VHost>,
    pub conn_id: u64,
    pub user: String,
    pub out: OutTx,
    pub cancel_notify: bool,
    pub max_message: u64,
    pub info: Arc<ConnectionInfo>,
}

/// The part of a channel that queues call into (under their locks): assigns delivery
/// tags, remembers unacknowledged deliveries and queues the bytes for the writer.
pub(crate) struct ChannelSink {
    channel: u16,
    broker: Broker,
    out: OutTx,
    cancel_notify: bool,
    state: Mutex<SinkState>,
}

#[derive(Default)]
struct SinkState {
    next_tag: u64,
    unacked: VecDeque<(u64, Delivered)>,
    closed: bool,
}

impl DeliverySink for ChannelSink {
    fn deliver(&self, consumer: &Arc<Consumer>, delivery: Delivered) -> Result<(), Delivered> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(delivery);
        }
        st.next_tag += 1;
        let tag = st.next_tag;
        let redelivered = delivery.redelivered();
        let out = Out::Deliver {
            channel: self.channel,
            consumer: consumer.clone(),
            delivery_tag: tag,
            redelivered,
            msg: delivery.entry.msg.clone(),
            window: delivery.queue.clone(),
        };
        if !delivery.auto_ack {
            st.unacked.push_back((tag, delivery));
        } else {
            // Settled already: dropping it touches nothing.
            drop(delivery);
        }
        drop(st);
        let counters = self.broker.counters();
        if consumer.no_ack {
            counters.delivered_consume_auto_ack.inc();
        } else {
            counters.delivered_consume_manual_ack.inc();
        }
        if redelivered {
            counters.redelivered.inc();
        }
        counters.protocol(super::PROTOCOL).messages_delivered.inc();
        let _ = self.out.send(out);
        Ok(())
    }

    fn cancelled(&self, consumer: &Arc<Consumer>) {
        if self.cancel_notify {
            let _ = self.out.send(Out::Method(
                self.channel,
                Method::BasicCancel(BasicCancel {
                    consumer_tag: consumer.tag.clone(),
                    no_wait: true,
                }),
            ));
        }
    }
}

struct PendingPublish {
    method: BasicPublish,
    header: Option<(u64, Bytes)>,
    body: Vec<Bytes>,
    received: u64,
}

enum TxOp {
    Publish(BasicPublish, Message),
    /// Deliveries taken off the unacked list at ack time (so an unknown tag fails then,
    /// as in RabbitMQ), settled at commit or put back at rollback.
    Settle(Settle, Taken),
}

/// Deliveries taken off the unacked list by one ack, nack, reject or recover: a single
/// one without a heap allocation, or a run of them.
struct Taken {
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

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Discard,
}

/// A channel's state, owned by the connection's reader task.
pub(crate) struct Channel {
    id: u16,
    sink: Arc<ChannelSink>,
    consumers: HashMap<String, (Arc<Queue>, Arc<Consumer>)>,
    prefetch: u32,
    credit: Arc<Credit>,
    confirm: Option<Confirms>,
    tx: Option<Vec<TxOp>>,
    publish: Option<PendingPublish>,
    last_queue: Option<String>,
    last_names: Arc<Names>,
    /// Counted in the publishers gauge since its first publish.
    publishing: bool,
    /// The hidden queue of this channel's direct reply-to consumer.
    reply_queue: Option<String>,
    publish_allowed: super::access::PublishCache,
}

/// RabbitMQ's direct reply-to pseudo-queue.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

struct Confirms {
    next_seq: u64,
    tx: mpsc::UnboundedSender<Pending>,
}

fn fail(code: u16, text: impl AsRef<str>) -> AmqpError {
    AmqpError::new(code, text)
}

impl Channel {
    pub(crate) fn new(id: u16, ctx: &ConnCtx) -> Self {
        Self {
            id,
            sink: Arc::new(ChannelSink {
                channel: id,
                broker: ctx.broker.clone(),
                out: ctx.out.clone(),
                cancel_notify: ctx.cancel_notify,
                state: Mutex::new(SinkState::default()),
            }),
            consumers: HashMap::new(),
            prefetch: 0,
            credit: Arc::new(Credit::new(0)),
            confirm: None,
            tx: None,
            publish: None,
            last_queue: None,
            last_names: Arc::default(),
            publishing: false,
            reply_queue: None,
            publish_allowed: Default::default(),
        }
    }

    fn reply(&self, ctx: &ConnCtx, m: impl Into<Method>) {
        let _ = ctx.out.send(Out::Method(self.id, m.into()));
    }

    /// True while a publish waits for its header or body frames.
    pub(crate) fn expecting_content(&self) -> bool {
        self.publish.is_some()
    }

    /// Handles one method (anything but channel.open/close, which the connection owns).
    pub(crate) fn handle(&mut self, ctx: &ConnCtx, method: Method) -> Result<(), AmqpError> {
        // The hot path: a publish keeps its decoded method, no copy.
        if let Method::BasicPublish(p) = method {
            if p.immediate {
                // RabbitMQ 3.x removed immediate delivery and answers the same way.
                return Err(fail(reply::NOT_IMPLEMENTED, "immediate=true").on_ids(60, 40));
            }
            self.publish = Some(PendingPublish {
                method: p,
                header: None,
                body: Vec::new(),
                received: 0,
            });
            return Ok(());
        }
        let result = self.dispatch(ctx, &method);
        result.map_err(|e| if e.class_id == 0 { e.on(&method) } else { e })
    }

    fn dispatch(&mut self, ctx: &ConnCtx, method: &Method) -> Result<(), AmqpError> {
        let v = &ctx.vhost;
        let conn = ctx.conn_id;
        let queue = super::access::queue_of(method)
            .map(|n| self.default_queue(n))
            .transpose()?;
        super::access::check(ctx, method, queue.as_deref())?;
        match method {
            Method::BasicAck(_) | Method::BasicNack(_) | Method::BasicReject(_) => {
                let (tag, multiple, how) = match method {
                    Method::BasicAck(m) => (m.delivery_tag, m.multiple, Settle::Ack),
                    Method::BasicNack(m) => (m.delivery_tag, m.multiple, settle_kind(m.requeue)),
                    Method::BasicReject(m) => (m.delivery_tag, false, settle_kind(m.requeue)),
                    _ => unreachable!("matched above"),
                };
                let list = self.take_unacked(tag, multiple)?;
                match &mut self.tx {
                    Some(ops) => ops.push(TxOp::Settle(how, list)),
                    None => self.settle(ctx, how, list),
                }
            }
            Method::ExchangeDeclare(m) => {
                if m.exchange.is_empty() && m.passive {
                    // RabbitMQ accepts a passive declare of the default exchange.
                } else {
                    v.declare_exchange(
                        &m.exchange,
                        &m.kind,
                        ExchangeOptions {
                            durable: m.durable,
                            auto_delete: m.auto_delete,
                            internal: m.internal,
                            arguments: m.arguments.clone(),
                        },
                        m.passive,
                    )?;
                }
                if !m.no_wait {
                    self.reply(ctx, ExchangeDeclareOk {});
                }
            }
            Method::ExchangeDelete(m) => {
                v.delete_exchange(&m.exchange, m.if_unused)?;
                if !m.no_wait {
                    self.reply(ctx, ExchangeDeleteOk {});
                }
            }
            Method::ExchangeBind(m) => {
                v.bind_exchange(
                    &m.destination,
                    &m.source,
                    &m.routing_key,
                    m.arguments.clone(),
                )?;
                if !m.no_wait {
                    self.reply(ctx, ExchangeBindOk {});
                }
            }
            Method::ExchangeUnbind(m) => {
                v.unbind_exchange(&m.destination, &m.source, &m.routing_key, &m.arguments)?;
                if !m.no_wait {
                    self.reply(ctx, ExchangeUnbindOk {});
                }
            }
            Method::QueueDeclare(m) => {
                let server_named = !m.passive && m.queue.is_empty();
                let name = if m.passive {
                    self.default_queue(&m.queue)?
                } else if server_named {
                    // Named here, not in the core, so that permissions are checked on
                    // the actual amq.gen-* name, as RabbitMQ does.
                    ctx.broker.generate_name("amq.gen-")
                } else {
                    m.queue.clone()
                };
                super::access::queue_declare(ctx, m, &name)?;
                let options = QueueOptions {
                    durable: m.durable,
                    exclusive: m.exclusive,
                    auto_delete: m.auto_delete,
                    arguments: m.arguments.clone(),
                };
                let d = if server_named {
                    v.declare_server_named_queue(&name, options, conn)?
                } else {
                    v.declare_queue(&name, options, m.passive, conn)?
                };
                self.last_queue = Some(d.queue.name.clone());
                if !m.no_wait {
                    self.reply(
                        ctx,
                        QueueDeclareOk {
                            queue: d.queue.name.clone(),
                            message_count: d.message_count,
                            consumer_count: d.consumer_count,
                        },
                    );
                }
            }
            Method::QueueBind(m) => {
                let queue = self.default_queue(&m.queue)?;
                v.bind_queue(
                    &queue,
                    &m.exchange,
                    &m.routing_key,
                    m.arguments.clone(),
                    conn,
                )?;
                if !m.no_wait {
                    self.reply(ctx, QueueBindOk {});
                }
            }
            Method::QueueUnbind(m) => {
                let queue = self.default_queue(&m.queue)?;
                v.unbind_queue(&queue, &m.exchange, &m.routing_key, &m.arguments, conn)?;
                self.reply(ctx, QueueUnbindOk {});
            }
            Method::QueuePurge(m) => {
                let queue = self.default_queue(&m.queue)?;
                let n = v.purge_queue(&queue, conn)?;
                if !m.no_wait {
                    self.reply(ctx, QueuePurgeOk { message_count: n });
                }
            }
            Method::QueueDelete(m) => {
                let queue = self.default_queue(&m.queue)?;
                let n = v.delete_queue(&queue, m.if_unused, m.if_empty, conn)?;
                if !m.no_wait {
                    self.reply(ctx, QueueDeleteOk { message_count: n });
                }
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(fail(
                        reply::NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({})", m.prefetch_size),
                    ));
                }
                if m.global {
                    self.credit.set_limit(m.prefetch_count as u32);
                    self.poke_consumers();
                } else {
                    self.prefetch = m.prefetch_count as u32;
                }
                self.reply(ctx, BasicQosOk {});
            }
            Method::BasicConsume(m) => self.consume(ctx, m)?,
            Method::BasicCancel(m) => {
                if let Some((q, c)) = self.consumers.remove(&m.consumer_tag) {
                    ctx.vhost.cancel_consumer(&q, &c);
                }
                if !m.no_wait {
                    self.reply(
                        ctx,
                        BasicCancelOk {
                            consumer_tag: m.consumer_tag.clone(),
                        },
                    );
                }
            }
            Method::BasicGet(m) => self.get(ctx, m)?,
            Method::BasicRecover(m) => {
                // recover-ok goes out before the redeliveries: clients drop deliveries
                // that precede it.
                let list = self.recoverable(m.requeue)?;
                self.reply(ctx, BasicRecoverOk {});
                list.into_iter().for_each(|(_, d)| d.requeue());
            }
            Method::BasicRecoverAsync(m) => {
                self.recoverable(m.requeue)?
                    .into_iter()
                    .for_each(|(_, d)| d.requeue());
            }
            Method::ConfirmSelect(m) => {
                if self.tx.is_some() {
                    return Err(fail(
                        reply::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirm.is_none() {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(confirm_task(
                        rx,
                        ctx.out.clone(),
                        self.id,
                        ctx.broker.clone(),
                    ));
                    self.confirm = Some(Confirms { next_seq: 1, tx });
                }
                if !m.no_wait {
                    self.reply(ctx, ConfirmSelectOk {});
                }
            }
            Method::TxSelect(_) => {
                if self.confirm.is_some() {
                    return Err(fail(
                        reply::PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(Vec::new());
                }
                self.reply(ctx, TxSelectOk {});
            }
            Method::TxCommit(_) => {
                let Some(ops) = self.tx.replace(Vec::new()) else {
                    return Err(fail(
                        reply::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                for op in ops {
                    match op {
                        TxOp::Publish(p, msg) => self.route(ctx, &p, msg)?,
                        TxOp::Settle(how, list) => self.settle(ctx, how, list),
                    }
                }
                self.reply(ctx, TxCommitOk {});
            }
            Method::TxRollback(_) => {
                let Some(ops) = self.tx.replace(Vec::new()) else {
                    return Err(fail(
                        reply::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                // Rolled-back acks leave their messages unacked, as before the transaction.
                let mut st = self.sink.state.lock();
                for op in ops {
                    if let TxOp::Settle(_, list) = op {
                        for (tag, d) in list {
                            let pos = st.unacked.partition_point(|(t, _)| *t < tag);
                            st.unacked.insert(pos, (tag, d));
                        }
                    }
                }
                drop(st);
                self.reply(ctx, TxRollbackOk {});
            }
            Method::ChannelFlow(m) => {
                if !m.active {
                    return Err(fail(reply::NOT_IMPLEMENTED, "active=false"));
                }
                self.reply(ctx, ChannelFlowOk { active: true });
            }
            Method::ChannelFlowOk(_) => {}
            other => {
                return Err(fail(
                    reply::COMMAND_INVALID,
                    format!("unexpected method {} on a channel", other.name()),
                ))
            }
        }
        Ok(())
    }

    /// An empty queue name means "the last queue declared on this channel" (spec rule,
    /// kept by RabbitMQ).
    fn default_queue(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| fail(reply::NOT_FOUND, "no previously declared queue"))
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
                counters.protocol(super::PROTOCOL).messages_delivered.inc();
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

    fn settle(&mut self, ctx: &ConnCtx, how: Settle, list: Taken) {
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

    /// A content header frame.
    pub(crate) fn header(
        &mut self,
        ctx: &ConnCtx,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    ) -> Result<(), AmqpError> {
        let Some(p) = self.publish.as_mut().filter(|p| p.header.is_none()) else {
            return Err(fail(
                reply::UNEXPECTED_FRAME,
                "unexpected content header frame",
            ));
        };
        if class_id != 60 {
            return Err(fail(
                reply::FRAME_ERROR,
                format!("content header for class {class_id}"),
            ));
        }
        if body_size > ctx.max_message {
            let e = fail(
                reply::PRECONDITION_FAILED,
                format!(
                    "message size {body_size} is larger than configured max size {}",
                    ctx.max_message
                ),
            )
            .on_ids(60, 40);
            self.publish = None;
            return Err(e);
        }
        p.header = Some((body_size, properties));
        if body_size == 0 {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    /// A content body frame.
    pub(crate) fn body(&mut self, ctx: &ConnCtx, payload: Bytes) -> Result<(), AmqpError> {
        let Some(p) = self.publish.as_mut() else {
            return Err(fail(
                reply::UNEXPECTED_FRAME,
                "unexpected content body frame",
            ));
        };
        let Some((size, _)) = &p.header else {
            return Err(fail(
                reply::UNEXPECTED_FRAME,
                "content body before its header",
            ));
        };
        p.received += payload.len() as u64;
        if p.received > *size {
            return Err(fail(
                reply::FRAME_ERROR,
                "content body longer than declared",
            ));
        }
        p.body.push(payload);
        if p.received == *size {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    fn finish_publish(&mut self, ctx: &ConnCtx) -> Result<(), AmqpError> {
        let p = self.publish.take().expect("publish in progress");
        super::access::publish(ctx, &mut self.publish_allowed, &p.method.exchange)
            .map_err(|e| e.on_ids(60, 40))?;
        let (_, properties) = p.header.expect("header received");
        let mut properties = properties;
        let mut decoded = Properties::decode(&properties).map_err(|e| {
            fail(reply::SYNTAX_ERROR, format!("bad content header: {e}")).on_ids(60, 40)
        })?;
        if let Some(uid) = &decoded.user_id {
            if *uid != ctx.user {
                return Err(fail(
                    reply::PRECONDITION_FAILED,
                    format!(
                        "user_id property set to '{uid}' but authenticated user was '{}'",
                        ctx.user
                    ),
                )
                .on_ids(60, 40));
            }
        }
        if decoded.reply_to.as_deref() == Some(DIRECT_REPLY_TO) {
            let Some(name) = &self.reply_queue else {
                return Err(fail(
                    reply::PRECONDITION_FAILED,
                    "fast reply consumer does not exist",
                )
                .on_ids(60, 40));
            };
            decoded.reply_to = Some(name.clone());
            properties = decoded.to_bytes();
        }
        let names = Names::share(
            &mut self.last_names,
            &p.method.exchange,
            &p.method.routing_key,
        );
        // Properties and body go into one compact allocation, so the read buffer they
        // arrived in is not pinned by queued messages.
        let mut content = BytesMut::with_capacity(properties.len() + p.received as usize);
        content.extend_from_slice(&properties);
        for part in &p.body {
            content.extend_from_slice(part);
        }
        let msg = Message::from_content(
            ctx.broker.next_message_id(),
            names,
            content.freeze(),
            properties.len(),
            &decoded,
        );
        if let Some(ops) = &mut self.tx {
            // Unknown exchanges are reported at publish time, as RabbitMQ does.
            if !p.method.exchange.is_empty() {
                ctx.vhost
                    .exchange(&p.method.exchange)
                    .map_err(|e| AmqpError::from(e).on_ids(60, 40))?;
            }
            ops.push(TxOp::Publish(p.method, msg));
            return Ok(());
        }
        self.route(ctx, &p.method, msg)
    }

    fn route(&mut self, ctx: &ConnCtx, p: &BasicPublish, msg: Message) -> Result<(), AmqpError> {
        let counters = ctx.broker.counters();
        counters.protocol(super::PROTOCOL).messages_received.inc();
        if !self.publishing {
            self.publishing = true;
            counters
                .lifecycle
                .publishers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let returned = if p.mandatory {
            Some(Arc::new(msg.clone()))
        } else {
            None
        };
        let routed = ctx
            .vhost
            .publish(&p.exchange, msg)
            .map_err(|e| AmqpError::from(e).on_ids(60, 40))?;
        if routed.queues == 0 {
            match returned {
                Some(msg) => {
                    counters.unroutable_returned.inc();
                    let _ = ctx.out.send(Out::Return {
                        channel: self.id,
                        reply_code: reply::NO_ROUTE,
                        reply_text: "NO_ROUTE".into(),
                        msg,
                    });
                }
                None => counters.unroutable_dropped.inc(),
            }
        }
        if let Some(c) = &mut self.confirm {
            counters.messages_received_confirm.inc();
            let seq = c.next_seq;
            c.next_seq += 1;
            let _ = c.tx.send(Pending {
                seq,
                ticket: routed.durable,
                rejected: routed.rejected,
            });
        }
        Ok(())
    }

    /// Tears the channel down: cancels its consumers and requeues what it held unacked,
    /// in original order.
    pub(crate) fn close(&mut self, ctx: &ConnCtx) {
        if std::mem::take(&mut self.publishing) {
            let publishers = &ctx.broker.counters().lifecycle.publishers;
            publishers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let unacked = {
            let mut st = self.sink.state.lock();
            st.closed = true;
            std::mem::take(&mut st.unacked)
        };
        for (_, (q, c)) in self.consumers.drain() {
            ctx.vhost.cancel_consumer(&q, &c);
        }
        for (_, d) in unacked {
            d.requeue();
        }
        self.publish = None;
    }
}

fn settle_kind(requeue: bool) -> Settle {
    if requeue {
        Settle::Requeue
    } else {
        Settle::Discard
    }
}

/// One publish awaiting its confirm.
struct Pending {
    seq: u64,
    /// Completes when the message is on disk (persistent into a durable queue).
    ticket: Option<SyncTicket>,
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
