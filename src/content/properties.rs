//! The 14 basic properties of a message and their encoding (filled in by the codec work).
