//! Alert webhooks: one JSON POST per file committed with anomalies, to
//! every URL given with `--alert-webhook`.
//!
//! The processor offers an alert at the moment its compare-and-swap commit
//! wins (see [`crate::apply::processor`]): that happens once per file version,
//! whichever instance or delivery of a notification gets there, so a file
//! is alerted at most once. The offer is a non-blocking `try_send` into a
//! bounded channel ([`CHANNEL_CAPACITY`]); when it is full the alert is
//! dropped and counted, never waited for. A background task takes alerts
//! from the channel and, per webhook:
//!
//! - applies a token bucket (bursts of up to `--alert-max-per-minute`,
//!   refilled at that rate): an alert beyond it is dropped, counted and
//!   logged (at most once a minute per webhook, with how many);
//! - sends it in a task of its own, at most [`CONCURRENCY`] requests at a
//!   time per webhook, each with a [`REQUEST_TIMEOUT`];
//! - retries connection errors, timeouts, 429 and 5xx answers up to
//!   [`ATTEMPTS`] times, waiting 1 s, 2 s, 4 s, 8 s between them, then gives
//!   up with a warning. Other answers (4xx, redirects) are not retried.
//!
//! On shutdown, alerts already offered are still sent for up to a grace
//! period, then abandoned (counted, with a warning). An alert is lost if the
//! process dies between the commit and the delivery: delivery is at most
//! once per file and webhook, except that a receiver slower than the
//! request timeout may get a retry of a request it did receive (the payload's
//! `alert_id` is the same on every attempt, to tell).
//!
//! Logs name a webhook by its scheme, host and port only: a URL's path,
//! query and credentials (where Slack and others put the secret) are never
//! logged.

use crate::state::documents::Applied;
use crate::state::keys::RawKey;
use crate::telemetry;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

/// Alerts waiting for the sender; beyond this an offer is dropped.
pub(crate) const CHANNEL_CAPACITY: usize = 1024;
/// Default of `--alert-max-per-minute`.
pub(crate) const DEFAULT_MAX_PER_MINUTE: u32 = 30;
/// Longest a request to a webhook may take, connection included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per alert and webhook.
pub(crate) const ATTEMPTS: u32 = 5;
/// Requests in flight at once per webhook (a slow receiver delays no more
/// than this many of its own alerts behind each other, and no other's).
pub(crate) const CONCURRENCY: usize = 4;
/// Deliveries (sending or waiting to retry) held per webhook; beyond this
/// an alert is dropped as `queue_full`.
pub(crate) const MAX_PENDING: usize = 256;
/// On shutdown, how long deliveries in progress may take before they are
/// abandoned.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Rows of the file listed in an alert, highest score first.
pub(crate) const TOP_ROWS: usize = 5;

/// A configuration the alerts cannot run with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AlertError {
    /// A URL that does not parse. (The URL itself is not repeated: it may
    /// hold a secret.)
    #[error("{setting}: not a valid URL ({reason})")]
    Invalid {
        /// Where the URL came from: the flag, or the file and its key.
        setting: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A URL that is not `http://` or `https://`.
    #[error("{setting}: only http and https URLs are supported, not {scheme}:")]
    Scheme {
        /// Where the URL came from: the flag, or the file and its key.
        setting: String,
        /// The scheme given.
        scheme: String,
    },
    /// `--alert-max-per-minute 0`.
    #[error("--alert-max-per-minute must be at least 1")]
    ZeroRate,
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// A webhook URL, checked.
#[derive(Clone)]
pub(crate) struct Webhook {
    url: reqwest::Url,
    label: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the full URL: its path or query may be the secret.
        f.debug_tuple("Webhook").field(&self.label).finish()
    }
}

impl Webhook {
    /// Parses an `--alert-webhook` URL: `http` or `https`, with a host;
    /// `setting` names where it came from.
    pub(crate) fn parse(setting: &str, url: &str) -> Result<Self, AlertError> {
        let url = check_url(setting, url)?;
        Ok(Self {
            label: origin(&url),
            url,
        })
    }

    /// What logs call it: scheme, host and port only.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }
}

/// Parses an http(s) URL with a host, for the setting named `setting` (the
/// flag, or the configuration file and its key).
pub(crate) fn check_url(setting: &str, url: &str) -> Result<reqwest::Url, AlertError> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| AlertError::Invalid {
        setting: setting.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(AlertError::Scheme {
            setting: setting.to_string(),
            scheme: parsed.scheme().to_string(),
        });
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(AlertError::Invalid {
            setting: setting.to_string(),
            reason: "no host".into(),
        });
    }
    Ok(parsed)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// The alerts' settings, resolved.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// Where alerts go (none: alerts are off).
    pub(crate) webhooks: Vec<Webhook>,
    /// Alerts per minute per webhook (the token bucket's size and rate).
    pub max_per_minute: u32,
    /// The service's base URL for the alerts' dashboard link (no trailing
    /// `/`); `None`: `http://<the bound address>`.
    pub public_url: Option<String>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            max_per_minute: DEFAULT_MAX_PER_MINUTE,
            public_url: None,
        }
    }
}

/// One alert, serialized once for every webhook and attempt.
#[derive(Debug)]
struct Alert {
    source_key: String,
    body: Bytes,
}

/// The processing side: offers alerts without ever waiting.
#[derive(Debug, Clone)]
pub(crate) struct AlertSink {
    tx: mpsc::Sender<Arc<Alert>>,
    dashboard: Arc<str>,
}

impl AlertSink {
    /// Offers the alert for a file just committed, if it has anomalies.
    /// Never blocks: when the sender is behind by [`CHANNEL_CAPACITY`]
    /// alerts (or stopped) the alert is dropped and counted.
    pub(crate) fn offer(&self, entry: &Applied) {
        if entry.summary.anomaly_count == 0 {
            return;
        }
        let body = match serde_json::to_vec(&payload(entry, &self.dashboard)) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(key = %entry.source_key, error = %e, "cannot serialize the alert");
                return;
            }
        };
        let alert = Arc::new(Alert {
            source_key: entry.source_key.clone(),
            body,
        });
        match self.tx.try_send(alert) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(a)) => {
                telemetry::alert_dropped("queue_full");
                tracing::warn!(key = %a.source_key, capacity = CHANNEL_CAPACITY, "alert dropped: the alert queue is full");
            }
            Err(mpsc::error::TrySendError::Closed(a)) => {
                telemetry::alert_dropped("shutdown");
                tracing::warn!(key = %a.source_key, "alert dropped: shutting down");
            }
        }
    }
}

/// The alert JSON for a committed file: the summary's counts, the top rows
/// with their reasons, a dashboard link and a Slack-compatible `text`.
pub(crate) fn payload(entry: &Applied, dashboard: &str) -> Value {
    let s = &entry.summary;
    let stream = RawKey::parse(&s.source_key)
        .map(|k| k.stream())
        .unwrap_or_default();
    let top = top_rows(&entry.anomalies, &s.channels);
    let noun = if s.anomaly_count == 1 {
        "anomaly"
    } else {
        "anomalies"
    };
    let where_ = match stream.name() {
        None => "default stream".to_string(),
        Some(name) => format!("stream {name}"),
    };
    let mut text = format!(
        ":rotating_light: tswatch: {} {noun} in {} ({where_})",
        s.anomaly_count, s.source_key
    );
    if let Some(reason) = top
        .first()
        .and_then(|r| r.get("reason"))
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        text.push_str(": ");
        text.push_str(reason);
    }
    json!({
        "text": slack_escape(&text),
        "alert_id": format!("{}@{}", s.source_key, entry.source_etag.trim_matches('"')),
        // The default stream is "".
        "stream": stream.to_string(),
        "source_key": s.source_key,
        "output_key": s.output_key,
        "processed_at": s.processed_at,
        "total_rows": s.total_rows,
        "anomaly_count": s.anomaly_count,
        "anomaly_rate": s.anomaly_rate,
        "event_count": s.event_count,
        "top_rows": top,
        "dashboard": dashboard,
    })
}

/// Up to [`TOP_ROWS`] anomalous rows, highest `anomaly_score` first (ties
/// in file order): each with its timestamp (when the file has a
/// `timestamp` column), score, reason and channel values.
fn top_rows(rows: &[Map<String, Value>], channels: &[String]) -> Vec<Value> {
    let score = |r: &Map<String, Value>| {
        r.get("anomaly_score")
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite())
            .unwrap_or(f64::NEG_INFINITY)
    };
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| score(&rows[b]).total_cmp(&score(&rows[a])).then(a.cmp(&b)));
    order
        .into_iter()
        .take(TOP_ROWS)
        .map(|i| {
            let r = &rows[i];
            let mut out = Map::new();
            if let Some(t) = r.get("timestamp") {
                out.insert("timestamp".into(), t.clone());
            }
            for k in ["anomaly_score", "reason"] {
                out.insert(k.into(), r.get(k).cloned().unwrap_or(Value::Null));
            }
            let values: Map<String, Value> = channels
                .iter()
                .filter_map(|c| r.get(c).map(|v| (c.clone(), v.clone())))
                .collect();
            out.insert("values".into(), Value::Object(values));
            Value::Object(out)
        })
        .collect()
}

/// Escapes the three characters Slack's `text` treats as markup.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A token bucket: up to `capacity` at once, refilled at `capacity` per
/// minute.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: u32, now: Instant) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            tokens: capacity,
            capacity,
            at: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.capacity / 60.0;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One webhook as the sender tracks it.
struct Target {
    hook: Arc<Webhook>,
    bucket: Bucket,
    permits: Arc<Semaphore>,
    pending: Arc<AtomicUsize>,
    /// Drops not logged yet, and when a drop was last logged.
    unlogged_drops: u64,
    last_drop_log: Option<Instant>,
}

impl Target {
    /// Counts and (at most once a minute) logs a dropped alert.
    fn dropped(&mut self, reason: &'static str, key: &str, max_per_minute: u32) {
        telemetry::alert_dropped(reason);
        self.unlogged_drops += 1;
        let now = Instant::now();
        if self
            .last_drop_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        tracing::warn!(
            webhook = %self.hook.label(),
            key = %key,
            dropped = self.unlogged_drops,
            reason,
            max_per_minute,
            "alert dropped (over --alert-max-per-minute, or too many pending); counted in tswatch_alerts_dropped_total"
        );
        self.unlogged_drops = 0;
        self.last_drop_log = Some(now);
    }
}

/// The running alert sender.
#[derive(Debug)]
pub(crate) struct Alerts {
    sink: AlertSink,
    stop: oneshot::Sender<Duration>,
    task: tokio::task::JoinHandle<()>,
}

impl Alerts {
    /// Starts the sender for `settings.webhooks`; `dashboard` is the link
    /// alerts carry.
    pub(crate) fn start(settings: &AlertSettings, dashboard: String) -> Result<Self, AlertError> {
        if settings.max_per_minute == 0 {
            return Err(AlertError::ZeroRate);
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tswatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AlertError::Client(e.without_url().to_string()))?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (stop, stopped) = oneshot::channel();
        let now = Instant::now();
        let targets = settings
            .webhooks
            .iter()
            .map(|h| Target {
                hook: Arc::new(h.clone()),
                bucket: Bucket::new(settings.max_per_minute, now),
                permits: Arc::new(Semaphore::new(CONCURRENCY)),
                pending: Arc::new(AtomicUsize::new(0)),
                unlogged_drops: 0,
                last_drop_log: None,
            })
            .collect();
        let task = tokio::spawn(dispatch(
            client,
            targets,
            settings.max_per_minute,
            rx,
            stopped,
        ));
        let webhooks: Vec<&str> = settings.webhooks.iter().map(Webhook::label).collect();
        tracing::info!(?webhooks, max_per_minute = settings.max_per_minute, dashboard = %dashboard, "alert webhooks on");
        Ok(Self {
            sink: AlertSink {
                tx,
                dashboard: dashboard.into(),
            },
            stop,
            task,
        })
    }

    /// The handle the processor offers alerts to.
    pub(crate) fn sink(&self) -> AlertSink {
        self.sink.clone()
    }

    /// Stops taking alerts, sends those already offered, and waits up to
    /// `grace` for deliveries in progress; the rest are abandoned (counted
    /// as dropped, reason `shutdown`).
    pub(crate) async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(grace);
        let _ = self.task.await;
    }
}

/// The sender's loop: takes alerts, applies each webhook's rate limit and
/// starts the deliveries; on stop, drains and waits out the grace.
async fn dispatch(
    client: reqwest::Client,
    mut targets: Vec<Target>,
    max_per_minute: u32,
    mut rx: mpsc::Receiver<Arc<Alert>>,
    mut stopped: oneshot::Receiver<Duration>,
) {
    let mut deliveries = JoinSet::new();
    let grace = loop {
        tokio::select! {
            alert = rx.recv() => match alert {
                Some(a) => start_deliveries(&client, &mut targets, max_per_minute, &a, &mut deliveries),
                None => break SHUTDOWN_GRACE,
            },
            Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
            grace = &mut stopped => break grace.unwrap_or(SHUTDOWN_GRACE),
        }
    };
    rx.close();
    while let Some(a) = rx.recv().await {
        start_deliveries(&client, &mut targets, max_per_minute, &a, &mut deliveries);
    }
    let left = tokio::time::timeout(grace, async {
        while deliveries.join_next().await.is_some() {}
    })
    .await;
    if left.is_err() {
        let n = deliveries.len();
        deliveries.abort_all();
        for _ in 0..n {
            telemetry::alert_dropped("shutdown");
        }
        tracing::warn!(
            abandoned = n,
            grace_secs = grace.as_secs_f64(),
            "alert deliveries still in progress at shutdown were abandoned"
        );
    }
}

fn start_deliveries(
    client: &reqwest::Client,
    targets: &mut [Target],
    max_per_minute: u32,
    alert: &Arc<Alert>,
    deliveries: &mut JoinSet<()>,
) {
    let now = Instant::now();
    for t in targets.iter_mut() {
        if !t.bucket.take(now) {
            t.dropped("rate_limit", &alert.source_key, max_per_minute);
            continue;
        }
        if t.pending.load(Ordering::Relaxed) >= MAX_PENDING {
            t.dropped("queue_full", &alert.source_key, max_per_minute);
            continue;
        }
        t.pending.fetch_add(1, Ordering::Relaxed);
        let (client, hook, permits, pending, alert) = (
            client.clone(),
            t.hook.clone(),
            t.permits.clone(),
            t.pending.clone(),
            alert.clone(),
        );
        deliveries.spawn(async move {
            deliver(&client, &hook, &permits, &alert).await;
            pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What one attempt came to.
#[derive(Debug, PartialEq)]
enum Attempt {
    Sent,
    /// Worth trying again: a connection error, a timeout, 429 or 5xx.
    Retry(String),
    /// Not worth trying again (another 4xx, a redirect).
    Fail(String),
}

/// Wait before retry `n` (from 1): 1 s doubling, at most 30 s.
fn backoff(n: u32) -> Duration {
    crate::apply::retry_wait(Duration::from_secs(1), n)
}

fn classify(status: reqwest::StatusCode) -> Attempt {
    if status.is_success() {
        Attempt::Sent
    } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Attempt::Retry(format!("answered {status}"))
    } else {
        Attempt::Fail(format!("answered {status}"))
    }
}

/// Sends one alert to one webhook, with retries.
async fn deliver(client: &reqwest::Client, hook: &Webhook, permits: &Semaphore, alert: &Alert) {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            client
                .post(hook.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(alert.body.clone())
                .send()
                .await
        };
        let verdict = match result {
            Ok(r) => classify(r.status()),
            // Without the URL: it may hold the secret.
            Err(e) if e.is_builder() => Attempt::Fail(e.without_url().to_string()),
            Err(e) => Attempt::Retry(e.without_url().to_string()),
        };
        match verdict {
            Attempt::Sent => {
                telemetry::alert_sent();
                tracing::info!(webhook = %hook.label(), key = %alert.source_key, attempt, "alert sent");
                return;
            }
            Attempt::Fail(why) => {
                last = why;
                break;
            }
            Attempt::Retry(why) => {
                tracing::debug!(webhook = %hook.label(), key = %alert.source_key, attempt, error = %why, "alert not delivered; will retry");
                last = why;
                if attempt < ATTEMPTS {
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
    telemetry::alert_failed();
    tracing::warn!(webhook = %hook.label(), key = %alert.source_key, error = %last, "alert not delivered; giving up");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::documents::Summary;

    fn entry(anomalies: Vec<Map<String, Value>>, count: u64) -> Applied {
        Applied {
            source_key: "raw/north/a.csv".into(),
            source_etag: "\"e1\"".into(),
            staged_key: String::new(),
            staged_bytes: None,
            summary: Summary {
                source_key: "raw/north/a.csv".into(),
                output_key: "processed/north/a.csv".into(),
                processed_at: "2026-12-07T12:00:00.000000".into(),
                total_rows: 100,
                anomaly_count: count,
                anomaly_rate: 0.03,
                event_count: 2,
                baseline_observation_counts: Default::default(),
                source_etag: Some("e1".into()),
                channels: vec!["temp".into()],
                missing_cells: 0,
                state_seq: 4,
                duration_ms: 1.0,
            },
            anomalies,
        }
    }

    fn row(score: f64, reason: &str, t: &str) -> Map<String, Value> {
        let v = json!({"timestamp": t, "temp": 88.0, "anomaly_score": score, "reason": reason, "if_flag": false});
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn payload_has_the_counts_the_top_rows_and_a_slack_text() {
        let rows = (0..8)
            .map(|i| {
                row(
                    f64::from(i) / 10.0,
                    &format!("temp z={i}"),
                    &format!("t{i}"),
                )
            })
            .collect();
        let p = payload(&entry(rows, 8), "http://h:1/");
        assert_eq!(p["stream"], "north");
        assert_eq!(p["source_key"], "raw/north/a.csv");
        assert_eq!(p["output_key"], "processed/north/a.csv");
        assert_eq!(p["anomaly_count"], 8);
        assert_eq!(p["event_count"], 2);
        assert_eq!(p["total_rows"], 100);
        assert_eq!(p["dashboard"], "http://h:1/");
        assert_eq!(p["alert_id"], "raw/north/a.csv@e1");
        let top = p["top_rows"].as_array().unwrap();
        assert_eq!(top.len(), TOP_ROWS);
        assert_eq!(top[0]["anomaly_score"], 0.7);
        assert_eq!(top[0]["reason"], "temp z=7");
        assert_eq!(top[0]["timestamp"], "t7");
        assert_eq!(top[0]["values"]["temp"], 88.0);
        assert!(top[0].get("if_flag").is_none());
        assert_eq!(top[4]["anomaly_score"], 0.3);
        assert_eq!(
            p["text"],
            ":rotating_light: tswatch: 8 anomalies in raw/north/a.csv (stream north): temp z=7"
        );
    }

    #[test]
    fn text_is_escaped_for_slack_and_says_the_default_stream() {
        let mut e = entry(vec![row(0.9, "a<b & c>d", "t")], 1);
        e.summary.source_key = "raw/x&y.csv".into();
        let p = payload(&e, "d");
        assert_eq!(p["stream"], "");
        assert_eq!(
            p["text"],
            ":rotating_light: tswatch: 1 anomaly in raw/x&amp;y.csv (default stream): a&lt;b &amp; c&gt;d"
        );
        // Rows not kept (over the limits): the counts still go out.
        let p = payload(&entry(Vec::new(), 3), "d");
        assert_eq!(p["top_rows"], json!([]));
        assert!(p["text"].as_str().unwrap().ends_with("(stream north)"));
    }

    #[test]
    fn urls_are_checked_and_logged_without_secrets() {
        let h = Webhook::parse(
            "--alert-webhook",
            "https://u:pw@hooks.example.com:8443/services/T/B/SECRET?k=v",
        )
        .unwrap();
        assert_eq!(h.label(), "https://hooks.example.com:8443");
        assert!(!format!("{h:?}").contains("SECRET"));
        assert!(!format!("{h:?}").contains("pw"));
        assert!(matches!(
            Webhook::parse("--alert-webhook", "ftp://example.com/x"),
            Err(AlertError::Scheme { .. })
        ));
        assert!(matches!(
            Webhook::parse("--alert-webhook", "not a url"),
            Err(AlertError::Invalid { .. })
        ));
        assert!(matches!(
            Webhook::parse("--alert-webhook", "https://"),
            Err(AlertError::Invalid { .. })
        ));
        let e = Webhook::parse("--alert-webhook", "gopher://x/SECRET")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        // 3 a minute: one more every 20 s.
        assert!(!b.take(t0 + Duration::from_secs(19)));
        assert!(b.take(t0 + Duration::from_secs(21)));
        assert!(!b.take(t0 + Duration::from_secs(22)));
        // Never more than the burst, however long it was idle.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    #[test]
    fn retries_transient_answers_only() {
        use reqwest::StatusCode;
        assert_eq!(classify(StatusCode::OK), Attempt::Sent);
        assert_eq!(classify(StatusCode::NO_CONTENT), Attempt::Sent);
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR),
            Attempt::Retry(_)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            Attempt::Retry(_)
        ));
        assert!(matches!(classify(StatusCode::NOT_FOUND), Attempt::Fail(_)));
        assert!(matches!(classify(StatusCode::FOUND), Attempt::Fail(_)));
        let waits: Vec<u64> = (1..ATTEMPTS).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8]);
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
