//! The queue class: declare, bind, unbind, purge, delete. An empty queue name means
//! the channel's last declared queue ([`Channel::default_queue`]).

use super::{unexpected, Channel, ConnCtx};
use crate::amqp::access;
use crate::amqp::error::AmqpError;
use crate::amqp::methods::*;
use crate::core::QueueOptions;

pub(super) fn handle(ch: &mut Channel, ctx: &ConnCtx, method: &Method) -> Result<(), AmqpError> {
    let v = &ctx.vhost;
    let conn = ctx.conn_id;
    match method {
        Method::QueueDeclare(m) => declare(ch, ctx, m)?,
        Method::QueueBind(m) => {
            let queue = ch.default_queue(&m.queue)?;
            v.bind_queue(
                &queue,
                &m.exchange,
                &m.routing_key,
                m.arguments.clone(),
                conn,
            )?;
            if !m.no_wait {
                ch.reply(ctx, QueueBindOk {});
            }
        }
        Method::QueueUnbind(m) => {
            let queue = ch.default_queue(&m.queue)?;
            v.unbind_queue(&queue, &m.exchange, &m.routing_key, &m.arguments, conn)?;
            ch.reply(ctx, QueueUnbindOk {});
        }
        Method::QueuePurge(m) => {
            let queue = ch.default_queue(&m.queue)?;
            let n = v.purge_queue(&queue, conn)?;
            if !m.no_wait {
                ch.reply(ctx, QueuePurgeOk { message_count: n });
            }
        }
        Method::QueueDelete(m) => {
            let queue = ch.default_queue(&m.queue)?;
            let n = v.delete_queue(&queue, m.if_unused, m.if_empty, conn)?;
            if !m.no_wait {
                ch.reply(ctx, QueueDeleteOk { message_count: n });
            }
        }
        other => return Err(unexpected(other)),
    }
    Ok(())
}

fn declare(ch: &mut Channel, ctx: &ConnCtx, m: &QueueDeclare) -> Result<(), AmqpError> {
    let server_named = !m.passive && m.queue.is_empty();
    let name = if m.passive {
        ch.default_queue(&m.queue)?
    } else if server_named {
        // Named here, not in the core, so that permissions are checked on the actual
        // amq.gen-* name, as RabbitMQ does.
        ctx.broker.generate_name("amq.gen-")
    } else {
        m.queue.clone()
    };
    access::queue_declare(ctx, m, &name)?;
    let options = QueueOptions {
        durable: m.durable,
        exclusive: m.exclusive,
        auto_delete: m.auto_delete,
        arguments: m.arguments.clone(),
    };
    let d = if server_named {
        ctx.vhost
            .declare_server_named_queue(&name, options, ctx.conn_id)?
    } else {
        ctx.vhost
            .declare_queue(&name, options, m.passive, ctx.conn_id)?
    };
    ch.last_queue = Some(d.queue.name.clone());
    if !m.no_wait {
        ch.reply(
            ctx,
            QueueDeclareOk {
                queue: d.queue.name.clone(),
                message_count: d.message_count,
                consumer_count: d.consumer_count,
            },
        );
    }
    Ok(())
}
