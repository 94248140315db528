//! Permission checks of AMQP methods, in RabbitMQ 3.10's order (observed on a real
//! node): the check comes before the resource is looked up, so a refused user learns
//! nothing about what exists (a publish to a missing exchange is 403, not 404), and
//! passive declares need no permission at all.
//!
//! | method                         | needs                                          |
//! |--------------------------------|------------------------------------------------|
//! | queue.declare / exchange.declare | configure on it; when it is created with a dead-letter / alternate exchange, also read on it and write on that exchange |
//! | queue.delete / exchange.delete | configure on it                                |
//! | queue.bind / unbind            | write on the queue, read on the exchange       |
//! | exchange.bind / unbind         | write on the destination, read on the source   |
//! | basic.publish                  | write on the exchange (`""` is `amq.default`)  |
//! | basic.consume / get, queue.purge | read on the queue                            |

use super::channel::ConnCtx;
use super::error::AmqpError;
use super::methods::*;
use crate::core::{Permission, Resource};

fn allow(ctx: &ConnCtx, perm: Permission, resource: Resource<'_>) -> Result<(), AmqpError> {
    ctx.broker
        .check_permission(&ctx.user, &ctx.vhost.name, perm, resource)
        .map_err(AmqpError::from)
}

/// A name RabbitMQ refuses for its own reasons before any permission check
/// (the default exchange, `amq.*` system exchanges on delete): the core answers those.
fn checked_by_core_first(exchange: &str) -> bool {
    exchange.is_empty()
}

/// The queue a method names, if it names one (before the "last declared queue"
/// shortcut is applied).
pub(crate) fn queue_of(method: &Method) -> Option<&str> {
    match method {
        Method::QueueBind(m) => Some(&m.queue),
        Method::QueueUnbind(m) => Some(&m.queue),
        Method::QueuePurge(m) => Some(&m.queue),
        Method::QueueDelete(m) => Some(&m.queue),
        Method::BasicGet(m) => Some(&m.queue),
        Method::BasicConsume(m) => Some(&m.queue),
        _ => None,
    }
}

/// Checks a method other than basic.publish (see [`publish`]) and queue.declare
/// (see [`queue_declare`]); `queue` is the queue name after the channel's
/// "last declared queue" shortcut.
pub(crate) fn check(ctx: &ConnCtx, method: &Method, queue: Option<&str>) -> Result<(), AmqpError> {
    use Permission::{Configure, Read, Write};
    use Resource::{Exchange, Queue};
    let q = queue.unwrap_or("");
    match method {
        Method::ExchangeDeclare(m) if !m.passive && !checked_by_core_first(&m.exchange) => {
            allow(ctx, Configure, Exchange(&m.exchange))?;
            if ctx.vhost.exchange(&m.exchange).is_err() {
                if let Some(ae) = m.arguments.get_str("alternate-exchange") {
                    allow(ctx, Read, Exchange(&m.exchange))?;
                    allow(ctx, Write, Exchange(&ae))?;
                }
            }
        }
        Method::ExchangeDelete(m)
            if !checked_by_core_first(&m.exchange) && !m.exchange.starts_with("amq.") =>
        {
            allow(ctx, Configure, Exchange(&m.exchange))?
        }
        Method::ExchangeBind(ExchangeBind {
            destination,
            source,
            ..
        })
        | Method::ExchangeUnbind(ExchangeUnbind {
            destination,
            source,
            ..
        }) => {
            allow(ctx, Write, Exchange(destination))?;
            if !checked_by_core_first(destination) && !checked_by_core_first(source) {
                allow(ctx, Read, Exchange(source))?;
            }
        }
        Method::QueueBind(QueueBind { exchange, .. })
        | Method::QueueUnbind(QueueUnbind { exchange, .. }) => {
            allow(ctx, Write, Queue(q))?;
            if !checked_by_core_first(exchange) {
                allow(ctx, Read, Exchange(exchange))?;
            }
        }
        Method::QueuePurge(_) | Method::BasicGet(_) => allow(ctx, Read, Queue(q))?,
        Method::BasicConsume(_) if q != super::channel::DIRECT_REPLY_TO => {
            allow(ctx, Read, Queue(q))?
        }
        Method::QueueDelete(_) => allow(ctx, Configure, Queue(q))?,
        _ => {}
    }
    Ok(())
}

/// queue.declare of `name` (the generated `amq.gen-*` name for a server-named queue).
pub(crate) fn queue_declare(ctx: &ConnCtx, m: &QueueDeclare, name: &str) -> Result<(), AmqpError> {
    if m.passive {
        return Ok(());
    }
    allow(ctx, Permission::Configure, Resource::Queue(name))?;
    if ctx.vhost.find_queue(name).is_none() {
        if let Some(dlx) = m.arguments.get_str("x-dead-letter-exchange") {
            allow(ctx, Permission::Read, Resource::Queue(name))?;
            allow(ctx, Permission::Write, Resource::Exchange(&dlx))?;
        }
    }
    Ok(())
}

/// Remembers the last exchange a channel was allowed to publish to, so the hot path
/// does not match a regexp per message; any permission change invalidates it.
#[derive(Default)]
pub(crate) struct PublishCache {
    generation: u64,
    exchange: Option<String>,
}

/// basic.publish to `exchange`.
pub(crate) fn publish(
    ctx: &ConnCtx,
    cache: &mut PublishCache,
    exchange: &str,
) -> Result<(), AmqpError> {
    let generation = ctx.broker.permissions_generation();
    if cache.generation == generation && cache.exchange.as_deref() == Some(exchange) {
        return Ok(());
    }
    allow(ctx, Permission::Write, Resource::Exchange(exchange))?;
    cache.generation = generation;
    cache.exchange = Some(exchange.to_owned());
    Ok(())
}
