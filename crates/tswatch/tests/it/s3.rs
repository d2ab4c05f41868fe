//! End to end against a real moto server: bucket → SNS topic → HTTP
//! subscription to the real binary's /notify → producer uploads.

use crate::harness::*;
use serde_json::Value;
use std::time::Duration;

const BUCKET: &str = "tswatch-e2e";
const SEED_COLUMNS: [&str; 5] = [
    "timestamp",
    "temperature",
    "humidity",
    "pressure",
    "wind_speed",
];

async fn summaries(moto: &Moto) -> Vec<Value> {
    let mut out = Vec::new();
    for k in moto.list(BUCKET, "processed/").await {
        if k.ends_with("_summary.json") {
            let b = moto.get_object(BUCKET, &k).await.unwrap();
            out.push(serde_json::from_slice(&b).unwrap());
        }
    }
    out
}

async fn wait_summaries(moto: &Moto, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} summaries"),
        Duration::from_secs(60),
        || async {
            let s = summaries(moto).await;
            (s.len() >= n).then_some(s)
        },
    )
    .await
}

#[tokio::test]
async fn s3_sns_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let topic = moto.create_topic("tswatch-events").await;

    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    let svc = Service::start(cmd, &["--insecure-skip-sns-verify"], tmp.path()).await;
    let (_, h) = svc.get_json("/health").await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["bucket"], BUCKET);

    let endpoint = format!("{}/notify", svc.base);
    moto.subscribe(&topic, "http", &endpoint).await;
    // Configuring the notification makes S3 send an s3:TestEvent first.
    moto.notify_bucket_to_topic(BUCKET, &topic).await;

    // The producer, through the same binary, to the same bucket.
    let mut produce = tswatch();
    s3_env(&mut produce, &moto, BUCKET);
    let out = produce
        .args(["produce", "--count", "5", "--interval", "0", "--seed", "42"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sums = wait_summaries(&moto, 5).await;
    assert_eq!(sums.len(), 5);

    // Summaries: the seed's fields, consistent numbers.
    let mut total_anomalies = 0;
    for s in &sums {
        for f in [
            "source_key",
            "output_key",
            "processed_at",
            "total_rows",
            "anomaly_count",
            "anomaly_rate",
            "baseline_observation_counts",
        ] {
            assert!(s.get(f).is_some(), "summary lacks {f}: {s}");
        }
        assert_eq!(s["total_rows"], 100);
        let rate = s["anomaly_count"].as_f64().unwrap() / 100.0;
        assert_eq!(
            s["anomaly_rate"].as_f64().unwrap(),
            (rate * 1e4).round() / 1e4
        );
        total_anomalies += s["anomaly_count"].as_u64().unwrap();
    }

    // Processed CSVs: every input column, then the seed's score columns in order.
    let mut keys: Vec<String> = sums
        .iter()
        .map(|s| s["output_key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    let first = moto.get_object(BUCKET, &keys[0]).await.unwrap();
    let rows = csv_rows(&first);
    let mut want: Vec<String> = SEED_COLUMNS.iter().map(|s| s.to_string()).collect();
    for ch in &SEED_COLUMNS[1..] {
        want.push(format!("{ch}_zscore"));
        want.push(format!("{ch}_zscore_flag"));
    }
    want.extend(
        [
            "if_label",
            "if_score",
            "if_flag",
            "anomaly",
            "anomaly_score",
            "reason",
        ]
        .map(String::from),
    );
    assert_eq!(rows[0], want);
    assert_eq!(rows.len(), 101);
    // Immature baseline: the first 30 rows have empty z-scores, then 4 decimals.
    assert_eq!(rows[1][5], "");
    assert_eq!(rows[1][6], "");
    let z = &rows[40][5];
    assert_eq!(z.split('.').nth(1).map(str::len), Some(4), "z {z:?}");
    for r in &rows[1..] {
        let (anomaly, score, reason) = (&r[16], &r[17], &r[18]);
        assert!(anomaly == "True" || anomaly == "False");
        let score: f64 = score.parse().unwrap();
        assert!((0.0..1.0).contains(&score));
        assert_eq!(anomaly == "True", score >= 0.5);
        assert_eq!(
            anomaly == "True",
            !reason.is_empty(),
            "a flagged row says why: {r:?}"
        );
    }

    // baseline.json: the seed's exact shape.
    let b: Value = serde_json::from_slice(
        &moto
            .get_object(BUCKET, "state/baseline.json")
            .await
            .unwrap(),
    )
    .unwrap();
    let obj = b.as_object().unwrap();
    let mut top: Vec<&str> = obj.keys().map(String::as_str).collect();
    top.sort();
    assert_eq!(
        top,
        [
            "humidity",
            "last_updated",
            "pressure",
            "temperature",
            "wind_speed"
        ]
    );
    let t = &b["temperature"];
    let (count, m2, std) = (
        t["count"].as_f64().unwrap(),
        t["M2"].as_f64().unwrap(),
        t["std"].as_f64().unwrap(),
    );
    assert!((std - (m2 / count).sqrt()).abs() < 1e-9);
    // Anomalous rows were not absorbed.
    assert!(
        count < 500.0 && count >= 500.0 - total_anomalies as f64,
        "count {count}"
    );

    // The API.
    let (st, s) = svc.get_json("/anomalies/summary").await;
    assert_eq!(st, 200);
    assert_eq!(s["files_processed"], 5);
    assert_eq!(s["total_rows_scored"], 500);
    assert_eq!(s["total_anomalies"], total_anomalies);
    let rate = ((total_anomalies as f64 / 500.0) * 1e4).round() / 1e4;
    assert_eq!(s["overall_anomaly_rate"].as_f64().unwrap(), rate);
    assert_eq!(s["most_recent"].as_array().unwrap().len(), 5);

    let (_, r) = svc.get_json("/anomalies/recent?limit=1000").await;
    assert_eq!(r["count"], total_anomalies);
    let list = r["anomalies"].as_array().unwrap();
    assert!(
        list.iter().all(|a| a["anomaly"] == true
            && a["source_file"].as_str().unwrap().starts_with("processed/"))
    );
    assert_eq!(
        list[0]["source_file"],
        keys[4].as_str(),
        "newest file first"
    );
    let (_, r2) = svc.get_json("/anomalies/recent?limit=2").await;
    assert_eq!(r2["count"], 2);

    let (_, bc) = svc.get_json("/baseline/current").await;
    let tc = &bc["channels"]["temperature"];
    assert_eq!(tc["observations"].as_f64().unwrap(), count);
    assert_eq!(tc["baseline_mature"], true);
    assert_eq!(tc["std"].as_f64().unwrap(), (std * 1e4).round() / 1e4);
    assert!(bc["last_updated"].is_string());

    // A duplicate notification (as SNS may deliver) changes nothing. Each
    // is sent once the one before was taken from the queue and skipped
    // (the worker logs every skip), so none is merged into another.
    let dup_key = sums[0]["source_key"].as_str().unwrap().to_string();
    let skipped = |svc: &Service| {
        let needle = format!("key={dup_key}");
        crate::faultkit::strip_ansi(&svc.proc.log_text())
            .lines()
            .filter(|l| l.contains("already processed; skipped") && l.contains(&needle))
            .count()
    };
    let before = skipped(&svc);
    for n in 1..=3 {
        let (st, body) = svc.post("/notify", sns_s3_event(BUCKET, &[&dup_key])).await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["queued"][0], dup_key.as_str());
        wait_for("the duplicate skipped", Duration::from_secs(30), || async {
            (skipped(&svc) == before + n).then_some(())
        })
        .await;
    }
    let (_, s2) = svc.get_json("/anomalies/summary").await;
    assert_eq!(s2["files_processed"], 5);
    let b2: Value = serde_json::from_slice(
        &moto
            .get_object(BUCKET, "state/baseline.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(b2["temperature"]["count"], b["temperature"]["count"]);

    // Keys with spaces and '+' arrive form-encoded and are decoded.
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    moto.put_object(BUCKET, "raw/site a/b+c.csv", fixture.clone())
        .await;
    wait_summaries(&moto, 6).await;
    assert!(
        moto.get_object(BUCKET, "processed/site a/b+c.csv")
            .await
            .is_some()
    );

    // Stopped service: a file uploaded meanwhile is processed after restart.
    let status = svc.proc.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    moto.put_object(BUCKET, "raw/while_down.csv", fixture).await;
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    let svc = Service::start(cmd, &["--insecure-skip-sns-verify"], tmp.path()).await;
    wait_summaries(&moto, 7).await;
    assert!(
        moto.get_object(BUCKET, "processed/while_down_summary.json")
            .await
            .is_some()
    );
    let (_, s3) = svc.get_json("/anomalies/summary").await;
    assert_eq!(s3["files_processed"], 7);
    assert_eq!(s3["total_rows_scored"], 700);
}

#[tokio::test]
async fn subscription_confirmation_is_fetched_in_the_background() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    // A stand-in for the SubscribeURL host that records the request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/?Action=ConfirmSubscription&Token=abc",
        listener.local_addr().unwrap()
    );
    let hit = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut sock, &mut buf)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut sock,
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    let svc = Service::start(cmd, &["--insecure-skip-sns-verify"], tmp.path()).await;
    let msg = serde_json::json!({
        "Type": "SubscriptionConfirmation", "MessageId": "1", "Token": "abc",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:t", "Message": "confirm",
        "SubscribeURL": url, "Timestamp": "2026-11-25T00:00:00.000Z",
        "SignatureVersion": "2", "Signature": "", "SigningCertURL": ""
    });
    let (st, _) = svc.post("/notify", msg.to_string()).await;
    assert_eq!(st, 200);
    let req = tokio::time::timeout(Duration::from_secs(10), hit)
        .await
        .unwrap()
        .unwrap();
    assert!(
        req.starts_with("GET /?Action=ConfirmSubscription&Token=abc"),
        "{req}"
    );
}

#[tokio::test]
async fn unsigned_messages_are_refused_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    let topics = "arn:aws:sns:us-east-1:123456789012:tswatch,arn:aws:sns:us-east-1:123456789012:t";
    let svc = Service::start(cmd, &["--sns-topic-arn", topics], tmp.path()).await;
    let (st, body) = svc
        .post("/notify", sns_s3_event(BUCKET, &["raw/x.csv"]))
        .await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    // A SubscribeURL off AWS is never fetched.
    let msg = serde_json::json!({
        "Type": "SubscriptionConfirmation", "MessageId": "1", "Token": "abc",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:t", "Message": "confirm",
        "SubscribeURL": "http://127.0.0.1:9/steal", "Timestamp": "2026-11-25T00:00:00.000Z",
        "SignatureVersion": "2", "Signature": "", "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem"
    });
    let (st, body) = svc.post("/notify", msg.to_string()).await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("SubscribeURL"),
        "{body}"
    );
}

#[tokio::test]
async fn a_replaced_file_whose_notification_is_lost_is_reprocessed() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    // No notifications at all: only reconciliation finds files.
    let _svc = Service::start(cmd, &["--reconcile-interval", "1"], tmp.path()).await;
    let fixture = std::fs::read_to_string(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    moto.put_object(BUCKET, "raw/replaced.csv", fixture.clone())
        .await;
    let summary = |rows: u64| {
        let moto = &moto;
        async move {
            let b = moto
                .get_object(BUCKET, "processed/replaced_summary.json")
                .await?;
            let v: Value = serde_json::from_slice(&b).ok()?;
            (v["total_rows"] == rows).then_some(v)
        }
    };
    let first = wait_for("first version processed", Duration::from_secs(30), || {
        summary(100)
    })
    .await;
    // A new version (half the rows) replaces it; its notification is lost.
    let half: String = fixture.lines().take(51).map(|l| format!("{l}\n")).collect();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    moto.put_object(BUCKET, "raw/replaced.csv", half).await;
    let second = wait_for("new version processed", Duration::from_secs(30), || {
        summary(50)
    })
    .await;
    assert_ne!(first["source_etag"], second["source_etag"]);
}

/// A scored file larger than the bucket copies in one request is published
/// by streaming it into a multipart upload: the same bytes as a server-side
/// move, and no staged copy left behind.
#[tokio::test]
async fn outputs_larger_than_one_copy_are_streamed_into_place() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    // 1 KiB: every output here is "too large", and 60,000 rows make an
    // output of about 8 MiB, more than one 6 MiB upload part.
    let flags = [
        "--reconcile-interval",
        "3600",
        "--s3-max-copy-bytes",
        "1024",
    ];
    let svc = crate::faultkit::serve_s3(&moto, &moto.endpoint, BUCKET, &flags, tmp.path()).await;
    let (_, csv) = crate::faultkit::producer_files(1, 60_000, 7).remove(0);
    let input = tmp.path().join("big.csv");
    std::fs::write(&input, &csv).unwrap();
    moto.put_object(BUCKET, "raw/big.csv", csv).await;
    let (st, b) = svc
        .post("/notify", sns_s3_event(BUCKET, &["raw/big.csv"]))
        .await;
    assert_eq!(st, 200, "{b}");
    wait_for("big.csv published", Duration::from_secs(120), || async {
        moto.get_object(BUCKET, "processed/big_summary.json").await
    })
    .await;

    // The offline scorer from a fresh state gives the reference bytes.
    let reference = tmp.path().join("big.out.csv");
    let o = tswatch()
        .args(["score", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = std::fs::read(&reference).unwrap();
    assert!(want.len() > 6 * 1024 * 1024, "{} bytes", want.len());
    let got = moto.get_object(BUCKET, "processed/big.csv").await.unwrap();
    assert!(
        got == want,
        "{} bytes published, {} expected",
        got.len(),
        want.len()
    );
    assert_eq!(
        moto.list(BUCKET, "state/staging/").await,
        Vec::<String>::new()
    );
    // The ledger records the staged copy's size, which decided the move
    // without asking S3 for it.
    let state: Value =
        serde_json::from_slice(&moto.get_object(BUCKET, "state/engine.json").await.unwrap())
            .unwrap();
    let entry = state["applied"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source_key"] == "raw/big.csv")
        .unwrap();
    assert_eq!(entry["staged_bytes"].as_u64(), Some(got.len() as u64));
}
