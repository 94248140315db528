//! Dead-lettering: rejected, expired and over-limit messages go to the dead-letter
//! exchange with RabbitMQ's `x-death` history; the vhost republishes them after the
//! queue's lock is released, so cycles do not deadlock.

use super::support::*;
use crate::content::{FieldTable, FieldValue, Properties};
use crate::core::{ExchangeOptions, QueueOptions};

fn dead_lettering(v: &crate::core::VHost, name: &str, extra: &[(&str, FieldValue)]) {
    let mut args = vec![
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("dlq")),
    ];
    args.extend(extra.iter().cloned());
    declare(v, name, &args);
}

fn field(t: &FieldTable, key: &str) -> Option<String> {
    t.get_str(key)
}

#[test]
fn a_rejected_message_is_dead_lettered_with_x_death() {
    let v = vhost();
    let dlq = declare(&v, "dlq", &[]);
    dead_lettering(&v, "q", &[]);
    let q = v.find_queue("q").unwrap();
    publish(&v, "q", "m1");
    let (_, _, d) = get(&q).unwrap();
    d.discard();
    assert_eq!(q.depth().unacked, 0);
    let (b, redelivered, d) = get(&dlq).expect("dead-lettered");
    assert_eq!((b.as_str(), redelivered), ("m1", false));
    let deaths = x_death(&d);
    assert_eq!(deaths.len(), 1);
    let death = &deaths[0];
    assert_eq!(field(death, "reason").as_deref(), Some("rejected"));
    assert_eq!(field(death, "queue").as_deref(), Some("q"));
    assert_eq!(field(death, "exchange").as_deref(), Some(""));
    assert_eq!(death.get_int("count"), Some(1));
    assert_eq!(
        death.get("routing-keys"),
        Some(&FieldValue::Array(vec![text("q")]))
    );
    let headers = d.entry.msg.headers().unwrap();
    assert_eq!(
        field(&headers, "x-first-death-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(field(&headers, "x-first-death-queue").as_deref(), Some("q"));
    assert_eq!(d.entry.msg.routing_key(), "dlq");
}

#[test]
fn a_rejected_message_without_a_target_is_gone() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish(&v, "q", "m1");
    get(&q).unwrap().2.discard();
    let d = q.depth();
    assert_eq!((d.ready, d.unacked), (0, 0));
}

#[test]
fn overflow_drops_the_oldest_into_the_dead_letter_exchange() {
    let v = vhost();
    let dlq = declare(&v, "dlq", &[]);
    dead_lettering(&v, "q", &[("x-max-length", FieldValue::I64(2))]);
    let q = v.find_queue("q").unwrap();
    publish_numbered(&v, "q", 3);
    assert_eq!(q.counters.dropped.get(), 1);
    let (b, _, d) = get(&dlq).unwrap();
    assert_eq!(b, "m1");
    assert_eq!(field(&x_death(&d)[0], "reason").as_deref(), Some("maxlen"));
    assert_eq!(drain(&q), ["m2", "m3"]);
}

#[test]
fn the_byte_limit_counts_bodies() {
    let v = vhost();
    let q = declare(&v, "q", &[("x-max-length-bytes", FieldValue::I64(10))]);
    publish(&v, "q", "12345");
    publish(&v, "q", "67890");
    publish(&v, "q", "abc");
    assert_eq!(drain(&q), ["67890", "abc"]);
}

#[test]
fn reject_publish_refuses_at_the_limit_and_keeps_what_is_queued() {
    let v = vhost();
    let q = declare(
        &v,
        "q",
        &[
            ("x-max-length", FieldValue::I64(1)),
            ("x-overflow", text("reject-publish")),
        ],
    );
    assert!(!publish(&v, "q", "m1").rejected);
    let refused = publish(&v, "q", "m2");
    assert!(refused.rejected, "a confirm must be a nack");
    assert_eq!(refused.queues, 1);
    assert_eq!(drain(&q), ["m1"]);
}

#[test]
fn a_dead_letter_cycle_counts_each_round_and_does_not_deadlock() {
    // a dead-letters to b, b back to a, both through the default exchange.
    let v = vhost();
    declare(
        &v,
        "a",
        &[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("b")),
        ],
    );
    declare(
        &v,
        "b",
        &[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("a")),
        ],
    );
    let (a, b) = (v.find_queue("a").unwrap(), v.find_queue("b").unwrap());
    publish(&v, "a", "m");
    get(&a).unwrap().2.discard();
    get(&b).unwrap().2.discard();
    get(&a).unwrap().2.discard();
    let (_, _, d) = get(&b).expect("back in b");
    let deaths = x_death(&d);
    let rounds: Vec<(Option<String>, Option<i64>)> = deaths
        .iter()
        .map(|t| (field(t, "queue"), t.get_int("count")))
        .collect();
    assert_eq!(
        rounds,
        [(Some("a".into()), Some(2)), (Some("b".into()), Some(1))],
        "newest first, one entry per queue and reason"
    );
}

#[test]
fn dead_letters_route_through_a_named_exchange_with_their_own_routing_key() {
    let v = vhost();
    v.declare_exchange("dlx", "fanout", ExchangeOptions::default(), false)
        .unwrap();
    let dlq = declare(&v, "dlq", &[]);
    v.bind_queue("dlq", "dlx", "", FieldTable::new(), CONN)
        .unwrap();
    declare(&v, "q", &[("x-dead-letter-exchange", text("dlx"))]);
    let q = v.find_queue("q").unwrap();
    publish_with(&v, "", "q", "m", Properties::default());
    get(&q).unwrap().2.discard();
    let (_, _, d) = get(&dlq).unwrap();
    assert_eq!(d.entry.msg.exchange(), "dlx");
    assert_eq!(
        d.entry.msg.routing_key(),
        "q",
        "no x-dead-letter-routing-key"
    );
}

#[test]
fn a_missing_dead_letter_exchange_drops_the_message() {
    let v = vhost();
    let options = QueueOptions {
        arguments: {
            let mut t = FieldTable::new();
            t.insert("x-dead-letter-exchange", text("nowhere"));
            t
        },
        ..Default::default()
    };
    let q = v.declare_queue("q", options, false, CONN).unwrap().queue;
    publish(&v, "q", "m");
    get(&q).unwrap().2.discard();
    assert_eq!(q.depth().ready, 0);
}
