//! "Wait until durable": what a publish hands its front end when the message must reach
//! the disk before the client may hear that it is safe (a publisher confirm, memcache
//! `STORED`). Front ends wait on it without knowing the store behind it.

use std::fmt;

use crate::store::{StoreError, SyncTicket};

/// Completes once the message it was handed out for is durable per the broker's fsync
/// policy.
#[derive(Debug)]
pub struct Durable(SyncTicket);

/// The store could not make the message durable (write failed, record too large): the
/// client must not be told it is safe.
#[derive(Debug)]
pub struct NotDurable(StoreError);

impl fmt::Display for NotDurable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NotDurable {}

impl Durable {
    pub(crate) fn new(ticket: SyncTicket) -> Self {
        Self(ticket)
    }

    /// True once [`Durable::wait`] would return at once.
    pub fn is_done(&self) -> bool {
        self.0.is_done()
    }

    /// Waits until the message is durable.
    pub async fn wait(self) -> Result<(), NotDurable> {
        self.0.wait().await.map_err(NotDurable)
    }
}
