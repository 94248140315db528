//! The tx class: tx.select, commit, rollback. In a transaction, publishes and settles
//! wait in the channel until the commit; a rollback drops the publishes and leaves the
//! settled deliveries unacked.

use super::basic::{Settle, Taken};
use super::{precondition, unexpected, Channel, ConnCtx};
use crate::amqp::error::AmqpError;
use crate::amqp::methods::*;
use crate::core::Message;

/// What a transaction holds until commit.
pub(super) enum TxOp {
    Publish(BasicPublish, Message),
    /// Deliveries taken off the unacked list at ack time (so an unknown tag fails then,
    /// as in RabbitMQ), settled at commit or put back at rollback.
    Settle(Settle, Taken),
}

pub(super) fn handle(ch: &mut Channel, ctx: &ConnCtx, method: &Method) -> Result<(), AmqpError> {
    match method {
        Method::TxSelect(_) => {
            precondition(
                ch.confirm.is_none(),
                "cannot switch from confirm to tx mode",
            )?;
            if ch.tx.is_none() {
                ch.tx = Some(Vec::new());
            }
            ch.reply(ctx, TxSelectOk {});
        }
        Method::TxCommit(_) => {
            for op in take_ops(ch)? {
                match op {
                    TxOp::Publish(p, msg) => ch.route(ctx, &p, msg)?,
                    TxOp::Settle(how, list) => ch.settle(ctx, how, list),
                }
            }
            ch.reply(ctx, TxCommitOk {});
        }
        Method::TxRollback(_) => {
            for op in take_ops(ch)? {
                if let TxOp::Settle(_, list) = op {
                    ch.untake(list);
                }
            }
            ch.reply(ctx, TxRollbackOk {});
        }
        other => return Err(unexpected(other)),
    }
    Ok(())
}

/// The transaction's operations so far; the channel stays transactional.
fn take_ops(ch: &mut Channel) -> Result<Vec<TxOp>, AmqpError> {
    ch.tx
        .replace(Vec::new())
        .ok_or_else(|| AmqpError::new(reply::PRECONDITION_FAILED, "channel is not transactional"))
}
