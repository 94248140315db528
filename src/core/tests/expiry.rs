//! Expiry on tokio's paused clock: per-message and per-queue TTL (expired messages are
//! dropped at the head, by the broker's timer task when nobody consumes), and
//! `x-expires` deleting a queue left unused, its clock restarted by every use.

use std::time::Duration;

use super::support::*;
use crate::content::FieldValue;
use crate::core::QueueOptions;

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn a_message_ttl_expires_at_the_head_with_no_one_consuming() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish_expiring(&v, "q", "short", 100);
    sleep_ms(50).await;
    assert_eq!(q.depth().ready, 1);
    sleep_ms(100).await;
    assert_eq!(q.depth().ready, 0, "the timer dropped it");
    assert_eq!(q.counters.expired.get(), 1);
    assert_eq!(q.counters.delivered.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_queue_ttl_applies_to_every_message_and_the_shorter_ttl_wins() {
    let v = vhost();
    let q = declare(&v, "q", &[("x-message-ttl", FieldValue::I64(200))]);
    publish(&v, "q", "queue-ttl");
    publish_expiring(&v, "q", "own-ttl", 1000);
    sleep_ms(250).await;
    assert_eq!(q.depth().ready, 0, "1000 ms capped at the queue's 200");
    assert_eq!(q.counters.expired.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_expired_message_behind_a_live_head_counts_until_it_reaches_the_head() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish(&v, "q", "keeps");
    publish_expiring(&v, "q", "expires", 50);
    sleep_ms(100).await;
    assert_eq!(
        q.depth().ready,
        2,
        "still counted, as RabbitMQ's message_count"
    );
    let (b, _, d) = get(&q).unwrap();
    assert_eq!(b, "keeps");
    d.ack();
    assert!(
        get(&q).is_none(),
        "never delivered once it reaches the head"
    );
    assert_eq!(q.counters.expired.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_expired_message_is_dead_lettered_with_its_original_expiration() {
    let v = vhost();
    let dlq = declare(&v, "dlq", &[]);
    declare(
        &v,
        "q",
        &[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("dlq")),
        ],
    );
    publish_expiring(&v, "q", "m", 100);
    sleep_ms(150).await;
    let (b, _, d) = get(&dlq).expect("dead-lettered by the timer");
    assert_eq!(b, "m");
    let death = &x_death(&d)[0];
    assert_eq!(death.get_str("reason").as_deref(), Some("expired"));
    assert_eq!(death.get_str("original-expiration").as_deref(), Some("100"));
    assert_eq!(d.entry.msg.decode_properties().expiration, None);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_never_receives_an_expired_message() {
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish_expiring(&v, "q", "stale", 10);
    publish(&v, "q", "fresh");
    sleep_ms(20).await;
    let (_c, sink) = consume(&q, "c", 0);
    assert_eq!(sink.bodies(), ["fresh"]);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_head_deadline_rearms_the_timer() {
    // The timer is armed for the long-lived head; once it is consumed, the short-lived
    // message behind it is the head and must still expire on time.
    let v = vhost();
    let q = declare(&v, "q", &[]);
    publish_expiring(&v, "q", "long", 10_000);
    publish_expiring(&v, "q", "short", 100);
    get(&q).unwrap().2.ack();
    sleep_ms(150).await;
    assert_eq!(q.depth().ready, 0);
}

fn expiring_queue(v: &crate::core::VHost, ms: i64) -> std::sync::Arc<crate::core::Queue> {
    declare(v, "q", &[("x-expires", FieldValue::I64(ms))])
}

#[tokio::test(start_paused = true)]
async fn x_expires_deletes_a_queue_left_unused() {
    let v = vhost();
    let q = expiring_queue(&v, 1000);
    publish(&v, "q", "m");
    sleep_ms(900).await;
    assert!(v.find_queue("q").is_some());
    sleep_ms(200).await;
    assert!(v.find_queue("q").is_none(), "deleted after 1000 ms unused");
    assert!(q.is_deleted());
}

#[tokio::test(start_paused = true)]
async fn x_expires_restarts_on_a_passive_declare_and_a_get() {
    let v = vhost();
    expiring_queue(&v, 1000);
    sleep_ms(700).await;
    v.declare_queue("q", QueueOptions::default(), true, CONN)
        .unwrap();
    sleep_ms(700).await;
    assert!(
        v.find_queue("q").is_some(),
        "the passive declare restarted it"
    );
    assert!(v.find_queue("q").unwrap().get(true).is_none());
    sleep_ms(700).await;
    assert!(v.find_queue("q").is_some(), "the get restarted it");
    sleep_ms(400).await;
    assert!(v.find_queue("q").is_none());
}

#[tokio::test(start_paused = true)]
async fn x_expires_waits_while_the_queue_has_consumers() {
    let v = vhost();
    let q = expiring_queue(&v, 1000);
    let (c, _sink) = consume(&q, "c", 0);
    sleep_ms(3000).await;
    assert!(v.find_queue("q").is_some(), "in use");
    v.cancel_consumer(&q, &c);
    sleep_ms(900).await;
    assert!(v.find_queue("q").is_some(), "the cancel was a use");
    sleep_ms(200).await;
    assert!(v.find_queue("q").is_none());
}

#[tokio::test(start_paused = true)]
async fn stopped_timers_no_longer_fire() {
    let broker = crate::core::Broker::new(crate::core::CoreConfig::default());
    let v = broker.vhost("/").unwrap();
    let q = declare(&v, "q", &[]);
    publish_expiring(&v, "q", "m", 100);
    broker.stop_timers().await;
    sleep_ms(200).await;
    assert_eq!(q.depth().ready, 1, "nothing woke the queue");
    assert!(get(&q).is_none(), "but it is still expired at the head");
}

#[test]
fn x_expires_and_priority_arguments_are_checked_as_rabbitmq_does() {
    let v = vhost();
    let declare_err = |args: &[(&str, FieldValue)]| {
        let mut arguments = crate::content::FieldTable::new();
        for (k, val) in args {
            arguments.insert(*k, val.clone());
        }
        let options = QueueOptions {
            arguments,
            ..Default::default()
        };
        v.declare_queue("bad", options, false, CONN)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        declare_err(&[("x-expires", FieldValue::I64(0))]),
        "invalid arg 'x-expires': value 0 is zero"
    );
    assert_eq!(
        declare_err(&[("x-max-priority", FieldValue::I64(300))]),
        "invalid arg 'x-max-priority': 300 is larger than 255"
    );
    assert_eq!(
        declare_err(&[("x-overflow", text("drop-tail"))]),
        "invalid arg 'x-overflow' for queue: 'drop-tail'"
    );
}
