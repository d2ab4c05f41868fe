//! The API's OpenAPI document (`GET /openapi.json`), derived from the
//! response types in `schema` and the handlers' `#[utoipa::path]`
//! annotations, and `GET /docs`, a page that renders it.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::OpenApi;
use utoipa::openapi::ServerBuilder;

use crate::http::api::{Route, endpoint, html_page};
use crate::http::schema::ErrorBody;
use axum::http::Method;
/// The OpenAPI document of the HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tswatch HTTP API",
        description = "Anomaly scores of CSV time-series batches in a bucket or folder: \
            the seed's five endpoints (same paths and JSON shapes), readiness, \
            Prometheus metrics and the dashboard. Every refusal is a 4xx or 5xx \
            with a JSON `{\"error\": ...}` body (an unknown path is 404, a wrong \
            method 405). A read endpoint answering from the last state it read, \
            while storage is unreachable, says how old it is in \
            `x-tswatch-stale-seconds`."
    ),
    paths(
        crate::http::api::notify,
        crate::http::api::recent,
        crate::http::api::summary,
        crate::http::api::baseline,
        crate::http::api::health,
        crate::http::api::ready,
        crate::http::api::metrics,
        crate::http::dashboard::page,
        crate::http::dashboard::data,
        openapi_json,
        docs,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "ingest", description = "How batches arrive"),
        (name = "results", description = "Scores, totals and baselines (the seed's read endpoints)"),
        (name = "operations", description = "Liveness, readiness, metrics"),
        (name = "dashboard", description = "The web dashboard"),
        (name = "api", description = "This document and its page"),
    )
)]
pub(crate) struct ApiDoc;

/// The document as served: built once.
pub(crate) fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        // Relative to wherever the API is reached (a proxy may add a prefix).
        doc.servers = Some(vec![ServerBuilder::new().url(".").build()]);
        // Serializing these types cannot fail; if it did, the page says so.
        doc.to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"OpenAPI document: {e}\"}}"))
    })
}

/// The document's routes: `/openapi.json` and `/docs`.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        endpoint("/openapi.json", Method::GET, openapi_json),
        endpoint("/docs", Method::GET, docs),
    ]
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "api",
    summary = "This API's OpenAPI 3.1 document",
    description = "Derived from the code's response types and handlers, so it \
        describes what is really sent.",
    responses((status = 200, description = "The document", content_type = "application/json",
        body = Object)),
)]
pub(crate) async fn openapi_json() -> Response {
    ([(CONTENT_TYPE, "application/json")], document()).into_response()
}

/// The API page: HTML, CSS and script in one file, compiled in.
const DOCS_PAGE: &str = include_str!("openapi/docs.html");

/// `GET /docs`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "api",
    summary = "A readable page of this document",
    description = "Self-contained (no external assets): every endpoint with its \
        parameters, request body, responses, schemas and examples, rendered from \
        `/openapi.json`.",
    responses((status = 200, description = "The page", content_type = "text/html")),
)]
pub(crate) async fn docs() -> Response {
    html_page(DOCS_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::schema::*;
    use crate::state::documents::Summary;
    use serde_json::json;
    use serde_json::{Map, Value};

    /// The operations of a path item (its other keys are not methods).
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    #[test]
    fn the_documented_operations_are_the_routed_ones() {
        let doc: Value = serde_json::from_str(document()).expect("document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("path item");
                item.keys()
                    .filter(|k| METHODS.contains(&k.as_str()))
                    .map(|m| (path.clone(), m.to_uppercase()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut routed: Vec<(String, String)> = crate::http::routes()
            .into_iter()
            .map(|(path, method, _)| (path.to_string(), method.to_string()))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(
            documented, routed,
            "document (left) and router (right) differ"
        );
    }

    // Byte-for-byte what the handlers sent before these types, for the
    // shapes a running service rarely shows (a replay, a cut answer, a
    // late publication); tests/it/openapi.rs compares the rest live.

    #[test]
    fn a_replay_answer_is_unchanged() {
        let typed = NotifyAnswer::Queued(Queued {
            status: Some(ReplayStatus::AlreadyReceived),
            queued: Vec::new(),
            ignored: Vec::new(),
        });
        let old = json!({ "status": "already received", "queued": [], "ignored": [] });
        assert_eq!(
            serde_json::to_string(&typed).expect("serializes"),
            old.to_string()
        );
    }

    #[test]
    fn a_cut_answer_is_unchanged() {
        let row: Map<String, Value> = serde_json::from_value(json!({
            "timestamp": "2026-01-01T00:00:00", "temperature": 31.5, "anomaly": true,
            "anomaly_score": 0.97, "reason": "temperature z=6.12", "source_file": "processed/a.csv"
        }))
        .expect("a row");
        let typed = RecentAnomalies {
            count: 1,
            limit: 50,
            anomalies: vec![AnomalyRow(&row)],
            truncated: Some(true),
        };
        let mut old = json!({ "count": 1, "limit": 50, "anomalies": [&row] });
        old["truncated"] = Value::from(true);
        assert_eq!(
            serde_json::to_string(&typed).expect("serializes"),
            old.to_string()
        );
    }

    #[test]
    fn an_unpublished_summary_is_unchanged() {
        let summary: Summary = serde_json::from_value(json!({
            "source_key": "raw/a.csv", "output_key": "processed/a.csv",
            "processed_at": "2026-01-01T00:00:00.000001", "total_rows": 100,
            "anomaly_count": 3, "anomaly_rate": 0.03, "event_count": 2,
            "baseline_observation_counts": {"t": 100}, "source_etag": "abc",
            "channels": ["t"], "missing_cells": 0, "state_seq": 4, "duration_ms": 1.5
        }))
        .expect("a summary");
        for published in [None, Some(false)] {
            let typed = RecentSummary {
                summary: summary.clone(),
                published,
            };
            let mut old = serde_json::to_value(&summary).expect("serializes");
            if published.is_some() {
                old["published"] = Value::from(false);
            }
            assert_eq!(
                serde_json::to_string(&typed).expect("serializes"),
                old.to_string()
            );
        }
    }
}
