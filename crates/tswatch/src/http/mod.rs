//! Where reads are served: the HTTP API (`api`), the dashboard
//! (`dashboard`) and the connection loop with its timeouts and cap
//! ([`server`]).

pub(crate) mod api;
pub(crate) mod dashboard;
pub mod server;
