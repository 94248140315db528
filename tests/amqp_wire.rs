//! Raw-wire AMQP 0-9-1 transcripts against an in-process qgate: handshakes, auth
//! mechanisms, connection-level errors, heartbeats, frame_max and channel_max. Frames
//! are encoded and decoded with qgate's public codec (`qgate::amqp::frame`,
//! `qgate::amqp::methods`), except where a test needs bytes the codec would never
//! produce (bad frame ends, oversized frames, raw property lists), which are written by
//! hand. After every error, a fresh lapin client must still be served.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{start_broker, start_broker_with, unique, within, Broker};
use qgate::amqp::frame::{encode_content, encode_method, parse_frame, Frame, PROTOCOL_HEADER};
use qgate::amqp::methods::*;
use qgate::content::{FieldTable, FieldValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---- a tiny client --------------------------------------------------------------------

struct Wire {
    stream: TcpStream,
    buf: BytesMut,
    last_sent: Instant,
}

/// What reading the next frame ended with.
#[derive(Debug)]
enum Next {
    Frame(Frame),
    Eof,
    Timeout,
}

impl Wire {
    async fn connect(broker: &Broker) -> Wire {
        let stream = within("tcp connect", TcpStream::connect(broker.amqp()))
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        Wire {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            last_sent: Instant::now(),
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes))
            .await
            .expect("write");
        self.last_sent = Instant::now();
    }

    async fn send(&mut self, channel: u16, m: impl Into<Method>) {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, &m.into());
        self.send_raw(&out).await;
    }

    /// The next frame, EOF, or nothing within `timeout`.
    async fn next_within(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(f) = parse_frame(&mut self.buf, 0).expect("server sent a malformed frame") {
                return Next::Frame(f);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) => {
                    assert!(self.buf.is_empty(), "EOF inside a frame: {:?}", self.buf);
                    return Next::Eof;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Next::Eof,
                Ok(Err(e)) => panic!("read: {e}"),
            }
        }
    }

    async fn frame(&mut self) -> Frame {
        match self.next_within(common::WAIT).await {
            Next::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next method frame, skipping heartbeats.
    async fn method(&mut self) -> (u16, Method) {
        loop {
            match self.frame().await {
                Frame::Heartbeat { .. } => continue,
                Frame::Method { channel, method } => return (channel, method),
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Reads (and discards heartbeats) until the server closes the socket.
    async fn expect_eof(&mut self) {
        loop {
            match self.next_within(common::WAIT).await {
                Next::Eof => return,
                Next::Frame(Frame::Heartbeat { .. }) => {}
                other => panic!("expected EOF, got {other:?}"),
            }
        }
    }

    /// Expects connection.close with `code`, answers close-ok, expects EOF; the text.
    async fn expect_connection_close(&mut self, code: u16) -> ConnectionClose {
        let (channel, m) = self.method().await;
        let close = match m {
            Method::ConnectionClose(c) => c,
            other => panic!("expected connection.close {code}, got {other:?}"),
        };
        assert_eq!(channel, 0, "connection.close goes on channel 0");
        assert_eq!(close.reply_code, code, "reply code ({})", close.reply_text);
        let name = reply_name(code);
        assert!(
            close.reply_text.starts_with(&format!("{name} - ")),
            "reply text starts with the constant's name: {:?}",
            close.reply_text
        );
        self.send(0, ConnectionCloseOk {}).await;
        self.expect_eof().await;
        close
    }

    /// Protocol header through open-ok with the given credentials and tune-ok.
    async fn handshake_with(&mut self, mechanism: &str, response: Bytes, tune: ConnectionTuneOk) {
        self.start(mechanism, response).await;
        let (_, m) = self.method().await;
        assert!(matches!(m, Method::ConnectionTune(_)), "got {m:?}");
        self.send(0, tune).await;
        self.send(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
                reserved_1: String::new(),
                reserved_2: false,
            },
        )
        .await;
        let (ch, m) = self.method().await;
        assert_eq!(ch, 0);
        assert!(matches!(m, Method::ConnectionOpenOk(_)), "got {m:?}");
    }

    /// Protocol header, start, start-ok.
    async fn start(&mut self, mechanism: &str, response: Bytes) -> ConnectionStart {
        let mut props = FieldTable::new();
        props.insert(
            "product",
            FieldValue::LongString(Bytes::from_static(b"qgate-wire-test")),
        );
        self.start_with(mechanism, response, props).await
    }

    /// Protocol header, start, start-ok with the given client properties.
    async fn start_with(
        &mut self,
        mechanism: &str,
        response: Bytes,
        props: FieldTable,
    ) -> ConnectionStart {
        self.send_raw(PROTOCOL_HEADER).await;
        let (ch, m) = self.method().await;
        assert_eq!(ch, 0);
        let start = match m {
            Method::ConnectionStart(s) => s,
            other => panic!("expected connection.start, got {other:?}"),
        };
        self.send(
            0,
            ConnectionStartOk {
                client_properties: props,
                mechanism: mechanism.into(),
                response,
                locale: "en_US".into(),
            },
        )
        .await;
        start
    }

    async fn handshake(&mut self) {
        self.handshake_tuned(tune(0, 131_072, 0)).await
    }

    async fn handshake_tuned(&mut self, t: ConnectionTuneOk) {
        self.handshake_with("PLAIN", plain("guest", "guest"), t)
            .await
    }

    async fn open_channel(&mut self, id: u16) {
        self.send(
            id,
            ChannelOpen {
                reserved_1: String::new(),
            },
        )
        .await;
        let (ch, m) = self.method().await;
        assert_eq!(ch, id);
        assert!(matches!(m, Method::ChannelOpenOk(_)), "got {m:?}");
    }
}

fn plain(user: &str, pass: &str) -> Bytes {
    Bytes::from(format!("\0{user}\0{pass}").into_bytes())
}

/// AMQPLAIN: a field table without its 4-byte length prefix.
fn amqplain(user: &str, pass: &str) -> Bytes {
    let mut out = BytesMut::new();
    for (k, v) in [("LOGIN", user), ("PASSWORD", pass)] {
        out.put_u8(k.len() as u8);
        out.put_slice(k.as_bytes());
        out.put_u8(b'S');
        out.put_u32(v.len() as u32);
        out.put_slice(v.as_bytes());
    }
    out.freeze()
}

fn tune(channel_max: u16, frame_max: u32, heartbeat: u16) -> ConnectionTuneOk {
    ConnectionTuneOk {
        channel_max,
        frame_max,
        heartbeat,
    }
}

/// A fresh lapin client can connect, declare, publish and get.
async fn assert_broker_serves(broker: &Broker) {
    common::round_trip(&broker.uri()).await;
}

/// A hand-built frame.
fn raw_frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(end);
    f
}

// ---- protocol header ------------------------------------------------------------------

async fn garbage_header_case(broker: &Broker, garbage: &[u8]) {
    let mut w = Wire::connect(broker).await;
    w.send_raw(garbage).await;
    let mut got = Vec::new();
    within("read until EOF", w.stream.read_to_end(&mut got))
        .await
        .expect("read");
    assert_eq!(
        got, b"AMQP\x00\x00\x09\x01",
        "for header {garbage:?} the server answers its own header, then EOF"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_protocol_header_gets_ours_then_eof() {
    let broker = start_broker();
    garbage_header_case(&broker, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    garbage_header_case(&broker, b"AMQP\x00\x00\x08\x00").await;
    garbage_header_case(&broker, b"AMQP\x01\x01\x00\x0a").await;
    garbage_header_case(&broker, b"\x00\x00\x00\x00\x00\x00\x00\x00").await;
    assert_broker_serves(&broker).await;
}

// ---- handshake and auth -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_with_plain() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    let start = w.start("PLAIN", plain("guest", "guest")).await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = String::from_utf8(start.mechanisms.to_vec()).unwrap();
    let mechanisms: Vec<&str> = mechanisms.split(' ').collect();
    assert!(mechanisms.contains(&"PLAIN"), "{mechanisms:?}");
    assert!(mechanisms.contains(&"AMQPLAIN"), "{mechanisms:?}");
    assert_eq!(&start.locales[..], b"en_US");
    let props = &start.server_properties;
    assert_eq!(props.get_str("product").as_deref(), Some("qgate"));
    assert!(props.get("version").is_some());
    assert!(props.get("platform").is_some());
    let Some(FieldValue::Table(caps)) = props.get("capabilities") else {
        panic!("no capabilities table: {props:?}");
    };
    for c in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "exchange_exchange_bindings",
        "per_consumer_qos",
        "authentication_failure_close",
    ] {
        assert_eq!(caps.get(c), Some(&FieldValue::Bool(true)), "capability {c}");
    }

    let (ch, m) = w.method().await;
    assert_eq!(ch, 0);
    let Method::ConnectionTune(t) = m else {
        panic!("expected connection.tune, got {m:?}");
    };
    assert_eq!(t.channel_max, 2047);
    assert_eq!(t.frame_max, 131_072);
    assert_eq!(t.heartbeat, 60);
    w.send(0, tune(t.channel_max, t.frame_max, 0)).await;
    w.send(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
            reserved_1: String::new(),
            reserved_2: false,
        },
    )
    .await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::ConnectionOpenOk(_)), "got {m:?}");
    w.open_channel(1).await;
    w.open_channel(2).await;

    // Client-initiated close: close-ok, then the server closes the socket.
    w.send(
        0,
        ConnectionClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        },
    )
    .await;
    let (ch, m) = w.method().await;
    assert_eq!(ch, 0);
    assert!(matches!(m, Method::ConnectionCloseOk(_)), "got {m:?}");
    drop(w);
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_with_amqplain() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake_with("AMQPLAIN", amqplain("guest", "guest"), tune(0, 0, 0))
        .await;
    w.open_channel(1).await;
    // Bad AMQPLAIN password: 403 too.
    let mut w = Wire::connect(&broker).await;
    w.start("AMQPLAIN", amqplain("guest", "wrong")).await;
    let close = w.expect_connection_close(403).await;
    assert!(close.reply_text.starts_with("ACCESS_REFUSED - "));
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_password_is_403_access_refused() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.start("PLAIN", plain("guest", "not-the-password")).await;
    w.expect_connection_close(403).await;

    let mut w = Wire::connect(&broker).await;
    w.start("PLAIN", plain("nobody", "guest")).await;
    w.expect_connection_close(403).await;

    // lapin sees the same thing as an error from connect.
    let uri = format!("amqp://guest:wrong@{}/%2f", broker.amqp());
    let r = within(
        "lapin connect with a bad password",
        lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()),
    )
    .await;
    match r {
        Err(lapin::Error::ProtocolError(e)) => assert_eq!(e.get_id(), 403, "{e}"),
        Err(other) => panic!("expected a 403 protocol error, got {other:?}"),
        Ok(_) => panic!("connected with a bad password"),
    }
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_530_not_allowed() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.start("PLAIN", plain("guest", "guest")).await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::ConnectionTune(_)), "got {m:?}");
    w.send(0, tune(0, 0, 0)).await;
    w.send(
        0,
        ConnectionOpen {
            virtual_host: "no-such-vhost".into(),
            reserved_1: String::new(),
            reserved_2: false,
        },
    )
    .await;
    let close = w.expect_connection_close(530).await;
    assert!(
        close.reply_text.contains("no-such-vhost"),
        "{}",
        close.reply_text
    );
    assert_eq!((close.class_id, close.method_id), (10, 40));
    assert_broker_serves(&broker).await;
}

// ---- connection-level errors ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_bigger_than_frame_max_is_501() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake_tuned(tune(0, 4096, 0)).await;
    w.open_channel(1).await;
    // A publish whose single body frame is 4097 + 8 bytes.
    w.send(
        1,
        BasicPublish {
            reserved_1: 0,
            exchange: String::new(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        },
    )
    .await;
    let mut header = BytesMut::new();
    header.put_u16(60);
    header.put_u16(0);
    header.put_u64(4097);
    header.put_u16(0);
    w.send_raw(&raw_frame(FRAME_HEADER, 1, &header, FRAME_END))
        .await;
    w.send_raw(&raw_frame(FRAME_BODY, 1, &[b'x'; 4097], FRAME_END))
        .await;
    w.expect_connection_close(501).await;
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_exactly_frame_max_is_accepted() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake_tuned(tune(0, 4096, 0)).await;
    w.open_channel(1).await;
    let q = unique("fm");
    w.send(
        1,
        QueueDeclare {
            reserved_1: 0,
            queue: q.clone(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        },
    )
    .await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::QueueDeclareOk(_)), "got {m:?}");
    w.send(
        1,
        BasicPublish {
            reserved_1: 0,
            exchange: String::new(),
            routing_key: q.clone(),
            mandatory: false,
            immediate: false,
        },
    )
    .await;
    let body = vec![b'y'; 4088 * 2 + 5];
    let mut out = BytesMut::new();
    encode_content(&mut out, 1, 60, &[0, 0], &body, 4096);
    w.send_raw(&out).await;

    // The server splits its own body frames to the negotiated frame_max too.
    w.send(
        1,
        BasicGet {
            reserved_1: 0,
            queue: q.clone(),
            no_ack: true,
        },
    )
    .await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::BasicGetOk(_)), "got {m:?}");
    let Frame::Header { body_size, .. } = w.frame().await else {
        panic!("expected a content header");
    };
    assert_eq!(body_size, body.len() as u64);
    let mut got = Vec::new();
    while got.len() < body.len() {
        match w.frame().await {
            Frame::Body { payload, .. } => {
                assert!(payload.len() + 8 <= 4096, "body frame of {}", payload.len());
                got.extend_from_slice(&payload);
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert_eq!(got, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_unopened_channel_is_504() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.send(
        5,
        QueueDeclare {
            reserved_1: 0,
            queue: "x".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        },
    )
    .await;
    w.expect_connection_close(504).await;
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_end_is_501() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    let mut payload = BytesMut::new();
    payload.put_u16(20);
    payload.put_u16(10);
    payload.put_u8(0);
    w.send_raw(&raw_frame(FRAME_METHOD, 1, &payload, 0x00))
        .await;
    w.expect_connection_close(501).await;
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_without_publish_is_505() {
    let broker = start_broker();
    // A body frame out of the blue.
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    w.send_raw(&raw_frame(FRAME_BODY, 1, b"orphan", FRAME_END))
        .await;
    w.expect_connection_close(505).await;

    // A content header out of the blue.
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    let mut header = BytesMut::new();
    header.put_u16(60);
    header.put_u16(0);
    header.put_u64(3);
    header.put_u16(0);
    w.send_raw(&raw_frame(FRAME_HEADER, 1, &header, FRAME_END))
        .await;
    w.expect_connection_close(505).await;

    // A method where a content header is due.
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    w.send(
        1,
        BasicPublish {
            reserved_1: 0,
            exchange: String::new(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        },
    )
    .await;
    w.send(
        1,
        BasicQos {
            prefetch_size: 0,
            prefetch_count: 1,
            global: false,
        },
    )
    .await;
    w.expect_connection_close(505).await;
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_max_is_enforced() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake_tuned(tune(2, 0, 0)).await;
    w.open_channel(1).await;
    w.open_channel(2).await;
    w.send(
        3,
        ChannelOpen {
            reserved_1: String::new(),
        },
    )
    .await;
    w.expect_connection_close(530).await;
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_error_closes_only_the_channel() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    w.open_channel(2).await;
    w.send(
        1,
        QueueDeclare {
            reserved_1: 0,
            queue: "missing-queue".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        },
    )
    .await;
    let (ch, m) = w.method().await;
    assert_eq!(ch, 1);
    let Method::ChannelClose(c) = m else {
        panic!("expected channel.close, got {m:?}");
    };
    assert_eq!(c.reply_code, 404);
    assert_eq!(
        c.reply_text,
        "NOT_FOUND - no queue 'missing-queue' in vhost '/'"
    );
    assert_eq!((c.class_id, c.method_id), (50, 10));
    w.send(1, ChannelCloseOk {}).await;
    // Channel 2 still works, and channel 1 can be reopened.
    w.send(
        2,
        BasicQos {
            prefetch_size: 0,
            prefetch_count: 5,
            global: false,
        },
    )
    .await;
    let (ch, m) = w.method().await;
    assert_eq!(ch, 2);
    assert!(matches!(m, Method::BasicQosOk(_)), "got {m:?}");
    w.open_channel(1).await;
}

// ---- heartbeats -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_sent_and_silent_client_dropped() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake_tuned(tune(0, 0, 1)).await;
    let silent_since = w.last_sent;
    let mut heartbeats = 0;
    let eof_after = loop {
        match w.next_within(Duration::from_secs(8)).await {
            Next::Frame(Frame::Heartbeat { channel }) => {
                assert_eq!(channel, 0);
                heartbeats += 1;
            }
            Next::Frame(other) => panic!("unexpected frame {other:?}"),
            Next::Eof => break silent_since.elapsed(),
            Next::Timeout => panic!("a silent client was not disconnected within 8 s"),
        }
    };
    assert!(heartbeats >= 1, "the server sent no heartbeat");
    assert!(
        eof_after >= Duration::from_millis(1500) && eof_after <= Duration::from_millis(4500),
        "silent client dropped after {eof_after:?} (expected about 2-3 s)"
    );
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_heartbeats_keep_the_connection_alive() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake_tuned(tune(0, 0, 1)).await;
    let until = Instant::now() + Duration::from_millis(4000);
    while Instant::now() < until {
        w.send_raw(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])
            .await;
        match w.next_within(Duration::from_millis(400)).await {
            Next::Frame(Frame::Heartbeat { .. }) | Next::Timeout => {}
            other => panic!("unexpected {other:?} while heartbeating"),
        }
    }
    w.open_channel(1).await;
}

// ---- content round trip with raw property bytes ---------------------------------------

fn shortstr(out: &mut BytesMut, s: &str) {
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

/// Every one of the 14 properties, with a header table of many field types, encoded by
/// hand.
fn raw_properties() -> Vec<u8> {
    let mut table = BytesMut::new();
    let mut entry = |key: &str, tag: u8, value: &[u8]| {
        shortstr(&mut table, key);
        table.put_u8(tag);
        table.put_slice(value);
    };
    entry("t", b't', &[1]);
    entry("b", b'b', &[0x80]);
    entry("B", b'B', &[0xff]);
    entry("s", b's', &(-2i16).to_be_bytes());
    entry("u", b'u', &65535u16.to_be_bytes());
    entry("I", b'I', &(-3i32).to_be_bytes());
    entry("i", b'i', &u32::MAX.to_be_bytes());
    entry("l", b'l', &i64::MIN.to_be_bytes());
    entry("f", b'f', &1.5f32.to_be_bytes());
    entry("d", b'd', &(-0.25f64).to_be_bytes());
    entry("D", b'D', &[3, 0, 0, 0x30, 0x39]);
    entry("S", b'S', &[0, 0, 0, 3, b'a', 0, b'c']);
    entry("x", b'x', &[0, 0, 0, 2, 0xce, 0xce]);
    entry("T", b'T', &1_700_000_000u64.to_be_bytes());
    entry("V", b'V', &[]);
    // nested table {k: I 7} and array [I 1, S "z"]
    entry("F", b'F', &[0, 0, 0, 7, 1, b'k', b'I', 0, 0, 0, 7]);
    entry(
        "A",
        b'A',
        &[0, 0, 0, 11, b'I', 0, 0, 0, 1, b'S', 0, 0, 0, 1, b'z'],
    );

    let mut p = BytesMut::new();
    p.put_u16(0xfffc); // all 14 flags, no continuation
    shortstr(&mut p, "text/plain");
    shortstr(&mut p, "utf-8");
    p.put_u32(table.len() as u32);
    p.put_slice(&table);
    p.put_u8(2); // delivery-mode
    p.put_u8(9); // priority
    shortstr(&mut p, "corr");
    shortstr(&mut p, "reply.to");
    shortstr(&mut p, "60000");
    shortstr(&mut p, "mid");
    p.put_u64(1_600_000_000);
    shortstr(&mut p, "kind");
    shortstr(&mut p, "guest");
    shortstr(&mut p, "app");
    shortstr(&mut p, "cluster");
    p.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_properties_come_back_byte_exact() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    let q = unique("raw");
    w.send(
        1,
        QueueDeclare {
            reserved_1: 0,
            queue: q.clone(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        },
    )
    .await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::QueueDeclareOk(_)), "got {m:?}");
    let props = raw_properties();
    for body in [&b""[..], &b"hello"[..]] {
        w.send(
            1,
            BasicPublish {
                reserved_1: 0,
                exchange: String::new(),
                routing_key: q.clone(),
                mandatory: false,
                immediate: false,
            },
        )
        .await;
        let mut out = BytesMut::new();
        encode_content(&mut out, 1, 60, &props, body, 131_072);
        w.send_raw(&out).await;
        w.send(
            1,
            BasicGet {
                reserved_1: 0,
                queue: q.clone(),
                no_ack: true,
            },
        )
        .await;
        let (_, m) = w.method().await;
        let Method::BasicGetOk(ok) = m else {
            panic!("expected basic.get-ok, got {m:?}");
        };
        assert_eq!(ok.routing_key, q);
        assert_eq!(ok.message_count, 0);
        let Frame::Header {
            class_id,
            body_size,
            properties,
            ..
        } = w.frame().await
        else {
            panic!("expected a content header");
        };
        assert_eq!(class_id, 60);
        assert_eq!(body_size, body.len() as u64);
        assert_eq!(&properties[..], &props[..], "properties differ");
        if !body.is_empty() {
            let Frame::Body { payload, .. } = w.frame().await else {
                panic!("expected a body frame");
            };
            assert_eq!(&payload[..], body);
        }
    }
    // Nothing else pending (no stray body frame for the empty message).
    w.send(
        1,
        BasicGet {
            reserved_1: 0,
            queue: q.clone(),
            no_ack: true,
        },
    )
    .await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::BasicGetEmpty(_)), "got {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_must_match_the_login() {
    let broker = start_broker_with(|_| {});
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    w.send(
        1,
        BasicPublish {
            reserved_1: 0,
            exchange: String::new(),
            routing_key: "any".into(),
            mandatory: false,
            immediate: false,
        },
    )
    .await;
    let mut props = BytesMut::new();
    props.put_u16(1 << 4);
    shortstr(&mut props, "mallory");
    let mut out = BytesMut::new();
    encode_content(&mut out, 1, 60, &props, b"x", 131_072);
    w.send_raw(&out).await;
    let (ch, m) = w.method().await;
    assert_eq!(ch, 1);
    let Method::ChannelClose(c) = m else {
        panic!("expected channel.close 406, got {m:?}");
    };
    assert_eq!(c.reply_code, 406);
    assert!(c.reply_text.starts_with("PRECONDITION_FAILED - "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnect_requeues_and_drops_exclusive_queues() {
    use lapin::options::*;
    let broker = start_broker();
    let conn = within(
        "lapin connect",
        lapin::Connection::connect(&broker.uri(), lapin::ConnectionProperties::default()),
    )
    .await
    .unwrap();
    let ch = within("channel", conn.create_channel()).await.unwrap();
    let q = unique("abrupt");
    within(
        "declare",
        ch.queue_declare(
            &q,
            QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    within(
        "publish",
        ch.basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            b"held",
            lapin::BasicProperties::default(),
        ),
    )
    .await
    .unwrap();

    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    let excl = unique("abrupt-excl");
    w.send(
        1,
        QueueDeclare {
            reserved_1: 0,
            queue: excl.clone(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        },
    )
    .await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::QueueDeclareOk(_)), "got {m:?}");
    w.send(
        1,
        BasicGet {
            reserved_1: 0,
            queue: q.clone(),
            no_ack: false,
        },
    )
    .await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::BasicGetOk(_)), "got {m:?}");
    // Vanish without connection.close.
    drop(w);

    let mut requeued = None;
    let mut gone = false;
    for _ in 0..100 {
        if requeued.is_none() {
            requeued = within("get", ch.basic_get(&q, BasicGetOptions { no_ack: true }))
                .await
                .unwrap();
        }
        let probe = within("channel", conn.create_channel()).await.unwrap();
        let r = within(
            "passive declare",
            probe.queue_declare(
                &excl,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            ),
        )
        .await;
        match r {
            Err(lapin::Error::ProtocolError(e)) if e.get_id() == 404 => gone = true,
            _ => {}
        }
        if requeued.is_some() && gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = requeued.expect("the unacked message was requeued after the disconnect");
    assert!(m.delivery.redelivered);
    assert_eq!(m.delivery.data, b"held");
    assert!(gone, "the exclusive queue outlived its connection");
}

// ---- framing robustness -----------------------------------------------------------------

fn encoded(channel: u16, m: impl Into<Method>) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_method(&mut out, channel, &m.into());
    out.to_vec()
}

fn declare_method(queue: &str) -> QueueDeclare {
    QueueDeclare {
        reserved_1: 0,
        queue: queue.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        no_wait: false,
        arguments: FieldTable::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_handshake_in_one_write() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    let q = unique("pipelined");
    let mut all = PROTOCOL_HEADER.to_vec();
    all.extend(encoded(
        0,
        ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: plain("guest", "guest"),
            locale: "en_US".into(),
        },
    ));
    all.extend(encoded(0, tune(0, 0, 0)));
    all.extend(encoded(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
            reserved_1: String::new(),
            reserved_2: false,
        },
    ));
    all.extend(encoded(
        1,
        ChannelOpen {
            reserved_1: String::new(),
        },
    ));
    all.extend(encoded(1, declare_method(&q)));
    w.send_raw(&all).await;
    let mut seen = Vec::new();
    loop {
        let (ch, m) = w.method().await;
        seen.push((ch, m.name()));
        if let Method::QueueDeclareOk(ok) = m {
            assert_eq!(ok.queue, q);
            break;
        }
        assert!(seen.len() < 10, "{seen:?}");
    }
    let names: Vec<&str> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        names,
        vec![
            "connection.start",
            "connection.tune",
            "connection.open-ok",
            "channel.open-ok",
            "queue.declare-ok"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_dribbled_one_byte_at_a_time() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    for b in PROTOCOL_HEADER.iter() {
        w.send_raw(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::ConnectionStart(_)), "got {m:?}");
    let start_ok = encoded(
        0,
        ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: plain("guest", "guest"),
            locale: "en_US".into(),
        },
    );
    for b in start_ok {
        w.send_raw(&[b]).await;
    }
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::ConnectionTune(_)), "got {m:?}");
    let mut rest = encoded(0, tune(0, 0, 0));
    rest.extend(encoded(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
            reserved_1: String::new(),
            reserved_2: false,
        },
    ));
    rest.extend(encoded(
        1,
        ChannelOpen {
            reserved_1: String::new(),
        },
    ));
    let q = unique("dribble");
    rest.extend(encoded(1, declare_method(&q)));
    rest.extend(encoded(
        1,
        BasicPublish {
            reserved_1: 0,
            exchange: String::new(),
            routing_key: q.clone(),
            mandatory: false,
            immediate: false,
        },
    ));
    let mut content = BytesMut::new();
    encode_content(&mut content, 1, 60, &[0, 0], b"drip", 131_072);
    rest.extend_from_slice(&content);
    rest.extend(encoded(
        1,
        BasicGet {
            reserved_1: 0,
            queue: q.clone(),
            no_ack: true,
        },
    ));
    for b in rest {
        w.send_raw(&[b]).await;
    }
    let mut names = Vec::new();
    loop {
        let (_, m) = w.method().await;
        names.push(m.name());
        if let Method::BasicGetOk(_) = m {
            break;
        }
        assert!(names.len() < 10, "{names:?}");
    }
    assert_eq!(
        names,
        vec![
            "connection.open-ok",
            "channel.open-ok",
            "queue.declare-ok",
            "basic.get-ok"
        ]
    );
    let Frame::Header { body_size, .. } = w.frame().await else {
        panic!("expected a content header");
    };
    assert_eq!(body_size, 4);
    let Frame::Body { payload, .. } = w.frame().await else {
        panic!("expected a body");
    };
    assert_eq!(&payload[..], b"drip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_is_501() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.send_raw(&raw_frame(9, 0, b"??", FRAME_END)).await;
    w.expect_connection_close(501).await;
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_channel_open_is_504() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    w.send(
        1,
        ChannelOpen {
            reserved_1: String::new(),
        },
    )
    .await;
    w.expect_connection_close(504).await;
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_method_on_channel_zero_is_a_connection_error() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.send(0, declare_method("zero")).await;
    let (ch, m) = w.method().await;
    assert_eq!(ch, 0);
    let Method::ConnectionClose(c) = m else {
        panic!("expected connection.close, got {m:?}");
    };
    assert!(
        c.reply_code == 503 || c.reply_code == 504,
        "{} {}",
        c.reply_code,
        c.reply_text
    );
    w.send(0, ConnectionCloseOk {}).await;
    w.expect_eof().await;
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_connection_error_only_close_ok_matters() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    // Provoke a 504, then keep talking: the server ignores everything but close-ok.
    w.send(7, declare_method("x")).await;
    let (_, m) = w.method().await;
    let Method::ConnectionClose(c) = m else {
        panic!("expected connection.close, got {m:?}");
    };
    assert_eq!(c.reply_code, 504);
    w.send(1, declare_method(&unique("ignored"))).await;
    w.send(
        1,
        ChannelOpen {
            reserved_1: String::new(),
        },
    )
    .await;
    match w.next_within(Duration::from_millis(300)).await {
        Next::Timeout | Next::Frame(Frame::Heartbeat { .. }) => {}
        other => panic!("the server answered while closing: {other:?}"),
    }
    w.send(0, ConnectionCloseOk {}).await;
    w.expect_eof().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_close_is_dropped() {
    let broker = start_broker();
    let mut w = Wire::connect(&broker).await;
    w.handshake().await;
    w.send(9, declare_method("x")).await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::ConnectionClose(_)), "got {m:?}");
    let t = Instant::now();
    w.expect_eof().await;
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}

/// Connects, advertising `consumer_cancel_notify` or not, and consumes from `queue`
/// with consumer tag `tag` on channel 1.
async fn consuming_client(broker: &Broker, notify: bool, queue: &str, tag: &str) -> Wire {
    let mut w = Wire::connect(broker).await;
    let mut props = FieldTable::new();
    if notify {
        let mut caps = FieldTable::new();
        caps.insert("consumer_cancel_notify", FieldValue::Bool(true));
        props.insert("capabilities", FieldValue::Table(caps));
    }
    w.start_with("PLAIN", plain("guest", "guest"), props).await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::ConnectionTune(_)), "got {m:?}");
    w.send(0, tune(0, 0, 0)).await;
    w.send(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
            reserved_1: String::new(),
            reserved_2: false,
        },
    )
    .await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::ConnectionOpenOk(_)), "got {m:?}");
    w.open_channel(1).await;
    w.send(1, declare_method(queue)).await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::QueueDeclareOk(_)), "got {m:?}");
    w.send(
        1,
        BasicConsume {
            reserved_1: 0,
            queue: queue.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            no_wait: false,
            arguments: FieldTable::new(),
        },
    )
    .await;
    let (_, m) = w.method().await;
    let Method::BasicConsumeOk(ok) = m else {
        panic!("expected basic.consume-ok, got {m:?}");
    };
    assert_eq!(ok.consumer_tag, tag);
    w
}

async fn delete_queue_with_lapin(broker: &Broker, queue: &str) {
    use lapin::options::*;
    let conn = within(
        "lapin connect",
        lapin::Connection::connect(&broker.uri(), lapin::ConnectionProperties::default()),
    )
    .await
    .unwrap();
    let ch = within("channel", conn.create_channel()).await.unwrap();
    within(
        "queue.delete",
        ch.queue_delete(queue, QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_cancel_sent_only_to_clients_that_asked_for_it() {
    let broker = start_broker();
    let q1 = unique("notify");
    let mut w1 = consuming_client(&broker, true, &q1, "tag-notify").await;
    let q2 = unique("silent");
    let mut w2 = consuming_client(&broker, false, &q2, "tag-silent").await;
    delete_queue_with_lapin(&broker, &q1).await;
    delete_queue_with_lapin(&broker, &q2).await;

    let (ch, m) = w1.method().await;
    assert_eq!(ch, 1);
    let Method::BasicCancel(c) = m else {
        panic!("expected basic.cancel, got {m:?}");
    };
    assert_eq!(c.consumer_tag, "tag-notify");

    match w2.next_within(Duration::from_millis(500)).await {
        Next::Timeout | Next::Frame(Frame::Heartbeat { .. }) => {}
        other => panic!("a client without consumer_cancel_notify got {other:?}"),
    }
    // Both channels still work.
    for w in [&mut w1, &mut w2] {
        w.send(
            1,
            BasicQos {
                prefetch_size: 0,
                prefetch_count: 1,
                global: false,
            },
        )
        .await;
        let (_, m) = w.method().await;
        assert!(matches!(m, Method::BasicQosOk(_)), "got {m:?}");
    }
}

// ---- the handshake's own checks ---------------------------------------------------------

/// Connects and sends the protocol header; returns once connection.start arrived.
async fn started(broker: &Broker) -> Wire {
    let mut w = Wire::connect(broker).await;
    w.send_raw(PROTOCOL_HEADER).await;
    let (_, m) = w.method().await;
    assert!(matches!(m, Method::ConnectionStart(_)), "got {m:?}");
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_method_out_of_order_is_503_naming_the_expected_one() {
    let broker = start_broker();
    // connection.tune-ok where start-ok belongs.
    let mut w = started(&broker).await;
    w.send(0, tune(0, 0, 0)).await;
    let close = w.expect_connection_close(503).await;
    assert_eq!(
        close.reply_text,
        "COMMAND_INVALID - expected connection.start-ok"
    );
    assert_eq!((close.class_id, close.method_id), (10, 31));
    // connection.open where tune-ok belongs.
    let mut w = Wire::connect(&broker).await;
    w.start("PLAIN", plain("guest", "guest")).await;
    let Method::ConnectionTune(_) = w.method().await.1 else {
        panic!("expected connection.tune");
    };
    let open = ConnectionOpen {
        virtual_host: "/".into(),
        ..Default::default()
    };
    w.send(0, open).await;
    let close = w.expect_connection_close(503).await;
    assert_eq!(
        close.reply_text,
        "COMMAND_INVALID - expected connection.tune-ok"
    );
    assert_eq!((close.class_id, close.method_id), (10, 40));
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_frames_are_bounded_by_our_proposal_and_must_be_methods() {
    let broker = start_broker();
    let mut w = started(&broker).await;
    // Only the 7-byte header of a start-ok one byte over the proposed 131072: refused
    // before its payload is waited for.
    let mut header = vec![FRAME_METHOD, 0, 0];
    header.extend_from_slice(&(131_072u32 - 8 + 1).to_be_bytes());
    w.send_raw(&header).await;
    let text = w.expect_connection_close(501).await.reply_text;
    assert_eq!(
        text,
        "FRAME_ERROR - frame of 131073 bytes exceeds frame_max 131072"
    );
    // A content frame where start-ok belongs.
    let mut w = started(&broker).await;
    w.send_raw(&raw_frame(FRAME_BODY, 0, b"early", FRAME_END))
        .await;
    let text = w.expect_connection_close(505).await.reply_text;
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - unexpected frame during the connection handshake"
    );
    assert_broker_serves(&broker).await;
}

// ---- each class's handler: refusals ----------------------------------------------------

/// Sends `setup` on a fresh channel 1 (each answered by one method), then `bad`, and
/// expects the refusal: a channel.close for a soft error, a connection.close for a hard
/// one, with `text` and the offending method's ids.
async fn refusal_case(
    broker: &Broker,
    setup: &[Method],
    bad: Method,
    code: u16,
    text: &str,
    ids: (u16, u16),
) {
    let mut w = Wire::connect(broker).await;
    w.handshake().await;
    w.open_channel(1).await;
    for m in setup {
        w.send(1, m.clone()).await;
        let (ch, answer) = w.method().await;
        assert_eq!(ch, 1, "{} answered with {answer:?}", m.name());
    }
    let name = bad.name();
    w.send(1, bad).await;
    let hard = matches!(code, 503 | 540);
    let (reply_text, got_ids) = if hard {
        let c = w.expect_connection_close(code).await;
        (c.reply_text, (c.class_id, c.method_id))
    } else {
        let (ch, m) = w.method().await;
        let Method::ChannelClose(c) = m else {
            panic!("{name}: expected channel.close, got {m:?}");
        };
        assert_eq!((ch, c.reply_code), (1, code), "{name}");
        w.send(1, ChannelCloseOk {}).await;
        w.open_channel(1).await;
        (c.reply_text, (c.class_id, c.method_id))
    };
    assert_eq!(reply_text, text, "{name}");
    assert_eq!(got_ids, ids, "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_refuses_what_only_the_server_sends() {
    let broker = start_broker();
    let cases: Vec<(Method, (u16, u16))> = vec![
        (
            ChannelOpenOk {
                reserved_1: Bytes::new(),
            }
            .into(),
            (20, 11),
        ),
        (ExchangeDeclareOk {}.into(), (40, 11)),
        (
            QueueDeclareOk {
                queue: "q".into(),
                message_count: 0,
                consumer_count: 0,
            }
            .into(),
            (50, 11),
        ),
        (BasicDeliver::default().into(), (60, 60)),
        (ConfirmSelectOk {}.into(), (85, 11)),
        (TxSelectOk {}.into(), (90, 11)),
    ];
    for (m, ids) in cases {
        let text = format!(
            "COMMAND_INVALID - unexpected method {} on a channel",
            m.name()
        );
        refusal_case(&broker, &[], m, 503, &text, ids).await;
    }
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_and_argument_refusals_per_class() {
    let broker = start_broker();
    let tx_select: Method = TxSelect {}.into();
    let confirm_select: Method = ConfirmSelect { no_wait: false }.into();
    refusal_case(
        &broker,
        std::slice::from_ref(&tx_select),
        confirm_select.clone(),
        406,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
        (85, 10),
    )
    .await;
    refusal_case(
        &broker,
        &[confirm_select],
        tx_select,
        406,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
        (90, 10),
    )
    .await;
    for (m, ids) in [
        (Method::from(TxCommit {}), (90, 20)),
        (TxRollback {}.into(), (90, 30)),
    ] {
        refusal_case(
            &broker,
            &[],
            m,
            406,
            "PRECONDITION_FAILED - channel is not transactional",
            ids,
        )
        .await;
    }
    refusal_case(
        &broker,
        &[],
        ChannelFlow { active: false }.into(),
        540,
        "NOT_IMPLEMENTED - active=false",
        (20, 20),
    )
    .await;
    refusal_case(
        &broker,
        &[],
        BasicQos {
            prefetch_size: 1,
            prefetch_count: 0,
            global: false,
        }
        .into(),
        540,
        "NOT_IMPLEMENTED - prefetch_size!=0 (1)",
        (60, 10),
    )
    .await;
    assert_broker_serves(&broker).await;
}
