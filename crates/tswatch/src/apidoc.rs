//! The HTTP API's response types and its OpenAPI document.
//!
//! Every JSON body the API answers with is one of the types here, built by
//! the handlers and serialized as is, so the document (`GET /openapi.json`,
//! derived from these types and the handlers' `#[utoipa::path]`
//! annotations) describes what is really sent. `GET /docs` is a page that
//! renders that document. Field order is the order on the wire.

use crate::recent::RecentSeries;
use crate::statedoc::{Summary, Totals};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, ServerBuilder};
use utoipa::{OpenApi, PartialSchema, ToSchema};

/// Every refusal, whichever layer makes it (a handler, the body limit, the
/// timeout, an unknown path or method).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"error": "limit must be a whole number (at most 1000 rows are returned), got \"abc\""}))]
pub struct ErrorBody {
    /// What was wrong, in a sentence.
    pub error: String,
}

/// `GET /health`: the process is up.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: HealthStatus,
    /// The bucket name, or the local data directory.
    #[schema(example = "my-sensor-bucket")]
    pub bucket: String,
    /// When this answer was made (UTC, ISO-8601 without zone).
    #[schema(example = "2026-02-24T00:10:51.123456")]
    pub timestamp: String,
}

/// The only `status` of `/health`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum HealthStatus {
    /// Up.
    #[serde(rename = "ok")]
    Ok,
}

/// `GET /ready`: whether storage answers now, the work waiting, and the age
/// of the state the read endpoints serve.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Ready {
    /// `ready` (status 200) or `not ready` (status 503).
    pub status: ReadyStatus,
    /// The storage probe.
    pub storage: StorageProbe,
    /// The work queue.
    pub queue: QueueDepth,
    /// The state the read endpoints answer from.
    pub state: StateAge,
    /// When this answer was made (UTC, ISO-8601 without zone).
    #[schema(example = "2026-02-24T00:10:51.123456")]
    pub timestamp: String,
}

/// `/ready`'s verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum ReadyStatus {
    /// Storage answered.
    #[serde(rename = "ready")]
    Ready,
    /// Storage did not answer (in time).
    #[serde(rename = "not ready")]
    NotReady,
}

/// One probe of storage: `latency_ms` when it answered, `error` when not.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StorageProbe {
    /// Whether storage answered within 2 s.
    pub reachable: bool,
    /// How long it took to answer, in milliseconds (0.1 ms steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = 0.4)]
    pub latency_ms: Option<f64>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// The work queue's depth.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueDepth {
    /// Files waiting to be processed.
    pub waiting: usize,
}

/// The age of the state served.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StateAge {
    /// Seconds since the oldest stream's state was read, when storage is
    /// unreachable and the last copy is served; `null` when it is current.
    #[schema(required)]
    pub stale_seconds: Option<u64>,
}

/// `GET /anomalies/recent`: anomalous rows of the 10 most recent files,
/// newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecentAnomalies<'a> {
    /// Rows returned.
    pub count: usize,
    /// The limit applied (the one asked for, at most 1000).
    pub limit: usize,
    /// The rows.
    pub anomalies: Vec<AnomalyRow<'a>>,
    /// Present (`true`) when the rows were cut at 4 MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub truncated: Option<bool>,
}

/// One anomalous row as its scored copy holds it: every input column (cells
/// as numbers where they parse, else text), the score columns, and
/// `source_file`, the scored copy it is in.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct AnomalyRow<'a>(pub &'a Map<String, Value>);

impl PartialSchema for AnomalyRow<'_> {
    fn schema() -> RefOr<Schema> {
        let num = || ObjectBuilder::new().schema_type(Type::Number);
        let text = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "One anomalous row: every input column (numbers where they parse, else text), \
                 per channel `<ch>_zscore` and `<ch>_zscore_flag` (null while the baseline is \
                 immature), the isolation forest's `if_label`, `if_score` and `if_flag`, \
                 `anomaly`, tswatch's `anomaly_score` and `reason`, and `source_file`.",
            ))
            .property(
                "anomaly_score",
                num().description(Some("0..1, comparable across files and channels")),
            )
            .property(
                "reason",
                text().description(Some("Why the row was flagged, e.g. `temperature z=6.12`")),
            )
            .property(
                "source_file",
                text().description(Some("The scored copy the row is in (`processed/...`)")),
            )
            .required("anomaly_score")
            .required("reason")
            .required("source_file")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .examples([serde_json::json!({
                "timestamp": "2026-02-24T00:10:51",
                "temperature": 31.42,
                "temperature_zscore": 6.1204,
                "temperature_zscore_flag": true,
                "if_label": -1,
                "if_score": -0.0712,
                "if_flag": true,
                "anomaly": true,
                "anomaly_score": 0.9731,
                "reason": "temperature z=6.12",
                "source_file": "processed/sensors_20260224T001051.csv"
            })])
            .into()
    }
}

impl ToSchema for AnomalyRow<'_> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("AnomalyRow")
    }
}

/// `GET /anomalies/summary`: totals over every stream, or a message before
/// the first file.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AnomalySummary {
    /// No file processed yet.
    Empty(NoFilesYet),
    /// Totals and the newest files.
    Totals(SummaryTotals),
}

/// The answer before the first file.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NoFilesYet {
    /// `No processed files yet.`
    pub message: NoFilesMessage,
}

/// The one message of `NoFilesYet`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum NoFilesMessage {
    /// The seed's words.
    #[serde(rename = "No processed files yet.")]
    NoFilesYet,
}

/// Totals over every stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SummaryTotals {
    /// Files processed.
    pub files_processed: u64,
    /// Rows scored.
    pub total_rows_scored: u64,
    /// Rows flagged.
    pub total_anomalies: u64,
    /// Events: runs of consecutive anomalous rows.
    pub total_events: u64,
    /// Events per stream (the default stream is `""`).
    pub events_by_stream: BTreeMap<String, u64>,
    /// `total_anomalies / total_rows_scored`, 4 decimals.
    #[schema(example = 0.0333)]
    pub overall_anomaly_rate: f64,
    /// The 5 newest files' summaries, newest first.
    pub most_recent: Vec<RecentSummary>,
}

/// A file's summary (as in `processed/<name>_summary.json`), marked when
/// its outputs are not published yet.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecentSummary {
    /// The summary.
    #[serde(flatten)]
    pub summary: Summary,
    /// Present (`false`) while the file is committed but its scored copy is
    /// not in `processed/` yet (a retry is on its way).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub published: Option<bool>,
}

/// `GET /baseline/current`: the default stream's baseline in the seed's
/// shape, other streams under `streams`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BaselineCurrent {
    /// Time of the default stream's last commit.
    #[schema(example = "2026-02-24T00:10:51.123456")]
    pub last_updated: String,
    /// Per channel.
    pub channels: BTreeMap<String, ChannelBaseline>,
    /// Other streams (`raw/<stream>/...`), present when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub streams: Option<BTreeMap<String, StreamBaseline>>,
}

/// One stream's baseline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamBaseline {
    /// Time of the stream's last commit.
    pub last_updated: String,
    /// Per channel.
    pub channels: BTreeMap<String, ChannelBaseline>,
}

/// One channel's running baseline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelBaseline {
    /// Values learned.
    pub observations: u64,
    /// Their mean, 4 decimals.
    #[schema(example = 22.0143)]
    pub mean: f64,
    /// Their standard deviation, 4 decimals.
    #[schema(example = 1.4987)]
    pub std: f64,
    /// `observations` reached the maturity threshold (30 by default).
    pub baseline_mature: bool,
}

/// `POST /notify`'s answers (status 200).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum NotifyAnswer {
    /// A notification's S3 records: what was queued, what was not.
    Queued(Queued),
    /// A subscription confirmation: the `SubscribeURL` is being fetched.
    Confirming(Confirming),
    /// An unsubscribe confirmation or an S3 test event.
    Acknowledged(Acknowledged),
}

/// The records of an S3 event notification.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "queued": ["raw/sensors_20260224T001051.csv"],
    "ignored": [{"key": "raw/notes.txt", "reason": "\"raw/notes.txt\" is not a CSV batch under raw/"}]
}))]
pub struct Queued {
    /// Present (`already received`) when the same signed message came
    /// before: nothing is done again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub status: Option<ReplayStatus>,
    /// Keys queued for processing (URL-decoded).
    #[schema(example = json!(["raw/sensors_20260224T001051.csv"]))]
    pub queued: Vec<String>,
    /// Records not acted on, and why.
    pub ignored: Vec<IgnoredRecord>,
}

/// The one `status` of a replayed message.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ReplayStatus {
    /// Seen within the last hour.
    #[serde(rename = "already received")]
    AlreadyReceived,
}

/// An S3 record that is not queued.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IgnoredRecord {
    /// Its key (URL-decoded when it decodes), `null` when it has none.
    #[schema(required)]
    pub key: Option<String>,
    /// Why it is not processed.
    #[schema(example = "\"raw/x.txt\" is not a CSV batch under raw/")]
    pub reason: String,
}

/// A subscription being confirmed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Confirming {
    /// Always `confirming`.
    pub status: ConfirmingStatus,
    /// The topic subscribed to.
    #[schema(example = "arn:aws:sns:us-east-1:123456789012:tswatch")]
    pub topic: String,
}

/// The one `status` of a `Confirming` answer.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ConfirmingStatus {
    /// The `SubscribeURL` is fetched in the background.
    #[serde(rename = "confirming")]
    Confirming,
}

/// A message acknowledged without work.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Acknowledged {
    /// What was acknowledged.
    pub status: AckStatus,
}

/// What an `Acknowledged` answer acknowledges.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum AckStatus {
    /// An `UnsubscribeConfirmation`.
    #[serde(rename = "acknowledged")]
    Unsubscribed,
    /// S3's `s3:TestEvent`.
    #[serde(rename = "test event acknowledged")]
    TestEvent,
}

/// `GET /dashboard/data`: what the dashboard draws for one stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardData<'a> {
    /// The stream shown (`default` for `raw/<name>.csv`).
    pub stream: String,
    /// Every stream with state.
    pub streams: Vec<String>,
    /// Time of the stream's last commit.
    pub last_updated: &'a str,
    /// Running totals.
    pub totals: &'a Totals,
    /// Per channel: maturity and band.
    pub channels: BTreeMap<String, DashboardChannel>,
    /// The stream's last rows.
    pub recent: &'a RecentSeries,
    /// The files in the ledger, oldest first.
    pub files: Vec<DashboardFile<'a>>,
    /// The newest anomalous rows (at most 50).
    pub anomalies: Vec<DashboardAnomaly<'a>>,
    /// The last files of this stream this instance refused, newest first.
    #[schema(value_type = Vec<RefusedFile>)]
    pub errors: Vec<Value>,
}

/// One channel on the dashboard.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardChannel {
    /// Values learned.
    pub observations: u64,
    /// Whether the baseline is mature.
    pub mature: bool,
    /// The band values are held against; `null` until there is one.
    #[schema(required)]
    pub band: Option<Band>,
}

/// The band a channel's values are held against.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Band {
    /// Mean of the reference window.
    pub mean: f64,
    /// Its spread.
    pub sd: f64,
    /// The |z| threshold in force, 4 decimals.
    pub z: f64,
    /// The time-of-day profile once learned, else `null`.
    #[schema(required)]
    pub daily: Option<DailyBand>,
}

/// A time-of-day baseline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DailyBand {
    /// Level per bucket of the day (UTC), bucket `i` starting at
    /// `i·24/levels.len()` hours.
    pub levels: Vec<f64>,
    /// Spread of the departures from those levels.
    pub sd: f64,
}

/// One file in the dashboard's ledger.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardFile<'a> {
    /// Raw key.
    pub source_key: &'a str,
    /// When it was processed.
    pub processed_at: &'a str,
    /// Rows scored.
    pub total_rows: u64,
    /// Rows flagged.
    pub anomaly_count: u64,
    /// Runs of consecutive anomalous rows.
    pub event_count: u64,
}

/// One anomalous row on the dashboard.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardAnomaly<'a> {
    /// Raw key of its file.
    pub file: &'a str,
    /// Its timestamp cell, `null` without a timestamp column.
    #[schema(value_type = Value, required)]
    pub time: Value,
    /// Its `anomaly_score`.
    #[schema(value_type = Option<f64>, required)]
    pub anomaly_score: Value,
    /// Its `reason`.
    #[schema(value_type = Option<String>, required)]
    pub reason: Value,
}

/// A file this instance refused (as recorded next to its outputs, in
/// `processed/<name>_error.json`, plus its stream).
///
/// Schema only: the processor records it as JSON.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefusedFile {
    /// Raw key.
    pub source_key: String,
    /// ETag of the refused object.
    pub source_etag: String,
    /// Why it was refused.
    pub error: String,
    /// The input line at fault, when there is one.
    #[schema(required)]
    pub line: Option<u64>,
    /// When it was refused.
    pub failed_at: String,
    /// Its stream (`""`: the default one).
    pub stream: String,
}

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
        crate::api::notify,
        crate::api::recent,
        crate::api::summary,
        crate::api::baseline,
        crate::api::health,
        crate::api::ready,
        crate::api::metrics,
        crate::dashboard::page,
        crate::dashboard::data,
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
pub struct ApiDoc;

/// The document as served: built once.
pub fn document() -> &'static str {
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
const DOCS_PAGE: &str = include_str!("apidoc/docs.html");

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
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        DOCS_PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let mut routed: Vec<(String, String)> = crate::api::routes()
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
