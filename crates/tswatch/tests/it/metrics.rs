//! `GET /metrics`, scraped and read with a Prometheus exposition-format
//! parser, after real files, a rejected file and refused SNS messages.

use crate::harness::{Service, drop_in, tswatch, wait_file, wait_for, with_a_spike};
use prometheus_parse::{Sample, Scrape, Value};
use std::path::Path;
use std::time::Duration;

/// `GET /metrics`, parsed.
pub(crate) async fn scrape(svc: &Service) -> Scrape {
    let r = svc
        .http
        .get(format!("{}/metrics", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of `metric` whose labels include every pair of `labels`.
pub(crate) fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && has(x, labels))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

fn has(x: &Sample, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
}

fn stream(name: &str) -> [(&'static str, &str); 1] {
    [("stream", name)]
}

fn start(data: &Path, logs: &Path) -> impl std::future::Future<Output = Service> {
    let mut cmd = tswatch();
    cmd.arg("--config").arg(logs.join("none.toml"));
    std::fs::write(logs.join("none.toml"), "").unwrap();
    let data = data.to_str().unwrap().to_string();
    let logs = logs.to_path_buf();
    async move { Service::start(cmd, &["--data-dir", &data], &logs).await }
}

#[tokio::test]
async fn metrics_count_files_rows_anomalies_rejections_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = start(&data, tmp.path()).await;

    // Before any work: described, and the queue is at zero.
    let s = scrape(&svc).await;
    assert_eq!(value(&s, "tswatch_queue_depth", &[]), Some(0.0));
    assert_eq!(
        value(&s, "tswatch_state_commit_conflicts_total", &[]),
        Some(0.0)
    );
    assert!(s.docs["tswatch_state_commit_conflicts_total"].contains("compare-and-swap"));

    let spike = with_a_spike();
    drop_in(&data, "spike.csv", spike.as_bytes());
    let fixture =
        std::fs::read(crate::harness::fixtures().join("sensors_20260224T001051.csv")).unwrap();
    let fixture_rows = fixture.iter().filter(|&&b| b == b'\n').count() - 1;
    drop_in(&data, "north/sensors.csv", &fixture);
    drop_in(&data, "empty.csv", b"");
    wait_file(&data.join("processed/spike_summary.json")).await;
    wait_file(&data.join("processed/north/sensors_summary.json")).await;
    wait_file(&data.join("processed/empty_error.json")).await;

    // Two SNS refusals: not JSON, and (no topic configured) any message.
    let (st, _) = svc.post("/notify", "not json").await;
    assert_eq!(st, 400);
    let msg = serde_json::json!({
        "Type": "Notification", "MessageId": "m1",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:t", "Message": "{}",
        "Timestamp": "2026-12-07T00:00:00Z", "SignatureVersion": "1",
        "Signature": "AAAA", "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem",
    });
    let (st, _) = svc.post("/notify", msg.to_string()).await;
    assert_eq!(st, 403);

    let s = wait_for(
        "the metrics to show both files",
        Duration::from_secs(10),
        || async {
            let s = scrape(&svc).await;
            (value(&s, "tswatch_files_processed_total", &[("stream", "north")]) == Some(1.0))
                .then_some(s)
        },
    )
    .await;
    assert_eq!(
        value(&s, "tswatch_files_processed_total", &stream("default")),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "tswatch_rows_scored_total", &stream("default")),
        Some(301.0)
    );
    assert_eq!(
        value(&s, "tswatch_rows_scored_total", &stream("north")),
        Some(fixture_rows as f64)
    );
    // The spike is one anomalous row, flagged by `temp` alone.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("processed/spike_summary.json")).unwrap())
            .unwrap();
    let flagged = summary["anomaly_count"].as_f64().unwrap();
    assert!(flagged >= 1.0, "{summary}");
    assert_eq!(
        value(&s, "tswatch_anomalies_total", &stream("default")),
        Some(flagged)
    );
    assert!(
        value(
            &s,
            "tswatch_channel_anomalies_total",
            &[("stream", "default"), ("channel", "temp")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        value(
            &s,
            "tswatch_channel_anomalies_total",
            &[("stream", "default"), ("channel", "load")]
        ),
        None
    );
    assert_eq!(
        value(&s, "tswatch_files_rejected_total", &[("reason", "empty")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "tswatch_sns_refused_total", &[("reason", "malformed")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "tswatch_sns_refused_total", &[("reason", "no_topics")]),
        Some(1.0)
    );
    // The latency histogram: one observation per stream, in buckets.
    let hist = s
        .samples
        .iter()
        .find(|x| x.metric == "tswatch_processing_seconds" && has(x, &stream("north")))
        .expect("a latency histogram for stream north");
    match &hist.value {
        Value::Histogram(b) => {
            assert!(b.len() >= 10, "{b:?}");
            assert_eq!(b.last().map(|c| c.count), Some(1.0));
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert_eq!(
        value(&s, "tswatch_processing_seconds_count", &stream("north")),
        Some(1.0)
    );
    // Startup reconciliation found nothing; the watcher saw every file.
    assert!(value(&s, "tswatch_reconciliation_found_total", &[]).is_some());
}
