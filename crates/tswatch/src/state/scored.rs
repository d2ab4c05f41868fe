//! What scoring one file produced ([`FileReport`]), as the commit records
//! it: the counts its summary holds, the rows each channel flagged (added
//! to the running totals), the anomalous rows kept and the last rows (for
//! the dashboard). The scorer (`csv::scorer`) fills it; the state documents
//! read it, so they need nothing from the scorer.

use crate::state::recent::RecentRow;
use serde_json::{Map, Value};

/// What scoring one file produced.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    /// Data rows scored.
    pub(crate) total_rows: u64,
    /// Rows judged anomalous.
    pub(crate) anomaly_count: u64,
    /// Events: runs of consecutive anomalous rows (one incident is one
    /// event, however many rows it flags).
    pub(crate) event_count: u64,
    /// Channel cells that were empty, non-numeric or non-finite.
    pub(crate) missing_cells: u64,
    /// Names of the scored channels.
    pub(crate) channels: Vec<String>,
    /// Anomalous rows as JSON objects (the first ones, as many as the
    /// scorer keeps: `MAX_KEPT_ANOMALIES` rows within `MAX_KEPT_BYTES`).
    pub(crate) anomalies: Vec<Map<String, Value>>,
    /// Rows each channel flagged (its `<channel>_zscore_flag`), in the
    /// order of `channels`.
    pub(crate) channel_flags: Vec<u64>,
    /// The file's last rows (at most [`crate::state::recent::RECENT_ROWS`]), for
    /// the dashboard.
    pub(crate) tail: Vec<RecentRow>,
}
