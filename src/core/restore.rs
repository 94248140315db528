//! Start-up recovery: rebuilds durable exchanges, queues and bindings from their stored
//! definitions, then refills the queues with their recovered messages in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::access::StoredAccess;
use super::message::Names;
use super::persist::{decode_table, message_from_record};
use super::{Broker, ExchangeKind, ExchangeOptions, QueueOptions};
use crate::content::{FieldTable, FieldValue};
use crate::store::Recovered;

fn text(t: &FieldTable, key: &str) -> String {
    t.get_str(key).unwrap_or_default()
}

fn flag(t: &FieldTable, key: &str) -> bool {
    matches!(t.get(key), Some(FieldValue::Bool(true)))
}

fn args(t: &FieldTable) -> FieldTable {
    match t.get("arguments") {
        Some(FieldValue::Table(a)) => a.clone(),
        _ => FieldTable::new(),
    }
}

pub(super) fn restore(broker: &Broker, recovered: Recovered) {
    let started = Instant::now();
    let shared = &broker.shared;
    let mut exchanges = Vec::new();
    let mut queues = Vec::new();
    let mut bindings = Vec::new();
    let mut access = StoredAccess::default();
    for (key, value) in &recovered.definitions {
        let Some(t) = decode_table(value) else {
            tracing::warn!(key = %key.replace('\0', "/"), "unreadable definition skipped");
            continue;
        };
        if access.take(key, &t) {
            continue;
        }
        match key.split('\0').next() {
            Some("exchange") => exchanges.push(t),
            Some("queue") => queues.push(t),
            Some("binding") => bindings.push((key.clone(), t)),
            _ => {}
        }
    }
    // Vhosts first: exchanges and queues are restored into them. A data directory
    // without access records (fresh, or written before qgate had them) keeps the
    // seeded defaults / config file's users and vhosts, and persists them now.
    if access.is_empty() {
        broker.persist_all_access();
    } else {
        broker.load_access(access);
    }
    for t in &exchanges {
        let Some(vhost) = broker.vhost(&text(t, "vhost")) else {
            continue;
        };
        let Ok(kind) = ExchangeKind::parse(&text(t, "type")) else {
            continue;
        };
        vhost.restore_exchange(
            &text(t, "name"),
            kind,
            ExchangeOptions {
                durable: true,
                auto_delete: flag(t, "auto_delete"),
                internal: flag(t, "internal"),
                arguments: args(t),
            },
        );
    }
    let mut by_id = HashMap::new();
    let mut max_id = 0;
    for t in &queues {
        let Some(vhost) = broker.vhost(&text(t, "vhost")) else {
            continue;
        };
        let id = t.get_int("id").unwrap_or(0) as u64;
        max_id = max_id.max(id);
        let options = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: flag(t, "auto_delete"),
            arguments: args(t),
        };
        match vhost.restore_queue(id, &text(t, "name"), options) {
            Ok(q) => {
                by_id.insert(id, (vhost.clone(), q));
            }
            Err(e) => tracing::warn!(error = %e, "durable queue not restored"),
        }
    }
    shared
        .next_id
        .fetch_max(max_id + 1, std::sync::atomic::Ordering::Relaxed);
    for (key, t) in &bindings {
        let Some(vhost) = broker.vhost(&text(t, "vhost")) else {
            continue;
        };
        let (source, dest, rk) = (
            text(t, "source"),
            text(t, "destination"),
            text(t, "routing_key"),
        );
        let ok = if flag(t, "to_exchange") {
            vhost.bind_exchange(&dest, &source, &rk, args(t)).is_ok()
        } else {
            match vhost.find_queue(&dest) {
                Some(q) => vhost
                    .bind_queue(&dest, &source, &rk, args(t), q.owner.unwrap_or(0))
                    .is_ok(),
                None => false,
            }
        };
        if !ok {
            if let Some(store) = &shared.store {
                let _ = store.delete_definition(key);
            }
        }
    }
    let mut restored = 0u64;
    let mut paged = 0u64;
    let mut names = Arc::<Names>::default();
    for (queue_id, messages) in recovered.queues {
        let Some((vhost, q)) = by_id.get(&queue_id) else {
            if let Some(store) = &shared.store {
                store.delete_queue(queue_id);
            }
            continue;
        };
        let _ = vhost;
        for m in messages {
            let Some(msg) = message_from_record(m.msg_id, m.payload, &mut names) else {
                tracing::warn!(queue = %q.name, msg = m.msg_id, "unreadable message record skipped");
                continue;
            };
            q.restore(Arc::new(msg), m.delivered);
            restored += 1;
        }
    }
    // What recovery left paged behind each queue's head: counted by a queue that pages,
    // read in now by one that cannot (priorities, length limits, a queue TTL).
    for (queue_id, out) in recovered.paged {
        let Some((_, q)) = by_id.get(&queue_id) else {
            continue;
        };
        if q.restore_paged(out) {
            paged += out.messages;
            continue;
        }
        let Some(store) = &shared.store else { continue };
        match store.read_paged(queue_id, usize::MAX, u64::MAX) {
            Ok(messages) => {
                for m in messages {
                    match message_from_record(m.msg_id, m.payload, &mut names) {
                        Some(msg) => {
                            q.restore(Arc::new(msg), m.delivered);
                            restored += 1;
                        }
                        None => tracing::warn!(
                            queue = %q.name,
                            msg = m.msg_id,
                            "unreadable message record skipped"
                        ),
                    }
                }
            }
            Err(e) => tracing::error!(queue = %q.name, error = %e, "queue's messages not restored"),
        }
    }
    tracing::info!(
        exchanges = exchanges.len(),
        queues = by_id.len(),
        bindings = bindings.len(),
        messages = restored,
        paged,
        seconds = started.elapsed().as_secs_f64(),
        "definitions and messages restored"
    );
}
