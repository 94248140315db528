//! Requeue order: whatever way a message comes back (nack/reject with requeue, a
//! channel or connection closing with deliveries outstanding), it returns to its
//! original position with redelivered=true, as in RabbitMQ.

use super::support::*;
use crate::content::FieldValue;

#[test]
fn requeued_messages_return_to_their_original_positions() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish_numbered(&v, "q", 5);
    let (_, _, d1) = get(&q).unwrap();
    let (_, _, d2) = get(&q).unwrap();
    let (_, _, d3) = get(&q).unwrap();
    // Out of order, as a client nacking by hand may.
    d3.requeue();
    d1.requeue();
    d2.ack();
    let mut seen = Vec::new();
    while let Some((b, redelivered, d)) = get(&q) {
        seen.push((b, redelivered));
        d.ack();
    }
    let want = [("m1", true), ("m3", true), ("m4", false), ("m5", false)];
    let want: Vec<(String, bool)> = want.iter().map(|(b, r)| (b.to_string(), *r)).collect();
    assert_eq!(seen, want);
}

#[test]
fn a_closing_channel_puts_its_unacked_deliveries_back_in_order() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish_numbered(&v, "q", 4);
    let (c, sink) = consume(&q, "c", 0);
    let mut held = sink.take();
    assert_eq!(held.len(), 4);
    held.remove(1).ack(); // m2 was acked before the close
    v.cancel_consumer(&q, &c);
    // The channel goes: its deliveries are dropped unsettled, newest first here.
    held.reverse();
    drop(held);
    let d = q.depth();
    assert_eq!((d.ready, d.unacked, d.consumers), (3, 0, 0));
    let mut seen = Vec::new();
    while let Some((b, redelivered, d)) = get(&q) {
        assert!(redelivered, "{b} came back redelivered");
        seen.push(b);
        d.ack();
    }
    assert_eq!(seen, ["m1", "m3", "m4"]);
}

#[test]
fn a_requeued_message_goes_to_the_next_consumer_with_credit() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    let (_a, got_a) = consume(&q, "a", 1);
    publish(&v, "q", "m1");
    publish(&v, "q", "m2");
    assert_eq!(got_a.bodies(), ["m1"]);
    let (_b, got_b) = consume(&q, "b", 1);
    assert_eq!(got_b.bodies(), ["m2"]);
    // a rejects with requeue: b is full, so it comes back to a, redelivered.
    got_a.take().remove(0).requeue();
    let again = got_a.take();
    assert_eq!(again.len(), 1);
    assert_eq!(body(&again[0]), "m1");
    assert!(again[0].redelivered());
}

#[test]
fn requeue_keeps_order_within_a_priority_level() {
    let v = vhost();
    let q = declare(&v, "q", &[("x-max-priority", FieldValue::I64(2))]);
    for (b, p) in [("a1", 1), ("b2", 2), ("a2", 1), ("b1", 2)] {
        publish_priority(&v, "q", b, p);
    }
    let taken: Vec<_> = std::iter::from_fn(|| get(&q)).collect();
    let order: Vec<&str> = taken.iter().map(|(b, _, _)| b.as_str()).collect();
    assert_eq!(order, ["b2", "b1", "a1", "a2"]);
    for (_, _, d) in taken.into_iter().rev() {
        d.requeue();
    }
    assert_eq!(drain(&q), ["b2", "b1", "a1", "a2"]);
}
