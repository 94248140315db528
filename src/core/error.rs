//! Errors the core reports. Each variant carries what went wrong as data; its Display
//! is RabbitMQ's wording (what RabbitMQ puts after the constant's name, as in
//! `NOT_FOUND - no queue 'q' in vhost '/'`), which clients and tests compare with
//! RabbitMQ's. [`CoreError::kind`] is the protocol-neutral class that each front end
//! maps onto its own answers (AMQP reply codes, memcache and HTTP errors).

/// The class of an error, in protocol-neutral terms.
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

/// A queue or an exchange, as reply texts name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// A queue.
    Queue,
    /// An exchange.
    Exchange,
}

impl Entity {
    /// `queue` / `exchange`.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Queue => "queue",
            Entity::Exchange => "exchange",
        }
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A core error. The fields are what its text names, under the same names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)]
pub enum CoreError {
    // ---- not found ---------------------------------------------------------------
    /// No such queue.
    #[error("no queue '{queue}' in vhost '{vhost}'")]
    NoQueue { queue: String, vhost: String },
    /// No such exchange.
    #[error("no exchange '{exchange}' in vhost '{vhost}'")]
    NoExchange { exchange: String, vhost: String },
    /// No such user.
    #[error("no user '{user}'")]
    NoUser { user: String },
    /// No such vhost.
    #[error("no vhost '{vhost}'")]
    NoVhost { vhost: String },
    /// Configured permissions name a user or vhost that does not exist.
    #[error("no such user or vhost")]
    NoUserOrVhost,

    // ---- resource locked -----------------------------------------------------------
    /// Another connection's exclusive queue, or a redeclare with another `exclusive`.
    #[error(
        "cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. \
         It could be originally declared on another connection or the exclusive \
         property value does not match that of the original declaration."
    )]
    Locked { queue: String, vhost: String },

    // ---- access refused ------------------------------------------------------------
    /// Declaring, deleting or binding the default exchange.
    #[error("operation not permitted on the default exchange")]
    DefaultExchange,
    /// Declaring a name in the reserved `amq.` namespace.
    #[error("{entity} name '{name}' contains reserved prefix 'amq.*'")]
    ReservedName { entity: Entity, name: String },
    /// Deleting one of the `amq.*` exchanges.
    #[error("deletion of system exchange '{exchange}' in vhost '{vhost}' is not allowed")]
    SystemExchange { exchange: String, vhost: String },
    /// A client publishing to an internal exchange.
    #[error("cannot publish to internal exchange '{exchange}' in vhost '{vhost}'")]
    InternalExchange { exchange: String, vhost: String },
    /// An exclusive consumer holds the queue, or one is asked for a queue in use.
    #[error("queue '{queue}' in vhost '{vhost}' in exclusive use")]
    ExclusiveConsumer { queue: String, vhost: String },
    /// The user lacks a permission on a resource.
    #[error("access to {entity} '{name}' in vhost '{vhost}' refused for user '{user}'")]
    PermissionRefused {
        entity: Entity,
        name: String,
        vhost: String,
        user: String,
    },
    /// Unknown user or wrong password (front ends word the refusal their own way and
    /// log this).
    #[error("user '{user}' - invalid credentials")]
    InvalidCredentials { user: String },
    /// A `loopback_users` user connecting from elsewhere.
    #[error("user '{user}' can only connect via localhost")]
    LoopbackOnly { user: String },

    // ---- not allowed ---------------------------------------------------------------
    /// Opening a vhost that does not exist.
    #[error("vhost {vhost} not found")]
    VhostNotFound { vhost: String },
    /// Opening a vhost the user has no permissions on.
    #[error("access to vhost '{vhost}' refused for user '{user}'")]
    VhostRefused { vhost: String, user: String },

    // ---- precondition failed -------------------------------------------------------
    /// A redeclare whose property or argument `arg` differs.
    #[error(
        "inequivalent arg '{arg}' for {entity} '{name}' in vhost '{vhost}': \
         received '{received}' but current is '{current}'"
    )]
    InequivalentArg {
        entity: Entity,
        name: String,
        vhost: String,
        arg: String,
        received: String,
        current: String,
    },
    /// An exchange redeclared with other arguments.
    #[error("inequivalent arguments for exchange '{exchange}' in vhost '{vhost}'")]
    InequivalentExchangeArguments { exchange: String, vhost: String },
    /// `x-max-priority` above 255.
    #[error("invalid arg 'x-max-priority': {value} is larger than 255")]
    PriorityTooLarge { value: u64 },
    /// `x-expires` of 0.
    #[error("invalid arg 'x-expires': value 0 is zero")]
    ExpiresZero,
    /// An `x-overflow` other than drop-head, reject-publish, reject-publish-dlx.
    #[error("invalid arg 'x-overflow' for queue: '{value}'")]
    InvalidOverflow { value: String },
    /// A numeric queue argument that is negative or not a number (`value` as debug).
    #[error("invalid arg '{arg}' for queue: {value}")]
    InvalidQueueArg { arg: String, value: String },
    /// A headers binding's `x-match` that is none of the four (`value` as RabbitMQ
    /// prints it).
    #[error("Invalid x-match field value {value}; expected all, any, all-with-x, or any-with-x")]
    InvalidXMatch { value: String },
    /// Deleting with if-unused a queue that has consumers.
    #[error("queue '{queue}' in vhost '{vhost}' in use")]
    QueueInUse { queue: String, vhost: String },
    /// Deleting with if-empty a queue that holds messages.
    #[error("queue '{queue}' in vhost '{vhost}' not empty")]
    QueueNotEmpty { queue: String, vhost: String },
    /// Deleting with if-unused an exchange that has bindings.
    #[error("exchange '{exchange}' in vhost '{vhost}' in use")]
    ExchangeInUse { exchange: String, vhost: String },
    /// A permission pattern that does not compile.
    #[error("invalid regexp '{pattern}': {reason}")]
    InvalidRegexp { pattern: String, reason: String },
    /// A password hash in an algorithm qgate does not know.
    #[error("unsupported hashing algorithm '{algorithm}'")]
    UnsupportedHashing { algorithm: String },
    /// A password hash that is not base64.
    #[error("password_hash is not valid base64")]
    HashNotBase64,
    /// Both a password and a hash given for one user.
    #[error("Both password and password_hash are specified")]
    PasswordAndHash,
    /// An empty user or vhost name (`what` says which).
    #[error("{what} name must not be empty")]
    EmptyName { what: &'static str },

    // ---- already exists ------------------------------------------------------------
    /// Adding a user that exists.
    #[error("user '{user}' already exists")]
    UserExists { user: String },
    /// Adding a vhost that exists.
    #[error("vhost '{vhost}' already exists")]
    VhostExists { vhost: String },

    // ---- command invalid -----------------------------------------------------------
    /// An exchange type qgate does not implement.
    #[error("unknown exchange type '{kind}'")]
    UnknownExchangeType { kind: String },
}

impl CoreError {
    /// The protocol-neutral class of the error.
    pub fn kind(&self) -> ErrorKind {
        use CoreError as E;
        match self {
            E::NoQueue { .. }
            | E::NoExchange { .. }
            | E::NoUser { .. }
            | E::NoVhost { .. }
            | E::NoUserOrVhost => ErrorKind::NotFound,
            E::Locked { .. } => ErrorKind::ResourceLocked,
            E::DefaultExchange
            | E::ReservedName { .. }
            | E::SystemExchange { .. }
            | E::InternalExchange { .. }
            | E::ExclusiveConsumer { .. }
            | E::PermissionRefused { .. }
            | E::InvalidCredentials { .. }
            | E::LoopbackOnly { .. } => ErrorKind::AccessRefused,
            E::VhostNotFound { .. } | E::VhostRefused { .. } => ErrorKind::NotAllowed,
            E::InequivalentArg { .. }
            | E::InequivalentExchangeArguments { .. }
            | E::PriorityTooLarge { .. }
            | E::ExpiresZero
            | E::InvalidOverflow { .. }
            | E::InvalidQueueArg { .. }
            | E::InvalidXMatch { .. }
            | E::QueueInUse { .. }
            | E::QueueNotEmpty { .. }
            | E::ExchangeInUse { .. }
            | E::InvalidRegexp { .. }
            | E::UnsupportedHashing { .. }
            | E::HashNotBase64
            | E::PasswordAndHash
            | E::EmptyName { .. } => ErrorKind::PreconditionFailed,
            E::UserExists { .. } | E::VhostExists { .. } => ErrorKind::AlreadyExists,
            E::UnknownExchangeType { .. } => ErrorKind::CommandInvalid,
        }
    }

    /// `no queue 'q' in vhost 'v'`.
    pub fn no_queue(queue: &str, vhost: &str) -> Self {
        Self::NoQueue {
            queue: queue.to_owned(),
            vhost: vhost.to_owned(),
        }
    }

    /// `no exchange 'x' in vhost 'v'`.
    pub fn no_exchange(exchange: &str, vhost: &str) -> Self {
        Self::NoExchange {
            exchange: exchange.to_owned(),
            vhost: vhost.to_owned(),
        }
    }

    /// Another connection's exclusive queue.
    pub fn locked(queue: &str, vhost: &str) -> Self {
        Self::Locked {
            queue: queue.to_owned(),
            vhost: vhost.to_owned(),
        }
    }
}

/// Result alias for core operations.
pub type CoreResult<T> = Result<T, CoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        v.to_owned()
    }

    /// The texts clients match on, as RabbitMQ 3.10 words them (after `CODE - `).
    #[test]
    fn texts_and_classes_are_rabbitmqs() {
        let (q, v) = (s("q"), s("/"));
        let cases: Vec<(CoreError, ErrorKind, &str)> = vec![
            (
                CoreError::no_queue("q", "/"),
                ErrorKind::NotFound,
                "no queue 'q' in vhost '/'",
            ),
            (
                CoreError::no_exchange("x", "/"),
                ErrorKind::NotFound,
                "no exchange 'x' in vhost '/'",
            ),
            (
                CoreError::locked("q", "/"),
                ErrorKind::ResourceLocked,
                "cannot obtain exclusive access to locked queue 'q' in vhost '/'. It could be \
                 originally declared on another connection or the exclusive property value \
                 does not match that of the original declaration.",
            ),
            (
                CoreError::DefaultExchange,
                ErrorKind::AccessRefused,
                "operation not permitted on the default exchange",
            ),
            (
                CoreError::ReservedName {
                    entity: Entity::Queue,
                    name: s("amq.x"),
                },
                ErrorKind::AccessRefused,
                "queue name 'amq.x' contains reserved prefix 'amq.*'",
            ),
            (
                CoreError::PermissionRefused {
                    entity: Entity::Exchange,
                    name: s("amq.default"),
                    vhost: v.clone(),
                    user: s("u"),
                },
                ErrorKind::AccessRefused,
                "access to exchange 'amq.default' in vhost '/' refused for user 'u'",
            ),
            (
                CoreError::VhostNotFound { vhost: s("v") },
                ErrorKind::NotAllowed,
                "vhost v not found",
            ),
            (
                CoreError::InequivalentArg {
                    entity: Entity::Queue,
                    name: q.clone(),
                    vhost: v.clone(),
                    arg: s("durable"),
                    received: s("true"),
                    current: s("false"),
                },
                ErrorKind::PreconditionFailed,
                "inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but \
                 current is 'false'",
            ),
            (
                CoreError::QueueNotEmpty {
                    queue: q.clone(),
                    vhost: v.clone(),
                },
                ErrorKind::PreconditionFailed,
                "queue 'q' in vhost '/' not empty",
            ),
            (
                CoreError::InvalidXMatch {
                    value: s("<<\"some\">>"),
                },
                ErrorKind::PreconditionFailed,
                "Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or \
                 any-with-x",
            ),
            (
                CoreError::VhostExists { vhost: s("v") },
                ErrorKind::AlreadyExists,
                "vhost 'v' already exists",
            ),
            (
                CoreError::UnknownExchangeType { kind: s("nope") },
                ErrorKind::CommandInvalid,
                "unknown exchange type 'nope'",
            ),
        ];
        for (e, kind, text) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.kind(), kind, "{text}");
        }
    }
}
