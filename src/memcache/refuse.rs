//! A connection over the listener's `connection_max`: memcached's answer (a
//! `SERVER_ERROR` line, then close) before anything is read.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the refused client reads.
pub const TOO_MANY: &[u8] = b"SERVER_ERROR too many connections\r\n";

/// Refuses one client.
pub async fn refuse_connection(mut stream: TcpStream) {
    let _ = stream.write_all(TOO_MANY).await;
    let _ = stream.shutdown().await;
}
