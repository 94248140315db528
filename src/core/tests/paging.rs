//! Paging: a queue keeps its window in memory and the rest in the store, and still
//! behaves as one FIFO (gets, consumers, requeues, purge, features that never page).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::support::*;
use crate::content::{FieldValue, Properties};
use crate::core::{Broker, CoreConfig, Queue, VHost};
use crate::store::{FsyncPolicy, Store, StoreConfig, Window};

/// A broker over a store in a fresh directory, paging beyond `window` messages.
fn paging_vhost(window: usize) -> (Arc<VHost>, Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "qgate-core-paging-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut cfg = StoreConfig::new(&dir);
    cfg.fsync = FsyncPolicy::Never;
    let w = Window {
        messages: window,
        bytes: u64::MAX,
    };
    cfg.window = Some(w);
    let (store, _) = Store::open(cfg).expect("store");
    let config = CoreConfig {
        queue_window: Some(w),
        ..CoreConfig::default()
    };
    let broker = Broker::with_store(config, Some(store.clone()), 1);
    (broker.vhost("/").expect("vhost"), store, dir)
}

fn durable(v: &VHost, name: &str, args: &[(&str, FieldValue)]) -> Arc<Queue> {
    let mut arguments = crate::content::FieldTable::new();
    for (k, val) in args {
        arguments.insert(*k, val.clone());
    }
    let options = crate::core::QueueOptions {
        durable: true,
        arguments,
        ..Default::default()
    };
    v.declare_queue(name, options, false, CONN)
        .expect("declare")
        .queue
}

fn persistent() -> Properties {
    Properties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

/// Takes with auto-ack until `n` came or nothing comes for a while (reads are async).
fn take(q: &Arc<Queue>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n && Instant::now() < deadline {
        match q.get(true) {
            Some((d, _)) => out.push(body(&d)),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    out
}

fn numbered(from: usize, to: usize) -> Vec<String> {
    (from..=to).map(|i| format!("m{i}")).collect()
}

#[test]
fn beyond_the_window_messages_wait_in_the_store_and_come_back_in_order() {
    let (v, store, dir) = paging_vhost(10);
    let q = durable(&v, "deep", &[]);
    for i in 1..=100 {
        // Persistent and transient mixed: both page, each to its kind of record.
        let props = if i % 3 == 0 {
            Properties::default()
        } else {
            persistent()
        };
        publish_with(&v, "", "deep", &format!("m{i}"), props);
    }
    let d = q.depth();
    assert_eq!(d.ready, 100);
    assert_eq!(d.ready_ram, 10);
    assert_eq!(d.paged, 90);
    assert!(d.paged_bytes > 90 * 2);
    assert_eq!(take(&q, 100), numbered(1, 100));
    assert_eq!(q.depth().ready, 0);
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn requeued_and_consumed_messages_keep_their_places_across_the_window() {
    let (v, store, dir) = paging_vhost(8);
    let q = durable(&v, "deep", &[]);
    for i in 1..=50 {
        publish_with(&v, "", "deep", &format!("m{i}"), persistent());
    }
    // A consumer takes 5 and goes away without acking: they come back first.
    let (c, sink) = consume(&q, "c", 5);
    assert_eq!(sink.bodies(), numbered(1, 5));
    v.cancel_consumer(&q, &c);
    drop(sink.take());
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 50 && Instant::now() < deadline {
        match get(&q) {
            Some((b, redelivered, d)) => {
                seen.push((b, redelivered));
                d.ack();
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    let bodies: Vec<String> = seen.iter().map(|s| s.0.clone()).collect();
    assert_eq!(bodies, numbered(1, 50));
    assert!(
        seen[..5].iter().all(|s| s.1),
        "the first five were delivered before"
    );
    assert!(seen[5..].iter().all(|s| !s.1));
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_purge_counts_and_drops_what_is_paged() {
    let (v, store, dir) = paging_vhost(4);
    let q = durable(&v, "deep", &[]);
    publish_numbered(&v, "deep", 40);
    assert_eq!(q.depth().paged, 36);
    assert_eq!(q.purge(), 40);
    assert_eq!(q.depth().ready, 0);
    publish_numbered(&v, "deep", 6);
    assert_eq!(
        take(&q, 6),
        numbered(1, 6),
        "only what came after the purge"
    );
    assert!(q.get(true).is_none());
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn queues_whose_features_see_every_message_never_page() {
    let (v, store, dir) = paging_vhost(4);
    let prio = durable(&v, "prio", &[("x-max-priority", FieldValue::I64(5))]);
    let capped = durable(&v, "capped", &[("x-max-length", FieldValue::I64(10))]);
    for i in 1..=20u8 {
        publish_priority(&v, "prio", &format!("p{i}"), i % 3);
        publish(&v, "capped", &format!("m{i}"));
    }
    assert_eq!(prio.depth().paged, 0);
    assert_eq!(prio.depth().ready_ram, 20);
    assert_eq!(
        drain(&prio)[..7],
        (1..=20)
            .filter(|i| i % 3 == 2)
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>()[..]
    );
    assert_eq!(capped.depth().paged, 0);
    assert_eq!(drain(&capped), numbered(11, 20));
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_records_body_length_is_read_from_its_header() {
    let props = Properties {
        message_id: Some("id-1".into()),
        ..persistent()
    };
    let raw = props.to_bytes();
    let msg = crate::core::Message::new(
        1,
        crate::core::message::Names::new("ex", "key"),
        &raw,
        &props,
        b"twelve bytes",
    );
    let rec = crate::core::persist::encode_message(&msg);
    assert_eq!(crate::core::persist::body_len(&rec), 12);
    assert_eq!(crate::core::persist::body_len(&rec[..3]), 0);
}
