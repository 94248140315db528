//! memcache (work in progress)
