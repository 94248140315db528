//! The message's encoded form, shared by every layer: field values and tables, the 14
//! basic properties, and their binary encoding (AMQP 0-9-1 wire format, which is also the
//! form the store keeps). A leaf: it depends on nothing else in the crate.

pub mod json;
pub mod properties;
pub mod value;

pub use properties::Properties;
pub use value::{FieldTable, FieldValue};

/// Why bytes could not be decoded into field values, tables or properties.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a value (or a size prefix points past the end).
    #[error("truncated input")]
    Truncated,
    /// A field value carries a type tag that is not one of `tbBsuIilfdDSATFVx`.
    #[error("unknown field value type {:?}", char::from(*.0))]
    UnknownFieldType(u8),
    /// Tables/arrays nest deeper than [`value::MAX_DEPTH`].
    #[error("field tables nested too deeply")]
    TooDeep,
}
