//! memcache (work in progress)
pub mod listener;
