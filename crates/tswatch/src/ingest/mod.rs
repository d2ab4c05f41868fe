//! Where a notification enters: every source of work pushes raw keys onto
//! the one work queue ([`queue`]), whose worker applies them; how an item
//! is retried and settled is the one thing that differs by source.
//!
//! - [`sns`]: SNS messages posted to `/notify` (parsing, signature checks);
//! - [`sqs`] and `sqs_worker`: an SQS queue of S3 event notifications (the
//!   consumer feeds the work queue and settles each message with SQS);
//! - `s3_event`: the S3 event parser every path shares;
//! - [`queue`]: the queue, its worker, the local folder watcher and the
//!   periodic reconciliation of `raw/` against what was processed.

pub mod queue;
pub(crate) mod s3_event;
pub mod sns;
pub mod sqs;
pub(crate) mod sqs_worker;
