//! The HTTP API: the seed's five endpoints, same paths and JSON shapes.
//!
//! Handlers only read the committed state (or queue work); nothing here
//! blocks on processing, so `/notify` answers at once.

use crate::apply::processor::{Processor, View};
use crate::http::schema::{
    AckStatus, Acknowledged, AnomalyRow, AnomalySummary, BaselineCurrent, ChannelBaseline,
    Confirming, ConfirmingStatus, ErrorBody, Health, HealthStatus, IgnoredRecord, NoFilesMessage,
    NoFilesYet, NotifyAnswer, QueueDepth, Queued, Ready, ReadyStatus, RecentAnomalies,
    RecentSummary, ReplayStatus, StateAge, StorageProbe, StreamBaseline, SummaryTotals,
};
use crate::ingest::queue::{Enqueue, Queue};
use crate::ingest::s3_event::{S3Event, parse_s3_event};
use crate::ingest::sns::{SnsError, SnsMessage, Verifier, is_sns_url};
use crate::state::documents::{Applied, RECENT_FILES, StateDoc, Summary, Totals, now_iso, round4};
use crate::state::stream::Stream;
use crate::storage::Location;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::handler::Handler;
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower_http::timeout::TimeoutLayer;

/// Largest `/notify` body accepted (SNS messages are at most 256 KiB).
pub(crate) const MAX_BODY: usize = 300 * 1024;
/// Largest `limit` of `/anomalies/recent`.
pub(crate) const MAX_LIMIT: usize = 1000;
/// Most bytes of rows one `/anomalies/recent` answer carries; past it the
/// answer is cut and says `"truncated": true`.
pub(crate) const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Everything the handlers need.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// Processing and state access.
    pub(crate) processor: Arc<Processor>,
    /// Where notifications put work.
    pub(crate) queue: Queue,
    /// SNS authenticity checks.
    pub(crate) verifier: Arc<Verifier>,
    /// Skip signature checks (local emulators only).
    pub(crate) skip_sns_verify: bool,
    /// Client for confirming subscriptions.
    pub(crate) http: reqwest::Client,
    /// Baseline maturity threshold, as `/baseline/current` reports it.
    pub(crate) min_observations: u64,
    /// Longest time a request may take, reading its body included.
    pub(crate) request_timeout: Duration,
    /// Renders `GET /metrics` (`None`: no recorder installed, 404).
    pub(crate) metrics: Option<PrometheusHandle>,
}

/// One endpoint: its path, its method (as the OpenAPI document names it)
/// and its handler, routed for that method only (see [`endpoint`]).
pub(crate) type Route = (&'static str, Method, MethodRouter<AppState>);

/// The route of `handler` at `path` for `method`: the method the document
/// is checked against is the one served.
pub(crate) fn endpoint<H, T>(path: &'static str, method: Method, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone())
        .expect("endpoints are declared with a standard HTTP method");
    (path, method, on(filter, handler))
}

/// The API's own endpoints (the seed's five, readiness and metrics).
pub(crate) fn routes() -> Vec<Route> {
    vec![
        endpoint("/notify", Method::POST, notify),
        endpoint("/anomalies/recent", Method::GET, recent),
        endpoint("/anomalies/summary", Method::GET, summary),
        endpoint("/baseline/current", Method::GET, baseline),
        endpoint("/health", Method::GET, health),
        endpoint("/ready", Method::GET, ready),
        endpoint("/metrics", Method::GET, metrics),
    ]
}

/// The router serving `routes` (every endpoint: [`crate::http::routes`]).
/// Every refusal, whichever layer makes it (body limit, timeout, unknown
/// method or path), is a 4xx with a JSON `{"error": ...}` body.
pub(crate) fn router(state: AppState, routes: Vec<Route>) -> Router {
    let timeout = state.request_timeout;
    routes
        .into_iter()
        .fold(Router::new(), |r, (path, _, handler)| {
            r.route(path, handler)
        })
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// `GET /metrics`: Prometheus' text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Counters and histograms in Prometheus' text exposition format 0.0.4: files \
        processed and refused, rows, anomalies, processing time, SNS messages refused, \
        queue depth.",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 404, description = "Metrics are not enabled in this process", body = ErrorBody),
    ),
)]
pub(crate) async fn metrics(State(st): State<AppState>) -> Response {
    let Some(handle) = &st.metrics else {
        return error(StatusCode::NOT_FOUND, "metrics are not enabled");
    };
    crate::telemetry::queue_depth(st.queue.len());
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response()
}

/// Gives an error response that is not JSON (a framework rejection, a
/// timeout) the API's error shape, keeping its status and headers.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let msg = if !text.is_empty() {
        text
    } else if status == StatusCode::REQUEST_TIMEOUT {
        "the request was not completed in time".to_string()
    } else {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase()
    };
    let mut out = error(status, msg);
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let body = ErrorBody { error: msg.into() };
    (status, axum::Json(body)).into_response()
}

pub(crate) fn ok(v: impl Serialize) -> Response {
    axum::Json(v).into_response()
}

/// One of the pages compiled into the binary (the dashboard, `/docs`),
/// revalidated on every load so a new build's page is seen at once.
pub(crate) fn html_page(page: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        page,
    )
        .into_response()
}

/// Header set when storage is unreachable and a read endpoint answers from
/// the last state it read: how many seconds ago that was.
pub(crate) const STALE_HEADER: &str = "x-tswatch-stale-seconds";

pub(crate) fn with_age(view: &View, mut r: Response) -> Response {
    if let Some(age) = view.stale_for {
        r.headers_mut()
            .insert(STALE_HEADER, HeaderValue::from(age.as_secs()));
    }
    r
}

/// `POST /notify`.
#[utoipa::path(
    post,
    path = "/notify",
    tag = "ingest",
    summary = "SNS subscription endpoint: S3 event notifications queue batches",
    description = "SNS posts here (HTTP/HTTPS subscription). A `SubscriptionConfirmation` is \
        confirmed by fetching its `SubscribeURL` (only an AWS SNS host's); an \
        `UnsubscribeConfirmation` is acknowledged; a `Notification`'s `Message` is an S3 event \
        notification (JSON in a string): each record whose key, URL-decoded, is a `.csv` under \
        `raw/` is queued, `s3:TestEvent` is acknowledged. Messages must carry a valid SNS \
        signature (SignatureVersion 1 or 2) from a configured topic, unless the service runs \
        with `--insecure-skip-sns-verify`; a signed message seen within the hour is not acted \
        on again. The answer comes at once; processing is in the background. Bodies over \
        300 KiB are refused.",
    request_body(
        content = SnsMessage,
        content_type = "text/plain",
        description = "The SNS message, a JSON document (SNS sends it as `text/plain`; any \
            content type is read)",
        example = json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:tswatch",
            "Subject": "Amazon S3 Notification",
            "Message": "{\"Records\":[{\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":\"my-sensor-bucket\"},\"object\":{\"key\":\"raw/sensors_20260224T001051.csv\"}}}]}",
            "Timestamp": "2026-02-24T00:10:52.000Z",
            "SignatureVersion": "2",
            "Signature": "EXAMPLEpH+...",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
        }),
    ),
    responses(
        (status = 200, description = "Done, or queued", body = NotifyAnswer),
        (status = 400, description = "Not an SNS message, an unknown `Type`, a \
            `x-amz-sns-message-type` header that disagrees with it, a confirmation without \
            `SubscribeURL`, or a `Message` that is not an S3 event notification", body = ErrorBody),
        (status = 403, description = "Refused: a bad signature, an untrusted or foreign \
            certificate URL, a topic not configured, a stale timestamp, a `SubscribeURL` \
            not on an AWS SNS host", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the request timeout", body = ErrorBody),
        (status = 413, description = "The body is larger than 300 KiB", body = ErrorBody),
        (status = 503, description = "The signing certificate cannot be fetched just now, or \
            the work queue is full: SNS delivers again later", body = ErrorBody),
    ),
)]
pub(crate) async fn notify(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let msg = match SnsMessage::parse(&body) {
        Ok(m) => m,
        Err(e) => {
            crate::telemetry::sns_refused(e.kind());
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    // Emulators omit the header; when present it must agree with the body.
    if let Some(h) = headers
        .get("x-amz-sns-message-type")
        .and_then(|h| h.to_str().ok())
        && h != msg.kind
    {
        crate::telemetry::sns_refused("malformed");
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "x-amz-sns-message-type {h:?} does not match Type {:?}",
                msg.kind
            ),
        );
    }
    let checked = if st.skip_sns_verify {
        st.verifier.check_topic(&msg)
    } else {
        st.verifier.verify(&msg).await
    };
    if let Err(e) = checked {
        tracing::warn!(error = %e, topic = ?msg.topic_arn, "rejected SNS message");
        crate::telemetry::sns_refused(e.kind());
        let status = match e {
            SnsError::Malformed(_) => StatusCode::BAD_REQUEST,
            // SNS delivers again later.
            SnsError::Busy | SnsError::CertificateUnreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        };
        return error(status, e.to_string());
    }
    // A signed message is valid for an hour: the same one again is a
    // replay (or SNS retrying one whose answer was lost), done already.
    if !st.skip_sns_verify && st.verifier.is_replay(&msg.message_id) {
        tracing::info!(message_id = ?msg.message_id, "SNS message seen before: not acted on again");
        return ok(NotifyAnswer::Queued(Queued {
            status: Some(ReplayStatus::AlreadyReceived),
            queued: Vec::new(),
            ignored: Vec::new(),
        }));
    }
    let res = act_on(&st, &msg);
    if res.status().is_success() {
        st.verifier.accepted(&msg.message_id);
    }
    res
}

/// Does what a verified SNS message asks.
fn act_on(st: &AppState, msg: &SnsMessage) -> Response {
    match msg.kind.as_str() {
        "SubscriptionConfirmation" => {
            let Some(url) = msg.subscribe_url.clone() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "SubscriptionConfirmation without SubscribeURL",
                );
            };
            if !st.skip_sns_verify && !is_sns_url(&url) {
                return error(StatusCode::FORBIDDEN, "SubscribeURL is not an AWS SNS host");
            }
            let http = st.http.clone();
            let topic = msg.topic_arn.clone();
            tokio::spawn(async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(?topic, "subscription confirmed")
                    }
                    Ok(r) => {
                        tracing::warn!(?topic, status = %r.status(), "subscription confirmation refused")
                    }
                    Err(e) => {
                        tracing::warn!(?topic, error = %e, "subscription confirmation failed")
                    }
                }
            });
            ok(NotifyAnswer::Confirming(Confirming {
                status: ConfirmingStatus::Confirming,
                topic: msg.topic_arn.clone(),
            }))
        }
        "UnsubscribeConfirmation" => ok(NotifyAnswer::Acknowledged(Acknowledged {
            status: AckStatus::Unsubscribed,
        })),
        "Notification" => queue_event(st, &msg.message),
        other => error(
            StatusCode::BAD_REQUEST,
            format!("unknown SNS message Type {other:?}"),
        ),
    }
}

/// Queues the CSV batches named by an S3 event notification.
fn queue_event(st: &AppState, message: &str) -> Response {
    let event: Value = match serde_json::from_str(message) {
        Ok(v) => v,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Message is not JSON: expected an S3 event notification",
            );
        }
    };
    let bucket = match st.processor.storage().location() {
        Location::S3 { bucket } => Some(bucket.clone()),
        Location::Local(_) => None,
    };
    let (keys, skipped) = match parse_s3_event(&event, bucket.as_deref()) {
        Ok(S3Event::Test) => {
            return ok(NotifyAnswer::Acknowledged(Acknowledged {
                status: AckStatus::TestEvent,
            }));
        }
        Ok(S3Event::Records { keys, ignored }) => (keys, ignored),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("Message is {e}")),
    };
    let mut queued = Vec::new();
    for k in keys {
        let key = k.as_str().to_string();
        match st.queue.push(k) {
            Enqueue::Queued | Enqueue::AlreadyQueued => queued.push(key),
            Enqueue::Full => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "work queue is full; retry later",
                );
            }
        }
    }
    let ignored = skipped
        .into_iter()
        .map(|(key, reason)| IgnoredRecord {
            key: (!key.is_empty()).then_some(key),
            reason,
        })
        .collect();
    ok(NotifyAnswer::Queued(Queued {
        status: None,
        queued,
        ignored,
    }))
}

/// `GET /anomalies/recent`.
#[utoipa::path(
    get,
    path = "/anomalies/recent",
    tag = "results",
    summary = "Anomalous rows of the most recent files, newest first",
    description = "The anomalous rows of the 10 most recent processed files over every stream, \
        newest first, at most `limit` of them and at most 4 MiB (past it the answer is cut and \
        says `\"truncated\": true`).",
    params(
        ("limit" = Option<u64>, Query, description = "Most rows to return (default 50). \
            Larger than 1000 is clamped to 1000, and the answer carries \
            `x-tswatch-limit-clamped: 1000`.", minimum = 0, example = 50),
    ),
    responses(
        (status = 200, description = "The rows", body = RecentAnomalies,
            headers(
                ("x-tswatch-limit-clamped" = u64, description = "Present when `limit` was larger than 1000: the limit applied"),
                ("x-tswatch-stale-seconds" = u64, description = "Present when storage is unreachable: age in seconds of the state answered from"),
            )),
        (status = 400, description = "`limit` is not a whole number", body = ErrorBody),
        (status = 503, description = "Storage is unreachable and no state was read yet", body = ErrorBody),
    ),
)]
pub(crate) async fn recent(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let mut limit = 50usize;
    let mut clamped = false;
    for (k, v) in url_pairs(q.as_deref().unwrap_or("")) {
        if k == "limit" {
            // The seed accepted any count: a larger one is clamped (and the
            // response says so), not refused.
            let v = v.trim();
            match v.parse::<u64>() {
                Ok(n) => {
                    clamped = n > MAX_LIMIT as u64;
                    limit = usize::try_from(n).map_or(MAX_LIMIT, |n| n.min(MAX_LIMIT));
                }
                // Digits only, too many for a u64: as large as it gets.
                Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                    (clamped, limit) = (true, MAX_LIMIT);
                }
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "limit must be a whole number (at most {MAX_LIMIT} rows are returned), got {v:?}"
                        ),
                    );
                }
            }
        }
    }
    let views = match st.processor.views().await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    // The most recent files over every stream, newest first.
    let mut files: Vec<&Applied> = views
        .iter()
        .flat_map(|(_, v)| v.doc.applied.iter().rev().take(RECENT_FILES))
        .collect();
    files.sort_by(|a, b| b.summary.processed_at.cmp(&a.summary.processed_at));
    // At most MAX_RESPONSE_BYTES of rows, whatever the files kept.
    let mut bytes = 0usize;
    let mut cut = false;
    let rows: Vec<AnomalyRow<'_>> = files
        .into_iter()
        .take(RECENT_FILES)
        .flat_map(|a| a.anomalies.iter().rev())
        .take(limit)
        .take_while(|row| {
            bytes += serde_json::to_string(row).map_or(usize::MAX / 2, |t| t.len() + 1);
            cut = bytes > MAX_RESPONSE_BYTES;
            !cut
        })
        .map(AnomalyRow)
        .collect();
    let body = RecentAnomalies {
        count: rows.len(),
        limit,
        anomalies: rows,
        truncated: cut.then_some(true),
    };
    let mut resp = with_ages(&views, ok(body));
    if clamped {
        resp.headers_mut().insert(
            "x-tswatch-limit-clamped",
            axum::http::HeaderValue::from(MAX_LIMIT),
        );
    }
    resp
}

/// `GET /anomalies/summary`.
#[utoipa::path(
    get,
    path = "/anomalies/summary",
    tag = "results",
    summary = "Totals over every file processed, and the 5 newest files",
    responses(
        (status = 200, description = "Totals, or `{\"message\": \"No processed files yet.\"}`",
            body = AnomalySummary,
            headers(("x-tswatch-stale-seconds" = u64, description = "Present when storage is unreachable: age in seconds of the state answered from"))),
        (status = 503, description = "Storage is unreachable and no state was read yet", body = ErrorBody),
    ),
)]
pub(crate) async fn summary(State(st): State<AppState>) -> Response {
    let views = match st.processor.views().await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let mut t = Totals::default();
    for (_, v) in &views {
        t.files_processed += v.doc.totals.files_processed;
        t.total_rows_scored += v.doc.totals.total_rows_scored;
        t.total_anomalies += v.doc.totals.total_anomalies;
        t.total_events += v.doc.totals.total_events;
    }
    // Keyed by name, the default stream by "".
    let events_by_stream: BTreeMap<String, u64> = views
        .iter()
        .map(|(stream, v)| (stream.to_string(), v.doc.totals.total_events))
        .collect();
    if t.files_processed == 0 {
        let empty = AnomalySummary::Empty(NoFilesYet {
            message: NoFilesMessage::NoFilesYet,
        });
        return with_ages(&views, ok(empty));
    }
    let mut recent: Vec<&Summary> = views
        .iter()
        .flat_map(|(_, v)| v.doc.applied.iter().rev().take(5).map(|a| &a.summary))
        .collect();
    recent.sort_by(|a, b| b.processed_at.cmp(&a.processed_at));
    recent.truncate(5);
    // A file committed here whose outputs are still being published says
    // so: its `output_key` does not exist yet.
    let most_recent = recent
        .into_iter()
        .map(|s| RecentSummary {
            summary: s.clone(),
            published: st.processor.is_unpublished(&s.source_key).then_some(false),
        })
        .collect();
    let body = AnomalySummary::Totals(SummaryTotals {
        files_processed: t.files_processed,
        total_rows_scored: t.total_rows_scored,
        total_anomalies: t.total_anomalies,
        total_events: t.total_events,
        events_by_stream,
        overall_anomaly_rate: if t.total_rows_scored == 0 {
            0.0
        } else {
            round4(t.total_anomalies as f64 / t.total_rows_scored as f64)
        },
        most_recent,
    });
    with_ages(&views, ok(body))
}

fn channels_of(doc: &StateDoc, min_observations: u64) -> BTreeMap<String, ChannelBaseline> {
    doc.engine
        .channels
        .iter()
        .map(|(name, w)| {
            (
                name.clone(),
                ChannelBaseline {
                    observations: w.stats.count,
                    mean: round4(w.stats.mean),
                    std: round4(w.stats.std()),
                    baseline_mature: w.stats.count >= min_observations,
                },
            )
        })
        .collect()
}

/// The default stream's baseline in the seed's shape; other streams, if
/// any, under an extra `streams` field.
#[utoipa::path(
    get,
    path = "/baseline/current",
    tag = "results",
    summary = "The running per-channel baseline",
    description = "The default stream's (`raw/<name>.csv`) baseline in the seed's shape; other \
        streams' (`raw/<stream>/<name>.csv`) under `streams`.",
    responses(
        (status = 200, description = "The baseline", body = BaselineCurrent,
            headers(("x-tswatch-stale-seconds" = u64, description = "Present when storage is unreachable: age in seconds of the state answered from"))),
        (status = 503, description = "Storage is unreachable and no state was read yet", body = ErrorBody),
    ),
)]
pub(crate) async fn baseline(State(st): State<AppState>) -> Response {
    let views = match st.processor.views().await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    // The default stream is always among the views (the processor's set of
    // streams starts with it).
    let Some((_, default)) = views.iter().find(|(stream, _)| stream.is_default()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the default stream's state was not read",
        );
    };
    let streams: BTreeMap<String, StreamBaseline> = views
        .iter()
        .filter_map(|(stream, v)| {
            let channels = channels_of(&v.doc, st.min_observations);
            let last_updated = v.doc.last_updated.clone();
            Some((
                stream.name()?.to_string(),
                StreamBaseline {
                    last_updated,
                    channels,
                },
            ))
        })
        .collect();
    let body = BaselineCurrent {
        last_updated: default.doc.last_updated.clone(),
        channels: channels_of(&default.doc, st.min_observations),
        streams: (!streams.is_empty()).then_some(streams),
    };
    with_ages(&views, ok(body))
}

/// Marks a response built from several streams' views with the oldest age.
fn with_ages(views: &[(Stream, View)], r: Response) -> Response {
    match views.iter().max_by_key(|(_, v)| v.stale_for) {
        Some((_, v)) => with_age(v, r),
        None => r,
    }
}

/// How long `/ready` waits for storage.
const READY_PROBE: Duration = Duration::from_secs(2);

/// Readiness, beside `/health`'s liveness: 200 when storage answers now,
/// 503 when it does not; with the work waiting and the age of the state
/// the read endpoints serve.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    summary = "Readiness: storage answers now",
    description = "Probes storage (2 s at most), and says how much work waits and how old the \
        state the read endpoints serve is. For a load balancer's readiness check; `/health` is \
        the liveness check.",
    responses(
        (status = 200, description = "Ready: storage answered", body = Ready),
        (status = 503, description = "Not ready: storage did not answer (the body says why)", body = Ready),
    ),
)]
pub(crate) async fn ready(State(st): State<AppState>) -> Response {
    let started = std::time::Instant::now();
    let probe = tokio::time::timeout(READY_PROBE, st.processor.storage().probe()).await;
    let latency_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    let refused = |error: String| StorageProbe {
        reachable: false,
        latency_ms: None,
        error: Some(error),
    };
    let storage = match probe {
        Ok(Ok(_)) => StorageProbe {
            reachable: true,
            latency_ms: Some(latency_ms),
            error: None,
        },
        Ok(Err(e)) => refused(e.to_string()),
        Err(_) => refused(format!("no answer within {} s", READY_PROBE.as_secs())),
    };
    let reachable = storage.reachable;
    let stale_seconds = match st.processor.views().await {
        Ok(views) => views
            .iter()
            .filter_map(|(_, v)| v.stale_for)
            .max()
            .map(|d| d.as_secs()),
        Err(_) => None,
    };
    let body = Ready {
        status: if reachable {
            ReadyStatus::Ready
        } else {
            ReadyStatus::NotReady
        },
        storage,
        queue: QueueDepth {
            waiting: st.queue.len(),
        },
        state: StateAge { stale_seconds },
        timestamp: now_iso(),
    };
    let code = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// `GET /health`: liveness.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness: the process answers",
    description = "Always 200 while the process serves; it does not touch storage (see `/ready`).",
    responses((status = 200, description = "Alive", body = Health)),
)]
pub(crate) async fn health(State(st): State<AppState>) -> Response {
    ok(Health {
        status: HealthStatus::Ok,
        bucket: st.processor.storage().label(),
        timestamp: now_iso(),
    })
}

pub(crate) fn url_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

/// A client for subscription confirmations: no redirects, short timeout.
pub(crate) fn confirm_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
}
