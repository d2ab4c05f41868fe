//! Where reads are served: the HTTP API (`api`), the dashboard
//! (`dashboard`), the API's response types (`schema`), its OpenAPI document
//! and `/docs` page (`openapi`), and the connection loop with its timeouts
//! and cap ([`server`]).

pub(crate) mod api;
pub(crate) mod dashboard;
pub(crate) mod openapi;
pub(crate) mod schema;
pub mod server;

/// Every endpoint the service routes: the API's, the dashboard's and the
/// document's. [`api::router`] serves exactly these, and a test holds them
/// equal to the OpenAPI document's paths and methods, so a route without
/// documentation fails it.
pub(crate) fn routes() -> Vec<api::Route> {
    let mut all = api::routes();
    all.extend(dashboard::routes());
    all.extend(openapi::routes());
    all
}
