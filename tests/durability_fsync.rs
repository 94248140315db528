//! fsync policy `always`, seen from outside: a publisher confirm is never sent before an
//! fsync covering the message has returned, and concurrent publishers share fsyncs
//! (group commit). Counted with the broker's own `qgate_store_fsyncs_total`.

mod common;

use std::net::SocketAddr;

use common::{start_broker_with, within};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The fsync counter is process-wide (one metrics recorder per process): the two tests
/// take turns so that neither counts the other's fsyncs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn fsyncs(http: SocketAddr) -> f64 {
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("qgate_store_fsyncs_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn channel(uri: &str, queue: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue, durable, FieldTable::default())
        .await
        .unwrap();
    (conn, ch)
}

async fn publish_confirmed(ch: &lapin::Channel, queue: &str, n: usize) {
    for i in 0..n {
        let confirm = ch
            .basic_publish(
                "",
                queue,
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sequential_confirm_waits_for_its_own_fsync() {
    let _turn = SERIAL.lock().await;
    let broker = start_broker_with(|c| c.storage.fsync = qgate::config::FsyncPolicy::Always);
    let (_conn, ch) = channel(&broker.uri(), "fsync-seq").await;
    let before = fsyncs(broker.addrs.http).await;
    // One publisher waiting for each confirm before the next publish: if a confirm were
    // sent before its fsync, several messages could share one and the count would fall
    // short of the number of messages.
    within(
        "sequential publishes",
        publish_confirmed(&ch, "fsync-seq", 50),
    )
    .await;
    let after = fsyncs(broker.addrs.http).await;
    assert!(
        after - before >= 50.0,
        "fsyncs {before} -> {after} for 50 confirms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_share_fsyncs() {
    let _turn = SERIAL.lock().await;
    let broker = start_broker_with(|c| c.storage.fsync = qgate::config::FsyncPolicy::Always);
    let uri = broker.uri();
    let before = fsyncs(broker.addrs.http).await;
    let mut tasks = Vec::new();
    for p in 0..8 {
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            let q = format!("fsync-par-{p}");
            let (_conn, ch) = channel(&uri, &q).await;
            // Many publishes in flight per channel, confirmed together.
            let mut pending = Vec::new();
            for i in 0..200 {
                pending.push(
                    ch.basic_publish(
                        "",
                        &q,
                        BasicPublishOptions::default(),
                        format!("m{i}").as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap(),
                );
            }
            for c in pending {
                assert!(c.await.unwrap().is_ack());
            }
        }));
    }
    for t in tasks {
        within("publisher", t).await.unwrap();
    }
    let used = fsyncs(broker.addrs.http).await - before;
    let messages = 8.0 * 200.0;
    assert!(
        used >= 1.0,
        "no fsync at all for persistent confirmed messages"
    );
    assert!(
        used < messages / 4.0,
        "{used} fsyncs for {messages} messages: group commit is not sharing them"
    );
    println!("fsyncs per message: {:.3}", used / messages);
}
