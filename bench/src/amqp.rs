//! `qgate-bench amqp`: producers and consumers through lapin, a real AMQP client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::common::{age, now_ns, report, stamp, Backlog, BoxFut, Span, Tally, Window};

/// Options of the amqp mode.
#[derive(clap::Args, Debug, Clone)]
pub struct AmqpArgs {
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub url: String,
    /// Publishing connections (one channel each).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consuming connections (one channel and one consumer each).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Queues; producer i publishes to and consumer j consumes from queue i % Q / j % Q.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Body size, measured time and warm-up.
    #[command(flatten)]
    pub load: crate::common::Load,
    /// Persistent messages (delivery_mode 2) into durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Declare durable queues even for transient messages.
    #[arg(long)]
    pub durable: bool,
    /// Publisher confirms; the published rate then counts confirmed messages.
    #[arg(long)]
    pub confirm: bool,
    /// Acknowledgement mode of the consumers.
    #[arg(long, value_enum, default_value_t = AckMode::Manual)]
    pub ack: AckMode,
    /// basic.qos prefetch count per consumer (0 = unlimited).
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Producers pause while more than N messages are published but not consumed (0 = no
    /// bound; ignored without consumers).
    #[arg(long, default_value_t = 10_000)]
    pub max_backlog: u64,
    /// Manual ack: one basic.ack (multiple=true) per N deliveries instead of one each.
    #[arg(long, default_value_t = 1)]
    pub multi_ack: u64,
    /// Publishes (or unconfirmed publishes, with --confirm) in flight per producer.
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// Stop after publishing this many messages in all (0 = run for --duration).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Queue name prefix (default: qgate-bench-<pid>).
    #[arg(long)]
    pub queue_prefix: Option<String>,
    /// Leave the queues in place at the end (default: delete them).
    #[arg(long)]
    pub keep: bool,
    /// Client of the producers and consumers: lapin (a real client library, the
    /// reference), or raw (hand-written frames on tokio sockets, pipelined; cheaper per
    /// message, to see how far a broker goes when the client is not the limit).
    #[arg(long, value_enum, default_value_t = Engine::Lapin)]
    pub engine: Engine,
    /// `x-queue-type` of the declared queues (e.g. quorum, against a RabbitMQ cluster).
    #[arg(long)]
    pub queue_type: Option<String>,
}

/// Which AMQP client drives the load.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// lapin.
    Lapin,
    /// Hand-written frames.
    Raw,
}

/// Consumer acknowledgement mode.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// basic.ack per delivery.
    Manual,
    /// no_ack consumers.
    Auto,
}

async fn connect(url: &str) -> Result<Connection, String> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", redact(url))),
        Err(_) => Err(format!("cannot connect to {}: timed out", redact(url))),
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

fn queue_names(a: &AmqpArgs) -> Vec<String> {
    let prefix = a
        .queue_prefix
        .clone()
        .unwrap_or_else(|| format!("qgate-bench-{}", std::process::id()));
    (0..a.queues.max(1))
        .map(|i| format!("{prefix}-{i}"))
        .collect()
}

/// Runs the mode; Err = could not run at all (unreachable, refused declare...).
pub async fn run(a: AmqpArgs) -> Result<bool, String> {
    now_ns();
    if a.count > 0 && a.consumers > 0 {
        return Err("--count fills queues: use it with --consumers 0".into());
    }
    let queues = queue_names(&a);
    let durable = a.persistent || a.durable;
    // Set-up connection: proves the broker is there and declares the queues.
    let admin = connect(&a.url).await?;
    let ch = admin
        .create_channel()
        .await
        .map_err(|e| format!("channel.open: {e}"))?;
    let mut declare_args = FieldTable::default();
    if let Some(t) = &a.queue_type {
        declare_args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString(t.as_str().into()),
        );
    }
    for q in &queues {
        ch.queue_declare(
            q,
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            declare_args.clone(),
        )
        .await
        .map_err(|e| format!("queue.declare {q}: {e}"))?;
    }
    println!(
        "amqp: {} producer(s), {} consumer(s), {} queue(s){}, {} B bodies, {}{}ack {:?}, prefetch {}, backlog {}",
        a.producers,
        a.consumers,
        queues.len(),
        if durable { " durable" } else { "" },
        a.load.size,
        if a.persistent { "persistent, " } else { "transient, " },
        if a.confirm { "confirms, " } else { "" },
        a.ack,
        a.prefetch,
        a.max_backlog
    );
    let backlog = Backlog::new(if a.consumers == 0 { 0 } else { a.max_backlog });
    let quota = Arc::new(std::sync::atomic::AtomicU64::new(a.count));

    if a.engine == Engine::Raw {
        let (total, secs) = match crate::raw::run(&a, &queues, backlog).await {
            Ok(r) => r,
            Err(e) => {
                cleanup(&a, &ch, &queues, &mut Tally::default()).await;
                return Err(e);
            }
        };
        let mut total = total;
        cleanup(&a, &ch, &queues, &mut total).await;
        let _ = admin.close(200, "bench done").await;
        return Ok(summary(&a, queues.len(), secs, total));
    }

    // Connect everyone first, then start the clock.
    let mut prod_chans = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..a.producers {
        let c = connect(&a.url).await?;
        let ch = c
            .create_channel()
            .await
            .map_err(|e| format!("channel.open: {e}"))?;
        if a.confirm {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("confirm.select: {e}"))?;
        }
        prod_chans.push(ch);
        conns.push(c);
    }
    let mut consumers = Vec::new();
    for j in 0..a.consumers {
        let c = connect(&a.url).await?;
        let ch = c
            .create_channel()
            .await
            .map_err(|e| format!("channel.open: {e}"))?;
        if a.ack == AckMode::Manual && a.prefetch > 0 {
            ch.basic_qos(a.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| format!("basic.qos: {e}"))?;
        }
        let q = &queues[j % queues.len()];
        let consumer = ch
            .basic_consume(
                q,
                &format!("bench-{j}"),
                BasicConsumeOptions {
                    no_ack: a.ack == AckMode::Auto,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("basic.consume {q}: {e}"))?;
        consumers.push((ch, consumer));
        conns.push(c);
    }

    let span = Span::from_now(a.load.warmup, a.load.duration, a.count > 0);
    let mut tasks = Vec::new();
    for (i, ch) in prod_chans.into_iter().enumerate() {
        let q: Arc<str> = queues[i % queues.len()].as_str().into();
        // Arc: a lapin Channel clone costs a dozen reference counts, per message.
        tasks.push(tokio::spawn(produce(
            Arc::new(ch),
            q,
            a.clone(),
            span,
            backlog.clone(),
            quota.clone(),
        )));
    }
    let mut ctasks = Vec::new();
    for (ch, consumer) in consumers {
        ctasks.push(tokio::spawn(consume(
            Arc::new(ch),
            consumer,
            a.ack,
            span,
            backlog.clone(),
            a.window,
            a.multi_ack.max(1),
        )));
    }
    let mut total = Tally::default();
    for t in tasks {
        match t.await {
            Ok(r) => total.merge(r),
            Err(e) => total.error(format!("producer task: {e}")),
        }
    }
    for t in ctasks {
        match t.await {
            Ok(r) => total.merge(r),
            Err(e) => total.error(format!("consumer task: {e}")),
        }
    }
    let secs = span.measured_secs();
    cleanup(&a, &ch, &queues, &mut total).await;
    for c in conns {
        let _ = c.close(200, "bench done").await;
    }
    let _ = admin.close(200, "bench done").await;
    Ok(summary(&a, queues.len(), secs, total))
}

async fn cleanup(a: &AmqpArgs, ch: &Channel, queues: &[String], total: &mut Tally) {
    if !a.keep {
        for q in queues {
            if let Err(e) = ch.queue_delete(q, QueueDeleteOptions::default()).await {
                total.error(format!("queue.delete {q}: {e}"));
            }
        }
    }
}

/// Prints the report; true when the run counted no error.
fn summary(a: &AmqpArgs, queues: usize, secs: f64, mut total: Tally) -> bool {
    if a.confirm {
        // The published rate is the confirmed rate.
        total.published = total.confirmed;
    }
    let c = &total.confirm_latency;
    let mut extra = vec![
        ("producers", a.producers.to_string()),
        ("consumers", a.consumers.to_string()),
        ("queues", queues.to_string()),
        ("size", a.load.size.to_string()),
        ("persistent", a.persistent.to_string()),
        ("confirm", a.confirm.to_string()),
        ("engine", format!("{:?}", a.engine).to_lowercase()),
    ];
    if a.confirm {
        println!(
            "confirm latency: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
            crate::common::us(c.quantile(0.5)),
            crate::common::us(c.quantile(0.99)),
            crate::common::us(c.quantile(0.999))
        );
        extra.push((
            "confirm_p50_us",
            format!("{:.1}", crate::common::us(c.quantile(0.5))),
        ));
        extra.push((
            "confirm_p99_us",
            format!("{:.1}", crate::common::us(c.quantile(0.99))),
        ));
    }
    report("amqp", secs, &total, &extra);
    total.errors == 0
}

/// Result of one publish: Ok(confirm latency in ns, if confirmed) or an error text.
type PubResult = Result<Option<u64>, String>;

async fn produce(
    ch: Arc<Channel>,
    queue: Arc<str>,
    a: AmqpArgs,
    span: Span,
    backlog: Arc<Backlog>,
    quota: Arc<std::sync::atomic::AtomicU64>,
) -> Tally {
    let mut t = Tally::default();
    let mut window: Window<(bool, PubResult)> = Window::new(a.window);
    let props = if a.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let confirm = a.confirm;
    let mut done = |(counted, r): (bool, PubResult)| match r {
        Ok(Some(ns)) => {
            if counted {
                t.confirmed += 1;
                t.confirm_latency.record(ns);
            }
        }
        Ok(None) => {}
        Err(e) => t.error(e),
    };
    let mut published = 0u64;
    loop {
        if span.over() {
            break;
        }
        if a.count > 0 {
            // Take one from the shared quota.
            let left = quota.fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |n| n.checked_sub(1),
            );
            if left.is_err() {
                break;
            }
        }
        backlog.wait_room(span.end).await;
        if span.over() {
            break;
        }
        let mut body = vec![0u8; a.load.size];
        stamp(&mut body);
        let counted = span.counting();
        let ch2 = ch.clone();
        let q = queue.clone();
        let props = props.clone();
        let sent = now_ns();
        let fut: BoxFut<(bool, PubResult)> = Box::pin(async move {
            let r = match ch2
                .basic_publish("", &q, BasicPublishOptions::default(), &body, props)
                .await
            {
                Err(e) => Err(format!("basic.publish: {e}")),
                Ok(pc) if confirm => match pc.await {
                    Ok(Confirmation::Ack(_)) => Ok(Some(now_ns().saturating_sub(sent))),
                    Ok(Confirmation::Nack(_)) => Err("publisher confirm: nack".into()),
                    Ok(Confirmation::NotRequested) => Ok(None),
                    Err(e) => Err(format!("publisher confirm: {e}")),
                },
                Ok(_) => Ok(None),
            };
            (counted, r)
        });
        backlog.published();
        if counted {
            published += 1;
        }
        window.push(fut, &mut done).await;
    }
    // Confirms of messages sent inside the window still count; give them a moment.
    window
        .drain_until(Instant::now() + Duration::from_secs(5), &mut done)
        .await;
    t.published = published;
    t
}

async fn consume(
    ch: Arc<Channel>,
    mut consumer: lapin::Consumer,
    ack: AckMode,
    span: Span,
    backlog: Arc<Backlog>,
    window: usize,
    multi_ack: u64,
) -> Tally {
    use futures_core::Stream;
    let mut t = Tally::default();
    let mut acks: Window<Result<(), String>> = Window::new(window);
    let mut errs: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::from_std(span.end);
    let mut unacked = 0u64;
    loop {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut consumer).poll_next(cx));
        let item = match tokio::time::timeout_at(deadline, next).await {
            Err(_) => break,
            Ok(None) => {
                t.error("consumer cancelled by the broker");
                break;
            }
            Ok(Some(item)) => item,
        };
        let delivery = match item {
            Ok(d) => d,
            Err(e) => {
                t.error(format!("delivery: {e}"));
                break;
            }
        };
        backlog.consumed();
        if span.counting() {
            t.consumed += 1;
            if let Some(ns) = age(&delivery.data) {
                t.latency.record(ns);
            }
        }
        unacked += 1;
        if ack == AckMode::Manual && unacked >= multi_ack {
            unacked = 0;
            let ch2 = ch.clone();
            let tag = delivery.delivery_tag;
            let fut: BoxFut<Result<(), String>> = Box::pin(async move {
                ch2.basic_ack(
                    tag,
                    BasicAckOptions {
                        multiple: multi_ack > 1,
                    },
                )
                .await
                .map_err(|e| format!("basic.ack: {e}"))
            });
            acks.push(fut, &mut |r| {
                if let Err(e) = r {
                    errs.push(e)
                }
            })
            .await;
        }
    }
    acks.drain_until(Instant::now() + Duration::from_secs(5), &mut |r| {
        if let Err(e) = r {
            errs.push(e)
        }
    })
    .await;
    for e in errs {
        t.error(e);
    }
    t
}
