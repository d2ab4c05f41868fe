//! Where state is committed: one raw batch applied exactly once
//! ([`processor`]: score into a staged output, commit the state by
//! compare-and-swap, publish the outputs), the object streaming around the
//! scorer ([`pipeline`]), per-stream leases for instances sharing a queue
//! (`lease`) and the alert webhooks offered after a commit (`alerts`).

pub(crate) mod alerts;
pub(crate) mod lease;
pub mod pipeline;
pub mod processor;

use std::time::Duration;

/// The wait before the `attempt`-th retry (from 1) of anything that fails
/// on storage or the network (a file, an alert, an SQS receive): `first`,
/// doubling, at most 30 s.
pub(crate) fn retry_wait(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(30))
}
