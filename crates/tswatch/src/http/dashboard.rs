//! The web dashboard: one self-contained page at `/` (no CDN, no build
//! step) and the read endpoint it polls, `GET /dashboard/data?stream=NAME`.
//!
//! Everything the endpoint returns is bounded by the state document (the
//! stream's last [`crate::state::recent::RECENT_ROWS`] rows, its ledger of recent
//! files, the last refused files), so it costs the same after ten files or
//! ten million.

use crate::http::api::{AppState, Route, endpoint, error, html_page, ok, url_pairs, with_age};
use crate::http::schema::{
    Band, DailyBand, DashboardAnomaly, DashboardChannel, DashboardData, DashboardFile, ErrorBody,
};
use crate::state::documents::{StateDoc, round4};
use crate::state::stream::Stream;
use axum::extract::{RawQuery, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use std::collections::BTreeMap;
use tswatch_core::Thresholds;

/// The page: HTML, CSS and script in one file, compiled in.
const PAGE: &str = include_str!("dashboard/index.html");
/// Anomalous rows the page lists.
const ANOMALY_ROWS: usize = 50;

/// The dashboard's routes: the page at `/` and the data it polls.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        endpoint("/", Method::GET, page),
        endpoint("/dashboard/data", Method::GET, data),
    ]
}

/// `GET /`: the dashboard.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    summary = "The web dashboard",
    description = "One self-contained page (no external assets) that polls `/dashboard/data`: \
        totals, per-channel charts with their baseline band, recent anomalies and files, \
        refused files.",
    responses((status = 200, description = "The page", content_type = "text/html")),
)]
pub(crate) async fn page() -> Response {
    html_page(PAGE)
}

/// `GET /dashboard/data?stream=NAME`: what the page draws for one stream
/// (the default stream, `raw/<name>.csv`, is `default`).
#[utoipa::path(
    get,
    path = "/dashboard/data",
    tag = "dashboard",
    summary = "What the dashboard draws for one stream",
    description = "Bounded whatever the history: the stream's last 500 rows, its ledger of \
        recent files, its 50 newest anomalous rows, the last files this instance refused.",
    params(
        ("stream" = Option<String>, Query, description = "The stream (`default` for \
            `raw/<name>.csv`, else the folder under `raw/`). Without it: the default stream, \
            or another one when the default has no files.", example = "default"),
    ),
    responses(
        (status = 200, description = "The stream's data", body = DashboardData,
            headers(("x-tswatch-stale-seconds" = u64, description = "Present when storage is unreachable: age in seconds of the state answered from"))),
        (status = 404, description = "No such stream", body = ErrorBody),
        (status = 503, description = "Storage is unreachable and the stream's state was not read yet", body = ErrorBody),
    ),
)]
pub(crate) async fn data(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let wanted = url_pairs(q.as_deref().unwrap_or(""))
        .find(|(k, _)| k == "stream")
        .map(|(_, v)| v);
    // Only the chosen stream's state is read: the page polls every few
    // seconds, and one unreadable stream must not blank the others.
    let known = st.processor.known_streams().await;
    let streams: Vec<String> = known.iter().map(|s| s.label().to_string()).collect();
    // The default stream, read once: it is the answer without a choice
    // unless it has no files and another stream does.
    let chosen = match &wanted {
        Some(w) => match known.iter().find(|s| s.label() == w) {
            Some(s) => s.clone(),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no stream {w:?}; streams: {streams:?}"),
                );
            }
        },
        None => Stream::DEFAULT,
    };
    let mut read = st.processor.view(&chosen).await;
    let mut stream = chosen;
    if wanted.is_none()
        && known.len() > 1
        && read
            .as_ref()
            .is_ok_and(|v| v.doc.totals.files_processed == 0)
        && let Some(other) = known.iter().find(|s| !s.is_default())
    {
        stream = other.clone();
        read = st.processor.view(&stream).await;
    }
    let view = match read {
        Ok(v) => v,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let stream = &stream;
    let doc = &view.doc;
    let errors: Vec<Value> = st
        .processor
        .recent_errors()
        .into_iter()
        .filter(|e| e["stream"] == stream.to_string().as_str())
        .collect();
    let body = DashboardData {
        stream: stream.label().to_string(),
        streams,
        last_updated: &doc.last_updated,
        totals: &doc.totals,
        channels: channels(doc, &st),
        recent: &doc.recent,
        files: files(doc),
        anomalies: anomalies(doc),
        errors,
    };
    with_age(&view, ok(body))
}

/// Per channel: maturity and the band values are held against.
fn channels(doc: &StateDoc, st: &AppState) -> BTreeMap<String, DashboardChannel> {
    let cfg = st.processor.config();
    let th = Thresholds::new(cfg, doc.engine.channels.len());
    doc.engine
        .channels
        .iter()
        .map(|(name, c)| {
            let band = c.detector.band(&th).map(|b| Band {
                mean: b.mean,
                sd: b.sd,
                z: round4(b.z),
                daily: b.daily.map(|d| DailyBand {
                    levels: d.levels,
                    sd: d.sd,
                }),
            });
            (
                name.clone(),
                DashboardChannel {
                    observations: c.stats.count,
                    mature: c.stats.count >= st.min_observations,
                    band,
                },
            )
        })
        .collect()
}

/// The files in the ledger, oldest first.
fn files(doc: &StateDoc) -> Vec<DashboardFile<'_>> {
    doc.applied
        .iter()
        .map(|a| {
            let s = &a.summary;
            DashboardFile {
                source_key: &s.source_key,
                processed_at: &s.processed_at,
                total_rows: s.total_rows,
                anomaly_count: s.anomaly_count,
                event_count: s.event_count,
            }
        })
        .collect()
}

/// The newest anomalous rows: file, time, score, reason.
fn anomalies(doc: &StateDoc) -> Vec<DashboardAnomaly<'_>> {
    doc.applied
        .iter()
        .rev()
        .flat_map(|a| {
            a.anomalies.iter().rev().map(move |row| {
                let time = row
                    .iter()
                    .find(|(k, _)| {
                        crate::csv::scorer::TIMESTAMP_NAMES
                            .contains(&k.to_ascii_lowercase().as_str())
                    })
                    .map_or(Value::Null, |(_, v)| v.clone());
                DashboardAnomaly {
                    file: &a.summary.source_key,
                    time,
                    anomaly_score: row.get("anomaly_score").cloned().unwrap_or(Value::Null),
                    reason: row.get("reason").cloned().unwrap_or(Value::Null),
                }
            })
        })
        .take(ANOMALY_ROWS)
        .collect()
}
