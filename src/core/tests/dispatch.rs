//! Dispatch and credit: round robin, prefetch (own and shared), no-ack, single active
//! consumer, exclusive consumers.

use std::sync::Arc;

use super::support::*;
use crate::content::FieldValue;
use crate::core::Credit;

#[test]
fn messages_go_round_robin_across_consumers() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    let (_a, got_a) = consume(&q, "a", 0);
    let (_b, got_b) = consume(&q, "b", 0);
    publish_numbered(&v, "q", 4);
    assert_eq!(got_a.bodies(), ["m1", "m3"]);
    assert_eq!(got_b.bodies(), ["m2", "m4"]);
    assert_eq!(q.depth().unacked, 4);
}

#[test]
fn prefetch_holds_back_what_is_over_the_window_until_an_ack() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish_numbered(&v, "q", 5);
    let (_c, got) = consume(&q, "c", 2);
    assert_eq!(got.bodies(), ["m1", "m2"]);
    let d = q.depth();
    assert_eq!((d.ready, d.unacked), (3, 2));
    let mut first = got.take();
    first.remove(0).ack();
    assert_eq!(got.bodies(), ["m3"], "one ack frees one place");
    let d = q.depth();
    assert_eq!((d.ready, d.unacked), (2, 2));
}

#[test]
fn a_shared_window_bounds_all_consumers_of_the_group_together() {
    // AMQP basic.qos with global=true: one limit for the channel's consumers.
    let v = vhost();
    let q = declare(&v, "q", &[]);
    let group = Arc::new(Credit::new(3));
    let (_a, got_a) = consume_in(&q, "a", 0, group.clone());
    let (_b, got_b) = consume_in(&q, "b", 0, group.clone());
    publish_numbered(&v, "q", 6);
    assert_eq!(got_a.bodies().len() + got_b.bodies().len(), 3);
    assert_eq!(group.in_flight(), 3);
    assert_eq!(q.depth().ready, 3);
    got_b.take().into_iter().for_each(|d| d.ack());
    assert_eq!(group.in_flight(), 3, "the acked places were refilled");
    assert_eq!(q.depth().ready, 3 - 1);
}

#[test]
fn a_no_ack_consumer_settles_on_delivery_and_ignores_prefetch() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    let (c, sink) = consumer("c", true, false, 1, Arc::new(Credit::new(1)));
    q.add_consumer(c).unwrap();
    publish_numbered(&v, "q", 3);
    assert_eq!(sink.bodies(), ["m1", "m2", "m3"]);
    assert_eq!(q.depth().unacked, 0);
    assert_eq!(q.counters.acked.get(), 3);
}

#[test]
fn a_paused_consumer_receives_nothing_until_resumed() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish(&v, "q", "m1");
    let (c, sink) = consumer("c", false, false, 0, Arc::new(Credit::new(0)));
    c.set_active(false);
    q.add_consumer(c.clone()).unwrap();
    assert!(sink.bodies().is_empty());
    c.set_active(true);
    q.dispatch();
    assert_eq!(sink.bodies(), ["m1"]);
}

#[test]
fn with_a_single_active_consumer_only_the_oldest_receives_and_the_next_takes_over() {
    let v = vhost();
    let q = declare(
        &v,
        "q",
        &[("x-single-active-consumer", FieldValue::Bool(true))],
    );
    let (a, got_a) = consume(&q, "a", 0);
    let (_b, got_b) = consume(&q, "b", 0);
    publish(&v, "q", "m1");
    publish(&v, "q", "m2");
    assert_eq!(got_a.bodies(), ["m1", "m2"]);
    assert!(got_b.bodies().is_empty());
    v.cancel_consumer(&q, &a);
    publish(&v, "q", "m3");
    assert_eq!(got_b.bodies(), ["m3"]);
}

#[test]
fn an_exclusive_consumer_keeps_others_off_the_queue() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    let (exclusive, _sink) = consumer("x", false, true, 0, Arc::new(Credit::new(0)));
    q.add_consumer(exclusive).unwrap();
    let (other, _sink) = consumer("o", false, false, 0, Arc::new(Credit::new(0)));
    let e = q.add_consumer(other).unwrap_err();
    assert_eq!(e.to_string(), "queue 'q' in vhost '/' in exclusive use");
    assert_eq!(e.kind(), crate::core::ErrorKind::AccessRefused);
}

#[test]
fn priorities_deliver_highest_first_and_cap_at_the_maximum() {
    let v = vhost();
    let q = declare(&v, "q", &[("x-max-priority", FieldValue::I64(5))]);
    for (body, p) in [("low", 1), ("mid", 3), ("over", 9), ("high", 5)] {
        publish_priority(&v, "q", body, p);
    }
    // 9 counts as 5: it and "high" share the top level, in publish order.
    assert_eq!(drain(&q), ["over", "high", "mid", "low"]);
}

#[test]
fn deleting_a_queue_cancels_its_consumers() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    let (c, sink) = consume(&q, "c", 0);
    publish(&v, "q", "m1");
    publish(&v, "q", "m2");
    assert_eq!(v.delete_queue("q", false, false, CONN).unwrap(), 0);
    assert!(sink.was_cancelled());
    assert!(!c.is_active());
    assert!(q.is_deleted());
    // Settling what was in flight after the delete is harmless.
    sink.take().into_iter().for_each(|d| d.requeue());
    assert_eq!(q.depth().ready, 0);
}
