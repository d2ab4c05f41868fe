//! Where state is committed: one raw batch applied exactly once
//! ([`processor`]: score into a staged output, commit the state by
//! compare-and-swap, publish the outputs), the object streaming around the
//! scorer ([`pipeline`]), per-stream leases for instances sharing a queue
//! ([`lease`]) and the alert webhooks offered after a commit ([`alerts`]).

pub mod alerts;
pub mod lease;
pub mod pipeline;
pub mod processor;
