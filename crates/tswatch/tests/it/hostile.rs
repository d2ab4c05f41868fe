//! Hostile and broken input files through the real service: each is either
//! processed (bad cells skipped and counted) or refused with
//! `processed/<name>_error.json` naming the reason and line; the baseline
//! never holds a non-finite number; every endpoint keeps answering.

use crate::harness::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

#[derive(Debug)]
enum Want {
    /// Processed: rows, missing cells, channels.
    Summary(u64, u64, &'static [&'static str]),
    /// Refused: line (if known) and words of the reason.
    Error(Option<u64>, &'static str),
}

struct Case {
    /// Key under `raw/`.
    name: String,
    body: Vec<u8>,
    want: Want,
}

fn case(name: &str, body: impl Into<Vec<u8>>, want: Want) -> Case {
    Case {
        name: name.to_string(),
        body: body.into(),
        want,
    }
}

fn cases() -> Vec<Case> {
    use Want::*;
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    let mut text = String::from("timestamp,temperature,site\n");
    for i in 0..40 {
        text.push_str(&format!("t{i},{},north\n", 20 + i % 3));
    }
    text.push_str("t40,abc,north\nt41,N/A,south\nt42,,east\nt43, 21.5 ,west\n");
    let mut nonfinite = String::from("timestamp,v,w\n");
    for i in 0..35 {
        nonfinite.push_str(&format!("{i},{},{}\n", 10 + i % 4, 5 + i % 2));
    }
    nonfinite.push_str("35,inf,1\n36,-inf,NaN\n37,nan,Infinity\n38,1e400,-1e400\n39,-Infinity,2\n");
    let wide = (0..1025)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut endless = b"timestamp,a\n1,".to_vec();
    endless.resize(endless.len() + (3 << 20), b'x');
    vec![
        case("empty.csv", "", Error(None, "the file is empty")),
        case(
            "header_only.csv",
            "timestamp,a,b\n",
            Summary(0, 0, &["a", "b"]),
        ),
        case(
            "no_timestamp.csv",
            "a,b\n1,2\n3,4\n",
            Summary(2, 0, &["a", "b"]),
        ),
        case(
            "only_timestamp.csv",
            "timestamp\n1\n2\n",
            Summary(2, 0, &[]),
        ),
        case(
            "dupes.csv",
            "timestamp,a,a\n1,2,3\n",
            Error(Some(1), "duplicate column name `a`"),
        ),
        case(
            "collide.csv",
            "timestamp,anomaly\n1,2\n",
            Error(Some(1), "`anomaly` would collide"),
        ),
        case(
            "wide.csv",
            format!("{wide}\n1\n"),
            Error(Some(1), "at most 1024"),
        ),
        case("text_cells.csv", text, Summary(44, 3, &["temperature"])),
        case("nonfinite.csv", nonfinite, Summary(40, 8, &["v", "w"])),
        case(
            "short_rows.csv",
            "timestamp,a,b\n1,2,3\n2,3\n3\n4,5,6\n",
            Summary(4, 3, &["a", "b"]),
        ),
        case(
            "long_row.csv",
            "timestamp,a\n1,2\n2,3\n3,4,5\n",
            Error(Some(4), "3 fields, but the header has 2 columns"),
        ),
        case(
            "crlf_long_row.csv",
            "timestamp,a\r\n1,2\r\n\r\n3,4,5\r\n",
            Error(Some(4), "3 fields"),
        ),
        case(
            "bom_crlf.csv",
            "\u{feff}timestamp,temp\r\n2026-01-01T00:00:00,1.5\r\n2026-01-01T00:01:00,1.6\r\n",
            Summary(2, 0, &["temp"]),
        ),
        case(
            "quoted.csv",
            "timestamp,value,note\n1,2.5,\"hello, world\"\n2,2.6,\"line one\nline two\"\n3,2.7,\"she said \"\"hi\"\"\"\n\"2026-01-01, noon\",2.8,plain\n",
            Summary(4, 0, &["value"]),
        ),
        case(
            "unclosed_quote.csv",
            "timestamp,a\n1,\"never closed\n2,3\n",
            Summary(1, 0, &[]),
        ),
        case(
            "nonutf8_cells.csv",
            &b"timestamp,v,label\n1,2.0,caf\xe9\n2,\xff\xfe,ok\n3,3.0,\xff\n4,4,x\n5,5,x\n6,6,x\n7,7,x\n8,8,x\n"[..],
            Summary(8, 1, &["v"]),
        ),
        case(
            "nonutf8_header.csv",
            &b"timestamp,caf\xe9\n1,2\n"[..],
            Error(Some(1), "not UTF-8"),
        ),
        case("endless.csv", endless, Error(Some(2), "longer than 1 MiB")),
        case(
            "with space.csv",
            fixture.clone(),
            Summary(
                100,
                0,
                &["temperature", "humidity", "pressure", "wind_speed"],
            ),
        ),
        case(
            "a+b.csv",
            fixture.clone(),
            Summary(
                100,
                0,
                &["temperature", "humidity", "pressure", "wind_speed"],
            ),
        ),
        case(
            "ünïcödé ✓.csv",
            fixture.clone(),
            Summary(
                100,
                0,
                &["temperature", "humidity", "pressure", "wind_speed"],
            ),
        ),
        case(
            "site 1/x+y=z.csv",
            fixture.clone(),
            Summary(
                100,
                0,
                &["temperature", "humidity", "pressure", "wind_speed"],
            ),
        ),
        case(
            "100%.csv",
            fixture,
            Summary(
                100,
                0,
                &["temperature", "humidity", "pressure", "wind_speed"],
            ),
        ),
    ]
}

/// Finite values that overflow naive running statistics.
fn extreme() -> String {
    let mut s = String::from("timestamp,x\n");
    for i in 0..40 {
        let v = [
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "1e200",
            "-1e200",
        ][i % 4];
        s.push_str(&format!("{i},{v}\n"));
    }
    s
}

fn stem(name: &str) -> &str {
    name.strip_suffix(".csv").unwrap()
}

/// Checks one outcome (`summary` or `error` document) against the case.
fn check(c: &Case, summary: Option<&Value>, error: Option<&Value>) {
    let n = &c.name;
    match (&c.want, summary, error) {
        (Want::Summary(rows, missing, channels), Some(s), None) => {
            assert_eq!(s["total_rows"], *rows, "{n}: {s}");
            assert_eq!(s["missing_cells"], *missing, "{n}: {s}");
            // An empty list is left out of the summary.
            let got = s.get("channels").cloned().unwrap_or(json!([]));
            assert_eq!(got, json!(channels), "{n}: {s}");
            assert_eq!(s["source_key"], format!("raw/{n}"), "{n}");
            assert_eq!(s["output_key"], format!("processed/{n}"), "{n}");
        }
        (Want::Error(line, words), None, Some(e)) => {
            assert_eq!(e["line"], json!(line), "{n}: {e}");
            assert!(e["error"].as_str().unwrap().contains(words), "{n}: {e}");
            assert_eq!(e["source_key"], format!("raw/{n}"), "{n}");
        }
        (want, s, e) => panic!("{n}: wanted {want:?}, got summary {s:?}, error {e:?}"),
    }
}

/// Every number in `state/baseline.json` is finite (a non-finite one would
/// have been written as null).
fn assert_baseline_finite(b: &Value) {
    let obj = b.as_object().unwrap();
    assert!(obj["last_updated"].is_string(), "{b}");
    for (ch, v) in obj.iter().filter(|(k, _)| *k != "last_updated") {
        for f in ["count", "mean", "M2", "std"] {
            let x = v[f]
                .as_f64()
                .unwrap_or_else(|| panic!("{ch}.{f} is {} in {b}", v[f]));
            assert!(x.is_finite(), "{ch}.{f}");
        }
    }
}

async fn assert_endpoints_answer(svc: &Service) {
    for p in [
        "/health",
        "/anomalies/summary",
        "/anomalies/recent?limit=1000",
        "/baseline/current",
    ] {
        let (st, v) = svc.get_json(p).await;
        assert_eq!(st, 200, "{p}: {v}");
    }
    let (_, b) = svc.get_json("/baseline/current").await;
    for (ch, c) in b["channels"].as_object().unwrap() {
        for f in ["mean", "std"] {
            assert!(c[f].as_f64().is_some_and(f64::is_finite), "{ch}.{f}: {b}");
        }
    }
}

#[tokio::test]
async fn hostile_files_on_the_local_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = Service::start(
        tswatch(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--reconcile-interval",
            "3600",
        ],
        tmp.path(),
    )
    .await;

    // Extremes first: before the fix they left the state unloadable, and
    // nothing after them was processed.
    drop_in(&data, "extreme.csv", extreme().as_bytes());
    let s: Value =
        serde_json::from_slice(&wait_file(&data.join("processed/extreme_summary.json")).await)
            .unwrap();
    assert_eq!(s["total_rows"], 40);
    // The baseline projection is written just after the summary.
    let b = wait_for("baseline.json with x", Duration::from_secs(30), || async {
        let b = std::fs::read(data.join("state/baseline.json")).ok()?;
        let v: Value = serde_json::from_slice(&b).ok()?;
        v.get("x").is_some().then_some(v)
    })
    .await;
    assert_baseline_finite(&b);

    let cases = cases();
    for c in &cases {
        drop_in(&data, &c.name, &c.body);
    }
    for c in &cases {
        let (sp, ep) = (
            data.join(format!("processed/{}_summary.json", stem(&c.name))),
            data.join(format!("processed/{}_error.json", stem(&c.name))),
        );
        let (s, e) = wait_for(&c.name, Duration::from_secs(60), || async {
            let read = |p: &Path| {
                std::fs::read(p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            };
            let (s, e) = (read(&sp), read(&ep));
            (s.is_some() || e.is_some()).then_some((s, e))
        })
        .await;
        check(c, s.as_ref(), e.as_ref());
        if matches!(c.want, Want::Error(..)) {
            assert!(
                !data.join("processed").join(&c.name).exists(),
                "{}: no output",
                c.name
            );
        }
    }

    // Inputs reach the output byte for byte; the header loses its BOM.
    let out = std::fs::read(data.join("processed/bom_crlf.csv")).unwrap();
    assert!(
        out.starts_with(b"timestamp,temp,temp_zscore,"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let rows = csv_rows(&std::fs::read(data.join("processed/quoted.csv")).unwrap());
    let notes: Vec<&str> = rows[1..].iter().map(|r| r[2].as_str()).collect();
    assert_eq!(
        notes,
        [
            "hello, world",
            "line one\nline two",
            "she said \"hi\"",
            "plain"
        ]
    );
    assert_eq!(rows[4][0], "2026-01-01, noon");
    let out = std::fs::read(data.join("processed/nonutf8_cells.csv")).unwrap();
    assert!(
        out.windows(5).any(|w| w == b"caf\xe9,"),
        "non-UTF-8 text passes through"
    );
    assert!(
        out.windows(3).any(|w| w == b"\xff\xfe,"),
        "the bad number is kept as written"
    );

    // The service goes on: a normal file after all of that is processed.
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    drop_in(&data, "after.csv", &fixture);
    wait_file(&data.join("processed/after_summary.json")).await;
    let b: Value =
        serde_json::from_slice(&std::fs::read(data.join("state/baseline.json")).unwrap()).unwrap();
    assert_baseline_finite(&b);
    assert!(b["x"]["count"].as_u64().unwrap() >= 1, "{b}");
    assert_endpoints_answer(&svc).await;
    let log = svc.proc.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("rejected input file"));
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn a_large_file_streams_through_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = Service::start(
        tswatch(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--reconcile-interval",
            "3600",
        ],
        tmp.path(),
    )
    .await;
    // ~80 MB: 40,000 rows with a 2 KB text column, written in a stream.
    let rows = 40_000u64;
    let part = data.join(".big.part");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&part).unwrap());
        writeln!(w, "timestamp,value,note").unwrap();
        let note = "n".repeat(2000);
        for i in 0..rows {
            writeln!(
                w,
                "2026-01-01T00:00:{i:05},{},{note}",
                20.0 + (i % 7) as f64 * 0.1
            )
            .unwrap();
        }
        w.flush().unwrap();
    }
    let size = std::fs::metadata(&part).unwrap().len();
    assert!(size > 80_000_000, "{size}");
    let (rss_before, _) = memory_kib(svc.proc.pid());
    std::fs::rename(&part, data.join("raw/big.csv")).unwrap();
    let s: Value =
        serde_json::from_slice(&wait_file(&data.join("processed/big_summary.json")).await).unwrap();
    assert_eq!(s["total_rows"], rows);
    let out_len = std::fs::metadata(data.join("processed/big.csv"))
        .unwrap()
        .len();
    assert!(
        out_len > size,
        "the scored copy holds every input byte: {out_len}"
    );
    let (rss_after, peak) = memory_kib(svc.proc.pid());
    eprintln!(
        "tswatch memory: VmRSS {rss_before} KiB before, {rss_after} KiB after, peak {peak} KiB, for a {size}-byte file"
    );
    assert!(peak < 200 * 1024, "peak {peak} KiB for a {size}-byte file");
    assert!(rss_after < 200 * 1024, "{rss_after} KiB");
    assert_endpoints_answer(&svc).await;
}

/// Whether the service logged that it started on `key`.
fn started_processing(svc: &Service, key: &str) -> bool {
    svc.proc
        .log_text()
        .lines()
        .any(|l| l.contains(" processing ") && l.contains(key) && !l.contains("failed"))
}

/// Rows whose `version` column says which upload they came from.
fn versioned(version: &str, rows: usize, note_len: usize) -> Vec<u8> {
    let mut s = String::from("timestamp,value,version,note\n");
    let note = "v".repeat(note_len);
    for i in 0..rows {
        s.push_str(&format!("{i},{},{version},{note}\n", 10.0 + (i % 5) as f64));
    }
    s.into_bytes()
}

/// The processed copy is exactly one version, whole.
fn assert_one_whole_version(csv: &[u8], version: &str, rows: usize) {
    let r = csv_rows(csv);
    assert_eq!(r.len(), rows + 1, "{version}");
    assert!(r[1..].iter().all(|row| row[2] == version), "mixed versions");
}

#[tokio::test]
async fn a_file_replaced_while_processing_ends_up_processed_at_its_newest_version() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = Service::start(
        tswatch(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--reconcile-interval",
            "3600",
        ],
        tmp.path(),
    )
    .await;
    // Version A is big enough to be mid-read when B replaces it.
    drop_in(&data, "replaced.csv", &versioned("A", 20_000, 1000));
    wait_for("A to be in processing", Duration::from_secs(60), || async {
        started_processing(&svc, "raw/replaced.csv").then_some(())
    })
    .await;
    drop_in(&data, "replaced.csv", &versioned("B", 300, 10));
    let s: Value = wait_for("version B processed", Duration::from_secs(60), || async {
        let b = std::fs::read(data.join("processed/replaced_summary.json")).ok()?;
        let s: Value = serde_json::from_slice(&b).ok()?;
        (s["total_rows"] == 300).then_some(s)
    })
    .await;
    assert_one_whole_version(
        &std::fs::read(data.join("processed/replaced.csv")).unwrap(),
        "B",
        300,
    );
    assert!(!data.join("processed/replaced_error.json").exists());
    let (_, sum) = svc.get_json("/anomalies/summary").await;
    let files = sum["files_processed"].as_u64().unwrap();
    assert!(
        files == 1 || files == 2,
        "A committed whole or not at all: {sum}"
    );
    let rows = sum["total_rows_scored"].as_u64().unwrap();
    assert!(rows == 300 || rows == 20_300, "{sum}");
    assert_eq!(s["source_key"], "raw/replaced.csv");
    assert_endpoints_answer(&svc).await;
}

const BUCKET: &str = "hostile";

#[tokio::test]
async fn hostile_files_through_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    let svc = Service::start(
        cmd,
        &["--insecure-skip-sns-verify", "--reconcile-interval", "3600"],
        tmp.path(),
    )
    .await;
    let picked = [
        "empty.csv",
        "nonfinite.csv",
        "nonutf8_cells.csv",
        "crlf_long_row.csv",
        "bom_crlf.csv",
        "endless.csv",
        "ünïcödé ✓.csv",
        "site 1/x+y=z.csv",
        "100%.csv",
    ];
    let mut cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| picked.contains(&c.name.as_str()))
        .collect();
    cases.insert(
        0,
        case("extreme.csv", extreme(), Want::Summary(40, 0, &["x"])),
    );
    for c in &cases {
        moto.put_object(BUCKET, &format!("raw/{}", c.name), c.body.clone())
            .await;
    }
    let keys: Vec<String> = cases.iter().map(|c| format!("raw/{}", c.name)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (st, b) = svc.post("/notify", sns_s3_event(BUCKET, &keys)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["queued"].as_array().unwrap().len(), cases.len(), "{b}");
    for c in &cases {
        let (sk, ek) = (
            format!("processed/{}_summary.json", stem(&c.name)),
            format!("processed/{}_error.json", stem(&c.name)),
        );
        let (s, e) = wait_for(&c.name, Duration::from_secs(60), || async {
            let s = moto.get_object(BUCKET, &sk).await;
            let e = moto.get_object(BUCKET, &ek).await;
            (s.is_some() || e.is_some()).then(|| {
                let parse =
                    |b: Option<Vec<u8>>| b.map(|b| serde_json::from_slice::<Value>(&b).unwrap());
                (parse(s), parse(e))
            })
        })
        .await;
        check(c, s.as_ref(), e.as_ref());
    }
    let b: Value = serde_json::from_slice(
        &moto
            .get_object(BUCKET, "state/baseline.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_baseline_finite(&b);
    assert_endpoints_answer(&svc).await;

    // Replaced while processing: the newest version ends up processed, whole.
    moto.put_object(BUCKET, "raw/replaced.csv", versioned("A", 20_000, 1000))
        .await;
    let (st, _) = svc
        .post("/notify", sns_s3_event(BUCKET, &["raw/replaced.csv"]))
        .await;
    assert_eq!(st, 200);
    wait_for("A to be in processing", Duration::from_secs(60), || async {
        started_processing(&svc, "raw/replaced.csv").then_some(())
    })
    .await;
    moto.put_object(BUCKET, "raw/replaced.csv", versioned("B", 300, 10))
        .await;
    let (st, _) = svc
        .post("/notify", sns_s3_event(BUCKET, &["raw/replaced.csv"]))
        .await;
    assert_eq!(st, 200);
    wait_for("version B processed", Duration::from_secs(60), || async {
        let b = moto
            .get_object(BUCKET, "processed/replaced_summary.json")
            .await?;
        let s: Value = serde_json::from_slice(&b).ok()?;
        (s["total_rows"] == 300).then_some(())
    })
    .await;
    assert_one_whole_version(
        &moto
            .get_object(BUCKET, "processed/replaced.csv")
            .await
            .unwrap(),
        "B",
        300,
    );
    assert!(!svc.proc.log_text().contains("panicked"));
}

#[tokio::test]
async fn files_in_new_subdirectories_are_not_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // No reconciliation to fall back on: the watcher alone must see them.
    let svc = Service::start(
        tswatch(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--reconcile-interval",
            "3600",
        ],
        tmp.path(),
    )
    .await;
    let body = b"timestamp,v\n1,2\n";
    for i in 0..30 {
        // A new directory and a file in it at once, as `mkdir -p && mv` does.
        drop_in(&data, &format!("site {i}/day {i}/batch.csv"), body);
    }
    for i in 0..30 {
        wait_file(&data.join(format!("processed/site {i}/day {i}/batch_summary.json"))).await;
    }
    let (_, s) = svc.get_json("/anomalies/summary").await;
    assert_eq!(s["files_processed"], 30);
}
