//! tswatch: the service around `tswatch-core`.
//!
//! Data flows one way: source ([`worker`], [`api`]) → parse and score
//! ([`csvscore`] via [`pipeline`]) → write outputs → commit state
//! ([`processor`], [`statedoc`]) through [`storage`].

pub mod alerts;
pub mod api;
pub mod aws;
pub mod cli;
pub mod csvscore;
mod dashboard;
pub mod eval;
pub mod events;
pub mod exit;
pub mod http;
pub mod keys;
pub mod lease;
pub mod nab;
pub mod offline;
pub mod pipeline;
pub mod processor;
pub mod progress;
pub mod recent;
pub mod records;
pub mod report;
pub mod s3list;
pub mod scenario;
pub mod server;
pub mod sns;
pub mod sqs;
pub mod sqs_worker;
pub mod statedoc;
pub mod storage;
pub mod telemetry;
pub mod timestamp;
pub mod worker;
