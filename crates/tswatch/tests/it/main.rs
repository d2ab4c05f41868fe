//! Integration tests: the real binary against real components.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod faultkit;
mod faults;
mod harness;
mod load;
mod local;
mod s3;
