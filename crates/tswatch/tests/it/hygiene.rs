//! Request hygiene on the real binary: every refusal is a 4xx with a JSON
//! reason, bodies are size-limited, slow requests time out, object keys
//! cannot leave the data directory, the default bind is loopback, and no
//! input makes the service panic.

use crate::harness::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use std::time::Duration;

/// An SNS Notification whose S3 event names `keys` exactly as given (no
/// encoding added).
fn event_with_raw_keys(keys: &[&str]) -> String {
    let records: Vec<Value> = keys
        .iter()
        .map(|k| json!({"eventName": "ObjectCreated:Put", "s3": {"object": {"key": k}}}))
        .collect();
    json!({
        "Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": json!({ "Records": records }).to_string(),
        "Timestamp": "2026-11-25T00:00:00.000Z"
    })
    .to_string()
}

fn notification_with(message: &str) -> String {
    json!({"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": message,
        "Timestamp": "x"})
    .to_string()
}

/// Sends a raw request; returns (status, headers, body as JSON).
async fn send(
    svc: &Service,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = reqwest::Client::new()
        .request(method, format!("{}{path}", svc.base))
        .body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let text = r.bytes().await.unwrap();
    let v = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "{path}: status {status}, body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&text)
        )
    });
    (status, h, v)
}

fn assert_json_error(what: &str, status: u16, headers: &reqwest::header::HeaderMap, body: &Value) {
    assert!(
        (400..500).contains(&status),
        "{what}: status {status} {body}"
    );
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{what}: {headers:?}"
    );
    let e = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {body}"));
    assert!(!e.is_empty(), "{what}: {body}");
}

#[tokio::test]
async fn every_refusal_is_a_4xx_with_a_json_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let skip = Service::start(
        tswatch(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--insecure-skip-sns-verify",
        ],
        tmp.path(),
    )
    .await;
    use reqwest::Method;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // (what, method, path, headers, body, expected status, words of the reason)
    type Case<'a> = (
        &'a str,
        Method,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("body over the limit", Method::POST, "/notify", vec![], vec![b'{'; 301 * 1024], 413, "length limit"),
        ("not JSON", Method::POST, "/notify", vec![], b"not json".to_vec(), 400, "not an SNS message"),
        ("empty body", Method::POST, "/notify", vec![], vec![], 400, "not an SNS message"),
        ("JSON array", Method::POST, "/notify", vec![], b"[1,2]".to_vec(), 400, "not an SNS message"),
        ("JSON null", Method::POST, "/notify", vec![], b"null".to_vec(), 400, "not an SNS message"),
        ("deeply nested", Method::POST, "/notify", vec![], deep.into_bytes(), 400, "not an SNS message"),
        ("non-UTF-8", Method::POST, "/notify", vec![], vec![0xff, 0xfe, b'{'], 400, "not an SNS message"),
        ("fields of the wrong type", Method::POST, "/notify", vec![],
            br#"{"Type":1,"MessageId":"m","TopicArn":"t","Message":"x","Timestamp":"x"}"#.to_vec(), 400, "not an SNS message"),
        ("unknown Type", Method::POST, "/notify", vec![],
            br#"{"Type":"Other","MessageId":"m","TopicArn":"t","Message":"x","Timestamp":"x"}"#.to_vec(), 400, "Type"),
        ("header disagrees with Type", Method::POST, "/notify",
            vec![("x-amz-sns-message-type", "SubscriptionConfirmation")],
            notification_with("{}").into_bytes(), 400, "does not match"),
        ("Message not JSON", Method::POST, "/notify", vec![], notification_with("hello").into_bytes(), 400, "Message is not JSON"),
        ("Message not an S3 event", Method::POST, "/notify", vec![], notification_with(r#"{"a":1}"#).into_bytes(), 400, "no Records"),
        ("Records not a list", Method::POST, "/notify", vec![], notification_with(r#"{"Records":{}}"#).into_bytes(), 400, "no Records"),
        ("confirmation without URL", Method::POST, "/notify", vec![],
            br#"{"Type":"SubscriptionConfirmation","MessageId":"m","TopicArn":"t","Message":"x","Timestamp":"x","Token":"t"}"#.to_vec(), 400, "SubscribeURL"),
        ("GET /notify", Method::GET, "/notify", vec![], vec![], 405, "method not allowed"),
        ("POST /health", Method::POST, "/health", vec![], vec![], 405, "method not allowed"),
        ("DELETE /baseline/current", Method::DELETE, "/baseline/current", vec![], vec![], 405, "method not allowed"),
        ("unknown path", Method::GET, "/../../etc/passwd", vec![], vec![], 404, "no such endpoint"),
        ("limit not a number", Method::GET, "/anomalies/recent?limit=ten", vec![], vec![], 400, "limit"),
        ("limit negative", Method::GET, "/anomalies/recent?limit=-1", vec![], vec![], 400, "limit"),
        ("limit a fraction", Method::GET, "/anomalies/recent?limit=2.5", vec![], vec![], 400, "limit"),
    ];
    for (what, method, path, headers, body, want, reason) in cases {
        let (st, h, b) = send(&skip, method, path, &headers, body).await;
        assert_eq!(st, want, "{what}: {b}");
        assert_json_error(what, st, &h, &b);
        assert!(b["error"].as_str().unwrap().contains(reason), "{what}: {b}");
        if st == 405 {
            assert!(h.contains_key("allow"), "{what}: 405 keeps Allow");
        }
    }
    // Still serving, and nothing reached storage.
    for p in [
        "/health",
        "/anomalies/summary",
        "/anomalies/recent",
        "/baseline/current",
    ] {
        assert_eq!(skip.get_json(p).await.0, 200, "{p}");
    }
    assert!(files_under(&data.join("processed")).is_empty());
    assert!(!skip.proc.log_text().contains("panicked"));
}

#[tokio::test]
async fn keys_that_would_leave_the_data_directory_are_never_queued_or_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Valid batches just outside the data directory, where an escaping key
    // would lead.
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    for p in ["outside/x.csv", "raw/x.csv", "x.csv"] {
        let f = tmp.path().join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, &fixture).unwrap();
    }
    let svc = Service::start(
        tswatch(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--insecure-skip-sns-verify",
        ],
        tmp.path(),
    )
    .await;
    let before = files_under(tmp.path());
    let abs = tmp.path().join("outside/x.csv").display().to_string();
    let long = format!("raw/{}.csv", "a".repeat(2000));
    let hostile = [
        "raw/../../outside/x.csv",
        "raw/../x.csv",
        "../raw/x.csv",
        "raw/..%2F..%2Foutside%2Fx.csv",
        "raw%2F..%2F..%2Fx.csv",
        "raw/%2e%2e/%2e%2e/outside/x.csv",
        "raw/..\\..\\outside\\x.csv",
        "raw\\x.csv",
        "/raw/x.csv",
        "%2Fraw%2Fx.csv",
        abs.as_str(),
        "raw/x%00.csv",
        "raw/x.csv%00.txt",
        "raw/a%0A.csv",
        "raw/a%01.csv",
        "raw/./x.csv",
        "raw//x.csv",
        "raw/%FF.csv",
        "raw/.csv",
        "raw/sub/.csv",
        long.as_str(),
        "",
    ];
    let (st, b) = svc.post("/notify", event_with_raw_keys(&hostile)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["queued"], json!([]), "{b}");
    let ignored = b["ignored"].as_array().unwrap();
    assert_eq!(ignored.len(), hostile.len(), "{b}");
    assert!(
        ignored
            .iter()
            .all(|i| i["reason"].as_str().is_some_and(|r| !r.is_empty())),
        "{b}"
    );

    // A good key sent after them is processed; the one worker takes keys in
    // order, so anything queued before it would have been handled first.
    std::fs::create_dir_all(data.join("raw")).unwrap();
    std::fs::write(data.join("ok.part"), &fixture).unwrap();
    std::fs::rename(data.join("ok.part"), data.join("raw/ok.csv")).unwrap();
    let (st, b) = svc
        .post("/notify", event_with_raw_keys(&["raw/ok.csv"]))
        .await;
    assert_eq!((st, &b["queued"]), (200, &json!(["raw/ok.csv"])), "{b}");
    wait_for("raw/ok.csv", Duration::from_secs(30), || async {
        data.join("processed/ok_summary.json")
            .exists()
            .then_some(())
    })
    .await;
    let after = files_under(tmp.path());
    let new: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    for f in &new {
        assert!(
            f.starts_with("data/") && !f.contains(".."),
            "created outside the data directory: {f}"
        );
    }
    let processed = files_under(&data.join("processed"));
    assert_eq!(processed, ["ok.csv", "ok_summary.json"]);
    for p in ["outside/x.csv", "raw/x.csv", "x.csv"] {
        assert_eq!(
            std::fs::read(tmp.path().join(p)).unwrap(),
            fixture,
            "{p} untouched"
        );
    }
    assert!(!svc.proc.log_text().contains("panicked"));
}

#[tokio::test]
async fn the_default_bind_is_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = tswatch();
    cmd.current_dir(tmp.path()).arg("serve");
    let log = tmp.path().join("serve.log");
    let mut p = Proc::spawn(cmd, &log);
    // Either it listens, or port 8000 is taken here: both name the address.
    let line = wait_for(
        "the bind address in the log",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                text.lines()
                    .find(|l| l.contains("tswatch listening") || l.contains("cannot listen"))
                    .map(str::to_string)
            }
        },
    )
    .await;
    assert!(line.contains("127.0.0.1:8000"), "{line}");
    if line.contains("cannot listen") {
        wait_for("exit", Duration::from_secs(10), || {
            let exited = p.exited();
            async move { exited.then_some(()) }
        })
        .await;
    }
    let help = tswatch().args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("[default: 127.0.0.1:8000]"));
}

#[tokio::test]
async fn a_slow_client_is_answered_with_408_and_cannot_hold_the_handler() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = Service::start(
        tswatch(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--request-timeout",
            "1",
        ],
        tmp.path(),
    )
    .await;
    // Promise a body and send only part of it, then stall.
    let text = svc.stalled_notify().await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("in time"), "{v}");
    assert_eq!(svc.get_json("/health").await.0, 200);
}

/// Requests of every shape to the real binary: the answer is always a
/// status the API documents, with JSON; the service never panics and keeps
/// serving; nothing is written outside the data directory.
#[test]
fn arbitrary_notify_requests_never_break_the_service() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = rt.block_on(Service::start(
        tswatch(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--insecure-skip-sns-verify",
        ],
        tmp.path(),
    ));
    let key = prop_oneof![
        3 => any::<String>(),
        3 => "(raw/)?([a-z. %+/\\\\]|\\.\\.|%2[eEfF]|%00|%[0-9A-F]{2}|é|\u{202e}){0,12}(\\.csv)?",
        1 => Just("raw/a b+c.csv".to_string()),
    ];
    let record = (
        key,
        prop::sample::select(vec!["ObjectCreated:Put", "ObjectRemoved:Delete", ""]),
        prop::option::of(prop::sample::select(vec!["b", "other"])),
    )
        .prop_map(|(k, ev, b)| {
            let mut r = json!({"eventName": ev, "s3": {"object": {"key": k}}});
            if let Some(b) = b {
                r["s3"]["bucket"] = json!({ "name": b });
            }
            r
        });
    let message = prop_oneof![
        4 => prop::collection::vec(record, 0..4).prop_map(|rs| json!({ "Records": rs }).to_string()),
        1 => any::<String>(),
        1 => Just(r#"{"Event":"s3:TestEvent"}"#.to_string()),
    ];
    let kind = prop_oneof![
        3 => Just("Notification"),
        1 => prop::sample::select(vec!["SubscriptionConfirmation", "UnsubscribeConfirmation", "x"]),
    ];
    let body = prop_oneof![
        4 => (kind, message, prop::option::of(any::<String>())).prop_map(|(k, m, u)| {
            let mut v = json!({"Type": k, "MessageId": "m", "TopicArn": "t", "Message": m,
                "Timestamp": "x", "Token": "t"});
            if let Some(u) = u {
                v["SubscribeURL"] = json!(u);
            }
            v.to_string().into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..2000),
    ];
    let header = prop::option::of(prop::sample::select(vec![
        &b"Notification"[..],
        b"SubscriptionConfirmation",
        b"",
        b"x\ty",
        b"\xff\xfe",
    ]));
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    let http = reqwest::Client::new();
    let url = format!("{}/notify", svc.base);
    runner
        .run(&(body, header), |(body, header)| {
            let (status, text) = rt.block_on(async {
                let mut rb = http.post(&url).body(body);
                if let Some(h) = header {
                    let h = reqwest::header::HeaderValue::from_bytes(h).unwrap();
                    rb = rb.header("x-amz-sns-message-type", h);
                }
                let r = rb.send().await.unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap())
            });
            let v: Value = serde_json::from_slice(&text)
                .map_err(|e| TestCaseError::fail(format!("status {status}: not JSON: {e}")))?;
            prop_assert!(matches!(status, 200 | 400 | 403), "status {} {}", status, v);
            if status != 200 {
                prop_assert!(v["error"].is_string(), "{}", v);
            }
            Ok(())
        })
        .unwrap();
    for p in [
        "/health",
        "/anomalies/summary",
        "/anomalies/recent",
        "/baseline/current",
    ] {
        assert_eq!(rt.block_on(svc.get_json(p)).0, 200, "{p}");
    }
    let log = svc.proc.log_text();
    assert!(!log.contains("panicked"), "{log}");
    for f in files_under(tmp.path()) {
        assert!(f.starts_with("data/") || f.starts_with("tswatch-"), "{f}");
    }
}
