//! The command line as scripts use it: the documented exit codes.

use crate::harness::*;
use std::path::Path;
use std::process::Output;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn each_documented_exit_code_is_produced() {
    let tmp = tempfile::tempdir().unwrap();
    let good = fixtures().join("sensors_20260224T001051.csv");
    let out = tmp.path().join("out.csv");
    let score = |input: &Path, extra: &[&str]| {
        tswatch()
            .arg("score")
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    // 0: success.
    assert_eq!(code(&score(&good, &[])), 0);
    // 1: runtime or storage failure (an input that is not there, an
    // output that cannot be created).
    let o = score(&tmp.path().join("missing.csv"), &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let o = tswatch()
        .arg("score")
        .arg("--input")
        .arg(&good)
        .arg("--output")
        .arg(tmp.path().join("no/such/dir/out.csv"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    // 2: usage errors: clap's own, a bad configuration file, an unknown
    // scenario, flags that do not go together.
    let o = tswatch()
        .args(["score", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "bukket = \"x\"\n").unwrap();
    let o = tswatch()
        .arg("--config")
        .arg(&cfg)
        .args(["eval", "--scenario", "clean", "--rows", "10"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = tswatch()
        .args(["eval", "--scenario", "nope"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = tswatch()
        .args([
            "produce",
            "--scenario",
            "nope",
            "--count",
            "1",
            "--data-dir",
        ])
        .arg(tmp.path().join("p"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // 3: input rejected.
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "timestamp,v\n1,2\n2,3,4\n").unwrap();
    let o = score(&bad, &[]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("line 3"), "{}", stderr(&o));
    assert!(!tmp.path().join("out.csv.partial").exists());
    // 4: a quality gate failed (`eval --all` on too few rows to meet the
    // targets); without --all the same misses are only reported.
    let o = tswatch()
        .args(["eval", "--all", "--rows", "300"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("[FAIL]"));
    let o = tswatch()
        .args(["eval", "--scenario", "clean", "--rows", "300"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // And --help documents them all.
    let help = tswatch().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for c in [
        "  0  success",
        "  1  runtime",
        "  2  usage",
        "  3  input",
        "  4  quality",
    ] {
        assert!(help.contains(c), "{c} missing from --help:\n{help}");
    }
}
