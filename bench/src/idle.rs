//! `qgate-bench idle`: opens N AMQP connections (handshake done, heartbeats off, no
//! channel) and holds them, for the per-connection memory figure. The handshake is
//! written by hand on tokio sockets: lapin keeps threads per connection, which 10,000
//! connections cannot afford.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Options of the idle mode.
#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    /// AMQP address host:port.
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub addr: String,
    /// User name.
    #[arg(long, default_value = "guest")]
    pub user: String,
    /// Password.
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// Virtual host.
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// How long to hold the connections once all are open.
    #[arg(long, default_value = "60s", value_parser = crate::common::parse_duration)]
    pub hold: Duration,
}

/// Appends a method frame on channel 0.
fn frame(out: &mut Vec<u8>, class: u16, method: u16, args: &[u8]) {
    method_frame(out, 0, class, method, args)
}

/// Appends a method frame.
pub fn method_frame(out: &mut Vec<u8>, channel: u16, class: u16, method: u16, args: &[u8]) {
    out.push(1);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&((4 + args.len()) as u32).to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&method.to_be_bytes());
    out.extend_from_slice(args);
    out.push(0xCE);
}

/// Appends a short string.
pub fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(s.len().min(255) as u8);
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
}

/// Reads one frame; returns (class, method, payload) of a method frame.
pub async fn read_method(s: &mut TcpStream) -> Result<(u16, u16, Vec<u8>), String> {
    let mut head = [0u8; 7];
    s.read_exact(&mut head)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if &head[..4] == b"AMQP" {
        return Err("server refused the protocol version".into());
    }
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    if size > 1 << 20 {
        return Err(format!("frame too large ({size})"));
    }
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if head[0] != 1 || payload.len() < 5 {
        return Err(format!("unexpected frame type {}", head[0]));
    }
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    payload.pop();
    Ok((class, method, payload))
}

/// Where and as whom to connect.
pub struct Login<'a> {
    pub addr: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    pub vhost: &'a str,
}

impl<'a> From<&'a IdleArgs> for Login<'a> {
    fn from(a: &'a IdleArgs) -> Self {
        Login {
            addr: &a.addr,
            user: &a.user,
            password: &a.password,
            vhost: &a.vhost,
        }
    }
}

/// Opens one connection through connection.open-ok.
pub async fn handshake(a: Login<'_>) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(a.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", a.addr))?;
    let _ = s.set_nodelay(true);
    s.write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let (c, m, _) = read_method(&mut s).await?;
    if (c, m) != (10, 10) {
        return Err(format!("expected connection.start, got {c}.{m}"));
    }
    let mut out = Vec::new();
    let mut args = Vec::new();
    args.extend_from_slice(&0u32.to_be_bytes()); // client-properties: empty table
    shortstr(&mut args, "PLAIN");
    let resp = format!("\0{}\0{}", a.user, a.password);
    args.extend_from_slice(&(resp.len() as u32).to_be_bytes());
    args.extend_from_slice(resp.as_bytes());
    shortstr(&mut args, "en_US");
    frame(&mut out, 10, 11, &args);
    s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
    let (c, m, p) = read_method(&mut s).await?;
    if (c, m) == (10, 50) {
        return Err("connection refused (connection.close), bad credentials?".into());
    }
    if (c, m) != (10, 30) || p.len() < 12 {
        return Err(format!("expected connection.tune, got {c}.{m}"));
    }
    let channel_max = u16::from_be_bytes([p[4], p[5]]);
    let frame_max = u32::from_be_bytes([p[6], p[7], p[8], p[9]]);
    out.clear();
    args.clear();
    args.extend_from_slice(&channel_max.to_be_bytes());
    args.extend_from_slice(&frame_max.to_be_bytes());
    args.extend_from_slice(&0u16.to_be_bytes()); // heartbeat off: the connection stays idle
    frame(&mut out, 10, 31, &args);
    args.clear();
    shortstr(&mut args, a.vhost);
    shortstr(&mut args, "");
    args.push(0);
    frame(&mut out, 10, 40, &args);
    s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
    let (c, m, _) = read_method(&mut s).await?;
    if (c, m) != (10, 41) {
        return Err(format!("expected connection.open-ok, got {c}.{m}"));
    }
    Ok(s)
}

fn raise_nofile() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Runs the mode.
pub async fn run(a: IdleArgs) -> Result<bool, String> {
    raise_nofile();
    // The first one alone: an unreachable broker fails fast with one message.
    let first = handshake((&a).into()).await?;
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(a.connections);
    let args = Arc::new(a.clone());
    for _ in 1..a.connections {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let r = handshake(args.as_ref().into()).await;
            drop(permit);
            r
        }));
    }
    let mut conns = vec![first];
    let mut errors = 0u64;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => conns.push(s),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        println!("first error: {e}");
    }
    println!(
        "READY connections={} errors={errors} open_secs={secs:.2}",
        conns.len()
    );
    tokio::time::sleep(a.hold).await;
    println!(
        "RESULT mode=idle connections={} open_secs={secs:.2} errors={errors}",
        conns.len()
    );
    drop(conns);
    Ok(errors == 0)
}
