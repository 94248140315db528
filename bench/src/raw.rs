//! `qgate-bench amqp --engine raw`: the producers and consumers of the amqp mode with
//! hand-written AMQP 0-9-1 frames on tokio sockets. Publishes are pre-encoded and written
//! in batches, acks are gathered per read and written in one go: a client that costs far
//! less per message than lapin, so that a fast broker is not measured through its client.
//! lapin stays the reference engine (the numbers of the comparison table).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::amqp::{AckMode, AmqpArgs};
use crate::common::{age, now_ns, Backlog, Span, Tally};
use crate::idle::{handshake, method_frame, read_method, shortstr, Login};

const CH: u16 = 1;

async fn open(a: &AmqpArgs) -> Result<TcpStream, String> {
    let uri: lapin::uri::AMQPUri = a.url.parse().map_err(|e| format!("bad --url: {e}"))?;
    let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
    let mut s = handshake(Login {
        addr: &addr,
        user: &uri.authority.userinfo.username,
        password: &uri.authority.userinfo.password,
        vhost: &uri.vhost,
    })
    .await?;
    let mut args = Vec::new();
    shortstr(&mut args, "");
    rpc(&mut s, 20, 10, &args, (20, 11), "channel.open").await?;
    Ok(s)
}

async fn rpc(
    s: &mut TcpStream,
    class: u16,
    method: u16,
    args: &[u8],
    ok: (u16, u16),
    what: &str,
) -> Result<(), String> {
    let mut out = Vec::new();
    method_frame(&mut out, CH, class, method, args);
    s.write_all(&out)
        .await
        .map_err(|e| format!("{what}: write: {e}"))?;
    let (c, m, p) = read_method(s).await?;
    if (c, m) != ok {
        return Err(format!("{what}: got {c}.{m} {}", close_text(c, m, &p)));
    }
    Ok(())
}

/// The reply text of a channel.close / connection.close payload (class, method, args...).
fn close_text(c: u16, m: u16, p: &[u8]) -> String {
    if ((c, m) == (20, 40) || (c, m) == (10, 50)) && p.len() > 7 {
        let n = p[6] as usize;
        if let Some(t) = p.get(7..7 + n) {
            return String::from_utf8_lossy(t).into_owned();
        }
    }
    String::new()
}

/// Runs the producers and consumers; returns the tally and the measured seconds.
pub async fn run(
    a: &AmqpArgs,
    queues: &[String],
    backlog: Arc<Backlog>,
) -> Result<(Tally, f64), String> {
    let mut producers = Vec::new();
    for i in 0..a.producers {
        let mut s = open(a).await?;
        if a.confirm {
            rpc(&mut s, 85, 10, &[0], (85, 11), "confirm.select").await?;
        }
        producers.push((s, queues[i % queues.len()].clone()));
    }
    let mut consumers = Vec::new();
    for j in 0..a.consumers {
        let mut s = open(a).await?;
        if a.ack == AckMode::Manual && a.prefetch > 0 {
            let mut args = Vec::new();
            args.extend_from_slice(&0u32.to_be_bytes());
            args.extend_from_slice(&a.prefetch.to_be_bytes());
            args.push(0);
            rpc(&mut s, 60, 10, &args, (60, 11), "basic.qos").await?;
        }
        let q = &queues[j % queues.len()];
        let mut args = Vec::new();
        args.extend_from_slice(&0u16.to_be_bytes());
        shortstr(&mut args, q);
        shortstr(&mut args, &format!("bench-{j}"));
        args.push(if a.ack == AckMode::Auto { 0b10 } else { 0 });
        args.extend_from_slice(&0u32.to_be_bytes());
        rpc(&mut s, 60, 20, &args, (60, 21), "basic.consume").await?;
        consumers.push(s);
    }
    let span = Span::from_now(a.load.warmup, a.load.duration, a.count > 0);
    let quota = Arc::new(AtomicU64::new(a.count));
    let mut tasks = Vec::new();
    for (s, q) in producers {
        tasks.push(tokio::spawn(produce(
            s,
            q,
            a.clone(),
            span,
            backlog.clone(),
            quota.clone(),
        )));
    }
    for s in consumers {
        tasks.push(tokio::spawn(consume(s, a.clone(), span, backlog.clone())));
    }
    let mut total = Tally::default();
    for t in tasks {
        match t.await {
            Ok(r) => total.merge(r),
            Err(e) => total.error(format!("task: {e}")),
        }
    }
    let secs = span.measured_secs();
    Ok((total, secs))
}

/// Publishes waiting for their confirm, in tag order (tags start at 1).
#[derive(Default)]
struct Pending {
    /// (send time, counted) per tag from `first`; None once confirmed out of order.
    entries: VecDeque<Option<(u64, bool)>>,
    first: u64,
}

struct Confirms {
    pending: Mutex<Pending>,
    notify: Notify,
    tally: Mutex<Tally>,
}

fn publish_template(queue: &str, size: usize, persistent: bool) -> (Vec<u8>, usize) {
    let mut t = Vec::new();
    let mut args = Vec::new();
    args.extend_from_slice(&0u16.to_be_bytes());
    shortstr(&mut args, "");
    shortstr(&mut args, queue);
    args.push(0);
    method_frame(&mut t, CH, 60, 40, &args);
    // content header: class 60, weight 0, body size, flags (+ delivery mode)
    let mut h = Vec::new();
    h.extend_from_slice(&60u16.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&(size as u64).to_be_bytes());
    if persistent {
        h.extend_from_slice(&0x1000u16.to_be_bytes());
        h.push(2);
    } else {
        h.extend_from_slice(&0u16.to_be_bytes());
    }
    t.push(2);
    t.extend_from_slice(&CH.to_be_bytes());
    t.extend_from_slice(&(h.len() as u32).to_be_bytes());
    t.extend_from_slice(&h);
    t.push(0xCE);
    t.push(3);
    t.extend_from_slice(&CH.to_be_bytes());
    t.extend_from_slice(&(size as u32).to_be_bytes());
    let body_at = t.len();
    t.resize(body_at + size, 0);
    t.push(0xCE);
    (t, body_at)
}

async fn produce(
    s: TcpStream,
    queue: String,
    a: AmqpArgs,
    span: Span,
    backlog: Arc<Backlog>,
    quota: Arc<AtomicU64>,
) -> Tally {
    let (r, mut w) = s.into_split();
    let conf = Arc::new(Confirms {
        pending: Mutex::new(Pending {
            entries: VecDeque::new(),
            first: 1,
        }),
        notify: Notify::new(),
        tally: Mutex::new(Tally::default()),
    });
    let reader = tokio::spawn(read_confirms(r, conf.clone()));
    let mut t = Tally::default();
    let (template, body_at) = publish_template(&queue, a.load.size, a.persistent);
    let window = a.window.max(1);
    let batch = 32.min(window);
    let mut out = Vec::with_capacity(template.len() * batch);
    let mut stop = false;
    while !stop && !span.over() {
        out.clear();
        for _ in 0..batch {
            if span.over() {
                stop = true;
                break;
            }
            if a.count > 0
                && quota
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_err()
            {
                stop = true;
                break;
            }
            backlog.wait_room(span.end).await;
            if a.confirm {
                // At most `window` unconfirmed; write what we have before waiting.
                loop {
                    let notified = conf.notify.notified();
                    if conf.pending.lock().entries.len() < window || span.over() {
                        break;
                    }
                    if !out.is_empty() {
                        if let Err(e) = w.write_all(&out).await {
                            t.error(format!("write: {e}"));
                            stop = true;
                            break;
                        }
                        out.clear();
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
                }
                if stop || span.over() {
                    stop = true;
                    break;
                }
            }
            let at = out.len();
            out.extend_from_slice(&template);
            crate::common::stamp(&mut out[at + body_at..at + body_at + a.load.size]);
            let counted = span.counting();
            if a.confirm {
                conf.pending
                    .lock()
                    .entries
                    .push_back(Some((now_ns(), counted)));
            }
            backlog.published();
            if counted {
                t.published += 1;
            }
        }
        if !out.is_empty() {
            if let Err(e) = w.write_all(&out).await {
                t.error(format!("write: {e}"));
                break;
            }
        }
    }
    if a.confirm {
        let until = Instant::now() + Duration::from_secs(5);
        while !conf.pending.lock().entries.is_empty() && Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_millis(5), conf.notify.notified()).await;
        }
    }
    reader.abort();
    let _ = reader.await;
    let _ = w.shutdown().await;
    let rt = std::mem::take(&mut *conf.tally.lock());
    t.merge(rt);
    t
}

async fn read_confirms(mut r: OwnedReadHalf, conf: Arc<Confirms>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        buf.reserve(32 * 1024);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Some((ty, payload)) = next_frame(&mut buf) {
            if ty != 1 || payload.len() < 4 {
                continue;
            }
            let c = u16::from_be_bytes([payload[0], payload[1]]);
            let m = u16::from_be_bytes([payload[2], payload[3]]);
            match (c, m) {
                (60, 80) | (60, 120) if payload.len() >= 13 => {
                    let tag = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes"));
                    let multiple = payload[12] & 1 != 0;
                    let now = now_ns();
                    let mut done = Vec::new();
                    {
                        let mut p = conf.pending.lock();
                        let p = &mut *p;
                        if multiple {
                            while p.first <= tag {
                                match p.entries.pop_front() {
                                    Some(e) => done.extend(e),
                                    None => break,
                                }
                                p.first += 1;
                            }
                        } else if tag >= p.first {
                            let i = (tag - p.first) as usize;
                            if let Some(e) = p.entries.get_mut(i) {
                                done.extend(e.take());
                            }
                        }
                        while let Some(None) = p.entries.front() {
                            p.entries.pop_front();
                            p.first += 1;
                        }
                    }
                    let mut t = conf.tally.lock();
                    for (ts, counted) in done {
                        if m == 120 {
                            t.error("publisher confirm: nack");
                        } else if counted {
                            t.confirmed += 1;
                            t.confirm_latency.record(now.saturating_sub(ts));
                        }
                    }
                    drop(t);
                    conf.notify.notify_waiters();
                }
                (20, 40) | (10, 50) => {
                    conf.tally.lock().error(format!(
                        "broker closed the {}: {}",
                        if c == 20 { "channel" } else { "connection" },
                        close_text(c, m, &payload)
                    ));
                    conf.notify.notify_waiters();
                    return;
                }
                _ => {}
            }
        }
    }
}

/// Splits one complete frame off `buf`: (type, payload).
fn next_frame(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    if buf.len() < 7 {
        return None;
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if buf.len() < 8 + size {
        return None;
    }
    let ty = buf[0];
    buf.advance(7);
    let payload = buf.split_to(size);
    buf.advance(1);
    Some((ty, payload))
}

async fn consume(mut s: TcpStream, a: AmqpArgs, span: Span, backlog: Arc<Backlog>) -> Tally {
    let mut t = Tally::default();
    let manual = a.ack == AckMode::Manual;
    let multi = a.multi_ack.max(1);
    let deadline = tokio::time::Instant::from_std(span.end);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(4096);
    // The delivery being assembled: (tag, body bytes still to come, first 8 body bytes).
    let mut tag = 0u64;
    let mut remaining: Option<u64> = None;
    let mut head: Vec<u8> = Vec::with_capacity(8);
    let mut unacked = 0u64;
    'conn: loop {
        buf.reserve(32 * 1024);
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                t.error("connection closed by the broker");
                break;
            }
            Ok(Err(e)) => {
                t.error(format!("read: {e}"));
                break;
            }
            Ok(Ok(_)) => {}
        }
        out.clear();
        while let Some((ty, payload)) = next_frame(&mut buf) {
            let done = match ty {
                1 if payload.len() >= 4 => {
                    let c = u16::from_be_bytes([payload[0], payload[1]]);
                    let m = u16::from_be_bytes([payload[2], payload[3]]);
                    match (c, m) {
                        (60, 60) => {
                            // consumer-tag shortstr, then delivery-tag
                            let n = payload.get(4).copied().unwrap_or(0) as usize;
                            let at = 5 + n;
                            tag = payload
                                .get(at..at + 8)
                                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                                .unwrap_or(0);
                            head.clear();
                            remaining = None;
                            false
                        }
                        (20, 40) | (10, 50) | (60, 30) => {
                            t.error(format!(
                                "broker closed or cancelled ({c}.{m}): {}",
                                close_text(c, m, &payload)
                            ));
                            break 'conn;
                        }
                        _ => false,
                    }
                }
                2 if payload.len() >= 12 => {
                    let size = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes"));
                    remaining = Some(size);
                    size == 0
                }
                3 => {
                    let need = 8usize.saturating_sub(head.len()).min(payload.len());
                    head.extend_from_slice(&payload[..need]);
                    let r = remaining.unwrap_or(0).saturating_sub(payload.len() as u64);
                    remaining = Some(r);
                    r == 0
                }
                _ => false,
            };
            if done {
                remaining = None;
                backlog.consumed();
                if span.counting() {
                    t.consumed += 1;
                    if let Some(ns) = age(&head) {
                        t.latency.record(ns);
                    }
                }
                unacked += 1;
                if manual && unacked >= multi {
                    unacked = 0;
                    let mut args = [0u8; 9];
                    args[..8].copy_from_slice(&tag.to_be_bytes());
                    args[8] = u8::from(multi > 1);
                    method_frame(&mut out, CH, 60, 80, &args);
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = s.write_all(&out).await {
                t.error(format!("write: {e}"));
                break;
            }
        }
    }
    let _ = s.shutdown().await;
    t
}
