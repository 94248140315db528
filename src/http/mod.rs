//! HTTP: the serving stack both HTTP listeners share, and the metrics listener
//! (Prometheus `/metrics` and `/healthz`, port 15692 as rabbitmq_prometheus). The
//! management API runs on the same stack on its own listener ([`crate::management`]).
//!
//! # Layout
//! - [`server`]: hyper's HTTP/1.1 connections under an axum router, limits, shutdown.
//! - [`routes`]: the metrics listener's routes.
//! - [`metrics`]: what a scrape shows: the broker's families read from the core, the
//!   collectors front ends register, the `metrics` facade's series.
//! - [`process`]: the process's resource use (also shown by the management API).
//! - this file: [`Bound`], where every listener is bound, handed to the HTTP front
//!   ends by the server.

pub mod metrics;
pub mod process;
pub mod routes;
pub mod server;

use std::net::SocketAddr;

pub use server::{json_error, node_name, percent_decode, serve, Peer, MAX_HEAD, READ_TIMEOUT};

/// Addresses the listeners are bound to (port 0 resolved), as the server passes them
/// in; the AMQP address reads as port 0 when its listener is off (upstream mode).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// AMQP.
    pub amqp: SocketAddr,
    /// memcache.
    pub memcache: SocketAddr,
    /// HTTP.
    pub http: SocketAddr,
    /// Management (API and console).
    pub management: SocketAddr,
}
