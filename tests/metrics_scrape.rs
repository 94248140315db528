//! Black-box tests of the HTTP listener: after a known AMQP traffic pattern, a scrape of
//! `/metrics` shows exact counter and gauge values, passes `promtool check metrics`
//! (when promtool is installed), and contains every metric the shipped Grafana
//! dashboard queries; with prefix `rabbitmq` it contains what the stock
//! RabbitMQ-Overview dashboard queries. Also checks the HTTP error paths of the metrics
//! listener and, after the same traffic, the management API's JSON (on its own
//! listener, with Basic auth).

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qgate::config::Config;
use qgate::server::Bound;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Broker {
    bound: Bound,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    dir: PathBuf,
}

impl Broker {
    async fn start(prefix: &str) -> Broker {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "qgate-metrics-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config::default();
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.amqp.listen = loopback;
        config.memcache.listen = loopback;
        config.http.listen = loopback;
        config.management.listen = loopback;
        config.http.metrics_prefix = prefix.into();
        config.storage.data_dir = dir.join("data");
        config.log = "warn".into();
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            qgate::server::run(config, token, move |b| {
                let _ = tx.send(b);
            })
            .await
            .expect("server runs");
        });
        let bound = tokio::time::timeout(WAIT, rx)
            .await
            .expect("listeners bound in time")
            .expect("bound");
        Broker {
            bound,
            shutdown,
            task: Some(task),
            dir,
        }
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.bound.amqp)
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw HTTP exchange: sends `request` bytes, returns (status, head, body).
async fn raw(addr: SocketAddr, request: Vec<u8>) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        // The server may answer (and close) before it has read everything.
        let _ = s.write_all(&request);
        // No more to send: a partial head then meets EOF instead of the read timeout.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_owned(), body.to_owned())
    })
    .await
    .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
    )
    .await
}

/// A GET on the management listener as guest.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, head, body) = raw(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{path}: {head}\n{body}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A parsed scrape: `name{labels}` -> value, plus the family names of TYPE lines.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
    names: BTreeSet<String>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = HashMap::new();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            names.insert(series.split('{').next().unwrap().to_owned());
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate series {series}"
            );
        }
        Scrape {
            text,
            samples,
            names,
        }
    }

    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in scrape:\n{}", self.text))
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, head, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body)
}

/// Scrapes until `ok` holds (acks travel without a reply), failing after [`WAIT`].
async fn scrape_until(addr: SocketAddr, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(addr).await;
        if ok(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `promtool check metrics` on a scrape when promtool is installed.
fn promtool_check(text: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed: skipping `promtool check metrics`");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The known traffic pattern. Returns the open connection (it holds a consumer).
async fn traffic(broker: &Broker) -> Connection {
    let conn = tokio::time::timeout(
        WAIT,
        Connection::connect(&broker.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["scrape.q1", "scrape.q2", "scrape \"odd\"\\name"] {
        ch.queue_declare(q, QueueDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
    }
    let publish = |exchange: &'static str, key: &'static str| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                b"hello",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
        }
    };
    for _ in 0..5 {
        publish("", "scrape.q1").await;
    }
    for _ in 0..3 {
        publish("", "scrape.q2").await;
    }
    // Unroutable, not mandatory: dropped.
    publish("amq.direct", "nowhere").await;

    // Two manual-ack gets on q1, one acked: q1 = 3 ready, 1 unacked.
    let first = ch
        .basic_get("scrape.q1", BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("message");
    let _second = ch
        .basic_get("scrape.q1", BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("message");
    first
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    // One auto-ack get on q2, one get on the empty queue.
    ch.basic_get("scrape.q2", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("message");
    assert!(ch
        .basic_get("scrape \"odd\"\\name", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
    // A manual-ack consumer takes and acks the 2 left on q2, and stays.
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "scrape.q2",
            "scrape-ctag",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("delivery in time")
            .expect("delivery")
            .expect("delivery ok");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Keep the consumer registered while the test scrapes.
    std::mem::forget(consumer);
    conn
}

/// memcache traffic: two sets, a hit and a miss; returns the bytes sent. Only one test
/// in this binary talks memcache: its counters are process-wide.
async fn memcache_traffic(addr: SocketAddr) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sent = 0u64;
    let mut exchange = |req: &'static [u8], want: &'static [u8]| {
        sent += req.len() as u64;
        async move { (req, want) }
    };
    let steps = [
        exchange(b"set mc.q 0 0 5\r\nhello\r\n", b"STORED\r\n").await,
        exchange(b"set mc.q 7 0 3\r\nbye\r\n", b"STORED\r\n").await,
        exchange(b"get mc.q\r\n", b"VALUE mc.q 0 5\r\nhello\r\nEND\r\n").await,
        exchange(b"get mc.none\r\n", b"END\r\n").await,
    ];
    for (req, want) in steps {
        s.write_all(req).await.unwrap();
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut got))
            .await
            .expect("memcache answer in time")
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    }
    s.write_all(b"quit\r\n").await.unwrap();
    sent += 6;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_after_traffic_shows_exact_values() {
    let broker = Broker::start("qgate").await;
    let http = broker.bound.http;
    let conn = traffic(&broker).await;
    let mc_sent = memcache_traffic(broker.bound.memcache).await;
    let mc = r#"{vhost="/",queue="mc.q"}"#;

    let q1 = r#"{vhost="/",queue="scrape.q1"}"#;
    let q2 = r#"{vhost="/",queue="scrape.q2"}"#;
    let odd = r#"{vhost="/",queue="scrape \"odd\"\\name"}"#;
    let s = scrape_until(http, |s| {
        s.samples.get("qgate_global_messages_acknowledged_total") == Some(&3.0)
            && s.samples
                .get(&format!("qgate_queue_messages_acked_total{q2}"))
                == Some(&3.0)
    })
    .await;

    let expect = [
        // per queue
        (format!("qgate_queue_messages_ready{q1}"), 3.0),
        (format!("qgate_queue_messages_unacked{q1}"), 1.0),
        (format!("qgate_queue_messages{q1}"), 4.0),
        (format!("qgate_queue_consumers{q1}"), 0.0),
        (format!("qgate_queue_messages_published_total{q1}"), 5.0),
        (format!("qgate_queue_messages_delivered_total{q1}"), 2.0),
        (format!("qgate_queue_messages_acked_total{q1}"), 1.0),
        (format!("qgate_queue_messages_redelivered_total{q1}"), 0.0),
        (format!("qgate_queue_messages_ready{q2}"), 0.0),
        (format!("qgate_queue_messages_unacked{q2}"), 0.0),
        (format!("qgate_queue_consumers{q2}"), 1.0),
        (format!("qgate_queue_messages_published_total{q2}"), 3.0),
        (format!("qgate_queue_messages_delivered_total{q2}"), 3.0),
        (format!("qgate_queue_messages_acked_total{q2}"), 3.0),
        (format!("qgate_queue_messages_ready{mc}"), 1.0),
        (format!("qgate_queue_messages_published_total{mc}"), 2.0),
        (format!("qgate_queue_messages_delivered_total{mc}"), 1.0),
        (format!("qgate_queue_messages_acked_total{mc}"), 1.0),
        (format!("qgate_queue_messages_ready{odd}"), 0.0),
        (format!("qgate_queue_messages_published_total{odd}"), 0.0),
        // broker-wide
        ("qgate_queues".into(), 4.0),
        ("qgate_channels".into(), 1.0),
        ("qgate_consumers".into(), 1.0),
        ("qgate_global_consumers".into(), 1.0),
        ("qgate_channel_consumers".into(), 1.0),
        (r#"qgate_connections{protocol="amqp"}"#.into(), 1.0),
        (r#"qgate_connections{protocol="memcache"}"#.into(), 0.0),
        ("qgate_global_messages_received_total".into(), 11.0),
        ("qgate_global_messages_received_confirm_total".into(), 9.0),
        ("qgate_global_messages_routed_total".into(), 10.0),
        ("qgate_global_messages_confirmed_total".into(), 9.0),
        ("qgate_global_messages_unroutable_dropped_total".into(), 1.0),
        (
            "qgate_global_messages_unroutable_returned_total".into(),
            0.0,
        ),
        (
            "qgate_global_messages_delivered_get_manual_ack_total".into(),
            2.0,
        ),
        (
            "qgate_global_messages_delivered_get_auto_ack_total".into(),
            2.0,
        ),
        ("qgate_global_messages_get_empty_total".into(), 2.0),
        ("qgate_global_messages_redelivered_total".into(), 0.0),
        ("qgate_global_messages_acknowledged_total".into(), 3.0),
        ("qgate_queues_created_total".into(), 4.0),
        ("qgate_queues_deleted_total".into(), 0.0),
        // memcache
        (
            r#"qgate_connections_opened_total{protocol="memcache"}"#.into(),
            1.0,
        ),
        (
            r#"qgate_connections_closed_total{protocol="memcache"}"#.into(),
            1.0,
        ),
        (
            r#"qgate_protocol_bytes_received_total{protocol="memcache"}"#.into(),
            mc_sent as f64,
        ),
        (
            r#"qgate_memcache_commands_total{command="get",result="hit"}"#.into(),
            1.0,
        ),
        (
            r#"qgate_memcache_commands_total{command="get",result="miss"}"#.into(),
            1.0,
        ),
        (
            r#"qgate_memcache_commands_total{command="set",result="total"}"#.into(),
            2.0,
        ),
        (
            r#"qgate_memcache_commands_total{command="delete",result="total"}"#.into(),
            0.0,
        ),
        (
            "qgate_identity_info".to_owned()
                + &format!(
                    "{{qgate_node=\"{0}\",qgate_cluster=\"{0}\",qgate_endpoint=\"per-object\"}}",
                    node(&s)
                ),
            1.0,
        ),
    ];
    for (series, value) in &expect {
        assert_eq!(s.value(series), *value, "{series}");
    }
    // Deliveries over basic.consume (2 to the q2 consumer) and gets (2 manual, 2 auto).
    assert_eq!(
        s.value("qgate_global_messages_delivered_consume_manual_ack_total"),
        2.0
    );
    assert_eq!(
        s.value("qgate_global_messages_delivered_consume_auto_ack_total"),
        0.0
    );
    assert_eq!(s.value("qgate_global_messages_delivered_total"), 6.0);
    assert_eq!(
        s.value(r#"qgate_connections_opened_total{protocol="amqp"}"#),
        1.0
    );
    assert!(s.value(r#"qgate_protocol_bytes_received_total{protocol="amqp"}"#) > 0.0);
    assert!(s.value(r#"qgate_protocol_bytes_sent_total{protocol="amqp"}"#) > 0.0);
    assert!(s.value("qgate_process_resident_memory_bytes") > 0.0);
    assert!(s.value("qgate_process_open_fds") > 0.0);
    assert!(s.value("qgate_process_max_fds") > 0.0);
    assert!(s.value("qgate_disk_space_available_bytes") > 0.0);
    assert!(s.value("qgate_queues_declared_total") >= 3.0);
    // The memcache messages went to a durable queue: the store fsynced them.
    assert!(s.value("qgate_store_fsyncs_total") >= 1.0);
    assert!(s.value(r#"qgate_store_fsync_seconds_bucket{le="+Inf"}"#) >= 1.0);
    for name in [
        r#"qgate_message_size_bytes_bucket{le="+Inf"}"#,
        r#"qgate_store_fsync_seconds_bucket{le="+Inf"}"#,
        "qgate_store_fsyncs_total",
    ] {
        s.value(name);
    }
    promtool_check(&s.text);

    // Every metric the shipped dashboard queries exists in the scrape.
    let dashboard = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docker/grafana/dashboards/qgate.json"),
    )
    .expect("dashboard file");
    let dashboard: Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "dashboard has too few queries: {exprs:?}"
    );
    let mut used = BTreeSet::new();
    for e in &exprs {
        used.extend(metric_names(e, "qgate_"));
    }
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<_> = used.iter().filter(|n| !s.names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics missing from the scrape: {missing:?}"
    );

    // Byte counters never go backwards when a connection closes.
    let amqp_in = r#"qgate_protocol_bytes_received_total{protocol="amqp"}"#;
    let amqp_out = r#"qgate_protocol_bytes_sent_total{protocol="amqp"}"#;
    let (before_in, before_out) = (s.value(amqp_in), s.value(amqp_out));
    conn.close(200, "bye").await.ok();
    let after = scrape_until(http, |s| {
        s.samples.get(r#"qgate_connections{protocol="amqp"}"#) == Some(&0.0)
    })
    .await;
    assert_eq!(after.value(r#"qgate_connections{protocol="amqp"}"#), 0.0);
    assert!(after.value(amqp_in) >= before_in);
    assert!(after.value(amqp_out) >= before_out);
    assert_eq!(after.value("qgate_channels"), 0.0);
    assert_eq!(after.value("qgate_global_consumers"), 0.0);
    assert_eq!(after.value("qgate_channel_consumers"), 0.0);
    broker.stop().await;
}

fn node(s: &Scrape) -> String {
    let line = s
        .text
        .lines()
        .find(|l| l.starts_with("qgate_identity_info{"))
        .expect("identity_info");
    let start = line.find("qgate_node=\"").unwrap() + "qgate_node=\"".len();
    let end = start + line[start..].find('"').unwrap();
    line[start..end].to_owned()
}

/// Every `expr` string in a dashboard (panels, rows, templating queries).
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("qgate_") => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => collect_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// Identifiers starting with `prefix` in a PromQL expression.
fn metric_names(expr: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && expr[i..].starts_with(prefix) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map(|n| i + n)
                .unwrap_or(expr.len());
            out.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// With prefix `rabbitmq`, every metric the stock RabbitMQ-Overview dashboard (grafana.com
/// 10991, as shipped in rabbitmq-server's deps/rabbitmq_prometheus) queries is present,
/// with the labels and bucket bounds its PromQL selects on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_prefix_serves_rabbitmq_overview_metrics() {
    let broker = Broker::start("rabbitmq").await;
    let conn = traffic(&broker).await;
    let s = scrape(broker.bound.http).await;
    let required = [
        "rabbitmq_identity_info",
        "rabbitmq_build_info",
        "rabbitmq_erlang_uptime_seconds",
        "rabbitmq_queues",
        "rabbitmq_connections",
        "rabbitmq_channels",
        "rabbitmq_consumers",
        "rabbitmq_global_consumers",
        "rabbitmq_channel_consumers",
        "rabbitmq_global_publishers",
        "rabbitmq_global_messages_received_total",
        "rabbitmq_global_messages_received_confirm_total",
        "rabbitmq_global_messages_routed_total",
        "rabbitmq_global_messages_confirmed_total",
        "rabbitmq_global_messages_delivered_total",
        "rabbitmq_global_messages_delivered_consume_auto_ack_total",
        "rabbitmq_global_messages_delivered_consume_manual_ack_total",
        "rabbitmq_global_messages_delivered_get_auto_ack_total",
        "rabbitmq_global_messages_delivered_get_manual_ack_total",
        "rabbitmq_global_messages_get_empty_total",
        "rabbitmq_global_messages_redelivered_total",
        "rabbitmq_global_messages_acknowledged_total",
        "rabbitmq_global_messages_unroutable_dropped_total",
        "rabbitmq_global_messages_unroutable_returned_total",
        "rabbitmq_connections_opened_total",
        "rabbitmq_connections_closed_total",
        "rabbitmq_channels_opened_total",
        "rabbitmq_channels_closed_total",
        "rabbitmq_queues_declared_total",
        "rabbitmq_queues_created_total",
        "rabbitmq_queues_deleted_total",
        "rabbitmq_process_resident_memory_bytes",
        "rabbitmq_resident_memory_limit_bytes",
        "rabbitmq_process_open_fds",
        "rabbitmq_process_max_fds",
        "rabbitmq_process_open_tcp_sockets",
        "rabbitmq_process_max_tcp_sockets",
        "rabbitmq_disk_space_available_bytes",
        "rabbitmq_disk_space_available_limit_bytes",
        "rabbitmq_message_size_bytes_bucket",
        "rabbitmq_message_size_bytes_sum",
        "rabbitmq_message_size_bytes_count",
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_messages_unacked",
        "rabbitmq_queue_messages",
        "rabbitmq_queue_consumers",
        "rabbitmq_queue_messages_published_total",
        "rabbitmq_queue_messages_delivered_total",
        "rabbitmq_queue_messages_acked_total",
    ];
    let missing: Vec<_> = required.iter().filter(|n| !s.names.contains(**n)).collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
    // Nothing leaks out under another prefix (the recorder's qgate_ names are renamed).
    let foreign: Vec<_> = s
        .names
        .iter()
        .filter(|n| !n.starts_with("rabbitmq_"))
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}");
    assert_eq!(
        s.value(r#"rabbitmq_queue_messages_ready{vhost="/",queue="scrape.q1"}"#),
        3.0
    );
    let identity = s
        .text
        .lines()
        .find(|l| l.starts_with("rabbitmq_identity_info{"))
        .expect("identity_info");
    for label in ["rabbitmq_node=", "rabbitmq_cluster=", "rabbitmq_endpoint="] {
        assert!(identity.contains(label), "{identity}");
    }
    assert!(s.text.contains("rabbitmq_build_info{rabbitmq_version=\""));
    // The dashboard's message size panels select these exact bucket bounds.
    for le in [
        "100.0", "1000.0", "10000.0", "100000.0", "1e+06", "1e+07", "5e+07", "1e+08", "+Inf",
    ] {
        s.value(&format!(
            "rabbitmq_message_size_bytes_bucket{{le=\"{le}\"}}"
        ));
    }
    promtool_check(&s.text);
    conn.close(200, "bye").await.ok();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_and_http_errors() {
    let broker = Broker::start("qgate").await;
    let http = broker.bound.http;
    let api = broker.bound.management;
    let conn = traffic(&broker).await;
    // Wait for the acks to land.
    scrape_until(http, |s| {
        s.samples.get("qgate_global_messages_acknowledged_total") == Some(&3.0)
    })
    .await;

    let queues = get_json(api, "/api/queues").await;
    let q1 = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "scrape.q1")
        .expect("scrape.q1 listed")
        .clone();
    let mut one = get_json(api, "/api/queues/%2F/scrape.q1").await;
    assert_eq!(one["consumer_details"], serde_json::json!([]));
    one.as_object_mut().unwrap().remove("consumer_details");
    assert_eq!(q1, one);
    for (field, value) in [
        ("vhost", Value::from("/")),
        ("durable", false.into()),
        ("auto_delete", false.into()),
        ("exclusive", false.into()),
        ("arguments", serde_json::json!({})),
        ("messages_ready", 3.into()),
        ("messages_unacknowledged", 1.into()),
        ("messages", 4.into()),
        ("consumers", 0.into()),
    ] {
        assert_eq!(one[field], value, "{field} in {one}");
    }
    for (field, value) in [
        ("publish", 5),
        ("deliver_get", 2),
        ("ack", 1),
        ("redeliver", 0),
    ] {
        assert_eq!(one["message_stats"][field], value, "{field} in {one}");
        assert!(one["message_stats"][format!("{field}_details")]["rate"].is_f64());
    }
    let odd = get_json(api, "/api/queues/%2F/scrape%20%22odd%22%5Cname").await;
    assert_eq!(odd["name"], "scrape \"odd\"\\name");

    let overview = get_json(api, "/api/overview").await;
    assert_eq!(overview["product_name"], "qgate");
    assert_eq!(overview["object_totals"]["queues"], 3);
    assert_eq!(overview["object_totals"]["connections"], 1);
    assert_eq!(overview["object_totals"]["consumers"], 1);
    assert_eq!(overview["queue_totals"]["messages_ready"], 3);
    assert_eq!(overview["queue_totals"]["messages_unacknowledged"], 1);
    assert_eq!(overview["message_stats"]["publish"], 9);
    assert_eq!(overview["message_stats"]["get_empty"], 1);
    let ports: Vec<_> = overview["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["protocol"].as_str().unwrap().to_owned(),
                l["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(ports.contains(&("amqp".into(), u64::from(broker.bound.amqp.port()))));
    assert!(ports.contains(&("http".into(), u64::from(http.port()))));

    let consumers = get_json(api, "/api/consumers").await;
    assert_eq!(consumers.as_array().unwrap().len(), 1, "{consumers}");
    let c = &consumers[0];
    assert_eq!(c["consumer_tag"], "scrape-ctag");
    assert_eq!(
        c["queue"],
        serde_json::json!({"name": "scrape.q2", "vhost": "/"})
    );
    assert_eq!(c["ack_required"], true);
    assert_eq!(c["exclusive"], false);

    let conns = get_json(api, "/api/connections").await;
    assert_eq!(conns.as_array().unwrap().len(), 1);
    assert_eq!(conns[0]["protocol"], "AMQP 0-9-1");
    assert_eq!(conns[0]["user"], "guest");
    assert_eq!(conns[0]["vhost"], "/");
    assert_eq!(conns[0]["channels"], 1);
    assert!(conns[0]["recv_oct"].as_u64().unwrap() > 0);

    let exchanges = get_json(api, "/api/exchanges").await;
    assert!(exchanges
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "amq.topic" && x["type"] == "topic" && x["durable"] == true));
    let bindings = get_json(api, "/api/bindings").await;
    assert!(bindings
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["source"] == ""
            && b["destination"] == "scrape.q1"
            && b["destination_type"] == "queue"
            && b["routing_key"] == "scrape.q1"));

    // Error paths. The API is not on the metrics listener any more.
    assert_eq!(get(http, "/api/overview").await.0, 404);
    assert_eq!(get(http, "/nope").await.0, 404);
    let (status, head, _) = raw(
        http,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET"), "{head}");
    assert_eq!(raw(http, b"NONSENSE\r\n\r\n".to_vec()).await.0, 400);
    assert_eq!(
        raw(http, b"GET /%zz HTTP/1.1\r\n\r\n".to_vec()).await.0,
        400
    );
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat(b'a').take(20_000));
    assert_eq!(raw(http, big).await.0, 431);
    // Junk of every kind: answered or dropped, never a crash.
    let junk: [&[u8]; 6] = [
        b"\x00\xff\xfe\r\n\r\n",
        b"GET / HTTP/1.1\r\n",
        b"GET /metrics HTTP/1.1 extra\r\n\r\n",
        b"GET /api/queues/%2F/%ff HTTP/1.1\r\n\r\n",
        b"GET http://host/api/overview HTTP/1.0\n\n",
        b"\r\n\r\n",
    ];
    for j in junk {
        let _ = raw(http, j.to_vec()).await;
    }
    let (status, _, body) = get(http, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    conn.close(200, "bye").await.ok();
    broker.stop().await;
}

/// Scrape cost with 10,000 queues (run with `--ignored --nocapture`; build with
/// `--release` for the real number).
#[test]
#[ignore]
fn scrape_cost_10k_queues() {
    use qgate::core::{Broker, CoreConfig, QueueOptions};
    let broker = Broker::new(CoreConfig::default());
    let vhost = broker.vhost("/").unwrap();
    for i in 0..10_000 {
        vhost
            .declare_queue(&format!("queue-{i}"), QueueOptions::default(), false, 0)
            .unwrap();
    }
    let mut metrics =
        qgate::http::metrics::Metrics::new(broker.clone(), "qgate", ".", "qgate@test");
    metrics.register(qgate::memcache::stats::counters());
    let mut best = Duration::MAX;
    let mut len = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let mut out = String::new();
        metrics.render(&mut out);
        best = best.min(start.elapsed());
        len = out.len();
    }
    println!("10,000 queues: {len} bytes rendered in {best:?} (best of 5)");
    let limit = if cfg!(debug_assertions) {
        Duration::from_millis(1000)
    } else {
        Duration::from_millis(250)
    };
    assert!(best < limit, "scrape took {best:?}");
}
