//! basic.publish: the method, then its content (`header *body` until body-size bytes)
//! assembled into one message, checked and routed; in a transaction it waits for the
//! commit, in confirm mode its confirm is tracked ([`super::confirm`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{fail, Channel, ConnCtx, DIRECT_REPLY_TO};
use crate::amqp::error::AmqpError;
use crate::amqp::methods::*;
use crate::amqp::writer::Out;
use crate::content::Properties;
use crate::core::message::Names;
use crate::core::Message;

/// A publish whose content is still arriving.
pub(super) struct PendingPublish {
    method: BasicPublish,
    header: Option<(u64, Bytes)>,
    body: Vec<Bytes>,
    received: u64,
}

/// Errors about a publish's content name basic.publish, which the client sent before it.
fn on_publish(e: AmqpError) -> AmqpError {
    e.on_ids(BasicPublish::CLASS_ID, BasicPublish::METHOD_ID)
}

impl Channel {
    /// basic.publish: its content frames follow.
    pub(super) fn start_publish(&mut self, p: BasicPublish) -> Result<(), AmqpError> {
        if p.immediate {
            // RabbitMQ 3.x removed immediate delivery and answers the same way.
            return Err(on_publish(fail(reply::NOT_IMPLEMENTED, "immediate=true")));
        }
        self.publish = Some(PendingPublish {
            method: p,
            header: None,
            body: Vec::new(),
            received: 0,
        });
        Ok(())
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
        if class_id != BasicPublish::CLASS_ID {
            return Err(fail(
                reply::FRAME_ERROR,
                format!("content header for class {class_id}"),
            ));
        }
        if body_size > ctx.max_message {
            let e = on_publish(fail(
                reply::PRECONDITION_FAILED,
                format!(
                    "message size {body_size} is larger than configured max size {}",
                    ctx.max_message
                ),
            ));
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
        crate::amqp::access::publish(ctx, &mut self.publish_allowed, &p.method.exchange)
            .map_err(on_publish)?;
        let (_, properties) = p.header.expect("header received");
        let mut properties = properties;
        let mut decoded = Properties::decode(&properties).map_err(|e| {
            on_publish(fail(
                reply::SYNTAX_ERROR,
                format!("bad content header: {e}"),
            ))
        })?;
        if let Some(uid) = &decoded.user_id {
            if *uid != ctx.user {
                return Err(on_publish(fail(
                    reply::PRECONDITION_FAILED,
                    format!(
                        "user_id property set to '{uid}' but authenticated user was '{}'",
                        ctx.user
                    ),
                )));
            }
        }
        if decoded.reply_to.as_deref() == Some(DIRECT_REPLY_TO) {
            let Some(name) = &self.reply_queue else {
                return Err(on_publish(fail(
                    reply::PRECONDITION_FAILED,
                    "fast reply consumer does not exist",
                )));
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
                    .map_err(|e| on_publish(AmqpError::from(e)))?;
            }
            ops.push(super::tx::TxOp::Publish(p.method, msg));
            return Ok(());
        }
        self.route(ctx, &p.method, msg)
    }

    /// Routes a complete message: returned when mandatory and unroutable, confirmed in
    /// confirm mode.
    pub(super) fn route(
        &mut self,
        ctx: &ConnCtx,
        p: &BasicPublish,
        msg: Message,
    ) -> Result<(), AmqpError> {
        let counters = ctx.broker.counters();
        counters
            .protocol(crate::amqp::PROTOCOL)
            .messages_received
            .inc();
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
            .map_err(|e| on_publish(AmqpError::from(e)))?;
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
            c.published(routed);
        }
        Ok(())
    }
}
