//! Unit tests of the core through its own API, without sockets or front ends: a
//! recording [`DeliverySink`](super::DeliverySink) stands in for a connection. Timers
//! run on tokio's paused clock, so TTL and `x-expires` tests take no real time.

mod deadletter;
mod dispatch;
mod expiry;
mod paging;
mod requeue;
mod support;
