//! What is committed: the state documents under `state/` ([`documents`]),
//! the object key layout and its validation ([`keys`]), the streams
//! whose states they are ([`stream`]), the recent rows kept for the
//! dashboard ([`recent`]) and what scoring a file produced, which a commit
//! records ([`scored`]). Pure data; storage does the I/O.

pub mod documents;
pub mod keys;
pub mod recent;
pub mod scored;
pub mod stream;
