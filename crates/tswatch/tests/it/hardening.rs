//! Hardening against hostile inputs and clients, through the real binary:
//! secure SNS defaults, byte budgets, connection limits, and objects that
//! can never be processed (refused once, never retried, never in the way).

use crate::harness::*;
use crate::signer::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A local service on `data` with `extra` flags.
async fn local(data: &Path, extra: &[&str], logs: &Path) -> Service {
    let mut cmd = tswatch();
    cmd.arg("--config").arg(logs.join("none.toml"));
    std::fs::write(logs.join("none.toml"), "").unwrap();
    let mut args = vec!["--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    Service::start(cmd, &args, logs).await
}

#[tokio::test]
async fn with_no_topic_configured_no_sns_message_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = local(&data, &[], tmp.path()).await;
    // Signed by a key SNS would use, for a stranger's topic: refused before
    // any certificate is fetched (none could be, here).
    for mut m in [
        notification(
            &sns_s3_event("b", &["raw/a.csv"]),
            Some("Amazon S3 Notification"),
        ),
        confirmation("SubscriptionConfirmation"),
    ] {
        m.topic_arn = "arn:aws:sns:us-east-1:666666666666:attacker-own-topic".into();
        sign(&mut m, 0, "2");
        let (st, body) = svc.post("/notify", to_json(&m).to_string()).await;
        assert_eq!(st, 403, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no SNS topic is accepted: start tswatch with --sns-topic-arn"),
            "{body}"
        );
        assert!(body.get("queued").is_none(), "{body}");
    }
}

#[tokio::test]
async fn the_insecure_flag_is_refused_off_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = tswatch()
        .args(["serve", "--insecure-skip-sns-verify", "--bind"])
        .arg(format!("0.0.0.0:{port}"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--insecure-skip-sns-verify is refused on 0.0.0.0"),
        "{err}"
    );
}

#[tokio::test]
async fn untrusted_strings_cannot_forge_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = local(
        &data,
        &[
            "--insecure-skip-sns-verify",
            "--sns-topic-arn",
            "arn:aws:sns:us-east-1:1:good",
        ],
        tmp.path(),
    )
    .await;
    let forged = "x\n2026-12-07T00:00:00Z ERROR FORGED line\u{1b}[31m";
    let msg = json!({
        "Type": "Notification", "MessageId": "m1", "TopicArn": forged,
        "Message": "{}", "Timestamp": sns_now(),
    });
    let (st, _) = svc.post("/notify", msg.to_string()).await;
    assert_eq!(st, 403);
    // A key with a control character, queued through the watcher's path.
    drop_in(&data, "ctl\u{7}\u{1b}[2J.csv", b"timestamp,a\n1,2\n");
    wait_for(
        "the log names the topic",
        Duration::from_secs(10),
        || async {
            svc.proc
                .log_text()
                .contains("rejected SNS message")
                .then_some(())
        },
    )
    .await;
    let log = svc.proc.log_text();
    assert!(
        !log.contains('\u{1b}'),
        "an escape sequence reached the log"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-07T00:00:00Z")),
        "{log}"
    );
    assert!(
        log.contains("\\n2026-12-07T00:00:00Z ERROR FORGED"),
        "{log}"
    );
}

/// `n` rows of a steady channel `v` with a text column `note`.
fn steady(n: usize, start: usize) -> String {
    let mut s = String::new();
    for i in start..start + n {
        s.push_str(&format!("{i},{},ok\n", 10.0 + (i % 7) as f64 * 0.1));
    }
    s
}

/// A row of `channels` steady channels (one spiking to `spike`), then a
/// text cell.
fn wide_row(i: usize, channels: usize, spike: Option<(usize, f64)>, note: &str) -> String {
    let mut vals: Vec<String> = (0..channels)
        .map(|c| format!("{}", 10.0 + ((i + c) % 7) as f64 * 0.1))
        .collect();
    if let Some((c, v)) = spike {
        vals[c] = v.to_string();
    }
    format!("{i},{},{note}\n", vals.join(","))
}

/// Channels of the wide streams below.
const C: usize = 100;

/// A local service whose default stream has learned [`C`] steady channels
/// from 300 rows; its data directory, and the header of such files.
async fn wide_stream_warmed(dir: &Path) -> (Service, std::path::PathBuf, String) {
    let data = dir.join("data");
    let svc = local(&data, &[], dir).await;
    let names: Vec<String> = (0..C).map(|c| format!("c{c}")).collect();
    let header = format!("timestamp,{},note\n", names.join(","));
    let mut warm = header.clone();
    for i in 0..300 {
        warm.push_str(&wide_row(i, C, None, "ok"));
    }
    drop_in(&data, "warm.csv", warm.as_bytes());
    wait_file(&data.join("processed/warm_summary.json")).await;
    (svc, data, header)
}

/// The raw body of `GET /anomalies/recent?limit=1000`.
async fn recent_1000(svc: &Service) -> bytes::Bytes {
    svc.http
        .get(format!("{}/anomalies/recent?limit=1000", svc.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

#[tokio::test]
async fn anomalous_rows_cannot_fill_the_state_or_a_response() {
    let tmp = tempfile::tempdir().unwrap();
    let (svc, data, header) = wide_stream_warmed(tmp.path()).await;
    // 300 anomalous rows (each a channel's new extreme), each with a
    // 64 KiB text cell: about 20 MB of cells the state used to keep whole.
    let fat = "y".repeat(64 * 1024);
    let mut hostile = header;
    for k in 0..300 {
        let i = 300 + 2 * k;
        hostile.push_str(&wide_row(i, C, None, "ok"));
        let spike = (k % C, 10.0 + 100.0 * (k / C + 1) as f64);
        hostile.push_str(&wide_row(i + 1, C, Some(spike), &fat));
    }
    drop_in(&data, "fat.csv", hostile.as_bytes());
    let s: Value =
        serde_json::from_slice(&wait_file(&data.join("processed/fat_summary.json")).await).unwrap();
    assert!(s["anomaly_count"].as_u64().unwrap() >= 250, "{s}");
    // What the state keeps of the file's anomalous rows: cut cells, and at
    // most 512 KiB of them.
    let doc: Value =
        serde_json::from_slice(&std::fs::read(data.join("state/engine.json")).unwrap()).unwrap();
    let applied = doc["applied"].as_array().unwrap();
    let kept = &applied.last().unwrap()["anomalies"];
    let kept_bytes = kept.to_string().len();
    assert!(kept_bytes <= 600 * 1024, "{kept_bytes} bytes kept");
    let kept_rows = kept.as_array().unwrap().len();
    assert!((10..250).contains(&kept_rows), "{kept_rows} rows kept");
    let r = recent_1000(&svc).await;
    assert!(r.len() < 1_000_000, "{} bytes", r.len());
    let body: Value = serde_json::from_slice(&r).unwrap();
    let rows = body["anomalies"].as_array().unwrap();
    assert_eq!(rows.len(), kept_rows);
    for row in rows {
        let note = row["note"].as_str().unwrap();
        assert!(note.len() < 300, "{} bytes", note.len());
        assert!(
            note.ends_with(&format!("[{} more bytes cut]", 64 * 1024 - 256)),
            "{note}"
        );
    }
    // The scored copy keeps every cell whole.
    let csv = std::fs::read(data.join("processed/fat.csv")).unwrap();
    assert!(csv.len() > 300 * 64 * 1024);
}

#[tokio::test]
async fn a_stream_takes_at_most_max_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("tswatch.toml");
    std::fs::write(&cfg, "[engine]\nmax_channels = 8\n").unwrap();
    let mut cmd = tswatch();
    cmd.arg("--config").arg(&cfg);
    let svc = Service::start(cmd, &["--data-dir", data.to_str().unwrap()], tmp.path()).await;
    let file = |names: &[&str]| {
        let mut s = format!("timestamp,{}\n", names.join(","));
        for i in 0..40 {
            let row: Vec<String> = names.iter().map(|_| (i % 5).to_string()).collect();
            s.push_str(&format!("{i},{}\n", row.join(",")));
        }
        s
    };
    let six = ["a", "b", "c", "d", "e", "f"];
    drop_in(&data, "s/one.csv", file(&six).as_bytes());
    wait_file(&data.join("processed/s/one_summary.json")).await;
    drop_in(&data, "s/two.csv", file(&["a", "x", "y", "z"]).as_bytes());
    let err: Value =
        serde_json::from_slice(&wait_file(&data.join("processed/s/two_error.json")).await).unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("3 new channel(s) would give this stream 9; it may have at most 8 (engine setting max_channels)"),
        "{msg}"
    );
    // Nothing was learned from the refused file; known channels still work,
    // and other streams have their own count.
    drop_in(&data, "s/three.csv", file(&six[..4]).as_bytes());
    wait_file(&data.join("processed/s/three_summary.json")).await;
    drop_in(
        &data,
        "t/one.csv",
        file(&["p", "q", "r", "s", "t", "u", "v", "w"]).as_bytes(),
    );
    wait_file(&data.join("processed/t/one_summary.json")).await;
    let (_, b) = svc.get_json("/baseline/current").await;
    let learned: Vec<&String> = b["streams"]["s"]["channels"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(learned, six.iter().collect::<Vec<_>>(), "{b}");
}

/// Reads until the peer closes (or `limit` passes); true if it closed.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_and_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = local(
        &data,
        &["--http-header-timeout", "1", "--max-connections", "4"],
        tmp.path(),
    )
    .await;
    let addr = svc.base.trim_start_matches("http://").to_string();
    // More idle connections than the cap.
    let mut idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // A header trickled a byte at a time, forever.
    let trickle_addr = addr.clone();
    let trickled = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&trickle_addr).unwrap();
        let start = Instant::now();
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).is_err() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        None
    });
    // A client that is served, then keeps its connection open and silent.
    let mut kept = TcpStream::connect(&addr).unwrap();
    let health = reqwest::Client::new()
        .get(format!("{}/health", svc.base))
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    assert!(health.is_ok(), "{health:?}");
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)),
        "an idle keep-alive connection stayed open"
    );
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "an idle connection stayed open"
        );
    }
    let cut = tokio::task::spawn_blocking(move || trickled.join().unwrap())
        .await
        .unwrap();
    assert!(
        cut.is_some_and(|t| t < Duration::from_secs(6)),
        "a trickled header was still read after {cut:?}"
    );
}

#[tokio::test]
async fn idle_connections_cannot_starve_the_service_of_descriptors() {
    // 300 idle connections against a 256-descriptor limit (the default cap
    // is half the limit): /health still answers once the idle ones time out.
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = tmp.path().join("svc.log");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec {} serve --bind 127.0.0.1:{port} --data-dir {} --http-header-timeout 2",
            env!("CARGO_BIN_EXE_tswatch"),
            tmp.path().join("data").display()
        ))
        .env("TSWATCH_LOG", "info");
    let _proc = Proc::spawn(cmd, &log);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("service up", Duration::from_secs(30), || async {
        http.get(format!("{base}/health")).send().await.ok()
    })
    .await;
    let addr = format!("127.0.0.1:{port}");
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() >= 250, "{} connected", idle.len());
    let started = Instant::now();
    // A new client: the pooled connection of the one above was idle, and
    // idle connections are what makes room (a pooled one would be gone).
    let r = reqwest::Client::new()
        .get(format!("{base}/health"))
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert!(
        r.as_ref().is_ok_and(|r| r.status() == 200),
        "{r:?} after {:?}\n{}",
        started.elapsed(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(idle);
}

#[tokio::test]
async fn objects_that_can_never_be_processed_are_refused_once_and_never_block() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let raw = data.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "timestamp,v\n1,2\n").unwrap();
    // Present before the service starts, for the start-up reconciliation:
    // a symlink out of the data directory, symlink loops, and a file whose
    // summary's name would be 256 bytes long.
    std::os::unix::fs::symlink("../../outside/secret.txt", raw.join("link.csv")).unwrap();
    std::os::unix::fs::symlink("self.csv", raw.join("self.csv")).unwrap();
    std::fs::create_dir_all(raw.join("d")).unwrap();
    std::os::unix::fs::symlink("..", raw.join("d/up")).unwrap();
    // A link to a directory outside: never walked.
    std::fs::write(outside.join("x.csv"), "timestamp,v\n1,2\n").unwrap();
    std::os::unix::fs::symlink("../../outside", raw.join("walk")).unwrap();
    let long_name = format!("{}.csv", "f".repeat(239));
    std::fs::write(raw.join(&long_name), "timestamp,v\n1,2\n").unwrap();
    // The longest usable file name: every output, written under a
    // temporary name first, still fits.
    let longest = "g".repeat(238);
    std::fs::write(raw.join(format!("{longest}.csv")), steady_file(40)).unwrap();
    std::fs::write(raw.join("good.csv"), steady_file(40)).unwrap();
    let svc = local(&data, &["--reconcile-interval", "1"], tmp.path()).await;

    wait_file(&data.join("processed/good_summary.json")).await;
    wait_file(&data.join(format!("processed/{longest}_summary.json"))).await;
    let err: Value =
        serde_json::from_slice(&wait_file(&data.join("processed/link_error.json")).await).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("symbolic link"),
        "{err}"
    );
    assert!(!data.join("processed/link.csv").exists());
    assert!(
        !data.join("processed/walk").exists(),
        "a linked directory was walked"
    );

    // A FIFO dropped in while running: refused, and the lane goes on.
    let fifo = data.join(".pipe");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::rename(&fifo, raw.join("pipe.csv")).unwrap();
    let err: Value =
        serde_json::from_slice(&wait_file(&data.join("processed/pipe_error.json")).await).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{err}"
    );
    drop_in(&data, "after.csv", steady_file(40).as_bytes());
    wait_file(&data.join("processed/after_summary.json")).await;

    // Several reconciliation passes later, the long name was reported once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = svc.proc.log_text();
    assert_eq!(
        log.matches("refused for good").count(),
        1,
        "reported once:\n{log}"
    );
    assert!(log.contains("a name segment of"), "{log}");
    assert!(!log.contains("reconciliation failed"), "{log}");
    assert!(!log.contains("will retry"), "{log}");
}

/// A 1,010-byte raw key: its summary key would be 1,025 bytes, one more
/// than S3 allows.
fn key_one_byte_too_long() -> String {
    let k = format!(
        "raw/{}/{}.csv",
        ["d"; 4].map(|d| d.repeat(200)).join("/"),
        "e".repeat(198)
    );
    assert_eq!(k.len(), 1010);
    k
}

fn steady_file(n: usize) -> String {
    format!("timestamp,v,note\n{}", steady(n, 0))
}

#[tokio::test]
async fn notify_ignores_keys_that_can_never_be_processed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = local(&data, &["--insecure-skip-sns-verify"], tmp.path()).await;
    let long_segment = format!("raw/{}/x.csv", "s".repeat(256));
    let long_key = key_one_byte_too_long();
    let (st, body) = svc
        .post(
            "/notify",
            sns_s3_event(
                "b",
                &[
                    &long_segment,
                    &long_key,
                    "raw/staging/x.csv",
                    "raw/engine.json/x.csv",
                    "raw/fine.csv",
                ],
            ),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["queued"], json!(["raw/fine.csv"]), "{body}");
    let ignored = body["ignored"].as_array().unwrap();
    assert_eq!(ignored.len(), 4, "{body}");
    for i in ignored {
        assert!(
            i["reason"]
                .as_str()
                .unwrap()
                .contains("cannot be processed"),
            "{i}"
        );
    }
    assert!(
        body.to_string()
            .contains("reserved for tswatch's own state")
    );
}

#[tokio::test]
async fn an_s3_listing_skips_keys_it_cannot_use() {
    const BUCKET: &str = "odd-keys";
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    // Keys object_store cannot represent, and one whose outputs would not
    // fit S3's 1024 bytes, beside a good file whose notification was lost.
    for path in ["raw/a//x.csv", "raw/ctl%01.csv"] {
        let r = moto
            .req("s3", reqwest::Method::PUT, &format!("/{BUCKET}/{path}"))
            .body("timestamp,v\n1,2\n")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let long_key = key_one_byte_too_long();
    moto.put_object(BUCKET, &long_key, "timestamp,v\n1,2\n")
        .await;
    moto.put_object(BUCKET, "raw/good file+1.csv", steady_file(40))
        .await;
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    let svc = Service::start(cmd, &["--reconcile-interval", "1"], tmp.path()).await;
    wait_for(
        "the good file processed",
        Duration::from_secs(60),
        || async {
            moto.get_object(BUCKET, "processed/good file+1_summary.json")
                .await
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = svc.proc.log_text();
    assert!(!log.contains("reconciliation failed"), "{log}");
    assert_eq!(
        log.matches("skipping an object tswatch cannot use").count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches("refused for good").count(), 1, "{log}");
}

/// Runs `cmd` under python3's `os.wait4` and returns (success, peak RSS in
/// KiB): the kernel's exact figure, not a sample.
fn peak_rss_kib(cmd: &[&std::ffi::OsStr]) -> (bool, u64) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os,sys,subprocess\n\
             p=subprocess.Popen(sys.argv[1:],stdout=subprocess.DEVNULL)\n\
             _,st,ru=os.wait4(p.pid,0)\n\
             print(os.waitstatus_to_exitcode(st), ru.ru_maxrss)",
        )
        .args(cmd)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let code: i32 = it.next().unwrap().parse().unwrap();
    (code == 0, it.next().unwrap().parse().unwrap())
}

#[test]
fn wide_rows_are_scored_in_bounded_memory() {
    // 1,024 rows of 256 KiB: the scorer used to hold a whole batch of 1,024
    // rows (and the writer's copy): 367 MiB at its peak. Batches are now
    // cut at 4 MiB as well.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("wide.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    writeln!(f, "timestamp,v,note").unwrap();
    let note = "w".repeat(256 * 1024);
    for i in 0..1024 {
        writeln!(f, "{i},{},{note}", 10 + i % 5).unwrap();
    }
    drop(f);
    let output = tmp.path().join("wide.out.csv");
    let bin = std::ffi::OsString::from(env!("CARGO_BIN_EXE_tswatch"));
    let (ok, kib) = peak_rss_kib(&[
        &bin,
        "score".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
    ]);
    assert!(ok);
    assert!(
        std::fs::metadata(&output).unwrap().len() > 256 << 20,
        "every row written"
    );
    assert!(kib < 128 * 1024, "peak RSS {} MiB", kib / 1024);
}

#[test]
fn score_makes_cells_spreadsheet_safe_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.csv");
    let mut text = String::from("timestamp,v,note\n");
    for i in 0..40 {
        text.push_str(&format!("{i},{},=HYPERLINK(\"http://x\")\n", 10 + i % 3));
    }
    text.push_str("40,-900,@SUM(A1)\n");
    std::fs::write(&input, text).unwrap();
    for (flag, note, last_note) in [
        (None, "=HYPERLINK(\"http://x\")", "@SUM(A1)"),
        (Some("all"), "'=HYPERLINK(\"http://x\")", "'@SUM(A1)"),
        (Some("off"), "=HYPERLINK(\"http://x\")", "@SUM(A1)"),
    ] {
        let out = tmp.path().join("out.csv");
        let mut cmd = tswatch();
        cmd.arg("score")
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out);
        if let Some(f) = flag {
            cmd.args(["--spreadsheet-safe", f]);
        }
        assert!(cmd.status().unwrap().success());
        let rows = csv_rows(&std::fs::read(&out).unwrap());
        assert_eq!(rows[1][2], note, "{flag:?}");
        let last = rows.last().unwrap();
        assert_eq!(last[2], last_note, "{flag:?}");
        assert_eq!(last[1], "-900", "numbers are never changed");
    }
}

/// The service's peak resident memory so far, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_huge_notify_body_is_refused_while_it_streams_in() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = local(&data, &[], tmp.path()).await;
    let before = peak_kib(svc.proc.pid());
    let addr = svc.base.trim_start_matches("http://").to_string();
    // 200 MB announced, chunked and not: the answer comes long before.
    for head in [
        "POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n",
        "POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let addr = addr.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            let chunked = head.contains("chunked");
            let block = vec![b'a'; 64 * 1024];
            let mut sent = 0usize;
            while sent < 200_000_000 {
                let r = if chunked {
                    s.write_all(format!("{:x}\r\n", block.len()).as_bytes())
                        .and_then(|()| s.write_all(&block))
                        .and_then(|()| s.write_all(b"\r\n"))
                } else {
                    s.write_all(&block)
                };
                if r.is_err() {
                    break;
                }
                sent += block.len();
            }
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            (sent, text)
        })
        .await
        .unwrap();
        assert!(answer.0 < 50_000_000, "{} bytes were taken in", answer.0);
        assert!(answer.1.starts_with("HTTP/1.1 413"), "{}", answer.1);
    }
    let after = peak_kib(svc.proc.pid());
    assert!(
        after < before + 16 * 1024,
        "peak RSS {before} KiB -> {after} KiB"
    );
}

#[tokio::test]
async fn a_recent_anomalies_answer_is_cut_at_its_byte_budget() {
    // Ten files whose kept rows each fill the per-file budget (512 KiB):
    // more than the 4 MiB one answer may carry.
    let tmp = tempfile::tempdir().unwrap();
    let (svc, data, header) = wide_stream_warmed(tmp.path()).await;
    let mut i = 300;
    for f in 0..10 {
        let mut text = header.clone();
        for k in 0..C {
            text.push_str(&wide_row(i, C, None, "ok"));
            let spike = (k, 10.0 + 100.0 * (f + 1) as f64);
            text.push_str(&wide_row(i + 1, C, Some(spike), &"n".repeat(200)));
            i += 2;
        }
        drop_in(&data, &format!("f{f}.csv"), text.as_bytes());
        wait_file(&data.join(format!("processed/f{f}_summary.json"))).await;
    }
    let r = recent_1000(&svc).await;
    let body: Value = serde_json::from_slice(&r).unwrap();
    assert_eq!(body["truncated"], true, "{} bytes", r.len());
    assert!(r.len() <= 4 * 1024 * 1024 + 4096, "{} bytes", r.len());
    assert!(r.len() > 3 * 1024 * 1024, "{} bytes", r.len());
    assert_eq!(
        body["count"].as_u64().unwrap() as usize,
        body["anomalies"].as_array().unwrap().len()
    );
    // A small answer is whole and says nothing of the kind.
    let (_, small) = svc.get_json("/anomalies/recent?limit=5").await;
    assert_eq!(small["count"], 5);
    assert!(small.get("truncated").is_none(), "{small}");
}

#[tokio::test]
async fn slow_request_bodies_cannot_hold_every_connection() {
    // Every slot taken by a request whose body never comes: a new client is
    // still answered (the oldest request is cut after 2 s), long before
    // the 15 s request timeout; and SIGTERM is heard meanwhile.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = local(&data, &["--max-connections", "2"], tmp.path()).await;
    let addr = svc.base.trim_start_matches("http://").to_string();
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
                .unwrap();
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{}/health", svc.base))
        .timeout(Duration::from_secs(12))
        .send()
        .await;
    assert!(r.is_ok(), "{r:?}");
    // Before, it waited for the 15 s request timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        started.elapsed()
    );
    // Fill the slots again, then stop the service: it stops promptly.
    slow.extend((0..2).map(|_| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            .unwrap();
        s
    }));
    let _third = TcpStream::connect(&addr).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Heard at once (the requests in hand then get until their timeout).
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(svc.proc.pid().to_string())
        .status();
    wait_for("shutdown begins", Duration::from_secs(3), || async {
        svc.proc.log_text().contains("shutting down").then_some(())
    })
    .await;
    let status = tokio::task::spawn_blocking(move || svc.proc.terminate())
        .await
        .unwrap();
    assert!(status.success());
    drop(slow);
}
