//! What is committed: the state documents under `state/` ([`documents`]),
//! the object key layout and its validation ([`keys`]), the streams
//! whose states they are ([`stream`]) and the recent rows
//! kept for the dashboard ([`recent`]). Pure data; storage does the I/O.

pub mod documents;
pub mod keys;
pub mod recent;
pub mod stream;
