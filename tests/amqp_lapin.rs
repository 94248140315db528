//! Black-box AMQP 0-9-1 tests through the lapin client against an in-process qgate.
//! Every test starts its own broker on 127.0.0.1 port 0 and uses unique queue names;
//! every wait has a deadline.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{start_broker, unique, within, Broker};
use futures_lite::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

// ---- helpers --------------------------------------------------------------------------

async fn connect(broker: &Broker) -> Connection {
    within(
        "connect",
        Connection::connect(&broker.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("connect")
}

async fn channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

/// Connection + one channel.
async fn open(broker: &Broker) -> (Connection, Channel) {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    (conn, ch)
}

async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions) -> lapin::Queue {
    within(
        "queue.declare",
        ch.queue_declare(name, options, FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"))
}

async fn declare_plain(ch: &Channel, name: &str) -> lapin::Queue {
    declare(ch, name, QueueDeclareOptions::default()).await
}

/// Passive declare on a fresh channel: the ready count, or the error.
async fn ready_count(conn: &Connection, name: &str) -> Result<u32, lapin::Error> {
    let ch = channel(conn).await;
    let r = within(
        "passive queue.declare",
        ch.queue_declare(
            name,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    if r.is_ok() {
        let _ = within("channel.close", ch.close(200, "bye")).await;
    }
    r.map(|q| q.message_count())
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_props(ch, exchange, key, body, BasicProperties::default()).await
}

async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(exchange, key, BasicPublishOptions::default(), body, props),
    )
    .await
    .expect("basic.publish");
    // In confirm mode this waits for the broker's ack; otherwise it resolves at once.
    let c = within("publisher confirm", confirm).await.expect("confirm");
    assert!(
        matches!(c, Confirmation::Ack(None) | Confirmation::NotRequested),
        "unexpected confirmation {c:?}"
    );
}

async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    within("basic.get", ch.basic_get(queue, BasicGetOptions { no_ack }))
        .await
        .expect("basic.get")
}

async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    within(
        "basic.consume",
        ch.basic_consume(
            queue,
            "",
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume")
}

async fn next(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Exactly `n` deliveries, each waited for with the usual deadline.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(next(consumer).await);
    }
    got
}

/// Asserts nothing more arrives within a short window.
async fn assert_quiet(consumer: &mut Consumer) {
    let extra = drain(consumer, Duration::from_millis(300)).await;
    assert!(
        extra.is_empty(),
        "{} unexpected deliveries: {:?}",
        extra.len(),
        extra.iter().map(body_str).collect::<Vec<_>>()
    );
}

/// One delivery from whichever of two consumers has one first.
async fn next_of_two(a: &mut Consumer, b: &mut Consumer) -> (usize, Delivery) {
    within("a delivery on either consumer", async {
        tokio::select! {
            d = a.next() => (0, d.expect("stream ended").expect("delivery error")),
            d = b.next() => (1, d.expect("stream ended").expect("delivery error")),
        }
    })
    .await
}

/// Deliveries that arrive within `idle` of each other (stops at the first gap).
async fn drain(consumer: &mut Consumer, idle: Duration) -> Vec<Delivery> {
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(idle, consumer.next()).await {
        got.push(d.expect("delivery error"));
    }
    got
}

/// The AMQP reply code and text of a protocol error.
fn amqp_error(e: &lapin::Error) -> (u16, String) {
    match e {
        lapin::Error::ProtocolError(p) => (p.get_id(), p.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

fn expect_error<T: std::fmt::Debug>(r: Result<T, lapin::Error>, code: u16) -> String {
    match r {
        Ok(v) => panic!("expected AMQP error {code}, got Ok({v:?})"),
        Err(e) => {
            let (got, text) = amqp_error(&e);
            assert_eq!(got, code, "reply code (text: {text})");
            text
        }
    }
}

async fn confirm_mode(ch: &Channel) {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
}

/// Closes a connection from the client side. qgate drops the socket right after
/// close-ok, which lapin 2 may report as `IOError(ConnectionAborted)` (see
/// `client_connection_close_returns_ok`), so that error is tolerated here; the
/// connection must be closed afterwards either way.
async fn close_connection(conn: &Connection) {
    match within("connection.close", conn.close(200, "bye")).await {
        Ok(()) => {}
        Err(lapin::Error::IOError(e)) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
        Err(e) => panic!("connection.close: {e:?}"),
    }
    assert!(!conn.status().connected());
}

fn body_str(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf8 body")
}

// ---- properties and bodies ------------------------------------------------------------

fn all_types_headers() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner-int".into(), AMQPValue::LongInt(-7));
    nested.insert(
        "inner-str".into(),
        AMQPValue::LongString(LongString::from("deep")),
    );
    let mut deeper = FieldTable::default();
    deeper.insert("level".into(), AMQPValue::ShortShortUInt(3));
    nested.insert("deeper".into(), AMQPValue::FieldTable(deeper));

    let array = FieldArray::from(vec![
        AMQPValue::LongInt(1),
        AMQPValue::LongString(LongString::from("two")),
        AMQPValue::Boolean(false),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Double(3.5)])),
        AMQPValue::Void,
    ]);

    let mut h = FieldTable::default();
    h.insert("table".into(), AMQPValue::FieldTable(nested));
    h.insert("array".into(), AMQPValue::FieldArray(array));
    h.insert(
        "empty-array".into(),
        AMQPValue::FieldArray(FieldArray::default()),
    );
    h.insert(
        "empty-table".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    h.insert("bool-true".into(), AMQPValue::Boolean(true));
    h.insert("bool-false".into(), AMQPValue::Boolean(false));
    h.insert("i8".into(), AMQPValue::ShortShortInt(-128));
    h.insert("u8".into(), AMQPValue::ShortShortUInt(255));
    h.insert("i16".into(), AMQPValue::ShortInt(-32768));
    h.insert("u16".into(), AMQPValue::ShortUInt(65535));
    h.insert("i32".into(), AMQPValue::LongInt(i32::MIN));
    h.insert("u32".into(), AMQPValue::LongUInt(u32::MAX));
    h.insert("i64".into(), AMQPValue::LongLongInt(i64::MIN));
    h.insert("f32".into(), AMQPValue::Float(1.25));
    h.insert("f64".into(), AMQPValue::Double(-2.5e300));
    h.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    h.insert("timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    h.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 0xff, 0xce])),
    );
    h.insert("void".into(), AMQPValue::Void);
    h.insert(
        "long-string".into(),
        AMQPValue::LongString(LongString::from("x".repeat(1000))),
    );
    h.insert(
        "binary-string".into(),
        AMQPValue::LongString(LongString::from(vec![0u8, 0xce, 0xff, b'\n'])),
    );
    h
}

fn all_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(all_types_headers())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-42".into())
        .with_reply_to("reply-queue".into())
        .with_expiration("600000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_234_567_890)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("qgate-tests".into())
        .with_cluster_id("cluster-x".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_fourteen_properties_round_trip() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("props");
    declare_plain(&ch, &q).await;
    let props = all_properties();
    let body = b"{\"hello\":\"world\"}\x00\xce\xff".to_vec();
    publish_props(&ch, "", &q, &body, props.clone()).await;

    // Through basic.get ...
    let m = get(&ch, &q, true).await.expect("a message");
    assert_eq!(m.delivery.properties, props);
    assert_eq!(m.delivery.data, body);
    assert_eq!(m.delivery.exchange.as_str(), "");
    assert_eq!(m.delivery.routing_key.as_str(), q);
    assert!(!m.delivery.redelivered);
    assert_eq!(m.message_count, 0);

    // ... and through basic.deliver.
    publish_props(&ch, "", &q, &body, props.clone()).await;
    let mut consumer = consume(&ch, &q, true).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.properties, props);
    assert_eq!(d.data, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_properties_and_empty_body() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("empty");
    declare_plain(&ch, &q).await;
    publish(&ch, "", &q, b"").await;
    let m = get(&ch, &q, true).await.expect("a message");
    assert!(m.delivery.data.is_empty());
    assert_eq!(m.delivery.properties, BasicProperties::default());

    publish(&ch, "", &q, b"").await;
    let mut consumer = consume(&ch, &q, true).await;
    let d = next(&mut consumer).await;
    assert!(d.data.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mebibyte_body_is_split_and_reassembled() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("big");
    declare_plain(&ch, &q).await;
    let body: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    confirm_mode(&ch).await;
    publish(&ch, "", &q, &body).await;
    publish(&ch, "", &q, &body).await;
    let m = get(&ch, &q, true).await.expect("a message");
    assert_eq!(m.delivery.data.len(), body.len());
    assert!(m.delivery.data == body, "body differs");
    let mut consumer = consume(&ch, &q, false).await;
    let d = next(&mut consumer).await;
    assert!(d.data == body, "body differs");
    within("ack", d.ack(BasicAckOptions::default()))
        .await
        .unwrap();
}

// ---- consumers, acks, prefetch ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_unacked_deliveries() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("prefetch");
    declare_plain(&ch, &q).await;
    for i in 0..25 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    within("basic.qos", ch.basic_qos(10, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&ch, &q, false).await;
    let first = take(&mut consumer, 10).await;
    assert_quiet(&mut consumer).await; // prefetch 10 caps unacked deliveries
    let bodies: Vec<String> = first.iter().map(body_str).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected);

    // One ack frees exactly one slot.
    within("ack", first[0].ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let more = take(&mut consumer, 1).await;
    assert_quiet(&mut consumer).await;
    assert_eq!(body_str(&more[0]), "m10");

    // Ack everything so far (multiple): the next 10 come.
    within(
        "ack multiple",
        more[0].ack(BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    let rest = take(&mut consumer, 10).await;
    assert_quiet(&mut consumer).await;
    assert_eq!(body_str(&rest[0]), "m11");
    assert_eq!(ready_count(&_conn, &q).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_two_consumers() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    let ch_a = channel(&conn).await;
    let ch_b = channel(&conn).await;
    let q = unique("rr");
    declare_plain(&ch_a, &q).await;
    let mut a = consume(&ch_a, &q, true).await;
    let mut b = consume(&ch_b, &q, true).await;
    let pubch = channel(&conn).await;
    for i in 0..10 {
        publish(&pubch, "", &q, format!("{i}").as_bytes()).await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..5 {
        got_a.push(body_str(&next(&mut a).await).parse::<u32>().unwrap());
        got_b.push(body_str(&next(&mut b).await).parse::<u32>().unwrap());
    }
    assert!(drain(&mut a, Duration::from_millis(200)).await.is_empty());
    assert!(drain(&mut b, Duration::from_millis(200)).await.is_empty());
    let (evens, odds) = if got_a[0] == 0 {
        (&got_a, &got_b)
    } else {
        (&got_b, &got_a)
    };
    assert_eq!(*evens, vec![0, 2, 4, 6, 8], "a={got_a:?} b={got_b:?}");
    assert_eq!(*odds, vec![1, 3, 5, 7, 9], "a={got_a:?} b={got_b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_requeue_redelivers() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("nack");
    declare_plain(&ch, &q).await;
    publish(&ch, "", &q, b"again").await;
    let m = get(&ch, &q, false).await.expect("a message");
    assert!(!m.delivery.redelivered);
    within(
        "nack",
        m.delivery.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        }),
    )
    .await
    .unwrap();
    let m = get(&ch, &q, false).await.expect("requeued message");
    assert!(
        m.delivery.redelivered,
        "requeued message must be redelivered=true"
    );
    assert_eq!(m.delivery.data, b"again");

    // The same through a consumer.
    within(
        "nack",
        m.delivery.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        }),
    )
    .await
    .unwrap();
    let mut consumer = consume(&ch, &q, false).await;
    let d = next(&mut consumer).await;
    assert!(d.redelivered);
    assert_eq!(d.data, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_without_requeue_drops() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("reject");
    declare_plain(&ch, &q).await;
    publish(&ch, "", &q, b"bad").await;
    publish(&ch, "", &q, b"bad2").await;
    let m = get(&ch, &q, false).await.expect("a message");
    within(
        "reject",
        m.delivery.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    let m = get(&ch, &q, false).await.expect("second message");
    assert_eq!(m.delivery.data, b"bad2");
    within(
        "nack",
        m.delivery.nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        }),
    )
    .await
    .unwrap();
    assert!(get(&ch, &q, false).await.is_none());
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_close_requeues_unacked_in_order() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    let ch1 = channel(&conn).await;
    let q = unique("chclose");
    declare_plain(&ch1, &q).await;
    for i in 0..5 {
        publish(&ch1, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut consumer = consume(&ch1, &q, false).await;
    let got = take(&mut consumer, 5).await;
    // Ack the middle one: the others stay unacked.
    within("ack", got[2].ack(BasicAckOptions::default()))
        .await
        .unwrap();
    within("channel.close", ch1.close(200, "bye"))
        .await
        .unwrap();

    let ch2 = channel(&conn).await;
    let mut back = Vec::new();
    while let Some(m) = get(&ch2, &q, true).await {
        assert!(
            m.delivery.redelivered,
            "requeued message must be redelivered"
        );
        back.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    assert_eq!(back, vec!["m0", "m1", "m3", "m4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_hands_unacked_to_another_consumer() {
    let broker = start_broker();
    let (conn1, ch1) = open(&broker).await;
    let (_conn2, ch2) = open(&broker).await;
    let q = unique("connclose");
    declare_plain(&ch1, &q).await;
    for i in 0..3 {
        publish(&ch1, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut c1 = consume(&ch1, &q, false).await;
    take(&mut c1, 3).await;
    let mut c2 = consume(&ch2, &q, false).await;
    assert!(drain(&mut c2, Duration::from_millis(200)).await.is_empty());
    close_connection(&conn1).await;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let d = next(&mut c2).await;
        assert!(d.redelivered);
        bodies.push(body_str(&d));
    }
    assert_eq!(bodies, vec!["m0", "m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_is_shared_by_the_channels_consumers() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q1 = unique("gqos-a");
    let q2 = unique("gqos-b");
    declare_plain(&ch, &q1).await;
    declare_plain(&ch, &q2).await;
    for i in 0..5 {
        publish(&ch, "", &q1, format!("a{i}").as_bytes()).await;
        publish(&ch, "", &q2, format!("b{i}").as_bytes()).await;
    }
    within(
        "basic.qos global",
        ch.basic_qos(3, BasicQosOptions { global: true }),
    )
    .await
    .unwrap();
    let mut c1 = consume(&ch, &q1, false).await;
    let mut c2 = consume(&ch, &q2, false).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_of_two(&mut c1, &mut c2).await.1);
    }
    // Global prefetch 3 caps the whole channel.
    assert_quiet(&mut c1).await;
    assert_quiet(&mut c2).await;
    // Acking one frees one slot on the channel.
    within("ack", held[0].ack(BasicAckOptions::default()))
        .await
        .unwrap();
    next_of_two(&mut c1, &mut c2).await;
    assert_quiet(&mut c1).await;
    assert_quiet(&mut c2).await;
}

// ---- confirms and returns ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_confirms_ack_every_publish() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("confirms");
    declare_plain(&ch, &q).await;
    confirm_mode(&ch).await;
    let mut pending = Vec::new();
    for i in 0..100 {
        let c = within(
            "basic.publish",
            ch.basic_publish(
                "",
                &q,
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .unwrap();
        pending.push(c);
    }
    for c in pending {
        let c = within("confirm", c).await.unwrap();
        assert_eq!(c, Confirmation::Ack(None));
    }
    let returned = within("wait_for_confirms", ch.wait_for_confirms())
        .await
        .unwrap();
    assert!(returned.is_empty());
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_is_returned() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    confirm_mode(&ch).await;
    let key = unique("nowhere");
    let props = BasicProperties::default().with_message_id("ret-1".into());
    let c = within(
        "basic.publish",
        ch.basic_publish(
            "amq.direct",
            &key,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            props.clone(),
        ),
    )
    .await
    .unwrap();
    let c = within("confirm", c).await.unwrap();
    let returned = match c {
        Confirmation::Ack(Some(r)) => r,
        other => panic!("expected Ack(Some(returned)), got {other:?}"),
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), key);
    assert_eq!(returned.delivery.data, b"lost");
    assert_eq!(returned.delivery.properties, props);

    // Not mandatory: silently dropped, still acked.
    let c = within(
        "basic.publish",
        ch.basic_publish(
            "amq.direct",
            &key,
            BasicPublishOptions::default(),
            b"dropped",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(within("confirm", c).await.unwrap(), Confirmation::Ack(None));
}

// ---- exchanges ------------------------------------------------------------------------

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    within(
        "exchange.declare",
        ch.exchange_declare(
            name,
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.declare {name}: {e}"));
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), args),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.bind {queue} {exchange} {key}: {e}"));
}

/// Publishes with confirms (so routing is done when this returns) and mandatory, and
/// reports whether the message was routed anywhere.
async fn routed(ch: &Channel, exchange: &str, key: &str, headers: Option<FieldTable>) -> bool {
    let mut props = BasicProperties::default();
    if let Some(h) = headers {
        props = props.with_headers(h);
    }
    let c = within(
        "basic.publish",
        ch.basic_publish(
            exchange,
            key,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            key.as_bytes(),
            props,
        ),
    )
    .await
    .unwrap();
    match within("confirm", c).await.unwrap() {
        Confirmation::Ack(None) => true,
        Confirmation::Ack(Some(r)) => {
            assert_eq!(r.reply_code, 312);
            false
        }
        other => panic!("unexpected confirmation {other:?}"),
    }
}

/// Drains `queue` with basic.get and returns the bodies.
async fn bodies(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_exchange_routes_by_key() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let ex = unique("direct");
    declare_exchange(&ch, &ex, ExchangeKind::Direct).await;
    let qa = unique("qa");
    let qb = unique("qb");
    declare_plain(&ch, &qa).await;
    declare_plain(&ch, &qb).await;
    bind(&ch, &qa, &ex, "a", FieldTable::default()).await;
    bind(&ch, &qb, &ex, "b", FieldTable::default()).await;
    bind(&ch, &qb, &ex, "both", FieldTable::default()).await;
    bind(&ch, &qa, &ex, "both", FieldTable::default()).await;
    confirm_mode(&ch).await;
    assert!(routed(&ch, &ex, "a", None).await);
    assert!(routed(&ch, &ex, "b", None).await);
    assert!(routed(&ch, &ex, "both", None).await);
    assert!(!routed(&ch, &ex, "c", None).await);
    assert_eq!(bodies(&ch, &qa).await, vec!["a", "both"]);
    assert_eq!(bodies(&ch, &qb).await, vec!["b", "both"]);

    // amq.direct is predeclared, and the default exchange routes by queue name.
    bind(&ch, &qa, "amq.direct", "k", FieldTable::default()).await;
    assert!(routed(&ch, "amq.direct", "k", None).await);
    assert!(routed(&ch, "", &qb, None).await);
    assert_eq!(bodies(&ch, &qa).await, vec!["k"]);
    assert_eq!(bodies(&ch, &qb).await, vec![qb.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_exchange_copies_to_every_queue() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let ex = unique("fanout");
    declare_exchange(&ch, &ex, ExchangeKind::Fanout).await;
    let qs: Vec<String> = (0..3).map(|i| unique(&format!("fq{i}"))).collect();
    for q in &qs {
        declare_plain(&ch, q).await;
        bind(&ch, q, &ex, "ignored", FieldTable::default()).await;
    }
    confirm_mode(&ch).await;
    assert!(routed(&ch, &ex, "any-key", None).await);
    assert!(routed(&ch, &ex, "", None).await);
    for q in &qs {
        assert_eq!(bodies(&ch, q).await, vec!["any-key", ""]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_exchange_wildcards_like_rabbitmq() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let ex = unique("topic");
    declare_exchange(&ch, &ex, ExchangeKind::Topic).await;
    let patterns = [
        "#",
        "*",
        "log.#",
        "log.*",
        "#.error",
        "*.*.critical",
        "a.#.z",
    ];
    let mut queues = BTreeMap::new();
    for p in patterns {
        let q = unique("tq");
        declare_plain(&ch, &q).await;
        bind(&ch, &q, &ex, p, FieldTable::default()).await;
        queues.insert(p, q);
    }
    confirm_mode(&ch).await;
    let keys = [
        "",
        "log",
        "log.info",
        "log.info.x",
        "app.error",
        "error",
        "kern.disk.critical",
        "a.z",
        "a.b.c.z",
        "single",
    ];
    for k in keys {
        assert!(
            routed(&ch, &ex, k, None).await,
            "'#' catches every key ({k:?})"
        );
    }
    let expect = |p: &str| -> Vec<&str> {
        match p {
            "#" => keys.to_vec(),
            "*" => vec!["log", "error", "single"],
            "log.#" => vec!["log", "log.info", "log.info.x"],
            "log.*" => vec!["log.info"],
            "#.error" => vec!["app.error", "error"],
            "*.*.critical" => vec!["kern.disk.critical"],
            "a.#.z" => vec!["a.z", "a.b.c.z"],
            _ => unreachable!(),
        }
    };
    for p in patterns {
        let got = bodies(&ch, &queues[p]).await;
        assert_eq!(got, expect(p), "pattern {p:?}");
    }
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn lstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_all_any_and_typed_values() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let ex = unique("headers");
    declare_exchange(&ch, &ex, ExchangeKind::Headers).await;
    let q_all = unique("h-all");
    let q_any = unique("h-any");
    let q_str = unique("h-str");
    let q_default = unique("h-default");
    let q_bool = unique("h-bool");
    for q in [&q_all, &q_any, &q_str, &q_default, &q_bool] {
        declare_plain(&ch, q).await;
    }
    bind(
        &ch,
        &q_all,
        &ex,
        "",
        table(&[
            ("x-match", lstr("all")),
            ("a", AMQPValue::LongInt(1)),
            ("b", lstr("x")),
        ]),
    )
    .await;
    bind(
        &ch,
        &q_any,
        &ex,
        "",
        table(&[
            ("x-match", lstr("any")),
            ("a", AMQPValue::LongInt(1)),
            ("b", lstr("x")),
        ]),
    )
    .await;
    bind(&ch, &q_str, &ex, "", table(&[("a", lstr("1"))])).await;
    // No x-match means all.
    bind(
        &ch,
        &q_default,
        &ex,
        "",
        table(&[("a", AMQPValue::LongInt(1)), ("c", lstr("y"))]),
    )
    .await;
    bind(
        &ch,
        &q_bool,
        &ex,
        "",
        table(&[("t", AMQPValue::Boolean(true))]),
    )
    .await;
    confirm_mode(&ch).await;

    // a=1, b=x: all + any.
    assert!(
        routed(
            &ch,
            &ex,
            "m1",
            Some(table(&[("a", AMQPValue::LongInt(1)), ("b", lstr("x"))]))
        )
        .await
    );
    // a=1 only: any.
    assert!(routed(&ch, &ex, "m2", Some(table(&[("a", AMQPValue::LongInt(1))]))).await);
    // a="1" (a string): only the string binding.
    assert!(routed(&ch, &ex, "m3", Some(table(&[("a", lstr("1"))]))).await);
    // a=1, c=y, extra header: default (all) binding + any.
    assert!(
        routed(
            &ch,
            &ex,
            "m4",
            Some(table(&[
                ("a", AMQPValue::LongInt(1)),
                ("c", lstr("y")),
                ("z", lstr("extra"))
            ]))
        )
        .await
    );
    // t=1 is not t=true.
    assert!(!routed(&ch, &ex, "m5", Some(table(&[("t", AMQPValue::LongInt(1))]))).await);
    assert!(
        routed(
            &ch,
            &ex,
            "m6",
            Some(table(&[("t", AMQPValue::Boolean(true))]))
        )
        .await
    );
    // No headers at all: nothing matches.
    assert!(!routed(&ch, &ex, "m7", None).await);

    assert_eq!(bodies(&ch, &q_all).await, vec!["m1"]);
    assert_eq!(bodies(&ch, &q_any).await, vec!["m1", "m2", "m4"]);
    assert_eq!(bodies(&ch, &q_str).await, vec!["m3"]);
    assert_eq!(bodies(&ch, &q_default).await, vec!["m4"]);
    assert_eq!(bodies(&ch, &q_bool).await, vec!["m6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_binding() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let src = unique("e2e-src");
    let dst = unique("e2e-dst");
    declare_exchange(&ch, &src, ExchangeKind::Topic).await;
    declare_exchange(&ch, &dst, ExchangeKind::Fanout).await;
    within(
        "exchange.bind",
        ch.exchange_bind(
            &dst,
            &src,
            "orders.*",
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let q = unique("e2e-q");
    declare_plain(&ch, &q).await;
    bind(&ch, &q, &dst, "", FieldTable::default()).await;
    confirm_mode(&ch).await;
    assert!(routed(&ch, &src, "orders.new", None).await);
    assert!(!routed(&ch, &src, "payments.new", None).await);
    assert_eq!(bodies(&ch, &q).await, vec!["orders.new"]);

    within(
        "exchange.unbind",
        ch.exchange_unbind(
            &dst,
            &src,
            "orders.*",
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert!(!routed(&ch, &src, "orders.new", None).await);
}

// ---- declare / delete semantics and errors --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_durable_is_406() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("redeclare");
    declare_plain(&ch, &q).await;
    // Same arguments: fine.
    declare_plain(&ch, &q).await;
    let r = within(
        "queue.declare",
        ch.queue_declare(
            &q,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 406);
    assert!(
        text.starts_with("PRECONDITION_FAILED - inequivalent arg 'durable'"),
        "{text}"
    );
    // The channel is closed, the connection is not.
    assert!(!ch.status().connected());
    assert!(conn.status().connected());
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);

    // Exchanges too.
    let ch = channel(&conn).await;
    let ex = unique("redeclare-ex");
    declare_exchange(&ch, &ex, ExchangeKind::Direct).await;
    let r = within(
        "exchange.declare",
        ch.exchange_declare(
            &ex,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 406);
    assert!(text.starts_with("PRECONDITION_FAILED - "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_locked_to_its_connection() {
    let broker = start_broker();
    let (conn1, ch1) = open(&broker).await;
    let conn2 = connect(&broker).await;
    let q = unique("excl");
    declare(
        &ch1,
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;

    // Declaring, passive-declaring or consuming from another connection: 405.
    let ch2 = channel(&conn2).await;
    let r = within(
        "queue.declare",
        ch2.queue_declare(
            &q,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 405);
    assert!(text.starts_with("RESOURCE_LOCKED - "), "{text}");
    let r = ready_count(&conn2, &q).await;
    expect_error(r, 405);
    let ch2 = channel(&conn2).await;
    let r = within(
        "basic.consume",
        ch2.basic_consume(
            &q,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_error(r, 405);

    // Publishing to it from another connection works (RPC replies).
    let ch2 = channel(&conn2).await;
    confirm_mode(&ch2).await;
    assert!(routed(&ch2, "", &q, None).await);
    let m = get(&ch1, &q, true)
        .await
        .expect("message published by conn2");
    assert_eq!(m.delivery.data, q.as_bytes());
    assert!(conn2.status().connected());

    // The queue goes with its connection.
    close_connection(&conn1).await;
    let mut last = None;
    for _ in 0..50 {
        match ready_count(&conn2, &q).await {
            Err(e) => {
                last = Some(amqp_error(&e));
                if last.as_ref().unwrap().0 == 404 {
                    break;
                }
            }
            Ok(_) => last = None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, text) = last.expect("exclusive queue still exists after its connection closed");
    assert_eq!(code, 404, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("autodel");
    declare(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    let c1 = consume(&ch, &q, true).await;
    let c2 = consume(&ch, &q, true).await;
    within(
        "basic.cancel",
        ch.basic_cancel(c1.tag().as_str(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(
        ready_count(&conn, &q).await.unwrap(),
        0,
        "one consumer left"
    );
    within(
        "basic.cancel",
        ch.basic_cancel(c2.tag().as_str(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    let text = expect_error(ready_count(&conn, &q).await, 404);
    assert_eq!(text, format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_is_404() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    let text = expect_error(ready_count(&conn, "no-such-queue").await, 404);
    assert_eq!(text, "NOT_FOUND - no queue 'no-such-queue' in vhost '/'");
    // The connection survives; a new channel works.
    let ch = channel(&conn).await;
    declare_plain(&ch, &unique("after-404")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_missing_exchange_closes_the_channel_with_404() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    ch.on_error(move |e| {
        let _ = tx.send(e);
    });
    within(
        "basic.publish",
        ch.basic_publish(
            "no-such-exchange",
            "k",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let e = within("channel error", rx.recv()).await.expect("an error");
    let (code, text) = amqp_error(&e);
    assert_eq!(code, 404);
    assert_eq!(
        text,
        "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"
    );
    assert!(conn.status().connected());

    // In confirm mode the pending confirm fails with the same error.
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    let c = within(
        "basic.publish",
        ch.basic_publish(
            "no-such-exchange",
            "k",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    expect_error(within("confirm", c).await, 404);
    let ch = channel(&conn).await;
    declare_plain(&ch, &unique("after-404")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_returns_the_count() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("purge");
    declare_plain(&ch, &q).await;
    for _ in 0..7 {
        publish(&ch, "", &q, b"p").await;
    }
    let n = within(
        "queue.purge",
        ch.queue_purge(&q, QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 7);
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
    let n = within(
        "queue.purge",
        ch.queue_purge(&q, QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_empty_refuses_a_non_empty_queue() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("ifempty");
    declare_plain(&ch, &q).await;
    publish(&ch, "", &q, b"still here").await;
    let r = within(
        "queue.delete",
        ch.queue_delete(
            &q,
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let text = expect_error(r, 406);
    assert!(text.starts_with("PRECONDITION_FAILED - "), "{text}");
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 1);

    // Without if_empty it goes, returning the count.
    let ch = channel(&conn).await;
    let n = within(
        "queue.delete",
        ch.queue_delete(&q, QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    expect_error(ready_count(&conn, &q).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_missing_queue_and_exchange_succeeds() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let n = within(
        "queue.delete",
        ch.queue_delete("never-declared", QueueDeleteOptions::default()),
    )
    .await
    .expect("delete of a missing queue is ok");
    assert_eq!(n, 0);
    within(
        "exchange.delete",
        ch.exchange_delete("never-declared", ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete of a missing exchange is ok");
    assert!(ch.status().connected());
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_counts_ready_messages_only() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("count");
    declare_plain(&ch, &q).await;
    for _ in 0..3 {
        publish(&ch, "", &q, b"c").await;
    }
    let held = get(&ch, &q, false).await.expect("a message");
    let decl = declare_plain(&ch, &q).await;
    assert_eq!(decl.message_count(), 2, "unacked messages are not counted");
    assert_eq!(decl.consumer_count(), 0);
    let _consumer = consume(&ch, &q, false).await;
    let decl = declare_plain(&ch, &q).await;
    assert_eq!(decl.consumer_count(), 1);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("cancelnotify");
    declare_plain(&ch, &q).await;
    let mut consumer = consume(&ch, &q, true).await;
    let other = channel(&conn).await;
    within(
        "queue.delete",
        other.queue_delete(&q, QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    // basic.cancel from the server ends the consumer's stream.
    match within("consumer stream end", consumer.next()).await {
        None => {}
        Some(other) => panic!("expected the stream to end, got {other:?}"),
    }
    // The channel itself stays usable.
    assert!(ch.status().connected());
    declare_plain(&ch, &unique("after-cancel")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_rollback() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("tx");
    declare_plain(&ch, &q).await;
    within("tx.select", ch.tx_select()).await.unwrap();
    publish(&ch, "", &q, b"rolled back").await;
    assert_eq!(
        ready_count(&conn, &q).await.unwrap(),
        0,
        "not routed before commit"
    );
    within("tx.rollback", ch.tx_rollback()).await.unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);

    publish(&ch, "", &q, b"committed").await;
    publish(&ch, "", &q, b"committed 2").await;
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
    within("tx.commit", ch.tx_commit()).await.unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 2);

    // Acks are transactional too: a rolled-back ack leaves the message unacked.
    let m = get(&ch, &q, false).await.expect("message");
    assert_eq!(m.delivery.data, b"committed");
    within("ack", m.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    within("tx.rollback", ch.tx_rollback()).await.unwrap();
    within("channel.close", ch.close(200, "bye")).await.unwrap();
    // The unacked message was requeued on close.
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn client_connection_close_returns_ok() {
    let broker = start_broker();
    for i in 0..10 {
        let (conn, _ch) = open(&broker).await;
        let r = within("connection.close", conn.close(200, "bye")).await;
        assert!(r.is_ok(), "attempt {i}: connection.close returned {r:?}");
    }
}

// ---- more RabbitMQ behaviour ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_messages_return_to_their_original_position() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("position");
    declare_plain(&ch, &q).await;
    for i in 0..5 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let m0 = get(&ch, &q, false).await.unwrap();
    let m1 = get(&ch, &q, false).await.unwrap();
    // Requeue in reverse order: the queue must still read m0 m1 m2 m3 m4.
    for m in [&m1, &m0] {
        within(
            "nack",
            m.delivery.nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            }),
        )
        .await
        .unwrap();
    }
    let mut order = Vec::new();
    while let Some(m) = get(&ch, &q, true).await {
        order.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            m.delivery.redelivered,
        ));
    }
    let expected: Vec<(String, bool)> = (0..5).map(|i| (format!("m{i}"), i < 2)).collect();
    assert_eq!(order, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_nack_requeues_up_to_the_tag() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("multi");
    declare_plain(&ch, &q).await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut consumer = consume(&ch, &q, false).await;
    let got = take(&mut consumer, 4).await;
    // nack multiple up to the third: three requeued (and redelivered to us).
    within(
        "nack multiple",
        got[2].nack(BasicNackOptions {
            requeue: true,
            multiple: true,
        }),
    )
    .await
    .unwrap();
    let again = take(&mut consumer, 3).await;
    assert_quiet(&mut consumer).await;
    let bodies: Vec<String> = again.iter().map(body_str).collect();
    assert_eq!(bodies, vec!["m0", "m1", "m2"]);
    assert!(again.iter().all(|d| d.redelivered));
    within("ack all", again[2].ack(BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    // That acked m3 (tag 4) as well: nothing is left unacked, so closing the channel
    // requeues nothing.
    assert!(drain(&mut consumer, Duration::from_millis(200))
        .await
        .is_empty());
    within("channel.close", ch.close(200, "bye")).await.unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn basic_recover_requeue_redelivers() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("recover");
    declare_plain(&ch, &q).await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut consumer = consume(&ch, &q, false).await;
    let _held = take(&mut consumer, 4).await;
    // basic.recover(requeue=true) requeues everything unacked; the consumer gets it all
    // again, redelivered.
    within(
        "basic.recover",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .unwrap();
    let recovered = take(&mut consumer, 4).await;
    let bodies: Vec<String> = recovered.iter().map(body_str).collect();
    assert_eq!(bodies, vec!["m0", "m1", "m2", "m3"]);
    assert!(recovered.iter().all(|d| d.redelivered));
    within(
        "ack all",
        recovered[3].ack(BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    within(
        "basic.cancel",
        ch.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_recover_without_requeue_is_540() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let r = within(
        "basic.recover",
        ch.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await;
    let text = expect_error(r, 540);
    assert!(text.starts_with("NOT_IMPLEMENTED - "), "{text}");
    // A connection-level error: the connection is gone.
    for _ in 0..50 {
        if !conn.status().connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_named_queue() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = declare(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    assert!(q.name().as_str().starts_with("amq.gen-"), "{}", q.name());
    publish(&ch, "", q.name().as_str(), b"to a generated name").await;
    assert_eq!(ready_count(&conn, q.name().as_str()).await.unwrap(), 1);
    let other = declare(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    assert_ne!(q.name(), other.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_amq_names_are_403() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let r = within(
        "exchange.declare",
        ch.exchange_declare(
            "amq.mine",
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 403);
    assert!(text.starts_with("ACCESS_REFUSED - "), "{text}");
    let ch = channel(&conn).await;
    let r = within(
        "queue.declare",
        ch.queue_declare(
            "amq.mine",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_error(r, 403);
    // Passive declares of the predeclared exchanges are fine.
    let ch = channel(&conn).await;
    for x in ["amq.direct", "amq.fanout", "amq.topic", "amq.headers"] {
        within(
            "passive exchange.declare",
            ch.exchange_declare(
                x,
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare of {x}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_exchange_type_is_503_connection_error() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let r = within(
        "exchange.declare",
        ch.exchange_declare(
            &unique("weird"),
            ExchangeKind::Custom("x-no-such-type".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 503);
    assert!(text.starts_with("COMMAND_INVALID - "), "{text}");
    for _ in 0..50 {
        if !conn.status().connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!conn.status().connected(), "503 is a connection error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_exclusive_is_405() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("excl-flag");
    declare_plain(&ch, &q).await;
    let r = within(
        "queue.declare",
        ch.queue_declare(
            &q,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 405);
    assert!(text.starts_with("RESOURCE_LOCKED - "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_arguments_is_406() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("args");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    within(
        "queue.declare",
        ch.queue_declare(&q, QueueDeclareOptions::default(), args.clone()),
    )
    .await
    .unwrap();
    let mut other = FieldTable::default();
    other.insert("x-max-length".into(), AMQPValue::LongInt(20));
    let r = within(
        "queue.declare",
        ch.queue_declare(&q, QueueDeclareOptions::default(), other),
    )
    .await;
    let text = expect_error(r, 406);
    assert!(
        text.starts_with("PRECONDITION_FAILED - inequivalent arg 'x-max-length'"),
        "{text}"
    );
    let ch = channel(&conn).await;
    let r = within(
        "queue.declare auto_delete",
        ch.queue_declare(
            &q,
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await;
    let text = expect_error(r, 406);
    assert!(
        text.starts_with("PRECONDITION_FAILED - inequivalent arg 'auto_delete'"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumer_locks_out_others() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("exclusive-consumer");
    declare_plain(&ch, &q).await;
    let _c = within(
        "basic.consume exclusive",
        ch.basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let ch2 = channel(&conn).await;
    let r = within(
        "second basic.consume",
        ch2.basic_consume(
            &q,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 403);
    assert!(text.starts_with("ACCESS_REFUSED - "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_unknown_delivery_tag_is_406() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    ch.on_error(move |e| {
        let _ = tx.send(e);
    });
    within("basic.ack", ch.basic_ack(99, BasicAckOptions::default()))
        .await
        .unwrap();
    let e = within("channel error", rx.recv()).await.unwrap();
    let (code, text) = amqp_error(&e);
    assert_eq!(code, 406);
    assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 99");
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_one_gives_fair_dispatch() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    let q = unique("fair");
    let busy_ch = channel(&conn).await;
    let idle_ch = channel(&conn).await;
    declare_plain(&busy_ch, &q).await;
    for ch in [&busy_ch, &idle_ch] {
        within("basic.qos", ch.basic_qos(1, BasicQosOptions::default()))
            .await
            .unwrap();
    }
    let mut busy = consume(&busy_ch, &q, false).await;
    let mut idle = consume(&idle_ch, &q, false).await;
    let pubch = channel(&conn).await;
    for i in 0..6 {
        publish(&pubch, "", &q, format!("{i}").as_bytes()).await;
    }
    // Each holds one; the busy one keeps its message, the idle one acks as it goes.
    let held = next(&mut busy).await;
    let mut idle_got = Vec::new();
    for _ in 0..5 {
        let d = next(&mut idle).await;
        idle_got.push(body_str(&d));
        within("ack", d.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    assert!(
        drain(&mut busy, Duration::from_millis(300))
            .await
            .is_empty(),
        "a consumer at its prefetch limit gets nothing more"
    );
    assert_eq!(idle_got.len(), 5);
    within("ack", held.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_never_delivered() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("ttl");
    declare_plain(&ch, &q).await;
    publish_props(
        &ch,
        "",
        &q,
        b"short-lived",
        BasicProperties::default().with_expiration("100".into()),
    )
    .await;
    publish(&ch, "", &q, b"forever").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = get(&ch, &q, true).await.expect("the unexpiring message");
    assert_eq!(m.delivery.data, b"forever");
    assert!(get(&ch, &q, true).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_unused_deletes_are_refused_while_in_use() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("inuse");
    declare_plain(&ch, &q).await;
    let _c = consume(&ch, &q, true).await;
    let ch2 = channel(&conn).await;
    let r = within(
        "queue.delete if_unused",
        ch2.queue_delete(
            &q,
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let text = expect_error(r, 406);
    assert!(text.starts_with("PRECONDITION_FAILED - "), "{text}");

    let ex = unique("inuse-ex");
    let ch3 = channel(&conn).await;
    declare_exchange(&ch3, &ex, ExchangeKind::Fanout).await;
    bind(&ch3, &q, &ex, "", FieldTable::default()).await;
    let r = within(
        "exchange.delete if_unused",
        ch3.exchange_delete(
            &ex,
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let text = expect_error(r, 406);
    assert!(text.starts_with("PRECONDITION_FAILED - "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_stops_routing() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("unbind");
    declare_plain(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "a.*", FieldTable::default()).await;
    confirm_mode(&ch).await;
    assert!(routed(&ch, "amq.topic", "a.b", None).await);
    within(
        "queue.unbind",
        ch.queue_unbind(&q, "amq.topic", "a.*", FieldTable::default()),
    )
    .await
    .unwrap();
    assert!(!routed(&ch, "amq.topic", "a.b", None).await);
    assert_eq!(bodies(&ch, &q).await, vec!["a.b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancel_ends_the_stream_and_keeps_unacked() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("cancel");
    declare_plain(&ch, &q).await;
    publish(&ch, "", &q, b"one").await;
    let mut consumer = consume(&ch, &q, false).await;
    let d = next(&mut consumer).await;
    within(
        "basic.cancel",
        ch.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    assert!(within("stream end", consumer.next()).await.is_none());
    // Still unacked after the cancel: not ready, and ackable.
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
    within("ack", d.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    publish(&ch, "", &q, b"two").await;
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 1);
}

async fn wait_disconnected(conn: &Connection) {
    for _ in 0..100 {
        if !conn.status().connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_consumer_tag_is_530() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("dup-tag");
    declare_plain(&ch, &q).await;
    within(
        "basic.consume",
        ch.basic_consume(
            &q,
            "my-tag",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let r = within(
        "basic.consume again",
        ch.basic_consume(
            &q,
            "my-tag",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 530);
    assert!(text.starts_with("NOT_ALLOWED - "), "{text}");
    wait_disconnected(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_or_queue_in_bind_and_passive_declare_is_404() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    let q = unique("bind404");
    let ch = channel(&conn).await;
    declare_plain(&ch, &q).await;

    let r = within(
        "queue.bind to a missing exchange",
        ch.queue_bind(
            &q,
            "missing-x",
            "k",
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 404);
    assert_eq!(text, "NOT_FOUND - no exchange 'missing-x' in vhost '/'");

    let ch = channel(&conn).await;
    let r = within(
        "queue.bind of a missing queue",
        ch.queue_bind(
            "missing-q",
            "amq.direct",
            "k",
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 404);
    assert_eq!(text, "NOT_FOUND - no queue 'missing-q' in vhost '/'");

    let ch = channel(&conn).await;
    let r = within(
        "passive exchange.declare",
        ch.exchange_declare(
            "missing-x",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 404);
    assert_eq!(text, "NOT_FOUND - no exchange 'missing-x' in vhost '/'");

    let ch = channel(&conn).await;
    let r = within(
        "basic.consume from a missing queue",
        ch.basic_consume(
            "missing-q",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_error(r, 404);
    let ch = channel(&conn).await;
    let r = within(
        "basic.get from a missing queue",
        ch.basic_get("missing-q", BasicGetOptions::default()),
    )
    .await;
    expect_error(r, 404);
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_and_confirm_modes_exclude_each_other() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    within("tx.select", ch.tx_select()).await.unwrap();
    let r = within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;
    expect_error(r, 406);
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    let r = within("tx.select", ch.tx_select()).await;
    expect_error(r, 406);
    let ch = channel(&conn).await;
    let r = within("tx.commit", ch.tx_commit()).await;
    expect_error(r, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_after_the_queue_was_deleted_is_harmless() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("gone");
    declare_plain(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    let m = get(&ch, &q, false).await.unwrap();
    let other = channel(&conn).await;
    let n = within(
        "queue.delete",
        other.queue_delete(&q, QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 0, "delete-ok counts ready messages");
    within("ack", m.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    // The channel is still fine.
    declare_plain(&ch, &unique("still-fine")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_unacked_messages_alone() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("purge-unacked");
    declare_plain(&ch, &q).await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let m = get(&ch, &q, false).await.unwrap();
    let n = within(
        "queue.purge",
        ch.queue_purge(&q, QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 2);
    within(
        "nack",
        m.delivery.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        }),
    )
    .await
    .unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_takes_its_bindings_along() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("rebind");
    declare_plain(&ch, &q).await;
    bind(&ch, &q, "amq.direct", "k", FieldTable::default()).await;
    within(
        "queue.delete",
        ch.queue_delete(&q, QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    declare_plain(&ch, &q).await;
    confirm_mode(&ch).await;
    assert!(!routed(&ch, "amq.direct", "k", None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let ex = unique("ad-ex");
    within(
        "exchange.declare",
        ch.exchange_declare(
            &ex,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let q = unique("ad-q");
    declare_plain(&ch, &q).await;
    bind(&ch, &q, &ex, "", FieldTable::default()).await;
    within(
        "queue.unbind",
        ch.queue_unbind(&q, &ex, "", FieldTable::default()),
    )
    .await
    .unwrap();
    let ch = channel(&conn).await;
    let r = within(
        "passive exchange.declare",
        ch.exchange_declare(
            &ex,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_error(r, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_an_internal_exchange_is_403() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let ex = unique("internal");
    within(
        "exchange.declare",
        ch.exchange_declare(
            &ex,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    confirm_mode(&ch).await;
    let c = within(
        "basic.publish",
        ch.basic_publish(
            &ex,
            "",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let text = expect_error(within("confirm", c).await, 403);
    assert_eq!(
        text,
        format!("ACCESS_REFUSED - cannot publish to internal exchange '{ex}' in vhost '/'")
    );
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_message_ttl_and_max_length() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("qttl");
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(100));
    within(
        "queue.declare",
        ch.queue_declare(&q, QueueDeclareOptions::default(), args),
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"expires").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        get(&ch, &q, true).await.is_none(),
        "x-message-ttl expired it"
    );

    let q = unique("maxlen");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    within(
        "queue.declare",
        ch.queue_declare(&q, QueueDeclareOptions::default(), args),
    )
    .await
    .unwrap();
    for i in 0..5 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    // RabbitMQ's default overflow is drop-head: the newest two remain.
    assert_eq!(bodies(&ch, &q).await, vec!["m3", "m4"]);
}

// ---- configuration seen through a client ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_max_message_is_406() {
    let broker = common::start_broker_with(|c| c.amqp.max_message = 1000);
    let (conn, ch) = open(&broker).await;
    let q = unique("maxmsg");
    declare_plain(&ch, &q).await;
    confirm_mode(&ch).await;
    publish(&ch, "", &q, &[7u8; 1000]).await;
    let c = within(
        "basic.publish",
        ch.basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &[7u8; 1001],
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let text = expect_error(within("confirm", c).await, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000"
    );
    assert!(conn.status().connected());
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_users_and_vhosts() {
    let broker = common::start_broker_with(|c| {
        c.vhosts.push("staging".into());
        c.users.push(qgate::config::UserConfig {
            name: "alice".into(),
            password: "s3cret".into(),
            loopback_only: false,
            tags: vec![],
        });
    });
    let uri = format!("amqp://alice:s3cret@{}/staging", broker.amqp());
    let conn = within(
        "connect as alice",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .expect("alice connects to staging");
    let ch = channel(&conn).await;
    let q = unique("staging-q");
    declare_plain(&ch, &q).await;
    publish_props(
        &ch,
        "",
        &q,
        b"hi",
        BasicProperties::default().with_user_id("alice".into()),
    )
    .await;
    let m = get(&ch, &q, true).await.unwrap();
    assert_eq!(
        m.delivery.properties.user_id().as_ref().map(|s| s.as_str()),
        Some("alice")
    );
    // Vhosts are separate namespaces.
    let (guest_conn, _) = open(&broker).await;
    expect_error(ready_count(&guest_conn, &q).await, 404);
    // Wrong password for alice: refused.
    let bad = format!("amqp://alice:nope@{}/staging", broker.amqp());
    let r = within(
        "connect with a bad password",
        Connection::connect(&bad, ConnectionProperties::default()),
    )
    .await;
    assert!(r.is_err(), "connected with a wrong password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_frame_max_with_a_real_client() {
    // lapin never goes below 8192 (its FRAME_MIN_SIZE); RabbitMQ, like qgate, refuses
    // a tune-ok frame_max above its own, so 8192 is the smallest this client can use.
    let broker = common::start_broker_with(|c| c.amqp.frame_max = 8192);
    let (_conn, ch) = open(&broker).await;
    let q = unique("smallframes");
    declare_plain(&ch, &q).await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let props = all_properties();
    publish_props(&ch, "", &q, &body, props.clone()).await;
    let mut consumer = consume(&ch, &q, true).await;
    let d = next(&mut consumer).await;
    assert!(d.data == body, "body differs");
    assert_eq!(d.properties, props);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_with_heartbeats_stays_connected() {
    let broker = common::start_broker_with(|c| c.amqp.heartbeat = 1);
    let (conn, ch) = open(&broker).await;
    let q = unique("hb");
    declare_plain(&ch, &q).await;
    // Several heartbeat intervals of silence from the application.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(conn.status().connected());
    publish(&ch, "", &q, b"still here").await;
    assert_eq!(
        get(&ch, &q, true).await.unwrap().delivery.data,
        b"still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_does_not_limit_no_ack_consumers() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("noack-prefetch");
    declare_plain(&ch, &q).await;
    within("basic.qos", ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    for i in 0..5 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    let mut consumer = consume(&ch, &q, true).await;
    take(&mut consumer, 5).await;
}

// ---- corners ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn consumer_tag_is_free_again_after_a_server_cancel() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("retag");
    declare_plain(&ch, &q).await;
    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            &q,
            "fixed-tag",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let other = channel(&conn).await;
    within(
        "queue.delete",
        other.queue_delete(&q, QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert!(within("stream end", consumer.next()).await.is_none());
    declare_plain(&other, &q).await;
    let r = within(
        "basic.consume with the same tag",
        ch.basic_consume(
            &q,
            "fixed-tag",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert!(r.is_ok(), "the cancelled tag is free again: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_lifecycle() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    // Never consumed from: stays.
    let q = unique("ad-never");
    declare(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    publish(&ch, "", &q, b"x").await;
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 1);

    // Its last consumer's channel closes: gone.
    let q2 = unique("ad-chclose");
    declare(
        &ch,
        &q2,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    let cch = channel(&conn).await;
    let _c = consume(&cch, &q2, false).await;
    within("channel.close", cch.close(200, "bye"))
        .await
        .unwrap();
    expect_error(ready_count(&conn, &q2).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_survives_its_channel_closing() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = unique("excl-ch");
    declare(
        &ch,
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    within("channel.close", ch.close(200, "bye")).await.unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_nack_multiple_with_tag_zero_settle_everything() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("tag0");
    declare_plain(&ch, &q).await;
    for i in 0..6 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    for _ in 0..3 {
        get(&ch, &q, false).await.unwrap();
    }
    within(
        "basic.ack(0, multiple)",
        ch.basic_ack(0, BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        get(&ch, &q, false).await.unwrap();
    }
    within(
        "basic.nack(0, multiple, requeue)",
        ch.basic_nack(
            0,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 3);
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_empty_words() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let ex = unique("topic-empty");
    declare_exchange(&ch, &ex, ExchangeKind::Topic).await;
    let patterns = ["a.*.b", "*.b", "#.#", "a.#", "*"];
    let mut queues = BTreeMap::new();
    for p in patterns {
        let q = unique("te");
        declare_plain(&ch, &q).await;
        bind(&ch, &q, &ex, p, FieldTable::default()).await;
        queues.insert(p, q);
    }
    confirm_mode(&ch).await;
    for k in ["a..b", ".b", "", "a.", "."] {
        routed(&ch, &ex, k, None).await;
    }
    let expect = |p: &str| -> Vec<&str> {
        match p {
            "a.*.b" => vec!["a..b"],
            "*.b" => vec![".b"],
            "#.#" => vec!["a..b", ".b", "", "a.", "."],
            "a.#" => vec!["a..b", "a."],
            "*" => vec![],
            _ => unreachable!(),
        }
    };
    for p in patterns {
        assert_eq!(bodies(&ch, &queues[p]).await, expect(p), "pattern {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_to_the_default_exchange() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    confirm_mode(&ch).await;
    assert!(!routed(&ch, "", &unique("no-such-queue"), None).await);
    let q = unique("exists");
    declare_plain(&ch, &q).await;
    assert!(routed(&ch, "", &q, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_graph_diamond_delivers_one_copy() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let src = unique("dia-src");
    let left = unique("dia-l");
    let right = unique("dia-r");
    for x in [&src, &left, &right] {
        declare_exchange(&ch, x, ExchangeKind::Fanout).await;
    }
    for x in [&left, &right] {
        within(
            "exchange.bind",
            ch.exchange_bind(
                x,
                &src,
                "",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
    }
    let q = unique("dia-q");
    declare_plain(&ch, &q).await;
    bind(&ch, &q, &left, "", FieldTable::default()).await;
    bind(&ch, &q, &right, "", FieldTable::default()).await;
    bind(&ch, &q, &src, "", FieldTable::default()).await;
    confirm_mode(&ch).await;
    assert!(routed(&ch, &src, "once", None).await);
    assert_eq!(bodies(&ch, &q).await, vec!["once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_redeclaring_without_exclusive_is_405() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("excl-owner");
    declare(
        &ch,
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let r = within(
        "queue.declare",
        ch.queue_declare(&q, QueueDeclareOptions::default(), FieldTable::default()),
    )
    .await;
    expect_error(r, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_arguments_are_406() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    for (key, value) in [
        ("x-message-ttl", AMQPValue::LongInt(-1)),
        ("x-message-ttl", lstr("soon")),
        ("x-max-length", AMQPValue::LongInt(-5)),
    ] {
        let ch = channel(&conn).await;
        let mut args = FieldTable::default();
        args.insert(key.into(), value.clone());
        let r = within(
            "queue.declare",
            ch.queue_declare(&unique("badarg"), QueueDeclareOptions::default(), args),
        )
        .await;
        let text = expect_error(r, 406);
        assert!(
            text.starts_with(&format!("PRECONDITION_FAILED - invalid arg '{key}'")),
            "{key}={value:?}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn invalid_x_match_is_406() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("xmatch");
    declare_plain(&ch, &q).await;
    let r = within(
        "queue.bind",
        ch.queue_bind(
            &q,
            "amq.headers",
            "",
            QueueBindOptions::default(),
            table(&[("x-match", lstr("bogus")), ("a", lstr("b"))]),
        ),
    )
    .await;
    let text = expect_error(r, 406);
    assert!(text.starts_with("PRECONDITION_FAILED - "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn failed_transaction_routes_nothing() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    ch.on_error(move |e| {
        let _ = tx.send(e);
    });
    let q = unique("tx-atomic");
    declare_plain(&ch, &q).await;
    within("tx.select", ch.tx_select()).await.unwrap();
    publish(&ch, "", &q, b"must not be routed").await;
    // An ack for a tag never delivered: RabbitMQ rejects it at once (406, channel
    // closed, transaction discarded).
    within("basic.ack", ch.basic_ack(42, BasicAckOptions::default()))
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(500), ch.tx_commit()).await;
    let e = within("channel error", rx.recv()).await.expect("an error");
    assert_eq!(amqp_error(&e).0, 406);
    assert_eq!(
        ready_count(&conn, &q).await.unwrap(),
        0,
        "a transaction that failed must not have routed its publishes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_320() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("shutdown");
    declare_plain(&ch, &q).await;
    let mut consumer = consume(&ch, &q, false).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    conn.on_error(move |e| {
        let _ = tx.send(e);
    });
    broker.begin_shutdown();
    let e = within("connection error", rx.recv())
        .await
        .expect("an error");
    let (code, text) = amqp_error(&e);
    assert_eq!(code, 320);
    assert!(text.starts_with("CONNECTION_FORCED - "), "{text}");
    // The consumer stream ends (with the error first, as lapin reports it).
    loop {
        match within("consumer end", consumer.next()).await {
            None => break,
            Some(Err(_)) => {}
            Some(Ok(d)) => panic!("unexpected delivery {d:?}"),
        }
    }
    let result = tokio::task::spawn_blocking(move || broker.stop())
        .await
        .unwrap();
    assert_eq!(result, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn publish_immediate_is_540() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("immediate");
    declare_plain(&ch, &q).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    conn.on_error(move |e| {
        let _ = tx.send(e);
    });
    within(
        "basic.publish immediate",
        ch.basic_publish(
            "",
            &q,
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"now",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let e = within("connection error", rx.recv())
        .await
        .expect("an error");
    let (code, text) = amqp_error(&e);
    assert_eq!(code, 540);
    assert!(text.starts_with("NOT_IMPLEMENTED - "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_exchange_cannot_be_touched() {
    let broker = start_broker();
    let conn = connect(&broker).await;
    let q = unique("dflt");
    let ch = channel(&conn).await;
    declare_plain(&ch, &q).await;
    let r = within(
        "queue.bind to the default exchange",
        ch.queue_bind(
            &q,
            "",
            "k",
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_error(r, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    );
    let ch = channel(&conn).await;
    let r = within(
        "exchange.delete of the default exchange",
        ch.exchange_delete("", ExchangeDeleteOptions::default()),
    )
    .await;
    expect_error(r, 403);
    let ch = channel(&conn).await;
    let r = within(
        "exchange.delete of amq.direct",
        ch.exchange_delete("amq.direct", ExchangeDeleteOptions::default()),
    )
    .await;
    expect_error(r, 403);
    // Passive declares of a durable queue ignore the flags given.
    let ch = channel(&conn).await;
    let dq = unique("durable");
    declare(
        &ch,
        &dq,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ready_count(&conn, &dq).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_off_is_not_implemented() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let active = within(
        "channel.flow on",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .unwrap();
    assert!(active);
    let r = within(
        "channel.flow off",
        ch.channel_flow(ChannelFlowOptions { active: false }),
    )
    .await;
    expect_error(r, 540);
    wait_disconnected(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ok_reports_the_remaining_count() {
    let broker = start_broker();
    let (_conn, ch) = open(&broker).await;
    let q = unique("remaining");
    declare_plain(&ch, &q).await;
    for _ in 0..3 {
        publish(&ch, "", &q, b"r").await;
    }
    for left in [2, 1, 0] {
        let m = get(&ch, &q, false).await.unwrap();
        assert_eq!(m.message_count, left);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishers_and_consumers_lose_nothing() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 300;
    let broker = start_broker();
    let (setup_conn, setup) = open(&broker).await;
    let q = unique("stress");
    declare_plain(&setup, &q).await;

    let mut consumers = Vec::new();
    for _ in 0..2 {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        within("basic.qos", ch.basic_qos(50, BasicQosOptions::default()))
            .await
            .unwrap();
        let mut consumer = consume(&ch, &q, false).await;
        consumers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(3000), consumer.next()).await
            {
                seen.push(String::from_utf8(d.data.clone()).unwrap());
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
            drop(conn);
            seen
        }));
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let conn = connect(&broker).await;
        let q = q.clone();
        publishers.push(tokio::spawn(async move {
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let mut confirms = Vec::new();
            for i in 0..EACH {
                confirms.push(
                    ch.basic_publish(
                        "",
                        &q,
                        BasicPublishOptions::default(),
                        format!("{p}-{i}").as_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap(),
                );
            }
            for c in confirms {
                assert!(c.await.unwrap().is_ack());
            }
            conn
        }));
    }
    let mut keep = Vec::new();
    for p in publishers {
        keep.push(within("publisher", p).await.unwrap());
    }
    let mut all = Vec::new();
    for c in consumers {
        let seen = within("consumer", c).await.unwrap();
        // Each publisher's messages arrive in publish order at each consumer.
        for p in 0..PUBLISHERS {
            let mine: Vec<usize> = seen
                .iter()
                .filter_map(|s| s.strip_prefix(&format!("{p}-")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "publisher {p} out of order"
            );
        }
        all.extend(seen);
    }
    all.sort();
    let mut expected: Vec<String> = (0..PUBLISHERS)
        .flat_map(|p| (0..EACH).map(move |i| format!("{p}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(all.len(), expected.len(), "lost or duplicated messages");
    assert_eq!(all, expected);
    assert_eq!(ready_count(&setup_conn, &q).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_methods_get_no_reply() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("nowait");
    let ex = unique("nowait-ex");
    within(
        "queue.declare nowait",
        ch.queue_declare(
            &q,
            QueueDeclareOptions {
                nowait: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    within(
        "exchange.declare nowait",
        ch.exchange_declare(
            &ex,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                nowait: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    within(
        "queue.bind nowait",
        ch.queue_bind(
            &q,
            &ex,
            "",
            QueueBindOptions { nowait: true },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish(&ch, &ex, "", b"via nowait binding").await;
    // A synchronous method afterwards: its reply must be the next one the client sees.
    let decl = declare_plain(&ch, &q).await;
    assert_eq!(decl.message_count(), 1);
    // (lapin 2 waits for purge-ok even with nowait, so purge is left out.)
    within(
        "queue.purge",
        ch.queue_purge(&q, QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(ready_count(&conn, &q).await.unwrap(), 0);
    within(
        "queue.delete nowait",
        ch.queue_delete(
            &q,
            QueueDeleteOptions {
                nowait: true,
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    within(
        "exchange.delete nowait",
        ch.exchange_delete(
            &ex,
            ExchangeDeleteOptions {
                nowait: true,
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    within("basic.qos", ch.basic_qos(5, BasicQosOptions::default()))
        .await
        .unwrap();
    assert!(ch.status().connected());
    expect_error(ready_count(&conn, &q).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consume_on_a_queue_with_consumers_is_403() {
    let broker = start_broker();
    let (conn, ch) = open(&broker).await;
    let q = unique("excl-late");
    declare_plain(&ch, &q).await;
    let _c = consume(&ch, &q, true).await;
    let ch2 = channel(&conn).await;
    let r = within(
        "exclusive basic.consume",
        ch2.basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_error(r, 403);
}
