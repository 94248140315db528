//! Permissions of memcache commands. The text protocol has no login, so a listener
//! acts as one configured user (`memcache.user`) in its vhost (`memcache.vhost`), and
//! that user's RabbitMQ-style permissions apply to the queue each command names:
//!
//! - `set <q>`: write on `q`, plus configure on `q` when the set would declare it;
//! - `get <q>` (every form, including `/open`, `/close`, `/abort`, `/peek`): read on `q`;
//!   a timed read that would declare `q` declares it only with configure on `q`;
//! - `delete <q>`: configure on `q`.
//!
//! Write is checked on the queue, not on the default exchange the message travels
//! through: a memcache key names a queue, and `write = "^jobs$"` should let a producer
//! fill `jobs` without granting every queue (which write on `amq.default` would).
//!
//! A refusal answers `SERVER_ERROR access refused` (memcached's class for "the server
//! will not do this"; `CLIENT_ERROR` would blame the request's syntax) and stores,
//! takes or deletes nothing.

use crate::core::{Broker, Permission, Resource};

/// The answer text after `SERVER_ERROR `.
pub(crate) const REFUSED: &str = "access refused";

/// What a memcache command needs on its queue.
pub(crate) struct Guard<'a> {
    broker: &'a Broker,
    user: &'a str,
    vhost: &'a str,
}

impl<'a> Guard<'a> {
    pub(crate) fn new(broker: &'a Broker, user: &'a str, vhost: &'a str) -> Self {
        Self {
            broker,
            user,
            vhost,
        }
    }

    fn allowed(&self, perm: Permission, queue: &str) -> bool {
        self.broker
            .check_permission(self.user, self.vhost, perm, Resource::Queue(queue))
            .is_ok()
    }

    /// `set`: `declares` when the queue does not exist yet.
    pub(crate) fn set(&self, queue: &str, declares: bool) -> Result<(), String> {
        let ok = self.allowed(Permission::Write, queue)
            && (!declares || self.allowed(Permission::Configure, queue));
        ok.then_some(()).ok_or_else(|| REFUSED.to_owned())
    }

    /// `get` of each queue.
    pub(crate) fn get<'q>(&self, mut queues: impl Iterator<Item = &'q str>) -> bool {
        queues.all(|q| self.allowed(Permission::Read, q))
    }

    /// A timed `get` may declare the queue it waits on.
    pub(crate) fn declare(&self, queue: &str) -> bool {
        self.allowed(Permission::Configure, queue)
    }

    /// `delete`.
    pub(crate) fn delete(&self, queue: &str) -> bool {
        self.allowed(Permission::Configure, queue)
    }
}
