//! The exchange class: declare, delete, bind, unbind.

use super::{unexpected, Channel, ConnCtx};
use crate::amqp::error::AmqpError;
use crate::amqp::methods::*;
use crate::core::ExchangeOptions;

pub(super) fn handle(ch: &mut Channel, ctx: &ConnCtx, method: &Method) -> Result<(), AmqpError> {
    let v = &ctx.vhost;
    match method {
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
                ch.reply(ctx, ExchangeDeclareOk {});
            }
        }
        Method::ExchangeDelete(m) => {
            v.delete_exchange(&m.exchange, m.if_unused)?;
            if !m.no_wait {
                ch.reply(ctx, ExchangeDeleteOk {});
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
                ch.reply(ctx, ExchangeBindOk {});
            }
        }
        Method::ExchangeUnbind(m) => {
            v.unbind_exchange(&m.destination, &m.source, &m.routing_key, &m.arguments)?;
            if !m.no_wait {
                ch.reply(ctx, ExchangeUnbindOk {});
            }
        }
        other => return Err(unexpected(other)),
    }
    Ok(())
}
