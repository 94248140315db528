//! A connection over the listener's `connection_max`: refused with a reason, so that
//! clients report it instead of a reset or a hang. The client gets the normal start and
//! tune, and its connection.open is answered with connection.close 530 NOT_ALLOWED
//! `connection refused: node connection limit (N) is reached`: where RabbitMQ refuses a
//! vhost or user over its connection limit, and with the same code. (RabbitMQ 3.10.8's
//! node-wide `connection_max` is only its TCP listener's accept limit, per acceptor: no
//! AMQP answer at all, and a private node with `connection_max = 1` still let 3 clients
//! in.) Nothing of
//! the broker is touched (no login, no registration); the whole exchange must finish
//! within the handshake timeout.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::AmqpError;
use super::frame::{encode_method, parse_frame, parse_protocol_header, Frame, PROTOCOL_HEADER};
use super::methods::*;
use crate::content::FieldTable;

/// Largest frame read while refusing (a start-ok with large client properties fits).
const FRAME_MAX: u32 = 131_072;

/// Refuses one client; `limit` is the connection_max it ran into.
pub async fn refuse_connection(mut stream: TcpStream, limit: u32, timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let _ = tokio::time::timeout(timeout, exchange(&mut stream, limit)).await;
    let _ = stream.shutdown().await;
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<()> {
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(()),
    }
}

async fn send(stream: &mut TcpStream, m: impl Into<Method>) -> Option<()> {
    let mut out = BytesMut::new();
    encode_method(&mut out, 0, &m.into());
    stream.write_all(&out).await.ok()
}

/// The next method on channel 0 (heartbeats skipped), or None when the client is gone
/// or sends garbage.
async fn next(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Method> {
    loop {
        match parse_frame(buf, FRAME_MAX) {
            Ok(Some(Frame::Method { channel: 0, method })) => return Some(method),
            Ok(Some(Frame::Heartbeat { .. })) => continue,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => read_more(stream, buf).await?,
        }
    }
}

async fn exchange(stream: &mut TcpStream, limit: u32) -> Option<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match parse_protocol_header(&mut buf) {
            Ok(Some(())) => break,
            Ok(None) => read_more(stream, &mut buf).await?,
            Err(_) => {
                let _ = stream.write_all(PROTOCOL_HEADER).await;
                return None;
            }
        }
    }
    send(
        stream,
        ConnectionStart {
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            server_properties: FieldTable::new(),
            mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
            locales: Bytes::from_static(b"en_US"),
        },
    )
    .await?;
    let Method::ConnectionStartOk(_) = next(stream, &mut buf).await? else {
        return None;
    };
    send(
        stream,
        ConnectionTune {
            channel_max: 1,
            frame_max: FRAME_MAX,
            heartbeat: 0,
        },
    )
    .await?;
    let Method::ConnectionTuneOk(_) = next(stream, &mut buf).await? else {
        return None;
    };
    let Method::ConnectionOpen(_) = next(stream, &mut buf).await? else {
        return None;
    };
    let refused = AmqpError::new(
        reply::NOT_ALLOWED,
        format!("connection refused: node connection limit ({limit}) is reached"),
    )
    .on_ids(ConnectionOpen::CLASS_ID, ConnectionOpen::METHOD_ID);
    send(
        stream,
        ConnectionClose {
            reply_code: refused.code,
            reply_text: refused.text,
            class_id: refused.class_id,
            method_id: refused.method_id,
        },
    )
    .await?;
    // Wait for close-ok (or the client's close), so our close is not a reset.
    while !matches!(
        next(stream, &mut buf).await?,
        Method::ConnectionCloseOk(_) | Method::ConnectionClose(_)
    ) {}
    Some(())
}
