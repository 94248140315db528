//! The message's encoded form, shared by every layer: field values and tables, the 14
//! basic properties, and their binary encoding (AMQP 0-9-1 wire format, which is also the
//! form the store keeps). A leaf: it depends on nothing else in the crate.

pub mod properties;
pub mod value;


pub use value::{FieldTable, FieldValue};
