//! Detection quality, measured by the real binary on labelled scenarios
//! (smaller than `tswatch eval --all`, to keep the suite fast in debug builds).

use crate::harness::*;
use serde_json::Value;

fn eval(args: &[&str]) -> Value {
    let o = tswatch()
        .arg("eval")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn scenario<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scenario"] == name)
        .unwrap()
}

#[test]
fn detection_targets_hold_on_the_scenarios() {
    let v = eval(&[
        "--scenario",
        "clean",
        "--scenario",
        "level_shift",
        "--scenario",
        "daily",
        "--scenario",
        "joint",
        "--rows",
        "12000",
    ]);
    for t in v["targets"].as_array().unwrap() {
        assert_eq!(t["pass"], true, "target missed: {t}");
    }
    assert_eq!(v["targets"].as_array().unwrap().len(), 4);
    let shift = scenario(&v, "level_shift");
    assert!(shift["detection_delay"].as_u64().unwrap() < 20, "{shift}");
    let joint = scenario(&v, "joint");
    assert!(joint["recall"].as_f64().unwrap() >= 0.8, "{joint}");
}

#[test]
fn seed_scenario_is_precise_and_keeps_a_true_baseline() {
    let v = eval(&["--scenario", "seed", "--rows", "6000", "--seed", "7"]);
    let s = scenario(&v, "seed");
    // The seed scenario's target is precision >= 0.97 and recall >= 0.98
    // (README, `tswatch eval`). Precision meets it (measured 0.972 here;
    // 0.995 on `eval --all`).
    assert!(s["precision"].as_f64().unwrap() >= 0.97, "{s}");
    // Recall does NOT meet its 0.98 target: measured 0.924 here (0.919 on
    // `eval --all`), a known, documented shortfall. The seed's spikes
    // recur on 1.25% of each channel's rows; the per-channel tail test
    // learns recurring spikes as the channel's nature (as real series
    // need), so only the joint model finds most of them (issue 15's note).
    // This is a regression guard at the measured level, not the target.
    assert!(s["recall"].as_f64().unwrap() >= 0.92, "{s}");
    // The target itself is not weakened: eval still holds it, and says
    // whether it is met.
    let target = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["measure"] == "seed scenario, precision / recall")
        .unwrap();
    assert_eq!(target["target"], ">= 0.97 / >= 0.98", "{target}");
    let met = s["precision"].as_f64().unwrap() >= 0.97 && s["recall"].as_f64().unwrap() >= 0.98;
    assert_eq!(target["pass"], met, "{target}");
    assert!(s["std_error_at_5000"].as_f64().unwrap() <= 0.05, "{s}");
}

#[test]
fn eval_rejects_unknown_scenarios() {
    let o = tswatch()
        .args(["eval", "--scenario", "nope"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown scenario \"nope\""));
}

#[test]
fn produce_writes_scenarios_with_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tswatch()
        .args([
            "produce",
            "--scenario",
            "joint",
            "--labels",
            "--count",
            "2",
            "--interval",
            "0",
            "--seed",
            "5",
            "--data-dir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("raw"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    let labels = names.iter().find(|n| n.ends_with(".labels.json")).unwrap();
    let v: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("raw").join(labels)).unwrap())
            .unwrap();
    assert!(v["anomalous_rows"].is_array());
    let csv = names.iter().find(|n| n.ends_with(".csv")).unwrap();
    assert!(csv.starts_with("joint_"));
    let text = std::fs::read_to_string(tmp.path().join("raw").join(csv)).unwrap();
    assert!(text.starts_with("timestamp,temperature,humidity,pressure,wind_speed\n"));
    assert_eq!(text.lines().count(), 101);
}

/// The shared NAB development half (`/work/shared/nab-dev` beside the repo).
const NAB_DEV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/nab-dev");

#[test]
fn nab_eval_matches_the_reference_scorer() {
    let nab = std::path::Path::new(NAB_DEV);
    assert!(
        nab.join("nab_score.py").is_file(),
        "{} is missing the NAB development half",
        nab.display()
    );
    let results = tempfile::tempdir().unwrap();
    let o = tswatch()
        .args(["eval", "--json", "--nab"])
        .arg(nab)
        .arg("--out")
        .arg(results.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ours["series"], 31, "{ours}");

    // The reference scorer needs numpy and pandas: missing ones fail the test.
    let python = std::env::var("TSWATCH_PYTHON").unwrap_or_else(|_| "python3".into());
    for (measure, extra) in [
        ("ranking", &[][..]),
        (
            "own_flag",
            &["--score-column", "anomaly", "--threshold", "1"][..],
        ),
    ] {
        let out = results.path().join(format!("{measure}.json"));
        let o = std::process::Command::new(&python)
            .arg(nab.join("nab_score.py"))
            .arg("--data")
            .arg(nab.join("data"))
            .arg("--windows")
            .arg(nab.join("labels/combined_windows.json"))
            .arg("--results")
            .arg(results.path())
            .args(["--name", "tswatch"])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python} (set TSWATCH_PYTHON): {e}"));
        assert!(
            o.status.success(),
            "{python} nab_score.py failed (needs numpy and pandas): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        for p in ["standard", "reward_low_FP_rate", "reward_low_FN_rate"] {
            let (a, b) = (&ours[measure][p], &theirs["profiles"][p]);
            for k in ["score", "raw"] {
                let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
                assert!((x - y).abs() < 1e-6, "{measure} {p} {k}: {x} vs {y}");
            }
            for k in ["windows_detected", "windows_total", "fp_rows"] {
                assert_eq!(a[k], b[k], "{measure} {p} {k}");
            }
        }
    }
}

#[test]
fn nab_eval_names_a_missing_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tswatch()
        .args(["eval", "--nab"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("data"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
