//! The HTTP API's response types.
//!
//! Every JSON body the API answers with is one of the types here, built by
//! the handlers and serialized as is, so the OpenAPI document (see
//! `openapi`, derived from these types and the handlers' `#[utoipa::path]`
//! annotations) describes what is really sent. Field order is the order on
//! the wire.

use crate::state::documents::{Summary, Totals};
use crate::state::recent::RecentSeries;
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// Every refusal, whichever layer makes it (a handler, the body limit, the
/// timeout, an unknown path or method).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"error": "limit must be a whole number (at most 1000 rows are returned), got \"abc\""}))]
pub(crate) struct ErrorBody {
    /// What was wrong, in a sentence.
    pub(crate) error: String,
}

/// `GET /health`: the process is up.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    pub(crate) status: HealthStatus,
    /// The bucket name, or the local data directory.
    #[schema(example = "my-sensor-bucket")]
    pub(crate) bucket: String,
    /// When this answer was made (UTC, ISO-8601 without zone).
    #[schema(example = "2026-02-24T00:10:51.123456")]
    pub(crate) timestamp: String,
}

/// The only `status` of `/health`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(crate) enum HealthStatus {
    /// Up.
    #[serde(rename = "ok")]
    Ok,
}

/// `GET /ready`: whether storage answers now, the work waiting, and the age
/// of the state the read endpoints serve.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Ready {
    /// `ready` (status 200) or `not ready` (status 503).
    pub(crate) status: ReadyStatus,
    /// The storage probe.
    pub(crate) storage: StorageProbe,
    /// The work queue.
    pub(crate) queue: QueueDepth,
    /// The state the read endpoints answer from.
    pub(crate) state: StateAge,
    /// When this answer was made (UTC, ISO-8601 without zone).
    #[schema(example = "2026-02-24T00:10:51.123456")]
    pub(crate) timestamp: String,
}

/// `/ready`'s verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) enum ReadyStatus {
    /// Storage answered.
    #[serde(rename = "ready")]
    Ready,
    /// Storage did not answer (in time).
    #[serde(rename = "not ready")]
    NotReady,
}

/// One probe of storage: `latency_ms` when it answered, `error` when not.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct StorageProbe {
    /// Whether storage answered within 2 s.
    pub(crate) reachable: bool,
    /// How long it took to answer, in milliseconds (0.1 ms steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = 0.4)]
    pub(crate) latency_ms: Option<f64>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) error: Option<String>,
}

/// The work queue's depth.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct QueueDepth {
    /// Files waiting to be processed.
    pub(crate) waiting: usize,
}

/// The age of the state served.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct StateAge {
    /// Seconds since the oldest stream's state was read, when storage is
    /// unreachable and the last copy is served; `null` when it is current.
    #[schema(required)]
    pub(crate) stale_seconds: Option<u64>,
}

/// `GET /anomalies/recent`: anomalous rows of the 10 most recent files,
/// newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct RecentAnomalies<'a> {
    /// Rows returned.
    pub(crate) count: usize,
    /// The limit applied (the one asked for, at most 1000).
    pub(crate) limit: usize,
    /// The rows.
    pub(crate) anomalies: Vec<AnomalyRow<'a>>,
    /// Present (`true`) when the rows were cut at 4 MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) truncated: Option<bool>,
}

/// One anomalous row as its scored copy holds it: every input column (cells
/// as numbers where they parse, else text), the score columns, and
/// `source_file`, the scored copy it is in.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub(crate) struct AnomalyRow<'a>(pub(crate) &'a Map<String, Value>);

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
pub(crate) enum AnomalySummary {
    /// No file processed yet.
    Empty(NoFilesYet),
    /// Totals and the newest files.
    Totals(SummaryTotals),
}

/// The answer before the first file.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct NoFilesYet {
    /// `No processed files yet.`
    pub(crate) message: NoFilesMessage,
}

/// The one message of `NoFilesYet`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(crate) enum NoFilesMessage {
    /// The seed's words.
    #[serde(rename = "No processed files yet.")]
    NoFilesYet,
}

/// Totals over every stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SummaryTotals {
    /// Files processed.
    pub(crate) files_processed: u64,
    /// Rows scored.
    pub(crate) total_rows_scored: u64,
    /// Rows flagged.
    pub(crate) total_anomalies: u64,
    /// Events: runs of consecutive anomalous rows.
    pub(crate) total_events: u64,
    /// Events per stream (the default stream is `""`).
    pub(crate) events_by_stream: BTreeMap<String, u64>,
    /// `total_anomalies / total_rows_scored`, 4 decimals.
    #[schema(example = 0.0333)]
    pub(crate) overall_anomaly_rate: f64,
    /// The 5 newest files' summaries, newest first.
    pub(crate) most_recent: Vec<RecentSummary>,
}

/// A file's summary (as in `processed/<name>_summary.json`), marked when
/// its outputs are not published yet.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct RecentSummary {
    /// The summary.
    #[serde(flatten)]
    pub(crate) summary: Summary,
    /// Present (`false`) while the file is committed but its scored copy is
    /// not in `processed/` yet (a retry is on its way).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) published: Option<bool>,
}

/// `GET /baseline/current`: the default stream's baseline in the seed's
/// shape, other streams under `streams`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct BaselineCurrent {
    /// Time of the default stream's last commit.
    #[schema(example = "2026-02-24T00:10:51.123456")]
    pub(crate) last_updated: String,
    /// Per channel.
    pub(crate) channels: BTreeMap<String, ChannelBaseline>,
    /// Other streams (`raw/<stream>/...`), present when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) streams: Option<BTreeMap<String, StreamBaseline>>,
}

/// One stream's baseline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct StreamBaseline {
    /// Time of the stream's last commit.
    pub(crate) last_updated: String,
    /// Per channel.
    pub(crate) channels: BTreeMap<String, ChannelBaseline>,
}

/// One channel's running baseline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ChannelBaseline {
    /// Values learned.
    pub(crate) observations: u64,
    /// Their mean, 4 decimals.
    #[schema(example = 22.0143)]
    pub(crate) mean: f64,
    /// Their standard deviation, 4 decimals.
    #[schema(example = 1.4987)]
    pub(crate) std: f64,
    /// `observations` reached the maturity threshold (30 by default).
    pub(crate) baseline_mature: bool,
}

/// `POST /notify`'s answers (status 200).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum NotifyAnswer {
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
pub(crate) struct Queued {
    /// Present (`already received`) when the same signed message came
    /// before: nothing is done again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) status: Option<ReplayStatus>,
    /// Keys queued for processing (URL-decoded).
    #[schema(example = json!(["raw/sensors_20260224T001051.csv"]))]
    pub(crate) queued: Vec<String>,
    /// Records not acted on, and why.
    pub(crate) ignored: Vec<IgnoredRecord>,
}

/// The one `status` of a replayed message.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(crate) enum ReplayStatus {
    /// Seen within the last hour.
    #[serde(rename = "already received")]
    AlreadyReceived,
}

/// An S3 record that is not queued.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct IgnoredRecord {
    /// Its key (URL-decoded when it decodes), `null` when it has none.
    #[schema(required)]
    pub(crate) key: Option<String>,
    /// Why it is not processed.
    #[schema(example = "\"raw/x.txt\" is not a CSV batch under raw/")]
    pub(crate) reason: String,
}

/// A subscription being confirmed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Confirming {
    /// Always `confirming`.
    pub(crate) status: ConfirmingStatus,
    /// The topic subscribed to.
    #[schema(example = "arn:aws:sns:us-east-1:123456789012:tswatch")]
    pub(crate) topic: String,
}

/// The one `status` of a `Confirming` answer.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(crate) enum ConfirmingStatus {
    /// The `SubscribeURL` is fetched in the background.
    #[serde(rename = "confirming")]
    Confirming,
}

/// A message acknowledged without work.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Acknowledged {
    /// What was acknowledged.
    pub(crate) status: AckStatus,
}

/// What an `Acknowledged` answer acknowledges.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(crate) enum AckStatus {
    /// An `UnsubscribeConfirmation`.
    #[serde(rename = "acknowledged")]
    Unsubscribed,
    /// S3's `s3:TestEvent`.
    #[serde(rename = "test event acknowledged")]
    TestEvent,
}

/// `GET /dashboard/data`: what the dashboard draws for one stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DashboardData<'a> {
    /// The stream shown (`default` for `raw/<name>.csv`).
    pub(crate) stream: String,
    /// Every stream with state.
    pub(crate) streams: Vec<String>,
    /// Time of the stream's last commit.
    pub(crate) last_updated: &'a str,
    /// Running totals.
    pub(crate) totals: &'a Totals,
    /// Per channel: maturity and band.
    pub(crate) channels: BTreeMap<String, DashboardChannel>,
    /// The stream's last rows.
    pub(crate) recent: &'a RecentSeries,
    /// The files in the ledger, oldest first.
    pub(crate) files: Vec<DashboardFile<'a>>,
    /// The newest anomalous rows (at most 50).
    pub(crate) anomalies: Vec<DashboardAnomaly<'a>>,
    /// The last files of this stream this instance refused, newest first.
    #[schema(value_type = Vec<RefusedFile>)]
    pub(crate) errors: Vec<Value>,
}

/// One channel on the dashboard.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DashboardChannel {
    /// Values learned.
    pub(crate) observations: u64,
    /// Whether the baseline is mature.
    pub(crate) mature: bool,
    /// The band values are held against; `null` until there is one.
    #[schema(required)]
    pub(crate) band: Option<Band>,
}

/// The band a channel's values are held against.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Band {
    /// Mean of the reference window.
    pub(crate) mean: f64,
    /// Its spread.
    pub(crate) sd: f64,
    /// The |z| threshold in force, 4 decimals.
    pub(crate) z: f64,
    /// The time-of-day profile once learned, else `null`.
    #[schema(required)]
    pub(crate) daily: Option<DailyBand>,
}

/// A time-of-day baseline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DailyBand {
    /// Level per bucket of the day (UTC), bucket `i` starting at
    /// `i·24/levels.len()` hours.
    pub(crate) levels: Vec<f64>,
    /// Spread of the departures from those levels.
    pub(crate) sd: f64,
}

/// One file in the dashboard's ledger.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DashboardFile<'a> {
    /// Raw key.
    pub(crate) source_key: &'a str,
    /// When it was processed.
    pub(crate) processed_at: &'a str,
    /// Rows scored.
    pub(crate) total_rows: u64,
    /// Rows flagged.
    pub(crate) anomaly_count: u64,
    /// Runs of consecutive anomalous rows.
    pub(crate) event_count: u64,
}

/// One anomalous row on the dashboard.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DashboardAnomaly<'a> {
    /// Raw key of its file.
    pub(crate) file: &'a str,
    /// Its timestamp cell, `null` without a timestamp column.
    #[schema(value_type = Value, required)]
    pub(crate) time: Value,
    /// Its `anomaly_score`.
    #[schema(value_type = Option<f64>, required)]
    pub(crate) anomaly_score: Value,
    /// Its `reason`.
    #[schema(value_type = Option<String>, required)]
    pub(crate) reason: Value,
}

/// A file this instance refused (as recorded next to its outputs, in
/// `processed/<name>_error.json`, plus its stream).
///
/// Schema only: the processor records it as JSON.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct RefusedFile {
    /// Raw key.
    pub(crate) source_key: String,
    /// ETag of the refused object.
    pub(crate) source_etag: String,
    /// Why it was refused.
    pub(crate) error: String,
    /// The input line at fault, when there is one.
    #[schema(required)]
    pub(crate) line: Option<u64>,
    /// When it was refused.
    pub(crate) failed_at: String,
    /// Its stream (`""`: the default one).
    pub(crate) stream: String,
}
