//! The SQS path against a real moto server: S3 → SQS (and S3 → SNS → SQS)
//! notifications consumed by the real binary, two instances on one queue,
//! the dead-letter path, and SigV4 signing with moto's auth checks on.

use crate::harness::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tswatch::ingest::sqs::SqsClient;

const BUCKET: &str = "tswatch-sqs";

impl Moto {
    /// Calls an SQS JSON-protocol action (unsigned: moto's auth is off).
    pub(crate) async fn sqs(&self, action: &str, body: Value) -> Value {
        let r = self
            .req("sqs", reqwest::Method::POST, "/")
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let ok = r.status().is_success();
        let text = r.text().await.unwrap();
        assert!(ok, "SQS {action}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Creates a queue; returns its URL and ARN.
    pub(crate) async fn create_queue(&self, name: &str) -> (String, String) {
        let r = self.sqs("CreateQueue", json!({ "QueueName": name })).await;
        let url = r["QueueUrl"].as_str().unwrap().to_string();
        let a = self
            .sqs(
                "GetQueueAttributes",
                json!({ "QueueUrl": url, "AttributeNames": ["QueueArn"] }),
            )
            .await;
        (
            url,
            a["Attributes"]["QueueArn"].as_str().unwrap().to_string(),
        )
    }

    /// Messages visible plus in flight.
    pub(crate) async fn queue_depth(&self, url: &str) -> u64 {
        let a = self
            .sqs(
                "GetQueueAttributes",
                json!({ "QueueUrl": url, "AttributeNames": [
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"] }),
            )
            .await;
        [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
        ]
        .iter()
        .map(|k| {
            a["Attributes"][k]
                .as_str()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
    }

    /// Sends S3 "object created" events for `raw/` straight to the queue.
    pub(crate) async fn notify_bucket_to_queue(&self, bucket: &str, queue_arn: &str) {
        self.notify_bucket(bucket, "Queue", queue_arn).await;
    }
}

fn fixture() -> Vec<u8> {
    std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap()
}

/// The baseline counts after `n` copies of the fixture went through the
/// engine one after the other, by the offline scorer. Every file is the
/// same, so the order in which the service takes them does not matter.
fn expected_counts(n: usize, dir: &Path) -> Value {
    let state = dir.join("offline-state");
    let input = dir.join("in.csv");
    std::fs::write(&input, fixture()).unwrap();
    for _ in 0..n {
        let out = tswatch()
            .arg("score")
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(dir.join("out.csv"))
            .arg("--state")
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let b: Value =
        serde_json::from_slice(&std::fs::read(state.join("baseline.json")).unwrap()).unwrap();
    let mut counts = serde_json::Map::new();
    for (ch, v) in b.as_object().unwrap() {
        if ch != "last_updated" {
            counts.insert(ch.clone(), v["count"].clone());
        }
    }
    Value::Object(counts)
}

fn current_counts(baseline: &Value) -> Value {
    let mut counts = serde_json::Map::new();
    for (ch, v) in baseline["channels"].as_object().unwrap() {
        counts.insert(ch.clone(), v["observations"].clone());
    }
    Value::Object(counts)
}

async fn wait_processed(svc: &Service, n: u64) -> Value {
    wait_for(
        &format!("{n} files processed"),
        Duration::from_secs(90),
        || async {
            let (_, s) = svc.get_json("/anomalies/summary").await;
            (s["files_processed"].as_u64() == Some(n)).then_some(s)
        },
    )
    .await
}

async fn wait_drained(moto: &Moto, url: &str) {
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        (moto.queue_depth(url).await == 0).then_some(())
    })
    .await;
}

/// `processed` log lines (files applied) in a JSON log.
fn applied_in(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "processed")
        .filter_map(|v| v["fields"]["key"].as_str().map(str::to_string))
        .collect()
}

fn sqs_args(url: &str) -> Vec<String> {
    [
        "--sqs-queue-url",
        url,
        "--sqs-wait-time",
        "1",
        "--reconcile-interval",
        "3600",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A moto server with the bucket, a queue named `name`, and the bucket's S3
/// events sent to the queue (an s3:TestEvent arrives first). Returns the
/// server and the queue's URL.
async fn bucket_notifying_queue(name: &str) -> (Moto, String) {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let (url, arn) = moto.create_queue(name).await;
    moto.notify_bucket_to_queue(BUCKET, &arn).await;
    (moto, url)
}

fn start_cmd(moto: &Moto) -> std::process::Command {
    let mut cmd = tswatch();
    s3_env(&mut cmd, moto, BUCKET);
    cmd
}

#[tokio::test]
async fn sqs_s3_events_each_file_once_and_queue_drained() {
    let tmp = tempfile::tempdir().unwrap();
    // Sends an s3:TestEvent first.
    let (moto, url) = bucket_notifying_queue("tswatch-events").await;

    let args = sqs_args(&url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(start_cmd(&moto), &args, tmp.path()).await;

    const N: usize = 8;
    let body = fixture();
    for i in 0..N {
        // Keys that need URL-encoding in the event: a space and a subfolder.
        let key = format!("raw/site {}/sensors_{i:02}.csv", i % 2);
        moto.put_object(BUCKET, &key, body.clone()).await;
    }
    // Not raw batches: notified (prefix raw/) but ignored.
    moto.put_object(BUCKET, "raw/readme.txt", "x").await;

    let s = wait_processed(&svc, N as u64).await;
    assert_eq!(s["total_rows_scored"], json!(N * 100));
    wait_drained(&moto, &url).await;
    for i in 0..N {
        let name = format!("processed/site {}/sensors_{i:02}_summary.json", i % 2);
        assert!(moto.get_object(BUCKET, &name).await.is_some(), "{name}");
    }
    // `raw/site 0/` and `raw/site 1/` are two streams, each with its own
    // baseline: each equals an offline run over its own N/2 files.
    let (_, b) = svc.get_json("/baseline/current").await;
    let expected = expected_counts(N / 2, tmp.path());
    for stream in ["site 0", "site 1"] {
        assert_eq!(current_counts(&b["streams"][stream]), expected, "{b}");
    }
    let log = svc.proc.log_text();
    assert_eq!(applied_in(&log).len(), N, "{log}");
    assert!(log.contains("S3 test event received"), "{log}");
    assert!(svc.proc.terminate().success());
}

#[tokio::test]
async fn sqs_sns_wrapped_events() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let (url, arn) = moto.create_queue("tswatch-sns").await;
    // S3 → SNS → SQS: moto wraps each event in an SNS Notification.
    let topic = moto.create_topic("tswatch-events").await;
    moto.subscribe(&topic, "sqs", &arn).await;
    moto.notify_bucket_to_topic(BUCKET, &topic).await;

    let mut args = sqs_args(&url);
    args.extend(["--sns-topic-arn".to_string(), topic.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(start_cmd(&moto), &args, tmp.path()).await;

    let body = fixture();
    for i in 0..4 {
        moto.put_object(BUCKET, &format!("raw/sns_{i}.csv"), body.clone())
            .await;
    }
    // A duplicate notification, one from a topic not accepted, and junk:
    // all consumed, none double-counted.
    let client = sqs_client(&moto, &url, "testing", "testing");
    client
        .send(
            &sns_s3_event(BUCKET, &["raw/sns_0.csv"])
                .replace("arn:aws:sns:us-east-1:123456789012:tswatch", &topic),
        )
        .await
        .unwrap();
    client
        .send(&sns_s3_event(BUCKET, &["raw/sns_1.csv"]))
        .await
        .unwrap();
    client.send("not an event").await.unwrap();

    let s = wait_processed(&svc, 4).await;
    assert_eq!(s["total_rows_scored"], 400);
    wait_drained(&moto, &url).await;
    let (_, b) = svc.get_json("/baseline/current").await;
    assert_eq!(current_counts(&b), expected_counts(4, tmp.path()));
    let log = svc.proc.log_text();
    assert_eq!(applied_in(&log).len(), 4, "{log}");
    assert!(log.contains("is not an accepted topic"), "{log}");
    assert!(svc.proc.terminate().success());
}

#[tokio::test]
async fn sqs_two_instances_share_one_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (moto, url) = bucket_notifying_queue("tswatch-shared").await;

    let mut args = sqs_args(&url);
    // Small batches so that both instances get work.
    args.extend(["--sqs-max-messages".to_string(), "2".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = Service::start(start_cmd(&moto), &args, tmp.path()).await;
    let b = Service::start(start_cmd(&moto), &args, tmp.path()).await;

    const N: usize = 24;
    let body = fixture();
    let uploads = (0..N).map(|i| {
        let body = body.clone();
        let moto = &moto;
        async move {
            moto.put_object(BUCKET, &format!("raw/shared_{i:02}.csv"), body)
                .await
        }
    });
    futures::future::join_all(uploads).await;

    let s = wait_processed(&a, N as u64).await;
    assert_eq!(s["total_rows_scored"], json!(N * 100));
    wait_processed(&b, N as u64).await;
    wait_drained(&moto, &url).await;
    let expected = expected_counts(N, tmp.path());
    for svc in [&a, &b] {
        let (_, bl) = svc.get_json("/baseline/current").await;
        assert_eq!(current_counts(&bl), expected);
    }
    // Exactly once: every file applied by exactly one of the two.
    let (la, lb) = (
        applied_in(&a.proc.log_text()),
        applied_in(&b.proc.log_text()),
    );
    eprintln!("instance A applied {}, instance B {}", la.len(), lb.len());
    let mut all: Vec<String> = la.into_iter().chain(lb).collect();
    all.sort();
    let want: Vec<String> = (0..N).map(|i| format!("raw/shared_{i:02}.csv")).collect();
    assert_eq!(all, want);
    assert!(a.proc.terminate().success());
    assert!(b.proc.terminate().success());
}

/// A batch archived to Glacier cannot be read (`InvalidObjectState`) however
/// often it is retried: an honest poison file.
#[tokio::test]
async fn sqs_poison_file_is_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let (moto, url) = bucket_notifying_queue("tswatch-poison").await;

    let mut args = sqs_args(&url);
    // Redelivered after 3 s, then 6 s.
    args.extend(["--sqs-max-receives", "3", "--sqs-visibility-timeout", "3"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(start_cmd(&moto), &args, tmp.path()).await;

    let r = moto
        .req(
            "s3",
            reqwest::Method::PUT,
            &format!("/{BUCKET}/raw/archived.csv"),
        )
        .header("x-amz-storage-class", "GLACIER")
        .body(fixture())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    moto.put_object(BUCKET, "raw/fine.csv", fixture()).await;

    let err = wait_for(
        "the dead-letter record",
        Duration::from_secs(60),
        || async {
            moto.get_object(BUCKET, "processed/archived_error.json")
                .await
        },
    )
    .await;
    let err: Value = serde_json::from_slice(&err).unwrap();
    eprintln!("dead letter: {err}");
    assert_eq!(err["dead_letter"], true, "{err}");
    assert_eq!(err["receive_count"], 3, "{err}");
    assert_eq!(err["source_key"], "raw/archived.csv");
    wait_drained(&moto, &url).await;
    let s = wait_processed(&svc, 1).await;
    assert_eq!(s["total_rows_scored"], 100);
    assert!(
        moto.get_object(BUCKET, "processed/archived_summary.json")
            .await
            .is_none()
    );
    let log = svc.proc.log_text();
    assert!(log.contains("DEAD LETTER"), "{log}");
    let m = crate::metrics::scrape(&svc).await;
    let value = |name| crate::metrics::value(&m, name, &[]);
    assert_eq!(value("tswatch_sqs_dead_letters_total"), Some(1.0));
    // archived.csv three times, fine.csv at least once.
    assert!(value("tswatch_sqs_messages_received_total").is_some_and(|n| n >= 4.0));
    // The record names the version that failed, so a new version of the
    // file (readable, one more line: another ETag) is processed, not
    // skipped as already refused.
    assert!(
        err["source_etag"].as_str().is_some_and(|e| !e.is_empty()),
        "{err}"
    );
    let mut again = fixture();
    again.extend_from_slice(b"\n");
    moto.put_object(BUCKET, "raw/archived.csv", again).await;
    wait_for(
        "the re-uploaded file's summary",
        Duration::from_secs(60),
        || async {
            moto.get_object(BUCKET, "processed/archived_summary.json")
                .await
        },
    )
    .await;
    assert!(svc.proc.terminate().success());
}

fn sqs_client(moto: &Moto, url: &str, key: &str, secret: &str) -> SqsClient {
    let cred = object_store::aws::AwsCredential {
        key_id: key.to_string(),
        secret_key: secret.to_string(),
        token: None,
    };
    let provider = std::sync::Arc::new(object_store::StaticCredentialProvider::new(cred));
    let _ = moto;
    SqsClient::new(url, Some("us-east-1"), provider).unwrap()
}

/// Calls an IAM query-API action (auth still off); returns the XML.
async fn iam(moto: &Moto, params: &[(&str, &str)]) -> String {
    moto.query("iam", params).await
}

#[tokio::test]
async fn sqs_requests_are_signed() {
    let moto = Moto::start().await;
    let (url, _) = moto.create_queue("tswatch-auth").await;
    iam(&moto, &[("Action", "CreateUser"), ("UserName", "tswatch")]).await;
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]})
    .to_string();
    iam(
        &moto,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", "tswatch"),
            ("PolicyName", "sqs"),
            ("PolicyDocument", &policy),
        ],
    )
    .await;
    let xml = iam(
        &moto,
        &[("Action", "CreateAccessKey"), ("UserName", "tswatch")],
    )
    .await;
    let key = between(&xml, "<AccessKeyId>", "</AccessKeyId>").to_string();
    let secret = between(&xml, "<SecretAccessKey>", "</SecretAccessKey>").to_string();
    // From now on moto checks every request's signature and permissions.
    let r = reqwest::Client::new()
        .post(format!("{}/moto-api/reset-auth", moto.endpoint))
        .body("0")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let wrong = sqs_client(&moto, &url, &key, "not-the-secret");
    let e = wrong.send("hello").await.unwrap_err();
    assert!(e.is_auth(), "{e}");
    assert!(e.to_string().contains("SignatureDoesNotMatch"), "{e}");
    let e = wrong.receive(1, 0, 30).await.unwrap_err();
    assert!(e.is_auth(), "{e}");
    let unknown = sqs_client(&moto, &url, "AKIAUNKNOWN000000000", &secret);
    assert!(unknown.receive(1, 0, 30).await.unwrap_err().is_auth());

    let right = sqs_client(&moto, &url, &key, &secret);
    right.send("hello").await.unwrap();
    let got = right.receive(10, 1, 30).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "hello");
    assert_eq!(got[0].receive_count(), 1);
    right
        .change_visibility(&got[0].receipt_handle, 60)
        .await
        .unwrap();
    right.delete(&got[0].receipt_handle).await.unwrap();
    assert!(right.receive(10, 0, 30).await.unwrap().is_empty());
}

/// `receive` counts of the messages a JSON log says were handled.
fn receives_in(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "handling SQS message")
        .filter_map(|v| v["fields"]["receive"].as_u64())
        .collect()
}

/// A file that takes longer than the visibility timeout is not handed out
/// again: its visibility is extended while it is processed.
#[tokio::test]
async fn sqs_visibility_is_extended_while_a_long_file_is_processed() {
    let tmp = tempfile::tempdir().unwrap();
    let (moto, url) = bucket_notifying_queue("tswatch-long").await;

    let mut args = sqs_args(&url);
    args.extend(["--sqs-visibility-timeout".to_string(), "3".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Two consumers: a message that became visible would go to the idle one.
    let a = Service::start(start_cmd(&moto), &args, tmp.path()).await;
    let b = Service::start(start_cmd(&moto), &args, tmp.path()).await;

    let started = std::time::Instant::now();
    let mut produce = start_cmd(&moto);
    let out = produce
        .args([
            "produce",
            "--count",
            "1",
            "--rows",
            "250000",
            "--interval",
            "0",
            "--seed",
            "7",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = wait_processed(&a, 1).await;
    assert_eq!(s["total_rows_scored"], 250000);
    // The precondition: the work on the file (from its receive to its
    // commit, at least) outlasted the 3 s visibility timeout, so without
    // the extension the message would have been handed out again.
    let work_ms = s["most_recent"][0]["duration_ms"].as_f64().unwrap();
    assert!(
        work_ms > 3_000.0,
        "the file took {work_ms} ms: not longer than the visibility timeout"
    );
    wait_drained(&moto, &url).await;
    let took = started.elapsed();
    let mut receives = receives_in(&a.proc.log_text());
    receives.extend(receives_in(&b.proc.log_text()));
    eprintln!(
        "one 250,000-row file took {took:?} ({work_ms} ms of work); receives handled: {receives:?}"
    );
    // The file handled once, at its first receive (the test event is not counted).
    assert_eq!(receives, vec![1; receives.len()]);
    assert_eq!(receives.len(), 1, "{receives:?}");
    assert!(a.proc.terminate().success());
    assert!(b.proc.terminate().success());
}

/// Files per second through the SQS path with one and with two instances
/// (loopback moto; prints, asserts only correctness). Run with
/// `cargo test --release -p tswatch --test it sqs_throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn sqs_throughput() {
    let n: usize = std::env::var("TSWATCH_SQS_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // Rows per file: the fixture's 100 data rows, repeated.
    let copies: usize = std::env::var("TSWATCH_SQS_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(1, |r| (r / 100).max(1));
    let body = {
        let f = String::from_utf8(fixture()).unwrap();
        let (header, rows) = f.split_once('\n').unwrap();
        let rows = rows.trim_end().to_string() + "\n";
        format!("{header}\n{}", rows.repeat(copies)).into_bytes()
    };
    for instances in [1usize, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let (moto, url) = bucket_notifying_queue("tswatch-bench").await;
        // Consumers first (reconciliation at start finds nothing), then
        // the uploads, 16 at a time; timed from the first upload to the
        // last file committed.
        let args = sqs_args(&url);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut svcs = Vec::new();
        for _ in 0..instances {
            svcs.push(Service::start(start_cmd(&moto), &args, tmp.path()).await);
        }
        let started = std::time::Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
            let puts = chunk.iter().map(|i| {
                let body = body.clone();
                let moto = &moto;
                async move {
                    moto.put_object(BUCKET, &format!("raw/bench_{i:05}.csv"), body)
                        .await
                }
            });
            futures::future::join_all(puts).await;
        }
        let s = wait_for("all files", Duration::from_secs(1200), || async {
            let (_, s) = svcs[0].get_json("/anomalies/summary").await;
            (s["files_processed"].as_u64() == Some(n as u64)).then_some(s)
        })
        .await;
        let took = started.elapsed();
        assert_eq!(s["total_rows_scored"], json!(n * 100 * copies));
        wait_drained(&moto, &url).await;
        let mut logs = Vec::new();
        for s in svcs {
            let log = s.proc.log.clone();
            assert!(s.proc.terminate().success());
            logs.push(std::fs::read_to_string(log).unwrap());
        }
        let applied: usize = logs.iter().map(|l| applied_in(l).len()).sum();
        assert_eq!(applied, n);
        let conflicts: usize = logs
            .iter()
            .map(|l| l.matches("state changed underneath").count())
            .sum();
        eprintln!(
            "{instances} instance(s): {n} files of {} rows in {:.1} s = {:.1} files/s (commits redone after a conflict: {conflicts})",
            100 * copies,
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
}

/// SIGTERM while a file is in hand: no more receives, the file is finished
/// and its message deleted, then a clean exit.
#[tokio::test]
async fn sqs_shutdown_finishes_the_file_in_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let (moto, url) = bucket_notifying_queue("tswatch-stop").await;
    let mut args = sqs_args(&url);
    args.extend(["--shutdown-grace", "120"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(start_cmd(&moto), &args, tmp.path()).await;

    let out = start_cmd(&moto)
        .args([
            "produce",
            "--count",
            "1",
            "--rows",
            "150000",
            "--interval",
            "0",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the file to be in hand",
        Duration::from_secs(60),
        || async { (!receives_in(&svc.proc.log_text()).is_empty()).then_some(()) },
    )
    .await;
    let log_path = svc.proc.log.clone();
    assert!(svc.proc.terminate().success());
    let log = std::fs::read_to_string(log_path).unwrap();
    assert_eq!(applied_in(&log).len(), 1, "{log}");
    // The file was finished after the signal, not before it.
    let stop = log.find("shutting down").unwrap();
    let done = log.find("\"message\":\"processed\"").unwrap();
    assert!(stop < done, "{log}");
    assert_eq!(moto.queue_depth(&url).await, 0);
}

/// The queue carries S3 events: refused with a local data directory, from
/// the flag and from the TOML file alike.
#[test]
fn sqs_needs_a_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("tswatch.toml");
    std::fs::write(
        &cfg,
        "sqs_queue_url = \"http://127.0.0.1:9/123456789012/q\"\nsqs_wait_time_secs = 1\nsqs_max_receives = 2\n",
    )
    .unwrap();
    let from_flag = tswatch()
        .arg("serve")
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--sqs-queue-url",
            "http://127.0.0.1:9/1/q",
        ])
        .output()
        .unwrap();
    let from_file = tswatch()
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    for out in [from_flag, from_file] {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("needs an S3 bucket"), "{err}");
    }
}

#[tokio::test]
async fn sqs_two_instances_take_each_stream_in_turn_and_never_redo_work() {
    // A backlog: 4 streams x 5 files queued (each event twice: a duplicate
    // delivery) before two instances start. Each stream is worked by one
    // instance at a time (its lease), so no commit is ever redone; the
    // start-up reconciliation leaves the files whose events are queued.
    let tmp = tempfile::tempdir().unwrap();
    let (moto, url) = bucket_notifying_queue("tswatch-backlog").await;
    let mut keys = Vec::new();
    for f in 0..5 {
        for s in ["north", "south", "east", "west"] {
            keys.push(format!("raw/{s}/batch_{f}.csv"));
        }
    }
    for k in &keys {
        moto.put_object(BUCKET, k, fixture()).await;
        moto.query(
            "sqs",
            &[
                ("Action", "SendMessage"),
                ("QueueUrl", &url),
                ("MessageBody", &s3_event(BUCKET, &[k])),
            ],
        )
        .await;
    }
    let mut args = sqs_args(&url);
    args.extend(["--sqs-max-messages".to_string(), "2".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (a, b) = tokio::join!(
        Service::start(start_cmd(&moto), &args, tmp.path()),
        Service::start(start_cmd(&moto), &args, tmp.path())
    );
    wait_for("every file applied", Duration::from_secs(90), || async {
        let n = applied_in(&a.proc.log_text()).len() + applied_in(&b.proc.log_text()).len();
        (n >= keys.len()).then_some(())
    })
    .await;
    wait_drained(&moto, &url).await;
    let (la, lb) = (
        applied_in(&a.proc.log_text()),
        applied_in(&b.proc.log_text()),
    );
    eprintln!("instance A applied {}, instance B {}", la.len(), lb.len());
    let mut all: Vec<String> = la.into_iter().chain(lb).collect();
    all.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(all, want, "each file applied exactly once");
    let logs = format!("{}{}", a.proc.log_text(), b.proc.log_text());
    assert_eq!(
        logs.matches("state changed underneath; redoing").count(),
        0,
        "a commit was redone: two instances worked one stream at once"
    );
    assert!(
        !logs.contains("reconciliation queued unprocessed files"),
        "start-up reconciliation raced the queue"
    );
    // Each instance's API sees every stream (streams it never worked on
    // once its next listing of state/ finds them).
    for svc in [&a, &b] {
        wait_processed(svc, keys.len() as u64).await;
    }
}

#[tokio::test]
async fn sqs_mode_still_finds_files_whose_notification_was_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    // Uploaded before the bucket notifies anything: no event, ever.
    moto.put_object(BUCKET, "raw/lost.csv", fixture()).await;
    let (url, arn) = moto.create_queue("tswatch-lost").await;
    moto.notify_bucket_to_queue(BUCKET, &arn).await;
    let mut args = sqs_args(&url);
    let at = args
        .iter()
        .position(|a| a == "--reconcile-interval")
        .unwrap();
    args[at + 1] = "1".into();
    args.extend(["--sqs-reconcile-after", "2"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(start_cmd(&moto), &args, tmp.path()).await;
    wait_for(
        "the lost file processed",
        Duration::from_secs(30),
        || async { moto.get_object(BUCKET, "processed/lost_summary.json").await },
    )
    .await;
    assert!(
        svc.proc
            .log_text()
            .contains("reconciliation queued unprocessed files")
    );
}

/// The fixture's rows `copies` times over: a file that takes a while.
fn long_fixture(copies: usize) -> Vec<u8> {
    let f = String::from_utf8(fixture()).unwrap();
    let (header, rows) = f.split_once('\n').unwrap();
    let rows = rows.trim_end().to_string() + "\n";
    format!("{header}\n{}", rows.repeat(copies)).into_bytes()
}

#[tokio::test]
async fn sqs_messages_left_when_the_grace_runs_out_are_put_back_at_once() {
    // Two long files of one stream; SIGTERM during the first with a 1 s
    // grace: the second, never started, and the first, abandoned, are
    // visible again at once, not after the visibility timeout.
    let tmp = tempfile::tempdir().unwrap();
    let (moto, url) = bucket_notifying_queue("tswatch-grace").await;
    let body = long_fixture(3000);
    for f in 0..2 {
        moto.put_object(BUCKET, &format!("raw/one/f{f}.csv"), body.clone())
            .await;
    }
    let mut args = sqs_args(&url);
    args.extend(["--shutdown-grace", "1"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(start_cmd(&moto), &args, tmp.path()).await;
    wait_for(
        "the first file in hand",
        Duration::from_secs(60),
        || async { (!receives_in(&svc.proc.log_text()).is_empty()).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = svc.proc.log.clone();
    assert!(svc.proc.terminate().success());
    // Files finished before the grace ran out are deleted from the queue.
    let done = applied_in(&std::fs::read_to_string(log).unwrap()).len();
    let a = moto
        .sqs(
            "GetQueueAttributes",
            json!({ "QueueUrl": url, "AttributeNames": ["ApproximateNumberOfMessages"] }),
        )
        .await;
    let visible: u64 = a["Attributes"]["ApproximateNumberOfMessages"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(visible as usize, 2 - done, "{a}");
}
