//! One AMQP channel: its state and the routing of its methods to a handler per class
//! (mini-redis style: one file per class, same shape in each):
//!
//! - [`exchange`]: declare, delete, bind, unbind;
//! - [`queue`]: declare, bind, unbind, purge, delete;
//! - [`basic`]: qos, consume, cancel, get, ack / nack / reject, recover; delivery tags;
//! - [`publish`]: basic.publish and its content (header, body frames) up to routing;
//! - [`confirm`]: publisher confirms; [`tx`]: transactions.
//!
//! Grammar (AMQP 0-9-1, channel class):
//! `channel = open-channel *use-channel close-channel`;
//! `open-channel = C:OPEN S:OPEN-OK`; `close-channel = C:CLOSE S:CLOSE-OK / S:CLOSE C:CLOSE-OK`.
//! A publish is `C:PUBLISH content` where `content = header *body` until body-size bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::error::AmqpError;
use super::methods::*;
use super::writer::{Out, OutTx};
use crate::core::message::Names;
use crate::core::{
    Broker, ConnectionInfo, Consumer, Credit, Delivered, DeliverySink, Queue, VHost,
};

mod basic;
mod confirm;
mod exchange;
mod publish;
mod queue;
mod tx;

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
        counters
            .protocol(crate::amqp::PROTOCOL)
            .messages_delivered
            .inc();
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

/// A channel's state, owned by the connection's reader task.
pub(crate) struct Channel {
    id: u16,
    sink: Arc<ChannelSink>,
    consumers: HashMap<String, (Arc<Queue>, Arc<Consumer>)>,
    prefetch: u32,
    credit: Arc<Credit>,
    confirm: Option<confirm::Confirms>,
    tx: Option<Vec<tx::TxOp>>,
    publish: Option<publish::PendingPublish>,
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

fn fail(code: u16, text: impl AsRef<str>) -> AmqpError {
    AmqpError::new(code, text)
}

/// 406 PRECONDITION_FAILED unless `holds`.
fn precondition(holds: bool, text: &str) -> Result<(), AmqpError> {
    if holds {
        Ok(())
    } else {
        Err(fail(reply::PRECONDITION_FAILED, text))
    }
}

/// A method the server does not take on a channel (e.g. one it only sends).
fn unexpected(method: &Method) -> AmqpError {
    fail(
        reply::COMMAND_INVALID,
        format!("unexpected method {} on a channel", method.name()),
    )
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
            return self.start_publish(p);
        }
        let result = self.dispatch(ctx, &method);
        result.map_err(|e| if e.class_id == 0 { e.on(&method) } else { e })
    }

    /// Checks permissions, then hands the method to its class's handler.
    fn dispatch(&mut self, ctx: &ConnCtx, method: &Method) -> Result<(), AmqpError> {
        let queue = super::access::queue_of(method)
            .map(|n| self.default_queue(n))
            .transpose()?;
        super::access::check(ctx, method, queue.as_deref())?;
        match method.class_id() {
            ExchangeDeclare::CLASS_ID => exchange::handle(self, ctx, method),
            QueueDeclare::CLASS_ID => queue::handle(self, ctx, method),
            BasicQos::CLASS_ID => basic::handle(self, ctx, method),
            ConfirmSelect::CLASS_ID => confirm::handle(self, ctx, method),
            TxSelect::CLASS_ID => tx::handle(self, ctx, method),
            ChannelFlow::CLASS_ID => self.flow(ctx, method),
            _ => Err(unexpected(method)),
        }
    }

    /// The channel class methods the connection leaves to the channel.
    fn flow(&mut self, ctx: &ConnCtx, method: &Method) -> Result<(), AmqpError> {
        match method {
            Method::ChannelFlow(m) => {
                if !m.active {
                    return Err(fail(reply::NOT_IMPLEMENTED, "active=false"));
                }
                self.reply(ctx, ChannelFlowOk { active: true });
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            other => Err(unexpected(other)),
        }
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
