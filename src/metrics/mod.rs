//! metrics (work in progress)
pub mod http;
