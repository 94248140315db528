//! Users, vhosts and permissions through a real client (lapin) against the AMQP front
//! end of a broker this test holds, so it can change access at runtime the way the
//! management API and `qgate ctl` do, and watch what the client sees: AMQPLAIN and
//! PLAIN logins, forced closes (320 CONNECTION_FORCED) when a user or vhost is
//! deleted or permissions are cleared, the vhost cascade, and a RabbitMQ definitions
//! export loaded unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qgate::core::{Broker, CoreConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Serves AMQP for `broker` on 127.0.0.1 port 0.
async fn serve(broker: &Broker) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let mut config = qgate::config::Config::default();
    config.amqp.heartbeat = 0;
    let config = Arc::new(config);
    let (broker, stop) = (broker.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Ok((stream, peer)) = listener.accept() => {
                    tokio::spawn(qgate::amqp::serve_connection(
                        stream, peer, broker.clone(), config.clone(), stop.clone(),
                    ));
                }
                _ = stop.cancelled() => break,
            }
        }
    });
    (addr, shutdown)
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn uri(addr: SocketAddr, user: &str, pass: &str, vhost: &str, mechanism: &str) -> String {
    let vhost = vhost.replace('/', "%2f");
    format!("amqp://{user}:{pass}@{addr}/{vhost}?heartbeat=0&auth_mechanism={mechanism}")
}

async fn connect(uri: &str) -> Result<Connection, lapin::Error> {
    within(
        "connect",
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
}

fn protocol_error(e: &lapin::Error) -> (u16, String) {
    match e {
        lapin::Error::ProtocolError(p) => (p.get_id(), p.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

/// The error a connection is closed with by the broker.
fn watch(conn: &Connection) -> mpsc::UnboundedReceiver<lapin::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    conn.on_error(move |e| {
        let _ = tx.send(e);
    });
    rx
}

async fn forced(rx: &mut mpsc::UnboundedReceiver<lapin::Error>) -> (u16, String) {
    let e = within("the forced close", rx.recv())
        .await
        .expect("an error");
    protocol_error(&e)
}

fn broker_with_user() -> Broker {
    let b = Broker::new(CoreConfig::default());
    b.add_user("alice", "wonder", vec![]).unwrap();
    b.add_vhost("shop").unwrap();
    b.set_permissions("alice", "shop", ".*", ".*", ".*")
        .unwrap();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_amqplain_check_the_stored_hash() {
    let b = broker_with_user();
    let (addr, stop) = serve(&b).await;
    for mech in ["plain", "amqplain"] {
        let c = connect(&uri(addr, "alice", "wonder", "shop", mech))
            .await
            .unwrap_or_else(|e| panic!("{mech}: {e:?}"));
        c.close(200, "bye").await.unwrap();
        let e = connect(&uri(addr, "alice", "nope", "shop", mech))
            .await
            .expect_err("a wrong password is refused");
        let (code, text) = protocol_error(&e);
        assert_eq!(code, 403, "{mech}");
        let name = mech.to_uppercase();
        assert_eq!(
            text,
            format!("ACCESS_REFUSED - Login was refused using authentication mechanism {name}. For details see the broker logfile.")
        );
    }
    // No permissions on the vhost: 530 at connection.open, as RabbitMQ.
    let e = connect(&uri(addr, "alice", "wonder", "/", "plain"))
        .await
        .unwrap_err();
    assert_eq!(
        protocol_error(&e),
        (
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'alice'".into()
        )
    );
    // The password changes at runtime; the old one stops working.
    b.change_password("alice", "land").unwrap();
    assert!(connect(&uri(addr, "alice", "wonder", "shop", "plain"))
        .await
        .is_err());
    connect(&uri(addr, "alice", "land", "shop", "amqplain"))
        .await
        .unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_closes_reach_the_client_with_the_reason() {
    let b = broker_with_user();
    let (addr, stop) = serve(&b).await;

    // Broker::close_connection (management DELETE /api/connections/{name}).
    let c = connect(&uri(addr, "alice", "wonder", "shop", "plain"))
        .await
        .unwrap();
    let mut errors = watch(&c);
    let id = b
        .connections()
        .iter()
        .find(|i| *i.user.lock() == "alice")
        .expect("registered")
        .id;
    assert!(b.close_connection(id, "Closed via management plugin"));
    assert_eq!(
        forced(&mut errors).await,
        (
            320,
            "CONNECTION_FORCED - Closed via management plugin".into()
        )
    );
    assert!(!b.close_connection(u64::MAX, "nobody"));

    // clear_permissions closes the user's connections to that vhost.
    let c = connect(&uri(addr, "alice", "wonder", "shop", "plain"))
        .await
        .unwrap();
    let mut errors = watch(&c);
    b.clear_permissions("alice", "shop").unwrap();
    assert_eq!(forced(&mut errors).await.0, 320);
    assert!(connect(&uri(addr, "alice", "wonder", "shop", "plain"))
        .await
        .is_err());

    // delete_user closes its connections.
    b.set_permissions("alice", "shop", ".*", ".*", ".*")
        .unwrap();
    let c = connect(&uri(addr, "alice", "wonder", "shop", "plain"))
        .await
        .unwrap();
    let mut errors = watch(&c);
    b.delete_user("alice").unwrap();
    assert_eq!(
        forced(&mut errors).await,
        (320, "CONNECTION_FORCED - user 'alice' is deleted".into())
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vhost_closes_its_connections_and_deletes_its_contents() {
    let b = broker_with_user();
    let (addr, stop) = serve(&b).await;
    let c = connect(&uri(addr, "alice", "wonder", "shop", "plain"))
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "orders",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "shop.x",
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "orders",
        "shop.x",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "shop.x",
        "",
        BasicPublishOptions::default(),
        b"order 1",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    within("publish lands", async {
        while b
            .vhost("shop")
            .unwrap()
            .find_queue("orders")
            .unwrap()
            .depth()
            .ready
            == 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut errors = watch(&c);
    b.delete_vhost("shop").unwrap();
    assert_eq!(
        forced(&mut errors).await,
        (320, "CONNECTION_FORCED - vhost 'shop' is deleted".into())
    );
    assert!(b.vhost("shop").is_none());
    assert!(b.permissions().iter().all(|p| p.vhost != "shop"));
    // A new vhost of the same name starts empty.
    b.add_vhost("shop").unwrap();
    let v = b.vhost("shop").unwrap();
    assert!(v.find_queue("orders").is_none());
    assert!(v.exchange("shop.x").is_err());
    assert!(connect(&uri(addr, "alice", "wonder", "shop", "plain"))
        .await
        .is_err());
    stop.cancel();
}

/// `tests/fixtures/rabbitmq-definitions.json` is `rabbitmqctl export_definitions` from
/// RabbitMQ 3.10.8 after: add_user admin 123456; set_user_tags admin administrator;
/// add_user myuser s3cret-pass; set_user_tags myuser monitoring; add_vhost myvhost;
/// set_permissions -p myvhost myuser '^my-.*' '.*' '.*'; set_permissions -p myvhost
/// admin '.*' '.*' '.*'; and declaring, as admin over AMQP, the topic exchange
/// my-orders, the fanout my-fanout, the durable queues my-queue (x-max-length 1000),
/// my-dead and my-ttl (x-message-ttl 60000, x-dead-letter-exchange my-fanout), bindings
/// my-orders -> my-queue (orders.#), my-fanout -> my-dead, my-orders -> my-fanout
/// (dead.*).
const FIXTURE: &str = include_str!("fixtures/rabbitmq-definitions.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_export_loads_unchanged_and_its_users_log_in() {
    let b = Broker::new(CoreConfig::default());
    let defs: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    qgate::definitions::import(&b, &defs).unwrap();
    let lo = "127.0.0.1".parse().unwrap();
    assert_eq!(
        b.authenticate("admin", "123456", lo).unwrap().tags,
        ["administrator"]
    );
    assert_eq!(
        b.authenticate("myuser", "s3cret-pass", lo).unwrap().tags,
        ["monitoring"]
    );
    assert!(b.authenticate("myuser", "123456", lo).is_err());

    let (addr, stop) = serve(&b).await;
    let c = connect(&uri(addr, "myuser", "s3cret-pass", "myvhost", "plain"))
        .await
        .expect("myuser logs in with its RabbitMQ password");
    let ch = c.create_channel().await.unwrap();
    for (key, queue) in [("orders.eu.1", "my-queue"), ("dead.letter", "my-dead")] {
        ch.basic_publish(
            "my-orders",
            key,
            BasicPublishOptions::default(),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
        let got = within("get", async {
            loop {
                if let Some(m) = ch
                    .basic_get(queue, BasicGetOptions { no_ack: true })
                    .await
                    .unwrap()
                {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(got.delivery.data, key.as_bytes(), "{queue}");
    }
    // Its permissions came along: configure only on ^my-.
    let e = ch
        .queue_declare(
            "other",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        protocol_error(&e),
        (
            403,
            "ACCESS_REFUSED - access to queue 'other' in vhost 'myvhost' refused for user 'myuser'"
                .into()
        )
    );
    let q = b.vhost("myvhost").unwrap().find_queue("my-ttl").unwrap();
    assert!(q.options.durable);
    assert!(q.options.arguments.get("x-dead-letter-exchange").is_some());

    // And qgate's export of it says the same things.
    let again = qgate::definitions::export(&b);
    for k in ["queues", "exchanges", "bindings"] {
        let mut a: Vec<String> = defs[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        let mut z: Vec<String> = again[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        a.sort();
        z.sort();
        assert_eq!(a, z, "{k}");
    }
    stop.cancel();
}
