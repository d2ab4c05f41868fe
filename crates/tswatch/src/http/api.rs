//! The HTTP API: the seed's five endpoints, same paths and JSON shapes.
//!
//! Handlers only read the committed state (or queue work); nothing here
//! blocks on processing, so `/notify` answers at once.

use crate::apply::processor::{Processor, View};
use crate::ingest::queue::{Enqueue, Queue};
use crate::ingest::s3_event::{S3Event, parse_s3_event};
use crate::ingest::sns::{SnsError, SnsMessage, Verifier, is_sns_url};
use crate::state::documents::{Applied, RECENT_FILES, StateDoc, Summary, Totals, now_iso, round4};
use crate::storage::Location;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
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

/// The router with every endpoint, and the `pages` (the dashboard's) beside
/// them. Every refusal, whichever layer makes it (body limit, timeout,
/// unknown method or path), is a 4xx with a JSON `{"error": ...}` body.
pub(crate) fn router(state: AppState, pages: Router<AppState>) -> Router {
    let timeout = state.request_timeout;
    Router::new()
        .route("/notify", post(notify))
        .route("/anomalies/recent", get(recent))
        .route("/anomalies/summary", get(summary))
        .route("/baseline/current", get(baseline))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(pages)
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
async fn metrics(State(st): State<AppState>) -> Response {
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
    (status, axum::Json(json!({ "error": msg.into() }))).into_response()
}

pub(crate) fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
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

async fn notify(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
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
        return ok(json!({ "status": "already received", "queued": [], "ignored": [] }));
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
            ok(json!({ "status": "confirming", "topic": msg.topic_arn }))
        }
        "UnsubscribeConfirmation" => ok(json!({ "status": "acknowledged" })),
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
        Ok(S3Event::Test) => return ok(json!({ "status": "test event acknowledged" })),
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
    let ignored: Vec<Value> = skipped
        .into_iter()
        .map(|(key, reason)| {
            let key = (!key.is_empty()).then_some(key);
            json!({ "key": key, "reason": reason })
        })
        .collect();
    ok(json!({ "queued": queued, "ignored": ignored }))
}

async fn recent(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
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
    let rows: Vec<&serde_json::Map<String, Value>> = files
        .into_iter()
        .take(RECENT_FILES)
        .flat_map(|a| a.anomalies.iter().rev())
        .take(limit)
        .take_while(|row| {
            bytes += serde_json::to_string(row).map_or(usize::MAX / 2, |t| t.len() + 1);
            cut = bytes > MAX_RESPONSE_BYTES;
            !cut
        })
        .collect();
    let mut body = json!({ "count": rows.len(), "limit": limit, "anomalies": rows });
    if cut {
        body["truncated"] = Value::from(true);
    }
    let mut resp = with_ages(&views, ok(body));
    if clamped {
        resp.headers_mut().insert(
            "x-tswatch-limit-clamped",
            axum::http::HeaderValue::from(MAX_LIMIT),
        );
    }
    resp
}

async fn summary(State(st): State<AppState>) -> Response {
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
    let events_by_stream: serde_json::Map<String, Value> = views
        .iter()
        .map(|(stream, v)| (stream.to_string(), Value::from(v.doc.totals.total_events)))
        .collect();
    if t.files_processed == 0 {
        return with_ages(&views, ok(json!({ "message": "No processed files yet." })));
    }
    let mut recent: Vec<&Summary> = views
        .iter()
        .flat_map(|(_, v)| v.doc.applied.iter().rev().take(5).map(|a| &a.summary))
        .collect();
    recent.sort_by(|a, b| b.processed_at.cmp(&a.processed_at));
    recent.truncate(5);
    // A file committed here whose outputs are still being published says
    // so: its `output_key` does not exist yet.
    let recent: Vec<Value> = recent
        .into_iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
            if st.processor.is_unpublished(&s.source_key)
                && let Some(m) = v.as_object_mut()
            {
                m.insert("published".into(), Value::from(false));
            }
            v
        })
        .collect();
    let body = ok(json!({
        "files_processed": t.files_processed,
        "total_rows_scored": t.total_rows_scored,
        "total_anomalies": t.total_anomalies,
        "total_events": t.total_events,
        "events_by_stream": events_by_stream,
        "overall_anomaly_rate": if t.total_rows_scored == 0 { 0.0 } else {
            round4(t.total_anomalies as f64 / t.total_rows_scored as f64)
        },
        "most_recent": recent,
    }));
    with_ages(&views, body)
}

fn channels_json(doc: &StateDoc, min_observations: u64) -> serde_json::Map<String, Value> {
    doc.engine
        .channels
        .iter()
        .map(|(name, w)| {
            (
                name.clone(),
                json!({
                    "observations": w.stats.count,
                    "mean": round4(w.stats.mean),
                    "std": round4(w.stats.std()),
                    "baseline_mature": w.stats.count >= min_observations,
                }),
            )
        })
        .collect()
}

/// The default stream's baseline in the seed's shape; other streams, if
/// any, under an extra `streams` field.
async fn baseline(State(st): State<AppState>) -> Response {
    let views = match st.processor.views().await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let mut body = serde_json::Map::new();
    let mut streams = serde_json::Map::new();
    for (name, v) in &views {
        let channels = channels_json(&v.doc, st.min_observations);
        if name.is_empty() {
            body.insert(
                "last_updated".into(),
                Value::from(v.doc.last_updated.clone()),
            );
            body.insert("channels".into(), Value::Object(channels));
        } else {
            streams.insert(
                name.clone(),
                json!({ "last_updated": v.doc.last_updated, "channels": channels }),
            );
        }
    }
    if !streams.is_empty() {
        body.insert("streams".into(), Value::Object(streams));
    }
    with_ages(&views, ok(Value::Object(body)))
}

/// Marks a response built from several streams' views with the oldest age.
fn with_ages(views: &[(String, View)], r: Response) -> Response {
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
async fn ready(State(st): State<AppState>) -> Response {
    let started = std::time::Instant::now();
    let probe = tokio::time::timeout(READY_PROBE, st.processor.storage().probe()).await;
    let latency_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    let storage = match probe {
        Ok(Ok(_)) => json!({ "reachable": true, "latency_ms": latency_ms }),
        Ok(Err(e)) => json!({ "reachable": false, "error": e.to_string() }),
        Err(_) => json!({
            "reachable": false,
            "error": format!("no answer within {} s", READY_PROBE.as_secs()),
        }),
    };
    let reachable = storage["reachable"] == true;
    let stale = match st.processor.views().await {
        Ok(views) => views
            .iter()
            .filter_map(|(_, v)| v.stale_for)
            .max()
            .map_or(Value::Null, |d| Value::from(d.as_secs())),
        Err(_) => Value::Null,
    };
    let body = json!({
        "status": if reachable { "ready" } else { "not ready" },
        "storage": storage,
        "queue": { "waiting": st.queue.len() },
        "state": { "stale_seconds": stale },
        "timestamp": now_iso(),
    });
    let code = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn health(State(st): State<AppState>) -> Response {
    ok(json!({
        "status": "ok",
        "bucket": st.processor.storage().label(),
        "timestamp": now_iso(),
    }))
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
