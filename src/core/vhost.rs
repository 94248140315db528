//! A virtual host: its exchanges and queues, and every operation that creates, finds,
//! binds, routes to or deletes them. Reply texts follow RabbitMQ's wording.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::RwLock;

use super::deadletter::{dead_letter, Reason};
use super::durable::Durable;
use super::error::{CoreError, CoreResult, Entity};
use super::exchange::{Destination, Exchange, ExchangeKind, ExchangeOptions};
use super::message::{Message, QueuedMessage};
use super::persist;
use super::queue::{Outcome, Owner, Queue, QueueOptions, Rejected, Unused};
use super::timers::Timer;
use super::{BindingDef, Shared};
use crate::content::FieldTable;
use crate::store::FsyncPolicy;

/// The result of routing one publish.
#[derive(Debug, Default)]
pub struct Routed {
    /// Queues the message was enqueued on.
    pub queues: usize,
    /// Set when the message must reach the disk before it may be confirmed.
    pub durable: Option<Durable>,
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
    me: Weak<VHost>,
    pub(crate) shared: Arc<Shared>,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
}

impl std::fmt::Debug for VHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VHost").field("name", &self.name).finish()
    }
}

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
            return Err(CoreError::DefaultExchange);
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
            return Err(CoreError::ReservedName {
                entity: Entity::Exchange,
                name: name.to_owned(),
            });
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
            Entity::Exchange,
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
            return Err(CoreError::InequivalentExchangeArguments {
                exchange: name.to_owned(),
                vhost: vhost.to_owned(),
            });
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
            return Err(CoreError::DefaultExchange);
        }
        if name.starts_with("amq.") {
            return Err(CoreError::SystemExchange {
                exchange: name.to_owned(),
                vhost: self.name.to_string(),
            });
        }
        let mut map = self.exchanges.write();
        let Some(x) = map.get(name).cloned() else {
            return Ok(());
        };
        if if_unused && x.binding_count() > 0 {
            return Err(CoreError::ExchangeInUse {
                exchange: name.to_owned(),
                vhost: self.name.to_string(),
            });
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
        let options = QueueOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = self.new_queue(
            self.shared.next_id(),
            &name,
            options,
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
                return Err(CoreError::ReservedName {
                    entity: Entity::Queue,
                    name: name.to_owned(),
                });
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
        let queue = self.new_queue(
            self.shared.next_id(),
            name,
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

    /// Builds a queue owned by this vhost and starts its `x-expires` clock.
    fn new_queue(
        &self,
        id: u64,
        name: &str,
        options: QueueOptions,
        connection: Option<u64>,
        store: Option<crate::store::Store>,
    ) -> CoreResult<Arc<Queue>> {
        let home: Weak<dyn Owner> = self.me.clone();
        let queue = Queue::new(
            id,
            name.to_owned(),
            home,
            self.name.clone(),
            options,
            connection,
            (store, self.shared.paging()),
        )?;
        if let Some(at) = queue.unused_deadline() {
            self.schedule(at, Timer::Unused, &queue);
        }
        Ok(queue)
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
            Entity::Queue,
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
            return Err(inequivalent(
                Entity::Queue,
                name,
                vhost,
                arg,
                &got,
                &current,
            ));
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
            Err(CoreError::NoQueue { .. }) => return Ok(0),
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

    // ---- what queues leave to their vhost --------------------------------------------

    fn schedule(&self, at: u64, timer: Timer, queue: &Arc<Queue>) {
        self.shared
            .timers
            .schedule(at, timer, queue, self.me.clone());
    }

    /// One of `queue`'s timers, asked for at `at`, is due.
    pub(crate) fn timer_fired(&self, queue: &Arc<Queue>, timer: Timer, at: u64) {
        match timer {
            Timer::HeadExpiry => {
                let outcome = queue.wake(at);
                self.act(queue, outcome);
            }
            Timer::Unused => match queue.check_unused(super::clock::now_ms()) {
                Unused::Until(next) => self.schedule(next, Timer::Unused, queue),
                Unused::Expired => {
                    self.remove_queue(queue);
                }
                Unused::Never => {}
            },
        }
    }

    /// Republishes `queue`'s dead letters, each with its `x-death` history, through its
    /// dead-letter exchange. A missing dead-letter exchange drops them, as in RabbitMQ.
    fn republish_dead(&self, queue: &Queue, dead: Vec<(QueuedMessage, Reason)>) {
        let Some(target) = queue.dead_letter_target() else {
            return;
        };
        for (m, reason) in dead {
            let id = self.shared.next_message_id();
            let (exchange, msg) = dead_letter(&m.msg, id, &queue.name, reason, target);
            let _ = self.publish_internal(&exchange, msg);
        }
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
        let (q, x) = self.queue_and_exchange(queue, exchange, connection)?;
        x.validate_binding(&arguments)?;
        let durable = q.options.durable;
        self.add_binding(&x, Destination::Queue(q), durable, routing_key, arguments);
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
        let (q, x) = self.queue_and_exchange(queue, exchange, connection)?;
        let durable = q.options.durable;
        self.remove_binding(&x, Destination::Queue(q), durable, routing_key, arguments);
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
        let (d, s) = self.exchange_pair(destination, source)?;
        s.validate_binding(&arguments)?;
        let dest = Destination::Exchange(d.name.clone());
        self.add_binding(&s, dest, d.options.durable, routing_key, arguments);
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
        let (d, s) = self.exchange_pair(destination, source)?;
        let dest = Destination::Exchange(d.name.clone());
        self.remove_binding(&s, dest, d.options.durable, routing_key, arguments);
        Ok(())
    }

    /// The two ends of a queue binding; the default exchange takes no bindings.
    fn queue_and_exchange(
        &self,
        queue: &str,
        exchange: &str,
        connection: u64,
    ) -> CoreResult<(Arc<Queue>, Arc<Exchange>)> {
        let q = self.queue(queue, connection)?;
        if exchange.is_empty() {
            return Err(CoreError::DefaultExchange);
        }
        Ok((q, self.exchange(exchange)?))
    }

    /// The two ends of an exchange-to-exchange binding.
    fn exchange_pair(
        &self,
        destination: &str,
        source: &str,
    ) -> CoreResult<(Arc<Exchange>, Arc<Exchange>)> {
        if destination.is_empty() || source.is_empty() {
            return Err(CoreError::DefaultExchange);
        }
        Ok((self.exchange(destination)?, self.exchange(source)?))
    }

    /// Binds, and stores the binding when both ends are durable.
    fn add_binding(
        &self,
        source: &Exchange,
        dest: Destination,
        dest_durable: bool,
        routing_key: &str,
        arguments: FieldTable,
    ) {
        source.bind(dest.clone(), routing_key, arguments.clone());
        if source.options.durable && dest_durable {
            self.shared
                .persist_binding(&self.binding_def(source, &dest, routing_key, &arguments));
        }
    }

    /// Unbinds and forgets the stored binding; an auto-delete source left without
    /// bindings goes too.
    fn remove_binding(
        &self,
        source: &Exchange,
        dest: Destination,
        dest_durable: bool,
        routing_key: &str,
        arguments: &FieldTable,
    ) {
        let now_empty = source.unbind(&dest, routing_key, arguments);
        if source.options.durable && dest_durable {
            self.shared
                .unpersist_binding(&self.binding_def(source, &dest, routing_key, arguments));
        }
        if now_empty && source.options.auto_delete {
            let _ = self.delete_exchange(&source.name, false);
        }
    }

    fn binding_def<'a>(
        &'a self,
        source: &'a Exchange,
        dest: &'a Destination,
        routing_key: &'a str,
        arguments: &'a FieldTable,
    ) -> BindingDef<'a> {
        let (destination, to_exchange) = match dest {
            Destination::Queue(q) => (q.name.as_str(), false),
            Destination::Exchange(x) => (&**x, true),
        };
        BindingDef {
            vhost: &self.name,
            source: &source.name,
            destination,
            to_exchange,
            routing_key,
            arguments,
        }
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
            let (enqueued, outcome) = q.enqueue(Arc::new(msg));
            self.act(&q, outcome);
            return Ok(match enqueued {
                Ok(durable) => Routed {
                    queues: 1,
                    durable,
                    rejected: false,
                },
                Err(Rejected) => Routed {
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
                return Err(CoreError::InternalExchange {
                    exchange: exchange.to_owned(),
                    vhost: self.name.to_string(),
                });
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
        // Routed to several durable queues: the body is written to the store once, for
        // all of them, before any of them can deliver (and so see an ack) it.
        let shared = match &self.shared.store {
            Some(store) if msg.persistent => {
                // Empty (no allocation) unless some of the queues store the message.
                let ids: Vec<u64> = queues
                    .iter()
                    .filter(|q| q.stores(&msg))
                    .map(|q| q.id)
                    .collect();
                let shared = ids.len() > 1;
                if shared {
                    let ticket = store.publish_shared(&ids, msg.id, persist::Record(&msg));
                    if store.policy() == FsyncPolicy::Always {
                        routed.durable = Some(Durable::new(ticket));
                    }
                }
                shared
            }
            _ => false,
        };
        for q in &queues {
            let (enqueued, outcome) = q.enqueue_as(msg.clone(), shared && q.stores(&msg));
            match enqueued {
                Ok(Some(durable)) => routed.durable = Some(durable),
                Ok(None) => {}
                Err(Rejected) => routed.rejected = true,
            }
            self.act(q, outcome);
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
        let q = self.new_queue(id, name, options, None, self.shared.store.clone())?;
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

impl Owner for VHost {
    /// Arms the head-expiry wake-up, then republishes the dead letters (the queue's
    /// lock is released, so a dead-letter cycle back to the queue cannot deadlock).
    fn act(&self, queue: &Arc<Queue>, outcome: Outcome) {
        if let Some(at) = outcome.wake_at {
            self.schedule(at, Timer::HeadExpiry, queue);
        }
        if !outcome.dead.is_empty() {
            self.republish_dead(queue, outcome.dead);
        }
    }
}

/// Fails on the first argument whose redeclared value differs from the current one.
fn first_difference(
    what: Entity,
    name: &str,
    vhost: &str,
    args: &[(&str, String, String)],
) -> CoreResult<()> {
    match args.iter().find(|(_, got, cur)| got != cur) {
        None => Ok(()),
        Some((arg, got, cur)) => Err(inequivalent(what, name, vhost, arg, got, cur)),
    }
}

fn inequivalent(
    what: Entity,
    name: &str,
    vhost: &str,
    arg: &str,
    got: &str,
    cur: &str,
) -> CoreError {
    CoreError::InequivalentArg {
        entity: what,
        name: name.to_owned(),
        vhost: vhost.to_owned(),
        arg: arg.to_owned(),
        received: got.to_owned(),
        current: cur.to_owned(),
    }
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
