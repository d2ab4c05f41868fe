//! Where reads are served: the HTTP API ([`api`]), the dashboard
//! ([`dashboard`]) and the connection loop with its timeouts and cap
//! ([`server`]).

pub mod api;
pub mod dashboard;
pub mod server;
