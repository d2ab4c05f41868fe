//! The command line as scripts use it: `score` through standard input and
//! output, `--json` documents, the documented exit codes, and progress
//! drawn only on a terminal.

use crate::harness::*;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

/// Runs `tswatch args` with `stdin` piped in.
fn run_with_stdin(args: &[&std::ffi::OsStr], stdin: &[u8]) -> Output {
    let mut child = tswatch()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let body = stdin.to_vec();
    // Written from a thread: the child writes its output while it reads.
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&body);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A file of `rows` rows from `tswatch produce`, written to `path`.
fn producer_file(path: &Path, rows: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let o = tswatch()
        .args(["produce", "--count", "1", "--interval", "0", "--seed", "3"])
        .args([
            "--start",
            "2026-01-01T00:00:00Z",
            "--rows",
            &rows.to_string(),
        ])
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let f = std::fs::read_dir(tmp.path().join("raw"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(f, path).unwrap();
}

/// No carriage return, no escape sequence: nothing a progress bar draws.
fn assert_no_progress(what: &str, stderr: &[u8]) {
    assert!(
        !stderr.iter().any(|&b| b == b'\r' || b == 0x1b),
        "{what}: progress drawn without a terminal:\n{}",
        String::from_utf8_lossy(stderr)
    );
}

#[test]
fn score_through_stdin_and_stdout_equals_score_of_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.csv");
    producer_file(&input, 3000);
    let body = std::fs::read(&input).unwrap();
    for with_state in [false, true] {
        let files_state = tmp.path().join(format!("state-files-{with_state}"));
        let pipe_state = tmp.path().join(format!("state-pipe-{with_state}"));
        // Twice: with --state, the second run continues the first's baseline.
        for round in 0..2 {
            let want = tmp.path().join(format!("want-{with_state}-{round}.csv"));
            let mut cmd = tswatch();
            cmd.arg("score")
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&want);
            if with_state {
                cmd.arg("--state").arg(&files_state);
            }
            let o = cmd.output().unwrap();
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            // The summary is the only thing on stdout.
            assert!(String::from_utf8_lossy(&o.stdout).starts_with("scored 3000 rows"));

            let mut args = vec![os("score"), os("--input"), os("-"), os("--output"), os("-")];
            if with_state {
                args.extend([os("--state"), pipe_state.as_os_str()]);
            }
            let o = run_with_stdin(&args, &body);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            let want = std::fs::read(&want).unwrap();
            assert!(
                o.stdout == want,
                "stdout ({} bytes) differs from the scored file ({} bytes), state {with_state}, round {round}",
                o.stdout.len(),
                want.len()
            );
            // The summary went to stderr.
            assert!(
                stderr(&o).contains("scored 3000 rows of - into -"),
                "{}",
                stderr(&o)
            );
        }
        if with_state {
            for f in ["engine.json", "baseline.json"] {
                let a: Value =
                    serde_json::from_slice(&std::fs::read(files_state.join(f)).unwrap()).unwrap();
                let b: Value =
                    serde_json::from_slice(&std::fs::read(pipe_state.join(f)).unwrap()).unwrap();
                let strip = |mut v: Value| {
                    // The time of the save differs, nothing else.
                    v.as_object_mut().unwrap().remove("last_updated");
                    for (_, ch) in v.as_object_mut().unwrap().iter_mut() {
                        if let Some(o) = ch.as_object_mut() {
                            o.remove("last_updated");
                        }
                    }
                    v
                };
                assert_eq!(strip(a), strip(b), "{f}");
            }
        }
    }
}

#[test]
fn score_summary_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixtures().join("sensors_20260224T001051.csv");
    let output = tmp.path().join("out.csv");
    let o = tswatch()
        .arg("score")
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total_rows"], 100, "{v}");
    assert_eq!(v["source_key"], input.display().to_string());
    assert_eq!(v["output_key"], output.display().to_string());
    assert_eq!(
        v["channels"],
        serde_json::json!(["temperature", "humidity", "pressure", "wind_speed"])
    );
    for k in [
        "anomaly_count",
        "anomaly_rate",
        "event_count",
        "missing_cells",
        "processed_at",
        "baseline_observation_counts",
        "duration_ms",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    // From standard input, the name is `-`.
    let o = run_with_stdin(
        &[
            os("score"),
            os("--input"),
            os("-"),
            os("--output"),
            output.as_os_str(),
            os("--json"),
        ],
        &std::fs::read(&input).unwrap(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["source_key"], "-");
    assert_eq!(v["total_rows"], 100);
}

#[test]
fn eval_and_baseline_print_one_json_document() {
    // eval: one document on stdout, even when the gate fails (exit 4).
    let o = tswatch()
        .args(["eval", "--all", "--rows", "300", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["scenarios"].as_array().unwrap().len(), 9, "{v}");
    assert!(
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["pass"] == false)
    );
    assert!(
        stderr(&o).contains("detection targets missed"),
        "{}",
        stderr(&o)
    );

    // baseline show / reset.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let run = |args: &[&str]| {
        let o = tswatch()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    assert!(run(&["baseline", "show", "--json"]).is_object());
    assert_eq!(
        run(&["baseline", "reset", "--json"]),
        serde_json::json!({ "stream": "", "reset": true })
    );
    assert_eq!(
        run(&["baseline", "reset", "--json", "--stream", "site-a"]),
        serde_json::json!({ "stream": "site-a", "reset": true })
    );
    assert!(data.join("state/site-a/engine.json").is_file());
    // A name that cannot be a folder under raw/ is refused before any work.
    for (bad, why) in [("a/b", "must not contain '/'"), ("staging", "reserved")] {
        let o = tswatch()
            .args(["baseline", "reset", "--stream", bad, "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
    }
    assert!(!data.join("state/a").exists());
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
    let o = run_with_stdin(
        &[
            os("score"),
            os("--input"),
            os("-"),
            os("--output"),
            os("-"),
            os("--json"),
        ],
        b"",
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    // 3: input rejected, from a file and from standard input.
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "timestamp,v\n1,2\n2,3,4\n").unwrap();
    let o = score(&bad, &[]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("line 3"), "{}", stderr(&o));
    assert!(!tmp.path().join("out.csv.partial").exists());
    let o = run_with_stdin(
        &[os("score"), os("--input"), os("-"), os("--output"), os("-")],
        b"",
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
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

#[test]
fn no_progress_is_drawn_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.csv");
    producer_file(&input, 20_000);
    let o = tswatch()
        .arg("score")
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(tmp.path().join("out.csv"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_no_progress("score", &o.stderr);
    let o = run_with_stdin(
        &[os("score"), os("--input"), os("-"), os("--output"), os("-")],
        &std::fs::read(&input).unwrap(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_no_progress("score -", &o.stderr);
    let o = tswatch()
        .args(["eval", "--all", "--rows", "300"])
        .output()
        .unwrap();
    assert_no_progress("eval", &o.stderr);
}

/// On a terminal (a pseudo-terminal from util-linux `script`), `score`
/// draws its bar on stderr and clears it; stdout still holds the summary.
#[test]
fn progress_is_drawn_on_a_terminal() {
    // No `script` (util-linux), or no pseudo-terminals here: nothing to test.
    let can = std::process::Command::new("script")
        .args(["-qec", "test -t 2", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !can {
        eprintln!("skipped: `script` cannot make a terminal here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.csv");
    producer_file(&input, 100_000);
    let command = format!(
        "{} score --input {} --output {}",
        env!("CARGO_BIN_EXE_tswatch"),
        input.display(),
        tmp.path().join("out.csv").display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{seen}");
    assert!(seen.contains("scoring ["), "no bar drawn:\n{seen:?}");
    assert!(seen.contains("scored 100000 rows"), "{seen:?}");
}
