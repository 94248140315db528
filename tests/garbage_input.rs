//! Hostile input never takes the server down: random bytes (and random bytes after a
//! valid AMQP handshake start) on both listeners, then real clients still work.

mod common;

use std::time::Duration;

use common::{start_broker, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % max;
        // Mostly protocol-ish bytes so that parsers get past their first checks.
        const WORDS: &[&[u8]] = &[
            b"set ",
            b"get ",
            b"q ",
            b"0 ",
            b"5 ",
            b"\r\n",
            b"noreply",
            b"/open",
            b"/t=",
            b"AMQP",
            b"\x00\x00\x09\x01",
            b"\x01\x00\x01",
            b"\xce",
            b"delete ",
            b"stats",
        ];
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.next() % 3 == 0 {
                out.extend_from_slice(WORDS[(self.next() as usize) % WORDS.len()]);
            } else {
                out.push(self.next() as u8);
            }
        }
        out
    }
}

async fn blast(addr: std::net::SocketAddr, prefix: &[u8], payload: &[u8]) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.write_all(prefix).await;
    let _ = s.write_all(payload).await;
    // Read whatever comes back for a moment; the server may also close on us.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(20), s.read(&mut sink)).await;
}

async fn memcache_round_trip(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"set garbage-check 0 0 2\r\nok\r\nget garbage-check\r\n")
        .await
        .unwrap();
    let want = b"STORED\r\nVALUE garbage-check 0 2\r\nok\r\nEND\r\n";
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..], &want[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_every_listener() {
    let broker = start_broker();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..300 {
        let payload = rng.bytes(2048);
        match i % 3 {
            0 => blast(broker.addrs.memcache, b"", &payload).await,
            1 => blast(broker.addrs.amqp, b"", &payload).await,
            _ => blast(broker.addrs.amqp, b"AMQP\x00\x00\x09\x01", &payload).await,
        }
    }
    within(
        "memcache after garbage",
        memcache_round_trip(broker.addrs.memcache),
    )
    .await;
    let conn = within(
        "amqp after garbage",
        lapin::Connection::connect(&broker.uri(), lapin::ConnectionProperties::default()),
    )
    .await
    .expect("AMQP still serves");
    let ch = conn.create_channel().await.unwrap();
    // The queue memcache declared is visible over AMQP (passive declare).
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(
            "garbage-check",
            passive,
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    broker.stop().expect("clean shutdown after garbage");
}
