//! Temporary stand-in for the store (replaced by the store work).
#![allow(missing_docs)]
use bytes::Bytes;
#[derive(Clone, Debug)]
pub struct Store;
#[derive(Debug)]
pub struct SyncTicket;
impl SyncTicket {
    pub async fn wait(self) -> Result<(), std::io::Error> {
        Ok(())
    }
    pub fn wait_blocking(self) -> Result<(), std::io::Error> {
        Ok(())
    }
    pub fn is_done(&self) -> bool {
        true
    }
}
pub struct RecoveredMessage {
    pub msg_id: u64,
    pub payload: Bytes,
    pub delivered: bool,
}
pub struct Recovered {
    pub definitions: Vec<(String, Bytes)>,
    pub queues: Vec<(u64, Vec<RecoveredMessage>)>,
}
impl Store {
    pub fn publish(&self, _q: u64, _m: u64, _p: Bytes) -> SyncTicket {
        SyncTicket
    }
    pub fn ack(&self, _q: u64, _m: u64) {}
    pub fn delivered(&self, _q: u64, _m: u64) {}
    pub fn delete_queue(&self, _q: u64) {}
    pub fn put_definition(&self, _k: &str, _v: Bytes) -> SyncTicket {
        SyncTicket
    }
    pub fn delete_definition(&self, _k: &str) -> SyncTicket {
        SyncTicket
    }
}
