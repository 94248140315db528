//! `qgate-bench memcache`: setters and getters over raw sockets, memcache text protocol.
//! Against qgate (memcacheq semantics) `set <q>` enqueues and `get <q>` dequeues; with
//! `--memcached` the same tool sets and gets keys `k<N>` of a plain memcached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{age, now_ns, report, stamp, Backlog, Span, Tally};

/// Options of the memcache mode.
#[derive(clap::Args, Debug, Clone)]
pub struct MemcacheArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:22201")]
    pub addr: String,
    /// Connections sending `set`.
    #[arg(long, default_value_t = 1)]
    pub setters: usize,
    /// Connections sending `get`.
    #[arg(long, default_value_t = 1)]
    pub getters: usize,
    /// Body size, measured time and warm-up.
    #[command(flatten)]
    pub load: crate::common::Load,
    /// Requests written per round trip on each connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Queues; setter i uses queue i % Q, getter j queue j % Q.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Plain memcached semantics: set/get keys k<N> (the ceiling for the text protocol).
    #[arg(long)]
    pub memcached: bool,
    /// Keys used with --memcached (all set once before the run, so gets hit).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Setters pause while more than N messages are set but not yet got (0 = no bound).
    #[arg(long, default_value_t = 10_000)]
    pub max_backlog: u64,
    /// Queue name prefix (default: qgate-bench-<pid>).
    #[arg(long)]
    pub queue_prefix: Option<String>,
    /// Leave the queues in place at the end (default: `delete` them).
    #[arg(long)]
    pub keep: bool,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(addr: &str) -> Result<Conn, String> {
        let stream =
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {e}")),
                Err(_) => return Err(format!("cannot connect to {addr}: timed out")),
            };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        })
    }

    /// One `\r\n`-terminated line (without it), reading as needed.
    async fn line(&mut self) -> Result<BytesMut, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = self.buf.split_to(i);
                self.buf.advance(2);
                return Ok(l);
            }
            self.fill().await?;
        }
    }

    async fn exact(&mut self, n: usize) -> Result<BytesMut, String> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.split_to(n))
    }

    async fn fill(&mut self) -> Result<(), String> {
        self.buf.reserve(32 * 1024);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err("connection closed by the server".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Reads one `get` answer: Ok(Some(data)) on a hit, Ok(None) on `END` alone.
    async fn get_answer(&mut self) -> Result<Option<BytesMut>, String> {
        let l = self.line().await?;
        if &l[..] == b"END" {
            return Ok(None);
        }
        if !l.starts_with(b"VALUE ") {
            return Err(format!("get: unexpected '{}'", String::from_utf8_lossy(&l)));
        }
        let len: usize = std::str::from_utf8(&l)
            .ok()
            .and_then(|s| s.split(' ').nth(3))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("get: bad VALUE line '{}'", String::from_utf8_lossy(&l)))?;
        let data = self.exact(len + 2).await?;
        let end = self.line().await?;
        if &end[..] != b"END" {
            return Err(format!(
                "get: expected END, got '{}'",
                String::from_utf8_lossy(&end)
            ));
        }
        let mut data = data;
        data.truncate(len);
        Ok(Some(data))
    }
}

fn set_cmd(out: &mut Vec<u8>, key: &str, body: &[u8]) {
    out.extend_from_slice(format!("set {key} 0 0 {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Runs the mode; Err = could not run at all.
pub async fn run(a: MemcacheArgs) -> Result<bool, String> {
    now_ns();
    let prefix = a
        .queue_prefix
        .clone()
        .unwrap_or_else(|| format!("qgate-bench-{}", std::process::id()));
    let queues: Vec<String> = (0..a.queues.max(1))
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let pipeline = a.pipeline.max(1);
    // Proves the server is there (and, for memcached, sets every key once).
    let mut admin = Conn::open(&a.addr).await?;
    admin
        .stream
        .write_all(b"version\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let v = admin.line().await?;
    if !v.starts_with(b"VERSION") {
        return Err(format!(
            "{}: not a memcache server (version answered '{}')",
            a.addr,
            String::from_utf8_lossy(&v)
        ));
    }
    if a.memcached {
        let body = vec![b'x'; a.load.size];
        let mut k = 0;
        while k < a.keys {
            let n = (a.keys - k).min(256);
            let mut out = Vec::new();
            for i in k..k + n {
                set_cmd(&mut out, &format!("k{i}"), &body);
            }
            admin
                .stream
                .write_all(&out)
                .await
                .map_err(|e| format!("write: {e}"))?;
            for _ in 0..n {
                let l = admin.line().await?;
                if &l[..] != b"STORED" {
                    return Err(format!("set: '{}'", String::from_utf8_lossy(&l)));
                }
            }
            k += n;
        }
    }
    println!(
        "memcache: {} setter(s), {} getter(s), {} B, pipeline {}, {}",
        a.setters,
        a.getters,
        a.load.size,
        pipeline,
        if a.memcached {
            format!("memcached keys k0..k{}", a.keys)
        } else {
            format!("{} queue(s), backlog {}", queues.len(), a.max_backlog)
        }
    );
    let backlog = Backlog::new(if a.memcached || a.getters == 0 {
        0
    } else {
        a.max_backlog
    });
    let mut setters = Vec::new();
    for _ in 0..a.setters {
        setters.push(Conn::open(&a.addr).await?);
    }
    let mut getters = Vec::new();
    for _ in 0..a.getters {
        getters.push(Conn::open(&a.addr).await?);
    }
    let span = Span::from_now(a.load.warmup, a.load.duration, false);
    let key_counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, c) in setters.into_iter().enumerate() {
        let q = queues[i % queues.len()].clone();
        tasks.push(tokio::spawn(setter(
            c,
            q,
            a.clone(),
            span,
            backlog.clone(),
            key_counter.clone(),
        )));
    }
    for (j, c) in getters.into_iter().enumerate() {
        let q = queues[j % queues.len()].clone();
        tasks.push(tokio::spawn(getter(
            c,
            q,
            a.clone(),
            span,
            backlog.clone(),
            j,
        )));
    }
    let mut total = Tally::default();
    for t in tasks {
        match t.await {
            Ok(r) => total.merge(r),
            Err(e) => total.error(format!("task: {e}")),
        }
    }
    if !a.memcached && !a.keep {
        for q in &queues {
            let _ = admin
                .stream
                .write_all(format!("delete {q}\r\n").as_bytes())
                .await;
            let _ = admin.line().await;
        }
    }
    let secs = a.load.duration.as_secs_f64();
    let ops = total.published + total.consumed;
    println!(
        "set+get: {:.0} ops/s (sets {:.0}/s, hits {:.0}/s, empty gets {:.0}/s)",
        ops as f64 / secs,
        total.published as f64 / secs,
        total.consumed as f64 / secs,
        total.misses as f64 / secs
    );
    let extra = vec![
        ("setters", a.setters.to_string()),
        ("getters", a.getters.to_string()),
        ("pipeline", pipeline.to_string()),
        ("size", a.load.size.to_string()),
        ("memcached", a.memcached.to_string()),
        ("misses", total.misses.to_string()),
        ("ops_rate", format!("{:.0}", ops as f64 / secs)),
    ];
    report("memcache", secs, &total, &extra);
    Ok(total.errors == 0)
}

async fn setter(
    mut c: Conn,
    queue: String,
    a: MemcacheArgs,
    span: Span,
    backlog: Arc<Backlog>,
    keys: Arc<AtomicU64>,
) -> Tally {
    let mut t = Tally::default();
    let pipeline = a.pipeline.max(1);
    let mut body = vec![b'x'; a.load.size];
    let mut out = Vec::with_capacity(pipeline * (a.load.size + 64));
    while !span.over() {
        out.clear();
        for _ in 0..pipeline {
            backlog.wait_room(span.end).await;
            stamp(&mut body);
            if a.memcached {
                let k = keys.fetch_add(1, Ordering::Relaxed) % a.keys.max(1);
                set_cmd(&mut out, &format!("k{k}"), &body);
            } else {
                set_cmd(&mut out, &queue, &body);
            }
            backlog.published();
        }
        if let Err(e) = c.stream.write_all(&out).await {
            t.error(format!("write: {e}"));
            return t;
        }
        let counted = span.counting();
        for _ in 0..pipeline {
            match c.line().await {
                Ok(l) if &l[..] == b"STORED" => {
                    if counted {
                        t.published += 1;
                    }
                }
                Ok(l) => t.error(format!("set: '{}'", String::from_utf8_lossy(&l))),
                Err(e) => {
                    t.error(e);
                    return t;
                }
            }
        }
    }
    t
}

async fn getter(
    mut c: Conn,
    queue: String,
    a: MemcacheArgs,
    span: Span,
    backlog: Arc<Backlog>,
    seed: usize,
) -> Tally {
    let mut t = Tally::default();
    let pipeline = a.pipeline.max(1);
    let mut out = Vec::with_capacity(pipeline * 64);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (seed as u64 + 1);
    let mut empty_rounds = 0u32;
    while !span.over() {
        out.clear();
        for _ in 0..pipeline {
            if a.memcached {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                out.extend_from_slice(format!("get k{}\r\n", rng % a.keys.max(1)).as_bytes());
            } else {
                out.extend_from_slice(format!("get {queue}\r\n").as_bytes());
            }
        }
        let sent = now_ns();
        if let Err(e) = c.stream.write_all(&out).await {
            t.error(format!("write: {e}"));
            return t;
        }
        let counted = span.counting();
        let mut hits = 0;
        for _ in 0..pipeline {
            match c.get_answer().await {
                Ok(Some(data)) => {
                    hits += 1;
                    if !a.memcached {
                        backlog.consumed();
                    }
                    if counted {
                        t.consumed += 1;
                        // Queues: end-to-end latency from the body's stamp. memcached:
                        // the round trip of the batch (a key's value has no age).
                        let ns = if a.memcached {
                            Some(now_ns().saturating_sub(sent))
                        } else {
                            age(&data)
                        };
                        if let Some(ns) = ns {
                            t.latency.record(ns);
                        }
                    }
                }
                Ok(None) => {
                    if counted {
                        t.misses += 1;
                    }
                }
                Err(e) => {
                    t.error(e);
                    return t;
                }
            }
        }
        // An empty queue: back off a little instead of spinning on END.
        if hits == 0 {
            empty_rounds += 1;
            if empty_rounds > 2 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            } else {
                tokio::task::yield_now().await;
            }
        } else {
            empty_rounds = 0;
        }
    }
    t
}
