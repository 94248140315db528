//! Errors the core reports. Each kind maps one-to-one onto an AMQP reply code in the
//! AMQP front end and onto a memcache answer in the memcache front end; the text is what
//! RabbitMQ puts after the constant's name (`NOT_FOUND - <text>`).

use std::fmt;

/// What went wrong, in protocol-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A named entity does not exist (AMQP 404).
    NotFound,
    /// Reserved name or missing permission (AMQP 403).
    AccessRefused,
    /// Exclusive queue owned by another connection (AMQP 405).
    ResourceLocked,
    /// Redeclaration with different properties, failed if-unused/if-empty (AMQP 406).
    PreconditionFailed,
    /// The operation is invalid as asked, e.g. unknown exchange type (AMQP 503).
    CommandInvalid,
    /// Vhost access denied (AMQP 530).
    NotAllowed,
    /// A user or vhost to be added exists already (management API 400, ctl error).
    AlreadyExists,
    /// Valid request the broker does not implement (AMQP 540).
    NotImplemented,
    /// A resource limit was hit (AMQP 506).
    ResourceError,
    /// A broker fault (AMQP 541).
    Internal,
}

/// A core error: a kind and the human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    /// The class of error.
    pub kind: ErrorKind,
    /// Detail, as RabbitMQ words it after the constant name.
    pub text: String,
}

impl CoreError {
    /// Builds an error of `kind` with `text`.
    pub fn new(kind: ErrorKind, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
        }
    }

    /// `no queue 'q' in vhost 'v'`.
    pub fn no_queue(queue: &str, vhost: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("no queue '{queue}' in vhost '{vhost}'"),
        )
    }

    /// `no exchange 'x' in vhost 'v'`.
    pub fn no_exchange(exchange: &str, vhost: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("no exchange '{exchange}' in vhost '{vhost}'"),
        )
    }

    /// RabbitMQ's text for touching another connection's exclusive queue.
    pub fn locked(queue: &str, vhost: &str) -> Self {
        Self::new(
            ErrorKind::ResourceLocked,
            format!(
                "cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. \
                 It could be originally declared on another connection or the exclusive \
                 property value does not match that of the original declaration."
            ),
        )
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.text)
    }
}

impl std::error::Error for CoreError {}

/// Result alias for core operations.
pub type CoreResult<T> = Result<T, CoreError>;
