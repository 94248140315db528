//! The queue-level features a queue is declared with, read from its `x-` arguments
//! once at declare time and checked with RabbitMQ's reply texts.

use super::deadletter::DeadLetterTarget;
use super::error::{CoreError, CoreResult};
use crate::content::{FieldTable, FieldValue};

/// Queue-level limits and behaviours read from the `x-` arguments.
#[derive(Debug, Clone, Default)]
pub(crate) struct Features {
    /// `x-overflow: reject-publish` (or `reject-publish-dlx`): refuse new messages at
    /// the limit instead of dropping the oldest.
    pub(crate) reject_publish: bool,
    /// `x-single-active-consumer`: only the oldest consumer receives.
    pub(crate) single_active: bool,
    /// `x-message-ttl` in ms: the most any message may wait (its own TTL may be less).
    pub(crate) message_ttl: Option<u64>,
    /// `x-max-length`: ready messages.
    pub(crate) max_length: Option<usize>,
    /// `x-max-length-bytes`: body bytes of the ready messages.
    pub(crate) max_length_bytes: Option<usize>,
    /// `x-expires` in ms: delete the queue once unused for this long.
    pub(crate) expires: Option<u64>,
    /// `x-max-priority` (0 = a plain FIFO).
    pub(crate) max_priority: u8,
    /// `x-dead-letter-exchange` / `-routing-key`.
    pub(crate) dead_letter: Option<DeadLetterTarget>,
}

impl Features {
    /// Whether the queue may page messages out of memory: not when a feature looks at
    /// every ready message (priorities order them, length limits drop the oldest, a
    /// queue TTL expires them at the head as they age).
    pub(crate) fn pages(&self) -> bool {
        self.max_priority == 0
            && self.max_length.is_none()
            && self.max_length_bytes.is_none()
            && self.message_ttl.is_none()
    }

    /// Reads and checks the arguments (406 PRECONDITION_FAILED texts on bad values).
    pub(crate) fn from_arguments(args: &FieldTable) -> CoreResult<Self> {
        let max_priority = match non_negative_arg(args, "x-max-priority")? {
            Some(p) if p > 255 => return Err(CoreError::PriorityTooLarge { value: p }),
            Some(p) => p as u8,
            None => 0,
        };
        let expires = non_negative_arg(args, "x-expires")?;
        if expires == Some(0) {
            return Err(CoreError::ExpiresZero);
        }
        let reject_publish = match args.get_str("x-overflow").as_deref() {
            None | Some("drop-head") => false,
            Some("reject-publish") | Some("reject-publish-dlx") => true,
            Some(other) => {
                return Err(CoreError::InvalidOverflow {
                    value: other.to_owned(),
                })
            }
        };
        let single_active = matches!(
            args.get("x-single-active-consumer"),
            Some(FieldValue::Bool(true))
        );
        Ok(Self {
            reject_publish,
            single_active,
            message_ttl: non_negative_arg(args, "x-message-ttl")?,
            max_length: non_negative_arg(args, "x-max-length")?.map(|n| n as usize),
            max_length_bytes: non_negative_arg(args, "x-max-length-bytes")?.map(|n| n as usize),
            expires,
            max_priority,
            dead_letter: DeadLetterTarget::from_arguments(args),
        })
    }
}

fn non_negative_arg(args: &FieldTable, key: &str) -> CoreResult<Option<u64>> {
    match args.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n as u64)),
            _ => Err(CoreError::InvalidQueueArg {
                arg: key.to_owned(),
                value: format!("{v:?}"),
            }),
        },
    }
}
