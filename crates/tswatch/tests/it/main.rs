//! Integration tests: the real binary against real components.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod alerts;
mod cli;
mod conformance;
mod crashtest;
mod credentials;
mod dashboard;
mod eval;
mod faultkit;
mod hardening;
mod harness;
mod hostile;
mod hygiene;
mod load;
mod local;
mod metrics;
mod openapi;
mod oracle;
mod s3;
mod signer;
mod snapshots;
mod sns_verify;
mod sqs;
mod storefail;
mod stores;
