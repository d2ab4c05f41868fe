//! Exact JSON snapshots: the state documents, the summary, the error record
//! and every JSON endpoint's answer for one fixed input, compared with the
//! files in `tests/snapshots/`, so that any change to a schema (a field
//! added, removed, renamed, reordered or retyped, a number written
//! differently) fails here and is reviewed. Only values that change from
//! run to run (times, durations, ETags, staging names, temporary paths) are
//! replaced, by key, with a fixed placeholder.
//!
//! After an intended change, rewrite the snapshots and review the diff:
//! `TSWATCH_UPDATE_SNAPSHOTS=1 cargo test -p tswatch --test it snapshots`.

use crate::harness::*;
use serde_json::Value;
use std::path::PathBuf;

/// What a volatile value is replaced with.
const PLACEHOLDER: &str = "<volatile>";

fn snapshot_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

/// Replaces the value of every key in `volatile`, at any depth.
fn mask(v: &mut Value, volatile: &[&str]) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if volatile.contains(&k.as_str()) {
                    *x = Value::from(PLACEHOLDER);
                } else {
                    mask(x, volatile);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mask(x, volatile)),
        _ => {}
    }
}

/// Compares `value` (its `volatile` keys masked) with the snapshot `name`,
/// or rewrites the snapshot when `TSWATCH_UPDATE_SNAPSHOTS=1`. Returns a
/// description of the mismatch, if any.
fn check(name: &str, mut value: Value, volatile: &[&str]) -> Option<String> {
    mask(&mut value, volatile);
    let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
    let path = snapshot_dir().join(format!("{name}.json"));
    if std::env::var("TSWATCH_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(snapshot_dir()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return None;
    }
    let Ok(want) = std::fs::read_to_string(&path) else {
        return Some(format!(
            "{name}: no snapshot at {} (TSWATCH_UPDATE_SNAPSHOTS=1 writes it)",
            path.display()
        ));
    };
    if want == text {
        return None;
    }
    let (got, want): (Vec<&str>, Vec<&str>) = (text.lines().collect(), want.lines().collect());
    let at = (0..got.len().max(want.len()))
        .find(|&i| got.get(i) != want.get(i))
        .unwrap_or(0);
    Some(format!(
        "{name} differs from {} at line {}:\n  snapshot: {}\n  now:      {}",
        path.display(),
        at + 1,
        want.get(at).unwrap_or(&"<end>"),
        got.get(at).unwrap_or(&"<end>")
    ))
}

/// Times and durations in the outputs and state documents.
const OUTPUT_VOLATILE: &[&str] = &[
    "processed_at",
    "last_updated",
    "duration_ms",
    "stage_cpu_ms",
    "failed_at",
    // A local file's ETag is made from its inode and modification time.
    "source_etag",
    // Named by process id and time.
    "staged_key",
];

#[tokio::test]
async fn outputs_state_and_endpoints_match_their_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = Service::local(&data, tmp.path()).await;
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    drop_in(&data, "sensors_20260224T001051.csv", &fixture);
    wait_file(&data.join("processed/sensors_20260224T001051_summary.json")).await;
    // A file that is refused: its error record.
    drop_in(&data, "broken.csv", b"timestamp,a\n1,2\n2,3,4\n");
    wait_file(&data.join("processed/broken_error.json")).await;

    let file = |p: &str| -> Value {
        serde_json::from_slice(&std::fs::read(data.join(p)).unwrap()).unwrap()
    };
    let mut wrong = Vec::new();
    let mut compare = |name: &str, v: Value, volatile: &[&str]| {
        wrong.extend(check(name, v, volatile));
    };
    compare("state_engine", file("state/engine.json"), OUTPUT_VOLATILE);
    compare(
        "state_baseline",
        file("state/baseline.json"),
        OUTPUT_VOLATILE,
    );
    compare(
        "processed_summary",
        file("processed/sensors_20260224T001051_summary.json"),
        OUTPUT_VOLATILE,
    );
    compare(
        "processed_error",
        file("processed/broken_error.json"),
        OUTPUT_VOLATILE,
    );

    // Every JSON endpoint, with its status.
    let gets: [(&str, &str, &[&str]); 9] = [
        ("api_health", "/health", &["timestamp", "bucket"]),
        ("api_ready", "/ready", &["timestamp", "latency_ms"]),
        ("api_anomalies_recent", "/anomalies/recent", &[]),
        (
            "api_anomalies_recent_limit_1",
            "/anomalies/recent?limit=1",
            &[],
        ),
        (
            "api_anomalies_summary",
            "/anomalies/summary",
            OUTPUT_VOLATILE,
        ),
        ("api_baseline_current", "/baseline/current", OUTPUT_VOLATILE),
        ("api_dashboard_data", "/dashboard/data", OUTPUT_VOLATILE),
        ("api_error_bad_limit", "/anomalies/recent?limit=abc", &[]),
        ("api_error_not_found", "/nope", &[]),
    ];
    for (name, path, volatile) in gets {
        let (status, body) = svc.get_json(path).await;
        compare(
            name,
            serde_json::json!({ "status": status, "body": body }),
            volatile,
        );
    }
    let (status, body) = svc.post("/notify", "not json").await;
    compare(
        "api_error_notify_not_json",
        serde_json::json!({ "status": status, "body": body }),
        &[],
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
