//! tswatch: the service around `tswatch-core`.
//!
//! # Layout
//!
//! One folder per role, in the order a batch meets them:
//!
//! - [`ingest`]: where a notification enters. SNS (`POST /notify`), SQS,
//!   the local folder watcher and the reconciliation of `raw/` all push
//!   raw keys onto one work queue, whose worker hands each to [`apply`];
//!   only how an item is retried and settled differs by source.
//! - [`csv`]: where a row is scored. CSV records, row timestamps and the
//!   scorer (parse, score then absorb, write), on plain `Read`/`Write`.
//! - [`apply`]: where state is committed. Exactly once per batch: score into
//!   a staged output, commit the state by compare-and-swap, publish the
//!   outputs; per-stream leases; alert webhooks after a commit.
//! - [`state`]: what is committed. The state documents, the object key
//!   layout (`raw/`, `processed/`, `state/`) and the recent rows.
//! - [`storage`]: the one interface over a local directory and S3 (with the
//!   AWS credential chain and listings).
//! - [`http`]: where reads are served. The API, the dashboard and the
//!   connection loop.
//! - [`service`] wires all of them together for `tswatch serve`;
//!   `telemetry` holds the counters behind `GET /metrics`; `report`
//!   turns an error into the lines a user or a log reads; [`progress`]
//!   draws the long commands' progress bars.
//! - [`cli`]: flags, configuration file, exit codes and the one-shot
//!   commands (`score`, `produce`, `baseline`); [`eval`]: detection quality
//!   on labelled scenarios and NAB.
//!
//! The data path, one way:
//!
//! ```text
//! SNS / SQS / folder / reconcile ──► ingest::queue ──► apply::processor
//!   apply::pipeline: storage raw/<name>.csv ──► csv::scorer ──► staged output
//!   apply::processor: commit state/ (compare-and-swap) ──► publish processed/
//! http::api ◄── reads state/ and processed/ through storage
//! ```

pub mod apply;
pub mod cli;
pub mod csv;
pub mod eval;
pub mod http;
pub mod ingest;
pub mod progress;
pub(crate) mod report;
pub mod service;
pub mod state;
pub mod storage;
pub(crate) mod telemetry;
