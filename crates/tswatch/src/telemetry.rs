//! The service's counters, gauges and histograms, served by `GET /metrics`
//! in Prometheus' text format.
//!
//! Recording goes through the `metrics` facade: until [`install`] runs
//! (only `tswatch serve` calls it), every record is a no-op, so the CLI
//! commands and the library's tests pay nothing. The names, with what each
//! counts, are in [`describe`] and in `docs/monitoring.md`.

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets (seconds) of the processing-latency histogram: a 100-row file
/// takes milliseconds, a million-row file seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Metric names.
pub(crate) mod name {
    /// Files scored and committed, by stream.
    pub(crate) const FILES: &str = "tswatch_files_processed_total";
    /// Rows scored, by stream.
    pub(crate) const ROWS: &str = "tswatch_rows_scored_total";
    /// Anomalous rows, by stream.
    pub(crate) const ANOMALIES: &str = "tswatch_anomalies_total";
    /// Rows each channel flagged, by stream and channel.
    pub(crate) const CHANNEL_ANOMALIES: &str = "tswatch_channel_anomalies_total";
    /// Events (runs of anomalous rows), by stream.
    pub(crate) const EVENTS: &str = "tswatch_anomaly_events_total";
    /// Seconds from picking a file up to its commit, by stream.
    pub(crate) const LATENCY: &str = "tswatch_processing_seconds";
    /// Files refused for their content, by reason.
    pub(crate) const REJECTED: &str = "tswatch_files_rejected_total";
    /// Files waiting in the work queue.
    pub(crate) const QUEUE_DEPTH: &str = "tswatch_queue_depth";
    /// Commits that lost the compare-and-swap on a stream's state.
    pub(crate) const CONFLICTS: &str = "tswatch_state_commit_conflicts_total";
    /// Attempts that failed on storage or network and were retried.
    pub(crate) const RETRIES: &str = "tswatch_retries_total";
    /// SNS messages refused by `/notify`, by reason.
    pub(crate) const SNS_REFUSED: &str = "tswatch_sns_refused_total";
    /// Messages received from the SQS queue.
    pub(crate) const SQS_RECEIVED: &str = "tswatch_sqs_messages_received_total";
    /// SQS messages left for the queue's dead-letter redrive.
    pub(crate) const SQS_DEAD_LETTERS: &str = "tswatch_sqs_dead_letters_total";
    /// Files a reconciliation scan queued (unprocessed when it looked).
    pub(crate) const RECONCILED: &str = "tswatch_reconciliation_found_total";
    /// Alerts a webhook accepted (one per alert and webhook).
    pub(crate) const ALERTS_SENT: &str = "tswatch_alerts_sent_total";
    /// Alerts given up on after their retries (one per alert and webhook).
    pub(crate) const ALERTS_FAILED: &str = "tswatch_alerts_failed_total";
    /// Alerts not sent, by reason.
    pub(crate) const ALERTS_DROPPED: &str = "tswatch_alerts_dropped_total";
}

/// Installs the recorder and describes every metric, once per process
/// (later calls return the same handle).
pub(crate) fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(name::LATENCY.into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    // Present from the start, so a scrape before the first file sees zeros
    // (labelled series appear with their first value).
    gauge!(name::QUEUE_DEPTH).set(0.0);
    for c in [
        name::CONFLICTS,
        name::SQS_RECEIVED,
        name::SQS_DEAD_LETTERS,
        name::RECONCILED,
        name::ALERTS_SENT,
        name::ALERTS_FAILED,
    ] {
        counter!(c).increment(0);
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(name::FILES, "Files scored and committed, by stream.");
    describe_counter!(name::ROWS, "Rows scored, by stream.");
    describe_counter!(name::ANOMALIES, "Anomalous rows, by stream.");
    describe_counter!(
        name::CHANNEL_ANOMALIES,
        "Rows each channel flagged (its <channel>_zscore_flag), by stream and channel."
    );
    describe_counter!(
        name::EVENTS,
        "Anomaly events (runs of consecutive anomalous rows), by stream."
    );
    describe_histogram!(
        name::LATENCY,
        Unit::Seconds,
        "Time from picking a file up to its commit, by stream."
    );
    describe_counter!(
        name::REJECTED,
        "Files refused for their own content (an _error.json was written), by reason."
    );
    describe_gauge!(name::QUEUE_DEPTH, "Files waiting in the work queue.");
    describe_counter!(
        name::CONFLICTS,
        "Commits that lost the compare-and-swap on a stream's state and were redone."
    );
    describe_counter!(
        name::RETRIES,
        "Attempts that failed on storage or the network and were retried, by what was tried."
    );
    describe_counter!(
        name::SNS_REFUSED,
        "SNS messages refused by POST /notify, by reason."
    );
    describe_counter!(name::SQS_RECEIVED, "Messages received from the SQS queue.");
    describe_counter!(
        name::SQS_DEAD_LETTERS,
        "SQS messages left for the queue's dead-letter redrive (received too often)."
    );
    describe_counter!(
        name::RECONCILED,
        "Files a scan of raw/ queued because it found them unprocessed: a lost notification, or a file still failing (queued again by each scan)."
    );
    describe_counter!(
        name::ALERTS_SENT,
        "Alerts a webhook accepted (2xx), one per alert and webhook."
    );
    describe_counter!(
        name::ALERTS_FAILED,
        "Alerts given up on (retries spent, or a 4xx answer), one per alert and webhook."
    );
    describe_counter!(
        name::ALERTS_DROPPED,
        "Alerts not sent, by reason: rate_limit (over --alert-max-per-minute), queue_full, shutdown."
    );
}

/// Drains the histograms' samples into their buckets every few seconds:
/// without it they would pile up in memory until the next scrape, for good
/// where nothing scrapes. Ends when `stop` flips.
pub(crate) fn spawn_upkeep(handle: PrometheusHandle, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => handle.run_upkeep(),
                _ = stop.changed() => return,
            }
        }
    });
}

/// Longest channel name used as a label (names come from CSV headers).
const MAX_LABEL: usize = 128;

/// A file committed: its counts, per-channel flags and latency.
pub(crate) fn file_applied(
    stream: &crate::state::stream::Stream,
    summary: &crate::state::documents::Summary,
    flagged: &[(String, u64)],
) {
    // The default stream (`raw/<name>.csv`) is labelled `default`.
    let stream = stream.label().to_string();
    counter!(name::FILES, "stream" => stream.clone()).increment(1);
    counter!(name::ROWS, "stream" => stream.clone()).increment(summary.total_rows);
    counter!(name::ANOMALIES, "stream" => stream.clone()).increment(summary.anomaly_count);
    counter!(name::EVENTS, "stream" => stream.clone()).increment(summary.event_count);
    for (channel, n) in flagged {
        counter!(name::CHANNEL_ANOMALIES, "stream" => stream.clone(), "channel" => cut(channel))
            .increment(*n);
    }
    histogram!(name::LATENCY, "stream" => stream).record(summary.duration_ms / 1e3);
}

/// A file refused for its content.
pub(crate) fn file_rejected(reason: &'static str) {
    counter!(name::REJECTED, "reason" => reason).increment(1);
}

/// The work queue's length now.
pub(crate) fn queue_depth(n: usize) {
    gauge!(name::QUEUE_DEPTH).set(n as f64);
}

/// A commit lost the compare-and-swap.
pub(crate) fn commit_conflict() {
    counter!(name::CONFLICTS).increment(1);
}

/// A failed attempt at `what` (`file`, `sqs_receive`, `reconciliation`)
/// that will be retried.
pub(crate) fn retry(what: &'static str) {
    counter!(name::RETRIES, "what" => what).increment(1);
}

/// An SNS message refused, for `reason`.
pub(crate) fn sns_refused(reason: &'static str) {
    counter!(name::SNS_REFUSED, "reason" => reason).increment(1);
}

/// `n` messages received from SQS.
pub(crate) fn sqs_received(n: usize) {
    counter!(name::SQS_RECEIVED).increment(n as u64);
}

/// An SQS message left for the dead-letter redrive.
pub(crate) fn sqs_dead_letter() {
    counter!(name::SQS_DEAD_LETTERS).increment(1);
}

/// `n` files found by a reconciliation scan.
pub(crate) fn reconciled(n: usize) {
    counter!(name::RECONCILED).increment(n as u64);
}

/// `s`, cut to at most [`MAX_LABEL`] bytes on a character boundary.
fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_LABEL);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// An alert a webhook accepted.
pub(crate) fn alert_sent() {
    counter!(name::ALERTS_SENT).increment(1);
}

/// An alert given up on.
pub(crate) fn alert_failed() {
    counter!(name::ALERTS_FAILED).increment(1);
}

/// An alert not sent, for `reason` (`rate_limit`, `queue_full`, `shutdown`).
pub(crate) fn alert_dropped(reason: &'static str) {
    counter!(name::ALERTS_DROPPED, "reason" => reason).increment(1);
}
