//! A virtual host: its exchanges and queues, and every operation that creates, finds,
//! binds, routes to or deletes them. Reply texts follow RabbitMQ's wording.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::error::{CoreError, CoreResult, ErrorKind};
use super::exchange::{Destination, Exchange, ExchangeKind, ExchangeOptions};
use super::message::Message;
use super::queue::{Queue, QueueOptions};
use super::Shared;
use crate::content::FieldTable;

/// The result of routing one publish.
#[derive(Debug, Default)]
pub struct Routed {
    /// Queues the message was enqueued on.
    pub queues: usize,
    /// Set when the message must reach the disk before it may be confirmed.
    pub durable: Option<crate::store::SyncTicket>,
    /// A queue refused it (`x-overflow: reject-publish` at its limit): a publisher
    /// confirm must be a nack.
    pub rejected: bool,
}

/// The result of a queue declare.
#[derive(Debug, Clone)]
pub struct Declared {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
    /// True when this call created it.
    pub created: bool,
}

/// A virtual host.
pub struct VHost {
    /// Name (e.g. `/`).
    pub name: Arc<str>,
    me: std::sync::Weak<VHost>,
    pub(crate) shared: Arc<Shared>,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
}

impl std::fmt::Debug for VHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VHost").field("name", &self.name).finish()
    }
}

const DEFAULT_EXCHANGE_DENIED: &str = "operation not permitted on the default exchange";

impl VHost {
    pub(crate) fn new(name: &str, shared: Arc<Shared>) -> Arc<Self> {
        let vhost = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            name: name.into(),
            shared,
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
        });
        let durable = ExchangeOptions {
            durable: true,
            ..Default::default()
        };
        for (n, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            vhost
                .exchanges
                .write()
                .insert(n.to_owned(), Exchange::new(n, kind, durable.clone()));
        }
        vhost
    }

    // ---- exchanges -------------------------------------------------------------------

    /// exchange.declare.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        options: ExchangeOptions,
        passive: bool,
    ) -> CoreResult<Arc<Exchange>> {
        if passive {
            return self.exchange(name);
        }
        if name.is_empty() {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                DEFAULT_EXCHANGE_DENIED,
            ));
        }
        let kind = ExchangeKind::parse(kind)?;
        let mut map = self.exchanges.write();
        if let Some(x) = map.get(name) {
            let x = x.clone();
            drop(map);
            self.check_exchange_equivalent(&x, kind, &options)?;
            return Ok(x);
        }
        if name.starts_with("amq.") {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                format!("exchange name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let x = Exchange::new(name, kind, options);
        map.insert(name.to_owned(), x.clone());
        drop(map);
        if x.options.durable {
            self.shared.persist_exchange(&self.name, &x);
        }
        Ok(x)
    }

    fn check_exchange_equivalent(
        &self,
        x: &Exchange,
        kind: ExchangeKind,
        o: &ExchangeOptions,
    ) -> CoreResult<()> {
        let (name, vhost) = (&*x.name, &*self.name);
        let b = |v: bool| v.to_string();
        first_difference(
            "exchange",
            name,
            vhost,
            &[
                ("type", kind.as_str().into(), x.kind.as_str().into()),
                ("durable", b(o.durable), b(x.options.durable)),
                ("auto_delete", b(o.auto_delete), b(x.options.auto_delete)),
                ("internal", b(o.internal), b(x.options.internal)),
            ],
        )?;
        if !x.options.arguments.equivalent(&o.arguments) {
            return Err(CoreError::new(
                ErrorKind::PreconditionFailed,
                format!("inequivalent arguments for exchange '{name}' in vhost '{vhost}'"),
            ));
        }
        Ok(())
    }

    /// Looks up an exchange (404 when missing).
    pub fn exchange(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        self.exchanges
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::no_exchange(name, &self.name))
    }

    /// exchange.delete. A missing exchange is not an error (RabbitMQ 3.x).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<()> {
        if name.is_empty() {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                DEFAULT_EXCHANGE_DENIED,
            ));
        }
        if name.starts_with("amq.") {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                format!(
                    "deletion of system exchange '{name}' in vhost '{}' is not allowed",
                    self.name
                ),
            ));
        }
        let mut map = self.exchanges.write();
        let Some(x) = map.get(name).cloned() else {
            return Ok(());
        };
        if if_unused && x.binding_count() > 0 {
            return Err(CoreError::new(
                ErrorKind::PreconditionFailed,
                format!("exchange '{name}' in vhost '{}' in use", self.name),
            ));
        }
        map.remove(name);
        let others: Vec<Arc<Exchange>> = map.values().cloned().collect();
        drop(map);
        self.drop_destination(&others, &Destination::Exchange(x.name.clone()));
        if x.options.durable {
            self.shared.unpersist_exchange(&self.name, name);
        }
        Ok(())
    }

    /// Forgets every exchange (vhost deletion; their definitions are dropped by the caller).
    pub(crate) fn clear_exchanges(&self) {
        self.exchanges.write().clear();
    }

    /// All exchanges.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// Removes bindings to `dest` from `sources`; auto-delete sources left without
    /// bindings are deleted too.
    fn drop_destination(&self, sources: &[Arc<Exchange>], dest: &Destination) {
        for x in sources {
            if x.unbind_all(dest) && x.options.auto_delete {
                let _ = self.delete_exchange(&x.name, false);
            }
        }
    }

    // ---- queues ----------------------------------------------------------------------

    /// Creates the hidden queue behind RabbitMQ's direct reply-to for one channel:
    /// `amq.rabbitmq.reply-to.<random>`, exclusive to `connection`, transient; replies
    /// published to its name reach the channel's reply consumer.
    pub fn declare_reply_queue(&self, connection: u64) -> CoreResult<Arc<Queue>> {
        let name = self.shared.generate_name("amq.rabbitmq.reply-to.");
        let queue = Queue::new(
            self.shared.next_id(),
            name.clone(),
            self.me.clone(),
            self.name.clone(),
            QueueOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            Some(connection),
            None,
        )?;
        self.queues.write().insert(name, queue.clone());
        Ok(queue)
    }

    /// queue.declare. `connection` owns the queue when it is exclusive.
    pub fn declare_queue(
        &self,
        name: &str,
        options: QueueOptions,
        passive: bool,
        connection: u64,
    ) -> CoreResult<Declared> {
        self.shared.counters.queues_declared.inc();
        if passive {
            let queue = self.queue(name, connection)?;
            queue.touch();
            return Ok(Self::declared(queue, false));
        }
        let generated;
        let name = if name.is_empty() {
            generated = self.shared.generate_name("amq.gen-");
            generated.as_str()
        } else {
            if name.starts_with("amq.") {
                return Err(CoreError::new(
                    ErrorKind::AccessRefused,
                    format!("queue name '{name}' contains reserved prefix 'amq.*'"),
                ));
            }
            name
        };
        self.create_queue(name, options, connection)
    }

    /// queue.declare of a server-named queue whose `amq.gen-*` name the front end
    /// generated (with [`super::Broker::generate_name`]) to check permissions on it.
    pub fn declare_server_named_queue(
        &self,
        name: &str,
        options: QueueOptions,
        connection: u64,
    ) -> CoreResult<Declared> {
        self.shared.counters.queues_declared.inc();
        self.create_queue(name, options, connection)
    }

    fn create_queue(
        &self,
        name: &str,
        options: QueueOptions,
        connection: u64,
    ) -> CoreResult<Declared> {
        let mut map = self.queues.write();
        if let Some(q) = map.get(name) {
            let q = q.clone();
            drop(map);
            self.check_queue_equivalent(&q, &options, connection)?;
            q.touch();
            return Ok(Self::declared(q, false));
        }
        let queue = Queue::new(
            self.shared.next_id(),
            name.to_owned(),
            self.me.clone(),
            self.name.clone(),
            options,
            Some(connection),
            self.shared.store.clone(),
        )?;
        map.insert(name.to_owned(), queue.clone());
        drop(map);
        self.shared.counters.queues_created.inc();
        if queue.options.durable {
            self.shared.persist_queue(&self.name, &queue);
        }
        Ok(Self::declared(queue, true))
    }

    fn declared(queue: Arc<Queue>, created: bool) -> Declared {
        let d = queue.depth();
        Declared {
            queue,
            message_count: d.ready as u32,
            consumer_count: d.consumers as u32,
            created,
        }
    }

    fn check_queue_equivalent(
        &self,
        q: &Queue,
        o: &QueueOptions,
        connection: u64,
    ) -> CoreResult<()> {
        let (name, vhost) = (&q.name, &self.name);
        if q.owner.is_some_and(|c| c != connection) || q.options.exclusive != o.exclusive {
            return Err(CoreError::locked(name, vhost));
        }
        let b = |v: bool| v.to_string();
        first_difference(
            "queue",
            name,
            vhost,
            &[
                ("durable", b(o.durable), b(q.options.durable)),
                ("auto_delete", b(o.auto_delete), b(q.options.auto_delete)),
            ],
        )?;
        let show = |x: Option<&crate::content::FieldValue>| x.map_or("none".to_owned(), describe);
        let (new, cur) = (&o.arguments, &q.options.arguments);
        let args: Vec<(&str, String, String)> = new
            .0
            .iter()
            .chain(cur.0.iter())
            // Compared with their types, as RabbitMQ does (`1000` as a long is not
            // `1000` as a short string); the text only reports the difference.
            .filter(|(k, _)| new.get(k) != cur.get(k))
            .map(|(k, _)| (k.as_str(), show(new.get(k)), show(cur.get(k))))
            .collect();
        if let Some((arg, got, current)) = args.into_iter().next() {
            return Err(inequivalent("queue", name, vhost, arg, &got, &current));
        }
        Ok(())
    }

    /// Finds a queue for use by `connection` (404 missing, 405 another's exclusive queue).
    pub fn queue(&self, name: &str, connection: u64) -> CoreResult<Arc<Queue>> {
        let q = self
            .queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::no_queue(name, &self.name))?;
        if q.owner.is_some_and(|c| c != connection) {
            return Err(CoreError::locked(name, &self.name));
        }
        Ok(q)
    }

    /// Finds a queue by name with no ownership check (publishing, admin).
    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    /// All queues.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// queue.purge: returns the number of ready messages removed.
    pub fn purge_queue(&self, name: &str, connection: u64) -> CoreResult<u32> {
        let q = self.queue(name, connection)?;
        let n = q.purge();
        Ok(n as u32)
    }

    /// queue.delete: a missing queue answers 0, as RabbitMQ does.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: u64,
    ) -> CoreResult<u32> {
        let q = match self.queue(name, connection) {
            Ok(q) => q,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        q.check_delete(if_unused, if_empty)?;
        Ok(self.remove_queue(&q) as u32)
    }

    pub(crate) fn remove_queue(&self, q: &Arc<Queue>) -> usize {
        {
            let mut map = self.queues.write();
            match map.get(&q.name) {
                Some(cur) if Arc::ptr_eq(cur, q) => {
                    map.remove(&q.name);
                }
                _ => return 0,
            }
        }
        let n = q.mark_deleted();
        self.shared.counters.queues_deleted.inc();
        let exchanges = self.exchanges();
        self.drop_destination(&exchanges, &Destination::Queue(q.clone()));
        if q.options.durable {
            self.shared.unpersist_queue(&self.name, q);
        }
        n
    }

    /// Deletes a queue whose `x-expires` time passed unused.
    pub(crate) fn expire_queue(&self, q: &Arc<Queue>) {
        self.remove_queue(q);
    }

    /// Deletes every exclusive queue owned by `connection` (it closed).
    pub fn connection_closed(&self, connection: u64) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.owner == Some(connection))
            .cloned()
            .collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }

    /// Cancels a consumer; deletes an auto-delete queue that lost its last consumer.
    pub fn cancel_consumer(&self, queue: &Arc<Queue>, consumer: &Arc<super::Consumer>) {
        if queue.remove_consumer(consumer) {
            self.remove_queue(queue);
        }
    }

    // ---- bindings --------------------------------------------------------------------

    /// queue.bind.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        connection: u64,
    ) -> CoreResult<()> {
        let q = self.queue(queue, connection)?;
        if exchange.is_empty() {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                DEFAULT_EXCHANGE_DENIED,
            ));
        }
        let x = self.exchange(exchange)?;
        x.validate_binding(&arguments)?;
        x.bind(
            Destination::Queue(q.clone()),
            routing_key,
            arguments.clone(),
        );
        if x.options.durable && q.options.durable {
            self.shared.persist_binding(
                &self.name,
                &x.name,
                &q.name,
                false,
                routing_key,
                &arguments,
            );
        }
        Ok(())
    }

    /// queue.unbind (unbinding what is not bound succeeds).
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        connection: u64,
    ) -> CoreResult<()> {
        let q = self.queue(queue, connection)?;
        if exchange.is_empty() {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                DEFAULT_EXCHANGE_DENIED,
            ));
        }
        let x = self.exchange(exchange)?;
        let now_empty = x.unbind(&Destination::Queue(q.clone()), routing_key, arguments);
        if x.options.durable && q.options.durable {
            self.shared.unpersist_binding(
                &self.name,
                &x.name,
                &q.name,
                false,
                routing_key,
                arguments,
            );
        }
        if now_empty && x.options.auto_delete {
            let _ = self.delete_exchange(exchange, false);
        }
        Ok(())
    }

    /// exchange.bind: messages reaching `source` also go through `destination`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> CoreResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                DEFAULT_EXCHANGE_DENIED,
            ));
        }
        let d = self.exchange(destination)?;
        let s = self.exchange(source)?;
        s.validate_binding(&arguments)?;
        s.bind(
            Destination::Exchange(d.name.clone()),
            routing_key,
            arguments.clone(),
        );
        if s.options.durable && d.options.durable {
            self.shared.persist_binding(
                &self.name,
                &s.name,
                &d.name,
                true,
                routing_key,
                &arguments,
            );
        }
        Ok(())
    }

    /// exchange.unbind.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> CoreResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(CoreError::new(
                ErrorKind::AccessRefused,
                DEFAULT_EXCHANGE_DENIED,
            ));
        }
        let d = self.exchange(destination)?;
        let s = self.exchange(source)?;
        let now_empty = s.unbind(
            &Destination::Exchange(d.name.clone()),
            routing_key,
            arguments,
        );
        if s.options.durable && d.options.durable {
            self.shared.unpersist_binding(
                &self.name,
                &s.name,
                &d.name,
                true,
                routing_key,
                arguments,
            );
        }
        if now_empty && s.options.auto_delete {
            let _ = self.delete_exchange(source, false);
        }
        Ok(())
    }

    // ---- publishing ------------------------------------------------------------------

    /// Routes a message and enqueues it on every matching queue.
    /// `internal_ok` allows publishing to internal exchanges (never for clients).
    pub fn publish(&self, exchange: &str, msg: Message) -> CoreResult<Routed> {
        let counters = &self.shared.counters;
        counters.messages_received.inc();
        counters
            .lifecycle
            .message_size
            .observe(msg.body().len() as u64);
        self.route_and_enqueue(exchange, msg, false)
    }

    /// Republishes a dead letter: internal exchanges are allowed, and it does not count
    /// as a message received from a client.
    pub(crate) fn publish_internal(&self, exchange: &str, msg: Message) -> CoreResult<Routed> {
        self.route_and_enqueue(exchange, msg, true)
    }

    fn route_and_enqueue(
        &self,
        exchange: &str,
        msg: Message,
        internal_ok: bool,
    ) -> CoreResult<Routed> {
        let counters = &self.shared.counters;
        if exchange.is_empty() {
            // The default exchange: straight to the queue named by the routing key.
            let Some(q) = self.queues.read().get(msg.routing_key()).cloned() else {
                return Ok(Routed::default());
            };
            counters.messages_routed.inc();
            return Ok(match q.enqueue(Arc::new(msg)) {
                Ok(durable) => Routed {
                    queues: 1,
                    durable,
                    rejected: false,
                },
                Err(super::queue::Rejected) => Routed {
                    queues: 1,
                    durable: None,
                    rejected: true,
                },
            });
        }
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        {
            let x = self.exchange(exchange)?;
            if x.options.internal && !internal_ok {
                return Err(CoreError::new(
                    ErrorKind::AccessRefused,
                    format!(
                        "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                        self.name
                    ),
                ));
            }
            self.route(&x, &msg, &mut queues);
            if queues.is_empty() {
                self.route_alternate(&x, &msg, &mut queues);
            }
        }
        if queues.is_empty() {
            return Ok(Routed::default());
        }
        counters.messages_routed.inc();
        let msg = Arc::new(msg);
        let mut routed = Routed {
            queues: queues.len(),
            ..Default::default()
        };
        for q in &queues {
            match q.enqueue(msg.clone()) {
                Ok(Some(ticket)) => routed.durable = Some(ticket),
                Ok(None) => {}
                Err(super::queue::Rejected) => routed.rejected = true,
            }
        }
        Ok(routed)
    }

    /// Unroutable through `x`: follow its `alternate-exchange` argument (and theirs),
    /// as RabbitMQ does, stopping at a cycle.
    fn route_alternate(&self, x: &Arc<Exchange>, msg: &Message, out: &mut Vec<Arc<Queue>>) {
        let mut seen: Vec<Arc<str>> = vec![x.name.clone()];
        let mut current = x.clone();
        while let Some(name) = current.options.arguments.get_str("alternate-exchange") {
            let Ok(ae) = self.exchange(&name) else { return };
            if seen.contains(&ae.name) {
                return;
            }
            seen.push(ae.name.clone());
            self.route(&ae, msg, out);
            if !out.is_empty() {
                return;
            }
            current = ae;
        }
    }

    fn route(&self, x: &Arc<Exchange>, msg: &Message, out: &mut Vec<Arc<Queue>>) {
        let headers = if x.kind == super::ExchangeKind::Headers {
            msg.headers()
        } else {
            None
        };
        let mut dests = Vec::new();
        x.route(msg.routing_key(), headers.as_ref(), &mut dests);
        let mut visited: Vec<Arc<str>> = vec![x.name.clone()];
        while let Some(d) = dests.pop() {
            match d {
                Destination::Queue(q) => {
                    if !out.iter().any(|o| Arc::ptr_eq(o, &q)) && !q.is_deleted() {
                        out.push(q);
                    }
                }
                Destination::Exchange(name) => {
                    if visited.contains(&name) {
                        continue;
                    }
                    visited.push(name.clone());
                    if let Ok(next) = self.exchange(&name) {
                        let headers = if next.kind == super::ExchangeKind::Headers {
                            msg.headers()
                        } else {
                            None
                        };
                        next.route(msg.routing_key(), headers.as_ref(), &mut dests);
                    }
                }
            }
        }
    }

    /// Restores a durable queue at start-up.
    pub(crate) fn restore_queue(
        &self,
        id: u64,
        name: &str,
        options: QueueOptions,
    ) -> CoreResult<Arc<Queue>> {
        let q = Queue::new(
            id,
            name.to_owned(),
            self.me.clone(),
            self.name.clone(),
            options,
            None,
            self.shared.store.clone(),
        )?;
        self.queues.write().insert(name.to_owned(), q.clone());
        Ok(q)
    }

    /// Restores a durable exchange at start-up.
    pub(crate) fn restore_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) {
        self.exchanges
            .write()
            .entry(name.to_owned())
            .or_insert_with(|| Exchange::new(name, kind, options));
    }
}

/// Fails on the first argument whose redeclared value differs from the current one.
fn first_difference(
    what: &str,
    name: &str,
    vhost: &str,
    args: &[(&str, String, String)],
) -> CoreResult<()> {
    match args.iter().find(|(_, got, cur)| got != cur) {
        None => Ok(()),
        Some((arg, got, cur)) => Err(inequivalent(what, name, vhost, arg, got, cur)),
    }
}

/// RabbitMQ's wording for a redeclaration that does not match.
fn inequivalent(what: &str, name: &str, vhost: &str, arg: &str, got: &str, cur: &str) -> CoreError {
    CoreError::new(
        ErrorKind::PreconditionFailed,
        format!(
            "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': \
             received '{got}' but current is '{cur}'"
        ),
    )
}

fn describe(v: &crate::content::FieldValue) -> String {
    use crate::content::FieldValue as V;
    match v {
        V::LongString(b) | V::ByteArray(b) => String::from_utf8_lossy(b).into_owned(),
        V::Bool(b) => b.to_string(),
        other => other
            .as_i64()
            .map(|n| n.to_string())
            .unwrap_or_else(|| format!("{other:?}")),
    }
}
