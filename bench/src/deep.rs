//! `qgate-bench deep`: the deep-queue benchmark of issue 13, one phase per run, so that
//! the caller (scripts/bench-compare) can read the broker's memory, CPU and data
//! directory between the phases.
//!
//! - `fill`: one publisher, one channel, publisher confirms with a pipelined window,
//!   persistent messages into durable queues and no consumer;
//! - `drain`: one consumer (manual ack, prefetch) takes the messages back queue by queue
//!   and checks that every one arrives exactly once and in order;
//! - `live`: both at once on the same queue (the reference rates on a short queue);
//! - `delete`: deletes the queues and counts the messages they held.
//!
//! Every body starts with its sequence number in its queue (u64 LE), the queue's index
//! (u32 LE) and a magic (u32): the drain checks count, gaps, duplicates and order from
//! the body alone. Message i of a fill goes to queue i % Q with sequence
//! `first_seq + i / Q`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::common::{now_ns, us, Backlog, BoxFut, Window};
use crate::hist::Histogram;

/// Marks a body written by this mode ("QGDP").
const MAGIC: u32 = 0x5047_4451;
/// Sequence number, queue index, magic.
const HEADER: usize = 16;

/// What a run does.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Publish with confirms, no consumer.
    Fill,
    /// Consume with manual acks and check the sequence.
    Drain,
    /// Publish and consume the same queue at once.
    Live,
    /// Delete the queues, counting what they held.
    Delete,
}

/// Options of the deep mode.
#[derive(clap::Args, Debug, Clone)]
pub struct DeepArgs {
    /// fill, drain, live or delete.
    #[arg(value_enum)]
    pub phase: Phase,
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub url: String,
    /// Queue name; with --queues Q > 1 the queues are NAME-0 .. NAME-(Q-1).
    #[arg(long, default_value = "qgate-bench-deep")]
    pub queue: String,
    /// Queues the messages are spread over (round robin).
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Messages in all (fill and live publish them, drain expects them).
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Sequence number of each queue's first message (a second fill continues a first).
    #[arg(long, default_value_t = 0)]
    pub first_seq: u64,
    /// Body size in bytes (at least 16: sequence, queue index, magic).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Transient messages (default: persistent, delivery_mode 2) into durable queues.
    #[arg(long)]
    pub transient: bool,
    /// Unconfirmed publishes in flight (the confirm window).
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// basic.qos prefetch of the consumer.
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// live: the publisher pauses while more than N messages are published but not
    /// consumed (0 = no bound), so the queue stays short.
    #[arg(long, default_value_t = 10_000)]
    pub max_backlog: u64,
    /// A queue.declare argument NAME=VALUE (repeatable; an integer VALUE is sent as an
    /// integer), e.g. x-queue-mode=lazy, x-queue-version=2.
    #[arg(long = "queue-arg", value_parser = parse_queue_arg)]
    pub queue_args: Vec<(String, AMQPValue)>,
    /// Give up when no confirm or delivery arrives for this long (a blocked broker).
    #[arg(long, default_value = "60s", value_parser = crate::common::parse_duration)]
    pub idle_timeout: Duration,
    /// Print a progress line every this many messages (0 = every tenth of the run).
    #[arg(long, default_value_t = 0)]
    pub progress: u64,
}

fn parse_queue_arg(s: &str) -> Result<(String, AMQPValue), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("bad --queue-arg '{s}' (NAME=VALUE)"))?;
    if k.is_empty() {
        return Err(format!("bad --queue-arg '{s}': empty name"));
    }
    let value = match v.parse::<i64>() {
        Ok(n) => AMQPValue::LongLongInt(n),
        Err(_) => AMQPValue::LongString(v.into()),
    };
    Ok((k.to_owned(), value))
}

/// The body of message `seq` of queue `queue`.
fn body(size: usize, seq: u64, queue: u32) -> Vec<u8> {
    let mut b = vec![0u8; size.max(HEADER)];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..12].copy_from_slice(&queue.to_le_bytes());
    b[12..16].copy_from_slice(&MAGIC.to_le_bytes());
    b
}

/// Messages of queue `q` in a fill of `n` over `queues` queues.
fn per_queue(n: u64, queues: usize, q: usize) -> u64 {
    let queues = queues as u64;
    n / queues + u64::from((q as u64) < n % queues)
}

/// Checks that each queue delivers sequence numbers `first .. first + count` exactly
/// once and in order.
pub struct OrderCheck {
    first: u64,
    expected: Vec<u64>,
    next: Vec<u64>,
    /// One bit per expected message, queue by queue.
    seen: Vec<u64>,
    offsets: Vec<u64>,
    total: u64,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    /// Deliveries whose sequence number is not the one after the previous delivery of
    /// their queue (a gap or a step back counts once where it happens).
    pub out_of_order: u64,
    /// Bodies not written by a fill, or outside the expected range.
    pub foreign: u64,
    pub redelivered: u64,
}

impl OrderCheck {
    /// Expects `n` messages over `queues` queues, starting at sequence `first`.
    pub fn new(n: u64, queues: usize, first: u64) -> OrderCheck {
        let queues = queues.max(1);
        let expected: Vec<u64> = (0..queues).map(|q| per_queue(n, queues, q)).collect();
        let mut offsets = Vec::with_capacity(queues);
        let mut off = 0;
        for e in &expected {
            offsets.push(off);
            off += e;
        }
        OrderCheck {
            first,
            next: vec![first; queues],
            expected,
            seen: vec![0; n.div_ceil(64) as usize],
            offsets,
            total: n,
            received: 0,
            distinct: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            redelivered: 0,
        }
    }

    /// Messages queue `q` should deliver.
    pub fn expected(&self, q: usize) -> u64 {
        self.expected[q]
    }

    /// Distinct messages of queue `q` seen so far.
    fn queue_done(&self, q: usize, got: u64) -> bool {
        got >= self.expected[q]
    }

    /// Records one delivery; returns the queue index when the body is one of ours.
    pub fn record(&mut self, body: &[u8], redelivered: bool) -> Option<usize> {
        self.received += 1;
        if redelivered {
            self.redelivered += 1;
        }
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
        };
        let parsed = match (word(0), word(4), word(8), word(12)) {
            (Some(lo), Some(hi), Some(q), Some(MAGIC)) => {
                Some((u64::from(lo) | (u64::from(hi) << 32), q as usize))
            }
            _ => None,
        };
        let Some((seq, q)) = parsed.filter(|&(seq, q)| {
            q < self.expected.len() && seq >= self.first && seq - self.first < self.expected[q]
        }) else {
            self.foreign += 1;
            return None;
        };
        if seq != self.next[q] {
            self.out_of_order += 1;
        }
        self.next[q] = seq + 1;
        let bit = self.offsets[q] + (seq - self.first);
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if self.seen[word] & mask != 0 {
            self.duplicates += 1;
        } else {
            self.seen[word] |= mask;
            self.distinct += 1;
        }
        Some(q)
    }

    /// Expected messages never seen.
    pub fn lost(&self) -> u64 {
        self.total - self.distinct
    }

    /// All seen, once each, in order, nothing else.
    pub fn in_order(&self) -> bool {
        self.lost() == 0 && self.duplicates == 0 && self.out_of_order == 0 && self.foreign == 0
    }
}

async fn connect(url: &str) -> Result<Connection, String> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot connect to the broker: {e}")),
        Err(_) => Err("cannot connect to the broker: timed out".into()),
    }
}

fn queue_names(a: &DeepArgs) -> Vec<String> {
    if a.queues <= 1 {
        vec![a.queue.clone()]
    } else {
        (0..a.queues).map(|i| format!("{}-{i}", a.queue)).collect()
    }
}

/// What a publisher measured.
#[derive(Default)]
struct FillTally {
    published: u64,
    confirmed: u64,
    errors: u64,
    first_error: Option<String>,
    confirm_latency: Histogram,
    secs: f64,
}

/// What a consumer measured.
struct DrainTally {
    check: OrderCheck,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    /// Ready messages left in the queues at the end.
    left: u64,
}

fn note(errors: &mut u64, first: &mut Option<String>, e: String) {
    *errors += 1;
    if first.is_none() {
        *first = Some(e);
    }
}

/// Runs the mode; Err = could not run at all.
pub async fn run(a: DeepArgs) -> Result<bool, String> {
    now_ns();
    if a.size < HEADER {
        return Err(format!(
            "--size must be at least {HEADER} (sequence, queue, magic)"
        ));
    }
    let queues = queue_names(&a);
    let conn = connect(&a.url).await?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| format!("channel.open: {e}"))?;
    println!(
        "deep {:?}: {} message(s) over {} queue(s) ({}), {} B {} bodies, confirm window {}, prefetch {}",
        a.phase,
        a.messages,
        queues.len(),
        if queues.len() == 1 { queues[0].clone() } else { format!("{}-*", a.queue) },
        a.size,
        if a.transient { "transient" } else { "persistent" },
        a.window,
        a.prefetch
    );
    let mut fields: Vec<(&str, String)> = vec![
        ("queues", queues.len().to_string()),
        ("messages", a.messages.to_string()),
        ("size", a.size.to_string()),
    ];
    let ok = match a.phase {
        Phase::Fill => {
            let ch = Arc::new(ch);
            declare(&ch, &queues, &a).await?;
            let f = fill(ch, &queues, &a, None).await;
            fill_fields(&f, &mut fields);
            f.errors == 0
        }
        Phase::Drain => {
            let d = drain(&ch, &queues, &a, None).await?;
            drain_fields(&d, &mut fields);
            d.errors == 0 && d.check.in_order()
        }
        Phase::Live => {
            let ch = Arc::new(ch);
            declare(&ch, &queues, &a).await?;
            let cconn = connect(&a.url).await?;
            let cch = cconn
                .create_channel()
                .await
                .map_err(|e| format!("channel.open: {e}"))?;
            let backlog = Backlog::new(a.max_backlog);
            let (pa, qs) = (a.clone(), queues.clone());
            let b2 = backlog.clone();
            let producer = tokio::spawn(async move { fill(ch, &qs, &pa, Some(b2)).await });
            let d = drain(&cch, &queues, &a, Some(backlog)).await;
            let f = producer.await.map_err(|e| format!("publisher task: {e}"))?;
            let _ = cconn.close(200, "bench done").await;
            let d = d?;
            fill_fields(&f, &mut fields);
            drain_fields(&d, &mut fields);
            f.errors == 0 && d.errors == 0 && d.check.in_order()
        }
        Phase::Delete => {
            let t = Instant::now();
            let mut deleted = 0u64;
            let mut errors = 0u64;
            let mut first = None;
            let ch = Arc::new(ch);
            let mut win: Window<Result<u32, String>> = Window::new(a.window);
            for q in &queues {
                let (ch, q) = (ch.clone(), q.clone());
                let fut: BoxFut<Result<u32, String>> = Box::pin(async move {
                    ch.queue_delete(&q, QueueDeleteOptions::default())
                        .await
                        .map_err(|e| format!("queue.delete {q}: {e}"))
                });
                win.push(fut, &mut |r| match r {
                    Ok(n) => deleted += u64::from(n),
                    Err(e) => note(&mut errors, &mut first, e),
                })
                .await;
            }
            win.drain_until(Instant::now() + a.idle_timeout, &mut |r| match r {
                Ok(n) => deleted += u64::from(n),
                Err(e) => note(&mut errors, &mut first, e),
            })
            .await;
            println!(
                "deep delete: {} queue(s) deleted in {:.2} s, holding {deleted} message(s)",
                queues.len(),
                t.elapsed().as_secs_f64()
            );
            if let Some(e) = &first {
                println!("first error: {e}");
            }
            fields.push(("secs", format!("{:.3}", t.elapsed().as_secs_f64())));
            fields.push(("deleted", deleted.to_string()));
            fields.push(("errors", errors.to_string()));
            errors == 0
        }
    };
    let _ = conn.close(200, "bench done").await;
    let mut line = format!(
        "RESULT mode=deep phase={}",
        format!("{:?}", a.phase).to_lowercase()
    );
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v}"));
    }
    println!("{line}");
    Ok(ok)
}

fn fill_fields(f: &FillTally, out: &mut Vec<(&str, String)>) {
    let rate = if f.secs > 0.0 {
        f.confirmed as f64 / f.secs
    } else {
        0.0
    };
    let c = &f.confirm_latency;
    println!(
        "deep fill: {} published, {} confirmed in {:.2} s ({rate:.0} msg/s); confirm p50 {:.0} us, p99 {:.0} us; errors {}",
        f.published,
        f.confirmed,
        f.secs,
        us(c.quantile(0.5)),
        us(c.quantile(0.99)),
        f.errors
    );
    if let Some(e) = &f.first_error {
        println!("first publish error: {e}");
    }
    out.push(("fill_secs", format!("{:.3}", f.secs)));
    out.push(("published", f.published.to_string()));
    out.push(("confirmed", f.confirmed.to_string()));
    out.push(("pub_rate", format!("{rate:.0}")));
    out.push(("confirm_p50_us", format!("{:.1}", us(c.quantile(0.5)))));
    out.push(("confirm_p99_us", format!("{:.1}", us(c.quantile(0.99)))));
    out.push(("pub_errors", f.errors.to_string()));
}

fn drain_fields(d: &DrainTally, out: &mut Vec<(&str, String)>) {
    let c = &d.check;
    let rate = if d.secs > 0.0 {
        c.distinct as f64 / d.secs
    } else {
        0.0
    };
    println!(
        "deep drain: {} received, {} distinct in {:.2} s ({rate:.0} msg/s); lost {}, duplicates {}, out of order {}, foreign {}, redelivered {}, left in queue {}: {}",
        c.received,
        c.distinct,
        d.secs,
        c.lost(),
        c.duplicates,
        c.out_of_order,
        c.foreign,
        c.redelivered,
        d.left,
        if c.in_order() { "all delivered once, in order" } else { "VIOLATIONS" }
    );
    if let Some(e) = &d.first_error {
        println!("first consume error: {e}");
    }
    out.push(("drain_secs", format!("{:.3}", d.secs)));
    out.push(("consumed", c.received.to_string()));
    out.push(("distinct", c.distinct.to_string()));
    out.push(("cons_rate", format!("{rate:.0}")));
    out.push(("lost", c.lost().to_string()));
    out.push(("duplicates", c.duplicates.to_string()));
    out.push(("out_of_order", c.out_of_order.to_string()));
    out.push(("foreign", c.foreign.to_string()));
    out.push(("redelivered", c.redelivered.to_string()));
    out.push(("left", d.left.to_string()));
    out.push(("in_order", c.in_order().to_string()));
    out.push(("errors", d.errors.to_string()));
}

fn declare_args(a: &DeepArgs) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in &a.queue_args {
        t.insert(k.as_str().into(), v.clone());
    }
    t
}

/// Declares the durable queues, pipelined.
async fn declare(ch: &Arc<Channel>, queues: &[String], a: &DeepArgs) -> Result<(), String> {
    let args = declare_args(a);
    let mut win: Window<Result<(), String>> = Window::new(a.window);
    let mut first = None;
    let mut errors = 0;
    for q in queues {
        let (ch, q, args) = (ch.clone(), q.clone(), args.clone());
        let fut: BoxFut<Result<(), String>> = Box::pin(async move {
            ch.queue_declare(
                &q,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("queue.declare {q}: {e}"))
        });
        win.push(fut, &mut |r| {
            if let Err(e) = r {
                note(&mut errors, &mut first, e)
            }
        })
        .await;
    }
    win.drain_until(Instant::now() + a.idle_timeout, &mut |r| {
        if let Err(e) = r {
            note(&mut errors, &mut first, e)
        }
    })
    .await;
    first.map_or(Ok(()), Err)
}

fn every(a: &DeepArgs) -> u64 {
    if a.progress > 0 {
        a.progress
    } else {
        (a.messages / 10).max(1)
    }
}

/// Result of one publish: Ok(confirm latency in ns) or an error text.
type PubResult = Result<u64, String>;

async fn fill(
    ch: Arc<Channel>,
    queues: &[String],
    a: &DeepArgs,
    backlog: Option<Arc<Backlog>>,
) -> FillTally {
    let mut t = FillTally::default();
    if let Err(e) = ch.confirm_select(ConfirmSelectOptions::default()).await {
        note(
            &mut t.errors,
            &mut t.first_error,
            format!("confirm.select: {e}"),
        );
        return t;
    }
    let props = if a.transient {
        BasicProperties::default()
    } else {
        BasicProperties::default().with_delivery_mode(2)
    };
    let names: Vec<Arc<str>> = queues.iter().map(|q| q.as_str().into()).collect();
    let mut window: Window<PubResult> = Window::new(a.window);
    let every = every(a);
    let start = Instant::now();
    let far = start + Duration::from_secs(365 * 24 * 3600);
    let stall = a.idle_timeout;
    let qn = names.len() as u64;
    for i in 0..a.messages {
        if t.errors > 0 {
            break;
        }
        if let Some(b) = &backlog {
            b.wait_room(far).await;
        }
        let q = (i % qn) as usize;
        let payload = body(a.size, a.first_seq + i / qn, q as u32);
        let (ch2, name, props) = (ch.clone(), names[q].clone(), props.clone());
        let sent = now_ns();
        let fut: BoxFut<PubResult> = Box::pin(async move {
            let confirmed = async {
                let pc = ch2
                    .basic_publish("", &name, BasicPublishOptions::default(), &payload, props)
                    .await
                    .map_err(|e| format!("basic.publish: {e}"))?;
                match pc.await {
                    Ok(Confirmation::Ack(_)) => Ok(now_ns().saturating_sub(sent)),
                    Ok(Confirmation::Nack(_)) => Err("publisher confirm: nack".to_owned()),
                    Ok(Confirmation::NotRequested) => Err("publish not confirmed".to_owned()),
                    Err(e) => Err(format!("publisher confirm: {e}")),
                }
            };
            match tokio::time::timeout(stall, confirmed).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no confirm within {stall:?} (is the broker blocking publishers?)"
                )),
            }
        });
        if let Some(b) = &backlog {
            b.published();
        }
        t.published += 1;
        window
            .push(fut, &mut |r| match r {
                Ok(ns) => {
                    t.confirmed += 1;
                    t.confirm_latency.record(ns);
                }
                Err(e) => note(&mut t.errors, &mut t.first_error, e),
            })
            .await;
        if t.published % every == 0 {
            println!(
                "progress fill {}/{} published, {} confirmed, {:.1} s",
                t.published,
                a.messages,
                t.confirmed,
                start.elapsed().as_secs_f64()
            );
        }
    }
    window
        .drain_until(Instant::now() + stall, &mut |r| match r {
            Ok(ns) => {
                t.confirmed += 1;
                t.confirm_latency.record(ns);
            }
            Err(e) => note(&mut t.errors, &mut t.first_error, e),
        })
        .await;
    t.secs = start.elapsed().as_secs_f64();
    if t.confirmed < t.published && t.errors == 0 {
        note(
            &mut t.errors,
            &mut t.first_error,
            format!(
                "{} publish(es) unconfirmed after {stall:?}",
                t.published - t.confirmed
            ),
        );
    }
    t
}

/// Ready messages in `queue` (a passive declare).
async fn ready(ch: &Channel, queue: &str) -> Result<u64, String> {
    ch.queue_declare(
        queue,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map(|q| u64::from(q.message_count()))
    .map_err(|e| format!("queue.declare (passive) {queue}: {e}"))
}

/// Consumes the queues one after another, each until its expected messages have all
/// arrived (then until it is empty, so that extra copies are counted too).
async fn drain(
    ch: &Channel,
    queues: &[String],
    a: &DeepArgs,
    backlog: Option<Arc<Backlog>>,
) -> Result<DrainTally, String> {
    use futures_core::Stream;
    let ch = Arc::new(ch.clone());
    if a.prefetch > 0 {
        ch.basic_qos(a.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("basic.qos: {e}"))?;
    }
    let mut d = DrainTally {
        check: OrderCheck::new(a.messages, queues.len(), a.first_seq),
        errors: 0,
        first_error: None,
        secs: 0.0,
        left: 0,
    };
    let mut acks: Window<Result<(), String>> = Window::new(a.window);
    let mut ack_errors: Vec<String> = Vec::new();
    let every = every(a);
    let start = Instant::now();
    let mut active = Duration::ZERO;
    'queues: for (qi, q) in queues.iter().enumerate() {
        let tag = format!("deep-{qi}");
        let mut consumer = ch
            .basic_consume(
                q,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("basic.consume {q}: {e}"))?;
        let t0 = Instant::now();
        let mut got = 0u64;
        // After the last expected message: a short wait for copies still in flight.
        let linger = Duration::from_millis(500);
        let mut done_at: Option<Instant> = None;
        let mut last = Instant::now();
        loop {
            let wait = if d.check.queue_done(qi, got) {
                linger
            } else {
                a.idle_timeout
            };
            let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut consumer).poll_next(cx));
            let item = match tokio::time::timeout(wait, next).await {
                Err(_) => {
                    if d.check.queue_done(qi, got) {
                        match ready(&ch, q).await {
                            Ok(0) => break,
                            // More copies are queued: keep taking them (not forever).
                            Ok(_) if last.elapsed() < a.idle_timeout => continue,
                            Ok(n) => {
                                println!("deep drain: {q} still holds {n} ready message(s) it does not deliver");
                                break;
                            }
                            Err(e) => {
                                note(&mut d.errors, &mut d.first_error, e);
                                break;
                            }
                        }
                    }
                    println!(
                        "deep drain: no delivery from {q} for {:?}: {got} of {} arrived",
                        a.idle_timeout,
                        d.check.expected(qi)
                    );
                    break;
                }
                Ok(None) => {
                    note(
                        &mut d.errors,
                        &mut d.first_error,
                        format!("consumer of {q} cancelled by the broker"),
                    );
                    break 'queues;
                }
                Ok(Some(Err(e))) => {
                    note(&mut d.errors, &mut d.first_error, format!("delivery: {e}"));
                    break 'queues;
                }
                Ok(Some(Ok(delivery))) => delivery,
            };
            last = Instant::now();
            if let Some(b) = &backlog {
                b.consumed();
            }
            let before = d.check.distinct;
            d.check.record(&item.data, item.redelivered);
            if d.check.distinct > before {
                got += 1;
                if d.check.queue_done(qi, got) && done_at.is_none() {
                    done_at = Some(Instant::now());
                }
                if d.check.distinct % every == 0 {
                    println!(
                        "progress drain {}/{} distinct, {:.1} s",
                        d.check.distinct,
                        a.messages,
                        start.elapsed().as_secs_f64()
                    );
                }
            }
            let (ch2, tag) = (ch.clone(), item.delivery_tag);
            let fut: BoxFut<Result<(), String>> = Box::pin(async move {
                ch2.basic_ack(tag, BasicAckOptions::default())
                    .await
                    .map_err(|e| format!("basic.ack: {e}"))
            });
            acks.push(fut, &mut |r| {
                if let Err(e) = r {
                    ack_errors.push(e)
                }
            })
            .await;
        }
        active += done_at.unwrap_or_else(Instant::now) - t0;
        if let Err(e) = ch.basic_cancel(&tag, BasicCancelOptions::default()).await {
            note(
                &mut d.errors,
                &mut d.first_error,
                format!("basic.cancel: {e}"),
            );
        }
    }
    acks.drain_until(Instant::now() + a.idle_timeout, &mut |r| {
        if let Err(e) = r {
            ack_errors.push(e)
        }
    })
    .await;
    for e in ack_errors {
        note(&mut d.errors, &mut d.first_error, e);
    }
    // Time spent consuming, up to each queue's last expected message (not the linger).
    d.secs = active.as_secs_f64();
    for q in queues {
        match ready(&ch, q).await {
            Ok(n) => d.left += n,
            Err(e) => note(&mut d.errors, &mut d.first_error, e),
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_run_is_clean() {
        let mut c = OrderCheck::new(10, 2, 0);
        for i in 0..10u64 {
            assert_eq!(
                c.record(&body(32, i / 2, (i % 2) as u32), false),
                Some((i % 2) as usize)
            );
        }
        assert!(c.in_order(), "{}", c.out_of_order);
        assert_eq!((c.lost(), c.duplicates, c.foreign), (0, 0, 0));
    }

    #[test]
    fn gaps_duplicates_and_foreign_bodies_are_counted() {
        let mut c = OrderCheck::new(5, 1, 100);
        for (seq, redelivered) in [
            (100, false),
            (101, false),
            (103, false),
            (101, true),
            (104, false),
        ] {
            c.record(&body(16, seq, 0), redelivered);
        }
        c.record(b"not one of ours, long enough", false);
        c.record(&body(16, 99, 0), false); // below the range
        c.record(&body(16, 100, 1), false); // no such queue
        assert_eq!(c.distinct, 4);
        assert_eq!(c.lost(), 1); // 102
        assert_eq!(c.duplicates, 1);
        // 103 after 101, 101 after 103, 104 after 101
        assert_eq!(c.out_of_order, 3);
        assert_eq!(c.foreign, 3);
        assert_eq!(c.redelivered, 1);
        assert!(!c.in_order());
    }

    #[test]
    fn uneven_spread_over_queues() {
        assert_eq!(per_queue(10, 3, 0), 4);
        assert_eq!(per_queue(10, 3, 1), 3);
        assert_eq!(per_queue(10, 3, 2), 3);
        let mut c = OrderCheck::new(10, 3, 0);
        for i in 0..10u64 {
            c.record(&body(16, i / 3, (i % 3) as u32), false);
        }
        assert!(c.in_order());
    }

    #[test]
    fn queue_args_keep_integers_integers() {
        let (k, v) = parse_queue_arg("x-queue-version=2").unwrap();
        assert_eq!(k, "x-queue-version");
        assert_eq!(v, AMQPValue::LongLongInt(2));
        let (_, v) = parse_queue_arg("x-queue-mode=lazy").unwrap();
        assert_eq!(v, AMQPValue::LongString("lazy".into()));
        assert!(parse_queue_arg("novalue").is_err());
        assert!(parse_queue_arg("=1").is_err());
    }
}
