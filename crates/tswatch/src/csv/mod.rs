//! Where a row is scored: CSV records read from a byte stream
//! ([`records`]), row timestamps (`timestamp`) and the scorer
//! ([`scorer`]: parse, score then absorb, write the annotated copy). No
//! storage, no async: plain `Read` and `Write`.

pub mod records;
pub mod scorer;
pub(crate) mod timestamp;
