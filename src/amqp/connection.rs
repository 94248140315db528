//! One AMQP connection: the socket with its read buffer ([`Connection`]), the
//! handshake, then the session that feeds frames to channels, with heartbeats and the
//! close handshakes.
//!
//! Grammar (AMQP 0-9-1, connection class):
//! `connection = open-connection *use-connection close-connection`;
//! `open-connection = C:protocol-header S:START C:START-OK *challenge S:TUNE C:TUNE-OK C:OPEN S:OPEN-OK`;
//! `close-connection = C:CLOSE S:CLOSE-OK / S:CLOSE C:CLOSE-OK`.
//!
//! Task model: this task reads (handshake, then [`Session::serve`]); after the handshake
//! everything bound for the client goes through one queue to the writer task
//! ([`writer::run`]), which owns the socket's write half.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::channel::{Channel, ConnCtx};
use super::codec::{AmqpCodec, CodecError, Incoming};
use super::error::AmqpError;
use super::frame::{Frame, PROTOCOL_HEADER};
use super::methods::*;
use super::writer::{self, Out};
use crate::config::Config;
use crate::content::{FieldTable, FieldValue};
use crate::core::{Broker, ConnectionInfo};

/// Where the connection is in its lifecycle (mirrors the grammar above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionState {
    /// Open and serving channels.
    Open,
    /// We sent connection.close and wait for close-ok; everything else is discarded.
    Closing,
}

/// A channel slot: open, or closed by us and waiting for the client's close-ok.
enum Slot {
    Open(Box<Channel>),
    Closing,
}

struct Negotiated {
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    user: String,
    vhost: String,
    cancel_notify: bool,
    blocked_notify: bool,
}

const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The client's socket and read buffer, as mini-redis's `Connection`: frames are read
/// through the [`AmqpCodec`] (which owns `frame_max` and the protocol-header state) and,
/// during the handshake, written straight to the socket. Once the handshake is done the
/// write half goes to the writer task ([`Connection::take_writer`]).
struct Connection {
    reader: OwnedReadHalf,
    /// Until the writer task takes it.
    writer: Option<OwnedWriteHalf>,
    buffer: BytesMut,
    codec: AmqpCodec,
    info: Arc<ConnectionInfo>,
    /// Bytes the last read returned: a busy connection reads in bigger chunks.
    last_read: usize,
}

impl Connection {
    fn new(stream: TcpStream, frame_max: u32, info: Arc<ConnectionInfo>) -> Self {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Self {
            reader,
            writer: Some(writer),
            buffer: BytesMut::with_capacity(4 * 1024),
            codec: AmqpCodec::new(frame_max),
            info,
            last_read: 0,
        }
    }

    /// Frames larger than this (payload + 8) are refused from now on; 0 = no limit.
    fn set_frame_max(&mut self, frame_max: u32) {
        self.codec.set_frame_max(frame_max);
    }

    /// The next item from what was already read, without I/O.
    fn decode(&mut self) -> Result<Option<Incoming>, CodecError> {
        self.codec.decode(&mut self.buffer)
    }

    /// The next item, reading from the socket as needed; `Ok(None)` once the client has
    /// closed its side.
    async fn read(&mut self) -> Result<Option<Incoming>, CodecError> {
        loop {
            if let Some(item) = self.decode()? {
                return Ok(Some(item));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads once from the socket into the buffer; `Ok(false)` when the client closed.
    /// Cancel-safe (a read that did not complete took nothing).
    async fn fill(&mut self) -> io::Result<bool> {
        // Busy connections read 64 KiB at a time; idle ones (heartbeats only) keep a
        // small buffer, so 10,000 idle connections stay cheap.
        let chunk = if self.last_read >= 8 * 1024 {
            64 * 1024
        } else {
            4 * 1024
        };
        if self.buffer.capacity() - self.buffer.len() < chunk / 2 {
            if self.buffer.is_empty() {
                self.buffer = BytesMut::with_capacity(chunk);
            } else {
                self.buffer.reserve(chunk);
            }
        }
        let n = self.reader.read_buf(&mut self.buffer).await?;
        if n == 0 {
            return Ok(false);
        }
        self.last_read = n;
        self.info.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Writes one frame now (the handshake's; later frames go through the writer task).
    async fn write_frame(&mut self, frame: &Frame) -> Result<(), CodecError> {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out)?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        writer.write_all(&out).await?;
        Ok(())
    }

    /// Writes a method on channel 0 now.
    async fn write_method(&mut self, m: impl Into<Method>) -> Result<(), CodecError> {
        let frame = Frame::Method {
            channel: 0,
            method: m.into(),
        };
        self.write_frame(&frame).await
    }

    /// A client that does not speak 0-9-1: tell it the version we do, then close.
    async fn refuse_protocol(&mut self) {
        if let Some(writer) = self.writer.as_mut() {
            let _ = writer.write_all(PROTOCOL_HEADER).await;
        }
        self.shutdown().await;
    }

    /// Closes the write side (the client sees end of stream).
    async fn shutdown(&mut self) {
        if let Some(writer) = self.writer.as_mut() {
            let _ = writer.shutdown().await;
        }
    }

    /// Hands the write half to the writer task.
    fn take_writer(&mut self) -> Option<OwnedWriteHalf> {
        self.writer.take()
    }

    /// Reads and discards what the client still sends until it closes or `within` passes.
    async fn discard_input(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            let mut sink = [0u8; 4096];
            while matches!(self.reader.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// A codec error as the connection.close it calls for; a failed socket is reported as
/// closed (the caller then sends nothing).
fn codec_error(e: CodecError) -> AmqpError {
    match e {
        CodecError::Frame(e) => AmqpError::new(e.reply_code(), e.to_string()),
        CodecError::Io(_) => closed(),
    }
}

/// The client went away (or its socket failed) during the handshake.
fn closed() -> AmqpError {
    AmqpError::new(reply::CONNECTION_FORCED, "closed")
}

/// Serves one client until it goes away or the broker shuts down.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Broker,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let guard = broker.register_connection(super::PROTOCOL, peer);
    let info = guard.info.clone();
    // The client's first methods are read under our own proposal, at least the minimum.
    let mut conn = Connection::new(
        stream,
        config.amqp.frame_max.max(FRAME_MIN_SIZE),
        info.clone(),
    );
    let negotiated = match tokio::time::timeout(
        config.amqp.handshake_timeout,
        handshake(&mut conn, &broker, &config, peer),
    )
    .await
    {
        Ok(Ok(n)) => n,
        Ok(Err(())) | Err(_) => return,
    };
    *info.user.lock() = negotiated.user.clone();
    *info.vhost.lock() = negotiated.vhost.clone();
    // Checked at open; gone only if deleted since, which closes this connection anyway.
    let Some(vhost) = broker.vhost(&negotiated.vhost) else {
        return;
    };
    let Some(wr) = conn.take_writer() else {
        return;
    };
    let (out, rx) = writer::channel(&broker);
    let done = CancellationToken::new();
    let writer = tokio::spawn(writer::run(
        wr,
        rx,
        negotiated.frame_max,
        negotiated.heartbeat,
        info.clone(),
        done.clone(),
    ));
    let ctx = ConnCtx {
        broker: broker.clone(),
        vhost,
        conn_id: info.id,
        user: negotiated.user.clone(),
        out,
        cancel_notify: negotiated.cancel_notify,
        max_message: config.amqp.max_message,
        info: info.clone(),
    };
    let mut session = Session {
        conn,
        ctx,
        channels: HashMap::new(),
        channel_max: negotiated.channel_max,
        state: ConnectionState::Open,
        publisher: false,
        blocked_notify: negotiated.blocked_notify,
    };
    session.serve(negotiated.heartbeat, &shutdown).await;
    session.teardown();
    done.cancel();
    let wr = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
    // As RabbitMQ: after the last frame (close-ok, or the close the client answered),
    // let the client close the socket first, reading and discarding what it still sends,
    // so our close never turns into a reset the client sees as an aborted connection.
    session.conn.discard_input(Duration::from_secs(1)).await;
    drop(wr);
    drop(guard);
}

/// An open connection's state: its channels and where it is in the close handshake.
struct Session {
    conn: Connection,
    ctx: ConnCtx,
    channels: HashMap<u16, Slot>,
    channel_max: u16,
    state: ConnectionState,
    /// Has published: the memory alarm pauses this connection.
    publisher: bool,
    /// The client asked for connection.blocked / unblocked notifications.
    blocked_notify: bool,
}

enum Flow {
    Continue,
    Stop,
}

impl Session {
    async fn serve(&mut self, heartbeat: u16, shutdown: &CancellationToken) {
        // A peer silent for two heartbeat intervals is gone (plain TCP close, as RabbitMQ).
        let silence = if heartbeat > 0 {
            Duration::from_secs(heartbeat as u64 * 2)
        } else {
            Duration::from_secs(u64::MAX / 4)
        };
        let mut closing_deadline: Option<tokio::time::Instant> = None;
        loop {
            loop {
                match self.conn.decode() {
                    Ok(Some(Incoming::Frame(frame))) => {
                        if let Flow::Stop = self.on_frame(frame) {
                            return;
                        }
                    }
                    // The codec yields it once, first; the handshake read it.
                    Ok(Some(Incoming::ProtocolHeader)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        if self.state == ConnectionState::Open {
                            self.close_connection(codec_error(e));
                        }
                        // The stream cannot be resynchronised: stop reading; the writer
                        // still flushes the close before the socket goes.
                        return;
                    }
                }
            }
            if self.state == ConnectionState::Closing && closing_deadline.is_none() {
                closing_deadline = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
            }
            if self.publisher && self.state == ConnectionState::Open {
                self.wait_while_blocked(shutdown).await;
            }
            // A client that sends requests without reading the answers (basic.get,
            // mandatory publishes) is not read from until it has caught up.
            if self.ctx.out.backlogged() {
                tokio::select! {
                    _ = self.ctx.out.drained() => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            let wait = match closing_deadline {
                Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
                None => silence,
            };
            tokio::select! {
                r = tokio::time::timeout(wait, self.conn.fill()) => match r {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) | Ok(Err(_)) => return,
                    Err(_) => {
                        if closing_deadline.is_none() {
                            tracing::info!(peer = %self.ctx.info.peer, "missed heartbeats from client, closing");
                        }
                        return;
                    }
                },
                // An idle publisher is told at once when the alarm goes off.
                _ = self.ctx.broker.flow().wait_blocked(), if self.publisher && self.state == ConnectionState::Open => {}
                _ = self.ctx.info.forced.cancelled(), if self.state == ConnectionState::Open => {
                    let reason = self.ctx.info.forced_reason();
                    self.close_connection(AmqpError::new(reply::CONNECTION_FORCED, reason));
                    closing_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                _ = shutdown.cancelled(), if self.state == ConnectionState::Open => {
                    self.close_connection(AmqpError::new(
                        reply::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                    closing_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }

    /// The memory or disk alarm is raised: stop reading from this publishing connection (TCP
    /// pushes back on the client) until it clears, telling clients that asked.
    async fn wait_while_blocked(&mut self, shutdown: &CancellationToken) {
        let flow = self.ctx.broker.flow();
        if !flow.is_blocked() {
            return;
        }
        if self.blocked_notify {
            self.send(
                0,
                ConnectionBlocked {
                    reason: flow.reason().into(),
                },
            );
        }
        tokio::select! {
            _ = flow.wait_unblocked() => {}
            _ = shutdown.cancelled() => {}
        }
        if self.blocked_notify {
            self.send(0, ConnectionUnblocked {});
        }
    }

    fn lifecycle(&self) -> &crate::core::stats::LifecycleCounters {
        &self.ctx.broker.counters().lifecycle
    }

    fn channel_closed(&self, id: u16) {
        self.ctx.info.channels.fetch_sub(1, Ordering::Relaxed);
        self.ctx.info.channel_numbers.lock().retain(|n| *n != id);
        self.lifecycle().channels_closed.inc();
    }

    fn send(&self, channel: u16, m: impl Into<Method>) {
        let _ = self.ctx.out.send(Out::Method(channel, m.into()));
    }

    fn close_connection(&mut self, e: AmqpError) {
        tracing::debug!(peer = %self.ctx.info.peer, code = e.code, text = ?e.text, "closing connection");
        self.send(
            0,
            ConnectionClose {
                reply_code: e.code,
                reply_text: e.text,
                class_id: e.class_id,
                method_id: e.method_id,
            },
        );
        self.state = ConnectionState::Closing;
    }

    fn on_frame(&mut self, frame: Frame) -> Flow {
        if self.state == ConnectionState::Closing {
            // Only the close handshake matters now.
            return match frame {
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk(_),
                } => Flow::Stop,
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(_),
                } => {
                    self.send(0, ConnectionCloseOk {});
                    Flow::Stop
                }
                _ => Flow::Continue,
            };
        }
        let result = match frame {
            Frame::Heartbeat { channel: 0 } => Ok(Flow::Continue),
            Frame::Heartbeat { channel } => Err(AmqpError::new(
                reply::UNEXPECTED_FRAME,
                format!("heartbeat frame on channel {channel}"),
            )),
            Frame::Method { channel: 0, method } => self.on_connection_method(method),
            Frame::Method { channel, method } => {
                self.publisher |= matches!(method, Method::BasicPublish(_));
                self.on_channel_method(channel, method)
            }
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties,
            } => self.on_content(channel, |ch, ctx| {
                ch.header(ctx, class_id, body_size, properties)
            }),
            Frame::Body { channel, payload } => {
                self.on_content(channel, |ch, ctx| ch.body(ctx, payload))
            }
        };
        match result {
            Ok(flow) => flow,
            Err(e) => {
                self.close_connection(e);
                Flow::Continue
            }
        }
    }

    fn on_connection_method(&mut self, method: Method) -> Result<Flow, AmqpError> {
        match method {
            Method::ConnectionClose(_) => {
                self.send(0, ConnectionCloseOk {});
                Ok(Flow::Stop)
            }
            Method::ConnectionCloseOk(_) => Ok(Flow::Stop),
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(Flow::Continue),
            Method::ConnectionUpdateSecret(m) => Ok(self.update_secret(m)),
            other => Err(AmqpError::new(
                reply::COMMAND_INVALID,
                format!("unexpected method {} on channel 0", other.name()),
            )
            .on(&other)),
        }
    }

    /// `connection.update-secret`, as RabbitMQ 3.10 answers it. RabbitMQ hands the new
    /// secret only to auth backends whose state can expire (OAuth 2 tokens), refusing
    /// with 530 NOT_ALLOWED when one of those rejects it; its password backend keeps
    /// nothing that expires, so for a password login the secret is accepted as it is and
    /// changes nothing (checked on 3.10.8: any secret gets update-secret-ok, and pika's
    /// acceptance tests send `new_secret` for guest/guest). Every qgate login is a
    /// password login, so there is nothing to re-check or refuse.
    fn update_secret(&mut self, m: ConnectionUpdateSecret) -> Flow {
        tracing::info!(
            peer = %self.ctx.info.peer,
            user = %self.ctx.user,
            reason = %m.reason,
            "user updated secret"
        );
        self.send(0, ConnectionUpdateSecretOk {});
        Flow::Continue
    }

    fn on_channel_method(&mut self, id: u16, method: Method) -> Result<Flow, AmqpError> {
        if method.class_id() == ConnectionOpen::CLASS_ID {
            return Err(AmqpError::new(
                reply::COMMAND_INVALID,
                format!("connection method {} on channel {id}", method.name()),
            )
            .on(&method));
        }
        match self.channels.get_mut(&id) {
            None => {
                if !matches!(method, Method::ChannelOpen(_)) {
                    return Err(AmqpError::new(
                        reply::CHANNEL_ERROR,
                        format!("expected 'channel.open' on channel {id}"),
                    )
                    .on(&method));
                }
                if id > self.channel_max {
                    return Err(AmqpError::new(
                        reply::NOT_ALLOWED,
                        format!(
                            "number of channels opened ({id}) has reached the negotiated channel_max ({})",
                            self.channel_max
                        ),
                    )
                    .on(&method));
                }
                self.channels
                    .insert(id, Slot::Open(Box::new(Channel::new(id, &self.ctx))));
                self.ctx.info.channels.fetch_add(1, Ordering::Relaxed);
                self.ctx.info.channel_numbers.lock().push(id);
                self.lifecycle().channels_opened.inc();
                self.send(
                    id,
                    ChannelOpenOk {
                        reserved_1: Bytes::new(),
                    },
                );
                Ok(Flow::Continue)
            }
            Some(Slot::Closing) => {
                match method {
                    Method::ChannelCloseOk(_) => {
                        self.channels.remove(&id);
                    }
                    Method::ChannelClose(_) => {
                        self.send(id, ChannelCloseOk {});
                    }
                    _ => {}
                }
                Ok(Flow::Continue)
            }
            Some(Slot::Open(ch)) => {
                match method {
                    Method::ChannelOpen(_) => {
                        return Err(AmqpError::new(
                            reply::CHANNEL_ERROR,
                            "second 'channel.open' seen",
                        )
                        .on(&method))
                    }
                    Method::ChannelClose(_) => {
                        ch.close(&self.ctx);
                        self.channels.remove(&id);
                        self.channel_closed(id);
                        self.send(id, ChannelCloseOk {});
                        return Ok(Flow::Continue);
                    }
                    Method::ChannelCloseOk(_) => return Ok(Flow::Continue),
                    _ => {}
                }
                if ch.expecting_content() {
                    return Err(AmqpError::new(
                        reply::UNEXPECTED_FRAME,
                        format!(
                            "expected content header for class {}, got method {} instead",
                            BasicPublish::CLASS_ID,
                            method.name()
                        ),
                    )
                    .on(&method));
                }
                let r = ch.handle(&self.ctx, method);
                self.channel_result(id, r)
            }
        }
    }

    fn on_content(
        &mut self,
        id: u16,
        f: impl FnOnce(&mut Channel, &ConnCtx) -> Result<(), AmqpError>,
    ) -> Result<Flow, AmqpError> {
        match self.channels.get_mut(&id) {
            None => Err(AmqpError::new(
                reply::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
            )),
            Some(Slot::Closing) => Ok(Flow::Continue),
            Some(Slot::Open(ch)) => {
                let r = f(ch, &self.ctx);
                self.channel_result(id, r)
            }
        }
    }

    /// Soft errors close the channel; hard ones the connection.
    fn channel_result(&mut self, id: u16, r: Result<(), AmqpError>) -> Result<Flow, AmqpError> {
        match r {
            Ok(()) => Ok(Flow::Continue),
            Err(e) if e.is_connection_level() => Err(e),
            Err(e) => {
                if let Some(Slot::Open(mut ch)) = self.channels.insert(id, Slot::Closing) {
                    ch.close(&self.ctx);
                    self.channel_closed(id);
                }
                self.send(
                    id,
                    ChannelClose {
                        reply_code: e.code,
                        reply_text: e.text,
                        class_id: e.class_id,
                        method_id: e.method_id,
                    },
                );
                Ok(Flow::Continue)
            }
        }
    }

    fn teardown(&mut self) {
        let channels = std::mem::take(&mut self.channels);
        for (id, slot) in channels {
            if let Slot::Open(mut ch) = slot {
                ch.close(&self.ctx);
                self.channel_closed(id);
            }
        }
    }
}

// ---- handshake ------------------------------------------------------------------------

/// Reads the next method on channel 0, skipping heartbeats.
async fn next_method(conn: &mut Connection) -> Result<Method, AmqpError> {
    loop {
        match conn.read().await {
            Ok(Some(Incoming::Frame(Frame::Heartbeat { .. }))) => continue,
            Ok(Some(Incoming::Frame(Frame::Method { channel: 0, method }))) => return Ok(method),
            Ok(Some(_)) => {
                return Err(AmqpError::new(
                    reply::UNEXPECTED_FRAME,
                    "unexpected frame during the connection handshake",
                ))
            }
            Ok(None) => return Err(closed()),
            Err(e) => return Err(codec_error(e)),
        }
    }
}

/// Reads the next handshake method, which must be `Method::$variant`; anything else is
/// 503 COMMAND_INVALID naming the method expected.
macro_rules! expect_method {
    ($conn:expr, $variant:ident) => {
        match next_method($conn).await? {
            Method::$variant(m) => m,
            other => {
                return Err(AmqpError::new(
                    reply::COMMAND_INVALID,
                    format!("expected {}", $variant::NAME),
                )
                .on(&other))
            }
        }
    };
}

fn server_properties() -> FieldTable {
    let s = |v: &str| FieldValue::LongString(Bytes::copy_from_slice(v.as_bytes()));
    let mut caps = FieldTable::new();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
        "connection.blocked",
    ] {
        caps.insert(c, FieldValue::Bool(true));
    }
    let mut t = FieldTable::new();
    t.insert("capabilities", FieldValue::Table(caps));
    t.insert("product", s("qgate"));
    t.insert("version", s(env!("CARGO_PKG_VERSION")));
    t.insert("platform", s("Rust"));
    t.insert("copyright", s("qgate developers"));
    t.insert("information", s("Licensed under the Apache License 2.0"));
    t
}

fn credentials(start_ok: &ConnectionStartOk) -> Result<(String, String), AmqpError> {
    let refused = |why: &str| AmqpError::new(reply::ACCESS_REFUSED, why);
    match start_ok.mechanism.as_str() {
        "PLAIN" => {
            let mut parts = start_ok.response.split(|b| *b == 0);
            let _authzid = parts.next();
            let user = parts.next().ok_or_else(|| refused("bad PLAIN response"))?;
            let pass = parts.next().ok_or_else(|| refused("bad PLAIN response"))?;
            Ok((
                String::from_utf8_lossy(user).into_owned(),
                String::from_utf8_lossy(pass).into_owned(),
            ))
        }
        "AMQPLAIN" => {
            // The response is a field table without its length prefix.
            let mut framed = BytesMut::with_capacity(start_ok.response.len() + 4);
            framed.put_u32(start_ok.response.len() as u32);
            framed.extend_from_slice(&start_ok.response);
            let mut cur: &[u8] = &framed;
            let t = FieldTable::decode(&mut cur).map_err(|_| refused("bad AMQPLAIN response"))?;
            Ok((
                t.get_str("LOGIN").unwrap_or_default(),
                t.get_str("PASSWORD").unwrap_or_default(),
            ))
        }
        other => Err(AmqpError::new(
            reply::ACCESS_REFUSED,
            format!("unsupported authentication mechanism '{other}'"),
        )),
    }
}

/// Runs the connection handshake. On failure the client has been told (where the
/// protocol allows) and the socket should be dropped.
async fn handshake(
    conn: &mut Connection,
    broker: &Broker,
    config: &Config,
    peer: SocketAddr,
) -> Result<Negotiated, ()> {
    match conn.read().await {
        Ok(Some(Incoming::ProtocolHeader)) => {}
        Err(CodecError::Frame(_)) => {
            conn.refuse_protocol().await;
            return Err(());
        }
        Ok(_) | Err(CodecError::Io(_)) => return Err(()),
    }
    conn.write_method(ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties: server_properties(),
        mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
        locales: Bytes::from_static(b"en_US"),
    })
    .await
    .map_err(|_| ())?;
    let info = conn.info.clone();
    let ours = config.amqp.frame_max;
    let result = async {
        let start_ok = expect_method!(conn, ConnectionStartOk);
        let capability = |name: &str| {
            matches!(
                start_ok.client_properties.get("capabilities"),
                Some(FieldValue::Table(c)) if matches!(c.get(name), Some(FieldValue::Bool(true)))
            )
        };
        let cancel_notify = capability("consumer_cancel_notify");
        let blocked_notify = capability("connection.blocked");
        let (user, pass) = credentials(&start_ok)?;
        if let Err(e) = broker.authenticate(&user, &pass, peer.ip()) {
            // As RabbitMQ with authentication_failure_close: the client hears only that
            // the login was refused; the reason goes to the log.
            tracing::info!(peer = %peer, reason = %e, "login refused");
            return Err(AmqpError::new(
                reply::ACCESS_REFUSED,
                format!(
                    "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                    start_ok.mechanism
                ),
            ));
        }
        conn.write_method(ConnectionTune {
            channel_max: config.amqp.channel_max,
            frame_max: ours,
            heartbeat: config.amqp.heartbeat,
        })
        .await
        .map_err(|_| closed())?;
        let tune_ok = expect_method!(conn, ConnectionTuneOk);
        let frame_max = match tune_ok.frame_max {
            0 => ours,
            f if f < FRAME_MIN_SIZE => {
                return Err(AmqpError::new(
                    reply::NOT_ALLOWED,
                    format!("frame_max={f} < {FRAME_MIN_SIZE} min size"),
                ))
            }
            f if ours != 0 && f > ours => {
                return Err(AmqpError::new(
                    reply::NOT_ALLOWED,
                    format!("frame_max={f} > {ours} max size"),
                ))
            }
            f => f,
        };
        let channel_max = match tune_ok.channel_max {
            0 => config.amqp.channel_max,
            c => c.min(config.amqp.channel_max.max(1)),
        };
        conn.set_frame_max(frame_max);
        let open = expect_method!(conn, ConnectionOpen);
        // Recorded before open-ok, so that a delete_user / delete_vhost racing with this
        // login already finds (and force-closes) the connection.
        *info.user.lock() = user.clone();
        *info.vhost.lock() = open.virtual_host.clone();
        if let Err(e) = broker.check_vhost_access(&user, &open.virtual_host) {
            return Err(AmqpError::new(reply::NOT_ALLOWED, e.to_string())
                .on_ids(ConnectionOpen::CLASS_ID, ConnectionOpen::METHOD_ID));
        }
        conn.write_method(ConnectionOpenOk {
            reserved_1: String::new(),
        })
        .await
        .map_err(|_| closed())?;
        Ok(Negotiated {
            frame_max,
            channel_max,
            heartbeat: tune_ok.heartbeat,
            user,
            vhost: open.virtual_host,
            cancel_notify,
            blocked_notify,
        })
    }
    .await;
    match result {
        Ok(n) => Ok(n),
        Err(e) => {
            if e.code != reply::CONNECTION_FORCED {
                tracing::info!(peer = %peer, code = e.code, text = ?e.text, "connection refused");
                let _ = conn
                    .write_method(ConnectionClose {
                        reply_code: e.code,
                        reply_text: e.text,
                        class_id: e.class_id,
                        method_id: e.method_id,
                    })
                    .await;
                // Give the client a moment to answer close-ok (whatever the size of what
                // it sends first), then drop the socket.
                conn.set_frame_max(0);
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    loop {
                        match next_method(conn).await {
                            Ok(Method::ConnectionCloseOk(_)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
            }
            conn.shutdown().await;
            Err(())
        }
    }
}
