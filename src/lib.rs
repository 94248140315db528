//! qgate: one queue core served by several front ends.
//!
//! Imports run one way: front ends (`amqp`, `memcache`, `http`) -> `core` -> `store`,
//! with `config`, `content` and `exposition` (the metrics model) as leaves everyone may use.
#![deny(missing_docs)]

pub mod amqp;
pub mod config;
pub mod content;
pub mod core;
pub mod definitions;
pub mod exposition;
pub mod http;
pub mod management;
pub mod memcache;
pub mod server;
pub mod store;
pub mod upstream;
