//! `tswatch-lab bench`, run as a user runs it: the real binary, locally
//! and against a moto server it starts itself.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use serde_json::Value;
use std::process::{Command, Output};

/// The lab binary, with none of the developer's environment.
fn lab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tswatch-lab"));
    for v in ["TSWATCH_CONFIG", "AWS_ENDPOINT_URL", "AWS_PROFILE"] {
        c.env_remove(v);
    }
    c
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn bench_measures_each_size_against_the_floor() {
    let o = lab()
        .args(["bench", "--rows", "50,500", "--reads", "3", "--json"])
        .output()
        .unwrap();
    let v = json(&o);
    let reads = v["reads"].as_array().unwrap();
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["files"], 3);
    assert!(reads[0]["summary_ms"][0].as_f64().unwrap() > 0.0);
    let ms = v["files"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[1]["rows"], 500);
    for m in ms {
        assert!(m["input_bytes"].as_u64().unwrap() > 0);
        assert!(m["floor_s"].as_f64().unwrap() > 0.0);
        assert!(m["end_to_end_s"].as_f64().unwrap() > 0.0);
        assert!(m["peak_rss_kib"].as_u64().unwrap() > 0);
        assert!(m["cpu_s"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn bench_measures_on_moto_too() {
    let o = lab()
        .args(["bench", "--rows", "50", "--moto", "--reads", "5", "--json"])
        .args(["--read-streams", "2"])
        .output()
        .unwrap();
    let v = json(&o);
    let moto = v["moto"].as_array().unwrap();
    assert_eq!(moto.len(), 1);
    assert_eq!(moto[0]["rows"], 50);
    assert!(moto[0]["floor_s"].as_f64().unwrap() > 0.0);
    assert!(moto[0]["end_to_end_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["reads"][0]["files"], 5);
    assert_eq!(v["reads"][0]["streams"], 2);
}

/// Without a terminal, no bar is drawn: each size is a line on stderr.
#[test]
fn no_progress_is_drawn_without_a_terminal() {
    let o = lab()
        .args(["bench", "--rows", "50", "--repeat", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("measured 50 rows"), "{stderr}");
    assert!(
        !o.stderr.iter().any(|&b| b == b'\r' || b == 0x1b),
        "progress drawn without a terminal:\n{stderr}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("x floor"));
}

/// `--latency` needs the service binary; without one it says how to get it.
#[test]
fn latency_without_the_service_binary_says_what_to_build() {
    let o = lab()
        .args(["bench", "--rows", "50", "--repeat", "1", "--latency", "3"])
        .arg("--tswatch")
        .arg("/nonexistent/tswatch")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("/nonexistent/tswatch is missing: build it"),
        "{stderr}"
    );
}
