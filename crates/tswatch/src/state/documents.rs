//! The state documents under `state/`.
//!
//! `state/engine.json` is the single source of truth, replaced only by
//! compare-and-swap: the engine's full state, the ledger of recently applied
//! files (what makes a repeated notification a no-op) and the running totals
//! behind `/anomalies/summary`. `state/baseline.json` is a projection of it
//! in the seed's exact shape, for seed readers; it carries the engine
//! sequence number inside each channel object so a slow writer can never
//! replace a newer projection with an older one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use tswatch_core::{EngineState, Welford};

/// Key of the source of truth.
pub const ENGINE_KEY: &str = "state/engine.json";
/// Key of the seed-compatible projection.
pub const BASELINE_KEY: &str = "state/baseline.json";

/// Applied files remembered in the ledger.
pub const LEDGER_LEN: usize = 256;
/// Ledger entries that keep their anomalous rows (the seed's "10 most recent files").
pub(crate) const RECENT_FILES: usize = 10;

/// `state/engine.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateDoc {
    /// Document format version.
    pub format: u32,
    /// Incremented by every commit.
    pub seq: u64,
    /// Time of the last commit (seed's ISO-8601 style, UTC).
    pub last_updated: String,
    /// The detection engine.
    pub engine: EngineState,
    /// Running totals over every file ever processed.
    pub totals: Totals,
    /// Recently applied files, oldest first.
    pub(crate) applied: VecDeque<Applied>,
    /// The stream's last rows, for the dashboard.
    #[serde(default)]
    pub(crate) recent: crate::state::recent::RecentSeries,
}

/// Totals behind `/anomalies/summary`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Totals {
    /// Files processed.
    pub files_processed: u64,
    /// Rows scored.
    pub total_rows_scored: u64,
    /// Rows flagged.
    pub total_anomalies: u64,
    /// Events (runs of consecutive anomalous rows), summed over files.
    #[serde(default)]
    pub total_events: u64,
}

/// One applied file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Applied {
    /// `raw/<name>.csv`
    pub(crate) source_key: String,
    /// ETag of the exact object version applied.
    pub(crate) source_etag: String,
    /// Where the scored copy waits until it is moved to `processed/`.
    pub(crate) staged_key: String,
    /// The scored copy's size in bytes, so that moving it on S3 need not
    /// ask for it (absent in ledgers written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) staged_bytes: Option<u64>,
    /// The summary written next to the outputs.
    pub(crate) summary: Summary,
    /// Anomalous rows (kept for the newest `RECENT_FILES` entries only).
    #[serde(default)]
    pub(crate) anomalies: Vec<Map<String, Value>>,
}

/// `processed/<name>_summary.json`: the seed's fields, then tswatch's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Summary {
    /// Raw key.
    pub source_key: String,
    /// Processed CSV key.
    pub output_key: String,
    /// When it was processed.
    pub processed_at: String,
    /// Rows scored.
    pub total_rows: u64,
    /// Rows flagged.
    pub anomaly_count: u64,
    /// `anomaly_count / total_rows`, 4 decimals.
    pub anomaly_rate: f64,
    /// Events: runs of consecutive anomalous rows within the file.
    #[serde(default)]
    pub event_count: u64,
    /// Observations per channel after this file.
    pub baseline_observation_counts: BTreeMap<String, u64>,
    /// ETag of the raw object that was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_etag: Option<String>,
    /// Scored channels (`[]` when the file has no numeric column).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Channel cells that were empty, non-numeric or non-finite.
    #[serde(default)]
    pub missing_cells: u64,
    /// Engine sequence number this file was committed as.
    #[serde(default)]
    pub state_seq: u64,
    /// Wall time spent, in milliseconds (to the microsecond).
    #[serde(default)]
    pub duration_ms: f64,
}

impl Summary {
    /// The summary of a scored file. `counts` are the observation counts
    /// after it; `state_seq` the commit it became part of.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn of_report(
        source_key: String,
        output_key: String,
        processed_at: String,
        report: &crate::state::scored::FileReport,
        baseline_observation_counts: BTreeMap<String, u64>,
        source_etag: Option<String>,
        state_seq: u64,
        duration_ms: f64,
    ) -> Self {
        Self {
            source_key,
            output_key,
            processed_at,
            total_rows: report.total_rows,
            anomaly_count: report.anomaly_count,
            event_count: report.event_count,
            anomaly_rate: if report.total_rows == 0 {
                0.0
            } else {
                round4(report.anomaly_count as f64 / report.total_rows as f64)
            },
            baseline_observation_counts,
            source_etag,
            channels: report.channels.clone(),
            missing_cells: report.missing_cells,
            state_seq,
            duration_ms: (duration_ms * 1e3).round() / 1e3,
        }
    }
}

/// Rounds to 4 decimals, as the seed reports rates.
pub(crate) fn round4(x: f64) -> f64 {
    let r = (x * 1e4).round() / 1e4;
    // Beyond ~1e304 the scaling overflows (and would be written as null);
    // such a number has no decimals left to round.
    if r.is_finite() { r } else { x }
}

/// Current UTC time as the seed writes it (`datetime.utcnow().isoformat()`).
pub(crate) fn now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

impl StateDoc {
    /// A fresh document around an engine state.
    pub(crate) fn new(engine: EngineState) -> Self {
        Self {
            format: 1,
            seq: 0,
            last_updated: now_iso(),
            engine,
            totals: Totals::default(),
            applied: VecDeque::new(),
            recent: Default::default(),
        }
    }

    /// The ledger entry for this exact object version, if applied recently.
    pub(crate) fn find(&self, key: &str, etag: &str) -> Option<&Applied> {
        self.applied
            .iter()
            .rev()
            .find(|a| a.source_key == key && a.source_etag == etag)
    }

    /// Records an applied file and trims the ledger.
    pub(crate) fn record(&mut self, entry: Applied) {
        self.totals.files_processed += 1;
        self.totals.total_rows_scored += entry.summary.total_rows;
        self.totals.total_anomalies += entry.summary.anomaly_count;
        self.totals.total_events += entry.summary.event_count;
        self.applied.push_back(entry);
        while self.applied.len() > LEDGER_LEN {
            self.applied.pop_front();
        }
        let keep_from = self.applied.len().saturating_sub(RECENT_FILES);
        for a in self.applied.iter_mut().take(keep_from) {
            a.anomalies = Vec::new();
        }
    }

    /// The seed-shaped `baseline.json` body for this state.
    pub(crate) fn baseline_json(&self) -> Value {
        let mut m = Map::new();
        for (name, w) in &self.engine.channels {
            m.insert(name.clone(), channel_json(&w.stats, self.seq));
        }
        m.insert(
            "last_updated".into(),
            Value::from(self.last_updated.clone()),
        );
        Value::Object(m)
    }
}

fn channel_json(w: &Welford, seq: u64) -> Value {
    serde_json::json!({
        "count": w.count,
        "mean": w.mean,
        "M2": w.m2,
        "std": w.std(),
        "tswatch_seq": seq,
    })
}

/// The engine sequence number a `baseline.json` projection was written at
/// (0 for a seed-written file).
pub(crate) fn projection_seq(v: &Value) -> u64 {
    v.as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|c| c.get("tswatch_seq").and_then(Value::as_u64))
        .max()
        .unwrap_or(0)
}

/// Why a seed `baseline.json` could not be adopted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdoptError {
    /// Not a JSON object.
    #[error("state/baseline.json is not a JSON object of channels")]
    NotObject,
    /// A channel entry is malformed.
    #[error("state/baseline.json channel `{0}`: {1}")]
    Channel(String, String),
}

/// Reads a seed-written `baseline.json`: every top-level key but
/// `last_updated` is a channel with `count`, `mean`, `M2`.
pub(crate) fn adopt_seed_baseline(v: &Value) -> Result<EngineState, AdoptError> {
    let obj = v.as_object().ok_or(AdoptError::NotObject)?;
    let mut state = EngineState::default();
    for (name, c) in obj.iter().filter(|(k, _)| k.as_str() != "last_updated") {
        let num = |f: &str| {
            c.get(f)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite())
                .ok_or_else(|| {
                    AdoptError::Channel(
                        name.clone(),
                        format!("`{f}` is missing or not a finite number"),
                    )
                })
        };
        let count = c.get("count").and_then(Value::as_u64).ok_or_else(|| {
            AdoptError::Channel(
                name.clone(),
                "`count` is missing or not a whole number".into(),
            )
        })?;
        let w = Welford {
            count,
            mean: num("mean")?,
            m2: num("M2")?,
        };
        if !w.is_valid() {
            return Err(AdoptError::Channel(name.clone(), "negative M2".into()));
        }
        state
            .channels
            .insert(name.clone(), tswatch_core::ChannelState::from_welford(w));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_say_no_channels_as_an_empty_list_and_round_the_duration() {
        let s = Summary::of_report(
            "raw/a.csv".into(),
            "processed/a.csv".into(),
            now_iso(),
            &crate::state::scored::FileReport::default(),
            BTreeMap::new(),
            None,
            1,
            5.250_605_999_999_999,
        );
        let v = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(v["channels"], serde_json::json!([]));
        assert_eq!(v["duration_ms"], 5.251);
    }

    #[test]
    fn round4_keeps_huge_numbers() {
        assert_eq!(round4(1.23456), 1.2346);
        assert_eq!(round4(-2.5e-5), -0.0);
        for x in [f64::MAX, -f64::MAX, 1e305, -1e300] {
            assert_eq!(round4(x), x);
        }
    }

    #[test]
    fn adopts_the_seed_fixture() {
        let text = include_str!("../../tests/fixtures/baseline.json");
        let v: Value = serde_json::from_str(text).unwrap();
        let s = adopt_seed_baseline(&v).unwrap();
        assert_eq!(s.channels.len(), 4);
        let t = &s.channels["temperature"].stats;
        assert_eq!(t.count, 3700);
        assert!((t.std() - 1.9309615368611945).abs() < 1e-12);
    }

    #[test]
    fn baseline_projection_has_the_seed_shape() {
        let v: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/baseline.json")).unwrap();
        let mut doc = StateDoc::new(adopt_seed_baseline(&v).unwrap());
        doc.seq = 7;
        let out = doc.baseline_json();
        let mut keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "humidity",
                "last_updated",
                "pressure",
                "temperature",
                "wind_speed"
            ]
        );
        let t = &out["temperature"];
        for f in ["count", "mean", "M2", "std"] {
            assert_eq!(t[f], v["temperature"][f], "{f}");
        }
        assert_eq!(projection_seq(&out), 7);
        assert_eq!(projection_seq(&v), 0);
    }

    #[test]
    fn bad_seed_baselines_are_refused() {
        let v = serde_json::json!({"t": {"count": 3, "mean": "x", "M2": 1.0}});
        assert!(
            adopt_seed_baseline(&v)
                .unwrap_err()
                .to_string()
                .contains("`mean`")
        );
        assert!(adopt_seed_baseline(&serde_json::json!([1])).is_err());
    }
}
