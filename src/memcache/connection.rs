//! One client's socket with its two buffers, as mini-redis's `Connection`: bytes read
//! but not yet decoded (and the [`MemcacheCodec`] that decodes them), and answers not
//! yet written. Every read and write of the socket is here, so the byte counters are
//! fed in one place.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::codec::{Decoded, MemcacheCodec};
use super::parser::Limits;
use crate::core::{Broker, ConnectionInfo};

/// How much a client may pipeline behind a waiting `get` before the wait stops reading.
const MAX_PIPELINED_WHILE_WAITING: usize = 1 << 20;

pub(super) struct Connection {
    stream: TcpStream,
    /// Read, not yet decoded.
    buf: BytesMut,
    codec: MemcacheCodec,
    /// Answers not yet written, in request order.
    pub(super) out: BytesMut,
    info: Arc<ConnectionInfo>,
}

impl Connection {
    pub(super) fn new(stream: TcpStream, limits: Limits, info: Arc<ConnectionInfo>) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            codec: MemcacheCodec::new(limits),
            out: BytesMut::with_capacity(16 * 1024),
            info,
        }
    }

    /// The next request already read, if one is whole.
    pub(super) fn next_request(&mut self) -> Option<Decoded> {
        // The codec never fails: malformed input is a `Decoded::Error`.
        self.codec.decode(&mut self.buf).ok().flatten()
    }

    /// One read; with memcached's `idle_timeout` (0 = off), a client silent that long
    /// reads as gone (memcached closes it without a word). `Ok(0)`: gone.
    pub(super) async fn read(&mut self, idle: Duration) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = if idle.is_zero() {
            self.stream.read_buf(&mut self.buf).await?
        } else {
            match tokio::time::timeout(idle, self.stream.read_buf(&mut self.buf)).await {
                Ok(r) => r?,
                Err(_) => 0,
            }
        };
        self.count_read(n);
        Ok(n)
    }

    fn count_read(&self, n: usize) {
        self.info.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Resolves when the client has closed its end (or the socket failed), for a
    /// request that waits (a timed `get`) to tell a hang-up from a pipelined request.
    /// Requests pipelined meanwhile stay in the buffer for after the wait.
    pub(super) async fn hung_up(&mut self) {
        loop {
            if self.buf.len() >= MAX_PIPELINED_WHILE_WAITING {
                std::future::pending::<()>().await;
            }
            self.buf.reserve(4096);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self.count_read(n),
            }
        }
    }

    /// Writes the answers out. While the client does not read, these bytes are held
    /// memory: the memory alarm sees them.
    pub(super) async fn write_out(&mut self, broker: &Broker) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let n = self.out.len() as u64;
        let flow = broker.flow();
        flow.add_buffered(n);
        let written = self.stream.write_all(&self.out).await;
        flow.sub_buffered(n);
        written?;
        self.info.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.out.clear();
        Ok(())
    }
}
