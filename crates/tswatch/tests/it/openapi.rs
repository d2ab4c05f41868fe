//! Every endpoint against the OpenAPI document the binary serves: real
//! services answer real requests (successes and the documented refusals),
//! and every answer's status, content type and body are validated against
//! what `/openapi.json`, fetched from the running binary, documents for its
//! operation (`$ref`s resolved within the document). The validation, and
//! the check that the document is valid OpenAPI, is done by
//! `tests/api/validate_openapi.py` with the PyPI packages `jsonschema` and
//! `openapi-spec-validator` (./scripts/test installs them when missing).
//! Every documented response of every operation must be seen at least
//! once, but those in [`NOT_PRODUCED`].

use crate::faultkit::{Proxy, serve_s3};
use crate::harness::*;
use crate::signer::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Documented responses no test here can bring about, and why.
const NOT_PRODUCED: &[(&str, &str, &str, &str)] = &[(
    "/metrics",
    "get",
    "404",
    "`serve` always installs its metrics recorder",
)];

/// One request and its answer, as the validator reads it.
struct Exchange {
    what: String,
    method: String,
    /// The documented path; `None` for a path or method the document does
    /// not have (the answer must then be an `ErrorBody`).
    path: Option<String>,
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    body: String,
}

/// Makes requests and keeps every answer for validation.
struct Recorder {
    doc: Value,
    seen: Vec<Exchange>,
}

impl Recorder {
    /// A recorder holding the document `svc` serves.
    async fn new(svc: &Service) -> Recorder {
        let r = svc
            .http
            .get(format!("{}/openapi.json", svc.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let doc: Value = r.json().await.unwrap();
        Recorder {
            doc,
            seen: Vec::new(),
        }
    }

    /// Sends `method uri` with `body` and `headers`; returns the answer's
    /// status and body (JSON, or `Null`).
    async fn send(
        &mut self,
        svc: &Service,
        what: &str,
        method: &str,
        uri: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = svc.http.request(m, format!("{}{uri}", svc.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {method} {uri}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let content_type = headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = r.text().await.unwrap();
        let path = uri.split('?').next().unwrap().to_string();
        let documented = self.doc["paths"]
            .get(&path)
            .and_then(|p| p.get(method.to_lowercase()))
            .is_some();
        let parsed = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.seen.push(Exchange {
            what: what.to_string(),
            method: method.to_string(),
            path: documented.then_some(path),
            status,
            content_type,
            headers,
            body: text,
        });
        (status, parsed)
    }

    async fn get(&mut self, svc: &Service, what: &str, uri: &str) -> (u16, Value) {
        self.send(svc, what, "GET", uri, None, &[]).await
    }

    async fn notify(&mut self, svc: &Service, what: &str, msg: &Value) -> (u16, Value) {
        self.send(
            svc,
            what,
            "POST",
            "/notify",
            Some(msg.to_string().into_bytes()),
            &[("content-type", "text/plain; charset=UTF-8")],
        )
        .await
    }

    /// The last answer's header `name`, if it had one.
    fn last_header(&self, name: &str) -> Option<String> {
        let last = self.seen.last().unwrap();
        last.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// Runs the validator over every exchange; panics with its findings.
fn validate(doc: &Value, seen: &[Exchange]) {
    let (ok, text) = run_validator(doc, seen);
    assert!(ok, "the validator found:\n{text}");
    assert!(
        text.contains(&format!("{} responses conform", seen.len())),
        "{text}"
    );
}

/// The validator's verdict on `seen` and what it printed.
fn run_validator(doc: &Value, seen: &[Exchange]) -> (bool, String) {
    let exchanges: Vec<Value> = seen
        .iter()
        .map(|e| {
            json!({
                "what": e.what, "method": e.method, "path": e.path, "status": e.status,
                "content_type": e.content_type, "body": e.body,
            })
        })
        .collect();
    let input = json!({ "document": doc, "exchanges": exchanges }).to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/api/validate_openapi.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs tests/api/validate_openapi.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 2: the validator could not run (a missing package), not a verdict.
    assert_ne!(out.status.code(), Some(2), "{text}");
    (out.status.success(), text)
}

/// An answer to `GET path`, made up.
fn made_up(path: &str, status: u16, content_type: &str, body: &str) -> Exchange {
    Exchange {
        what: format!("made up {status}"),
        method: "GET".into(),
        path: Some(path.into()),
        status,
        content_type: content_type.into(),
        headers: reqwest::header::HeaderMap::new(),
        body: body.into(),
    }
}

/// Every (path, method, status) the document promises, less
/// [`NOT_PRODUCED`], that no exchange showed.
fn unseen(doc: &Value, seen: &[Exchange]) -> Vec<String> {
    let shown: BTreeSet<(String, String, String)> = seen
        .iter()
        .filter_map(|e| {
            let p = e.path.clone()?;
            Some((p, e.method.to_lowercase(), e.status.to_string()))
        })
        .collect();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for status in op["responses"].as_object().unwrap().keys() {
                let skip = NOT_PRODUCED
                    .iter()
                    .any(|(p, m, s, _)| (*p, *m, *s) == (path.as_str(), method.as_str(), status));
                let key = (path.clone(), method.clone(), status.clone());
                if !skip && !shown.contains(&key) {
                    missing.push(format!("{method} {path} -> {status}"));
                }
            }
        }
    }
    missing
}

/// An SNS message of `kind` (unsigned) from `topic`.
fn sns(kind: &str, id: &str, message: &str, topic: &str) -> Value {
    json!({
        "Type": kind, "MessageId": id, "TopicArn": topic, "Message": message,
        "Timestamp": sns_now(), "SignatureVersion": "2", "Signature": "",
        "SigningCertURL": CERT_URL,
    })
}

/// Serves key 0's certificate at [`CERT_URL`]'s path and fails (500) for
/// every other path: the certificate host "failing on its side".
async fn cert_host() -> String {
    let pem = cert_pem(0);
    let good = CERT_URL
        .strip_prefix("https://sns.us-east-1.amazonaws.com")
        .unwrap()
        .to_string();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (pem, good) = (pem.clone(), good.clone());
        async move {
            if uri.path() == good {
                (axum::http::StatusCode::OK, pem)
            } else {
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A request whose body never finishes: the request timeout answers it.
async fn stalled_notify(svc: &Service, rec: &mut Recorder) {
    let text = svc.stalled_notify().await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    assert_eq!(status, 408, "{text}");
    rec.seen.push(Exchange {
        what: "a body that never arrives".into(),
        method: "POST".into(),
        path: Some("/notify".into()),
        status,
        content_type,
        headers: reqwest::header::HeaderMap::new(),
        body: body.to_string(),
    });
}

#[tokio::test]
async fn every_endpoint_answers_as_the_document_says() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::write(tmp.path().join("none.toml"), "").unwrap();
    let local = |extra: &[&str]| -> (Command, Vec<String>) {
        let mut cmd = tswatch();
        cmd.arg("--config").arg(tmp.path().join("none.toml"));
        let mut args = vec!["--data-dir".to_string(), data.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        (cmd, args)
    };

    // 1. A local service accepting unsigned SNS messages from TOPIC.
    let (cmd, args) = local(&["--insecure-skip-sns-verify", "--sns-topic-arn", TOPIC]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(cmd, &args, tmp.path()).await;
    let mut rec = Recorder::new(&svc).await;
    let doc = rec.doc.clone();

    // Before any file.
    let (st, body) = rec.get(&svc, "before any file", "/anomalies/summary").await;
    assert_eq!(
        (st, &body["message"]),
        (200, &json!("No processed files yet."))
    );
    rec.get(&svc, "before any file", "/anomalies/recent").await;
    rec.get(&svc, "before any file", "/baseline/current").await;
    rec.get(&svc, "before any file", "/dashboard/data").await;

    // Two streams, a spike, and a refused file.
    drop_in(&data, "site_0.csv", with_a_spike().as_bytes());
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    drop_in(&data, "north/site_0.csv", &fixture);
    drop_in(
        &data,
        "broken.csv",
        b"timestamp,temp\n2026-01-01T00:00:00Z,1,2\n",
    );
    wait_for(
        "two files processed, one refused",
        Duration::from_secs(60),
        || {
            let svc = &svc;
            async move {
                let (_, s) = svc.get_json("/anomalies/summary").await;
                let (_, d) = svc.get_json("/dashboard/data").await;
                (s["files_processed"] == 2 && d["errors"].as_array().is_some_and(|e| !e.is_empty()))
                    .then_some(())
            }
        },
    )
    .await;

    rec.get(&svc, "alive", "/health").await;
    let (st, _) = rec.get(&svc, "storage answers", "/ready").await;
    assert_eq!(st, 200);
    let (st, body) = rec.get(&svc, "default limit", "/anomalies/recent").await;
    assert_eq!(st, 200);
    assert!(body["count"].as_u64().unwrap() > 0, "{body}");
    rec.get(&svc, "small limit", "/anomalies/recent?limit=1")
        .await;
    rec.get(&svc, "large limit", "/anomalies/recent?limit=5000")
        .await;
    assert_eq!(
        rec.last_header("x-tswatch-limit-clamped").as_deref(),
        Some("1000")
    );
    let (st, _) = rec
        .get(&svc, "limit not a number", "/anomalies/recent?limit=ten")
        .await;
    assert_eq!(st, 400);
    let (_, body) = rec.get(&svc, "two streams", "/anomalies/summary").await;
    assert_eq!(body["files_processed"], 2, "{body}");
    let (_, body) = rec.get(&svc, "two streams", "/baseline/current").await;
    assert!(body["streams"]["north"].is_object(), "{body}");
    let (st, _) = rec.get(&svc, "metrics", "/metrics").await;
    assert_eq!(st, 200);
    rec.get(&svc, "the dashboard", "/").await;
    rec.get(&svc, "the API page", "/docs").await;
    rec.get(&svc, "the document", "/openapi.json").await;
    let (_, body) = rec.get(&svc, "default stream", "/dashboard/data").await;
    assert!(!body["errors"].as_array().unwrap().is_empty(), "{body}");
    assert!(
        body["channels"]["temp"]["band"].is_object(),
        "a band to validate: {body}"
    );
    rec.get(&svc, "stream north", "/dashboard/data?stream=north")
        .await;
    let (st, _) = rec
        .get(&svc, "unknown stream", "/dashboard/data?stream=south")
        .await;
    assert_eq!(st, 404);

    // Every /notify form.
    let event = s3_event("any", &["raw/site_9.csv", "raw/notes.txt"]);
    let (st, body) = rec
        .notify(&svc, "records", &sns("Notification", "n1", &event, TOPIC))
        .await;
    assert_eq!((st, &body["queued"]), (200, &json!(["raw/site_9.csv"])));
    let test_event = json!({"Event": "s3:TestEvent"}).to_string();
    let (_, body) = rec
        .notify(
            &svc,
            "S3 test event",
            &sns("Notification", "n2", &test_event, TOPIC),
        )
        .await;
    assert_eq!(body["status"], "test event acknowledged");
    let mut confirm = sns("SubscriptionConfirmation", "c1", "confirm", TOPIC);
    // Nothing listens there: the confirmation fails in the background.
    confirm["SubscribeURL"] = json!(format!("http://127.0.0.1:{}/", free_port()));
    confirm["Token"] = json!("t");
    let (_, body) = rec.notify(&svc, "subscription", &confirm).await;
    assert_eq!(body["status"], "confirming");
    let (_, body) = rec
        .notify(
            &svc,
            "unsubscribe",
            &sns("UnsubscribeConfirmation", "u1", "bye", TOPIC),
        )
        .await;
    assert_eq!(body["status"], "acknowledged");
    let refusals = [
        ("not an SNS message", json!("just text"), 400, &[][..]),
        ("unknown Type", sns("Bogus", "b1", "", TOPIC), 400, &[][..]),
        (
            "Message not JSON",
            sns("Notification", "b2", "not json", TOPIC),
            400,
            &[][..],
        ),
        (
            "confirmation without SubscribeURL",
            sns("SubscriptionConfirmation", "b3", "", TOPIC),
            400,
            &[][..],
        ),
        (
            "header disagrees with Type",
            sns("Notification", "b4", &test_event, TOPIC),
            400,
            &[("x-amz-sns-message-type", "SubscriptionConfirmation")][..],
        ),
        (
            "topic not configured",
            sns(
                "Notification",
                "b5",
                &test_event,
                "arn:aws:sns:us-east-1:1:other",
            ),
            403,
            &[][..],
        ),
    ];
    for (what, msg, want, headers) in refusals {
        let mut h = vec![("content-type", "text/plain; charset=UTF-8")];
        h.extend_from_slice(headers);
        let (st, body) = rec
            .send(
                &svc,
                what,
                "POST",
                "/notify",
                Some(msg.to_string().into_bytes()),
                &h,
            )
            .await;
        assert_eq!(st, want, "{what}: {body}");
    }
    let (st, _) = rec
        .send(
            &svc,
            "oversize body",
            "POST",
            "/notify",
            Some(vec![b' '; 400 * 1024]),
            &[],
        )
        .await;
    assert_eq!(st, 413);

    // Refusals outside any operation: the document's ErrorBody.
    let (st, _) = rec.get(&svc, "unknown path", "/nothing/here").await;
    assert_eq!(st, 404);
    let (st, _) = rec
        .send(&svc, "wrong method", "DELETE", "/health", None, &[])
        .await;
    assert_eq!(st, 405);

    // Not ready: the data directory is gone.
    let away = tmp.path().join("away");
    std::fs::rename(&data, &away).unwrap();
    let (st, body) = rec.get(&svc, "data directory gone", "/ready").await;
    assert_eq!((st, &body["status"]), (503, &json!("not ready")), "{body}");
    std::fs::rename(&away, &data).unwrap();
    drop(svc);

    // 2. The same data with signatures checked (certificates from a local
    // host), and a 2 s request timeout.
    let certs = cert_host().await;
    let (cmd, args) = local(&[
        "--sns-topic-arn",
        TOPIC,
        "--sns-cert-endpoint",
        &certs,
        "--request-timeout",
        "2",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(cmd, &args, tmp.path()).await;
    let mut signed = notification(&test_event, None);
    sign(&mut signed, 0, "2");
    let signed = to_json(&signed);
    let (st, _) = rec.notify(&svc, "signed", &signed).await;
    assert_eq!(st, 200);
    let (st, body) = rec.notify(&svc, "the same signed message", &signed).await;
    assert_eq!((st, &body["status"]), (200, &json!("already received")));
    let mut tampered = signed.clone();
    tampered["Message"] = json!(event);
    let (st, _) = rec.notify(&svc, "tampered", &tampered).await;
    assert_eq!(st, 403);
    let mut elsewhere = notification(&test_event, None);
    elsewhere.message_id = "other-cert".into();
    elsewhere.signing_cert_url =
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-ffffffffffffffffffffffffffffffff.pem".into();
    sign(&mut elsewhere, 0, "2");
    let (st, body) = rec
        .notify(&svc, "certificate host failing", &to_json(&elsewhere))
        .await;
    assert_eq!(st, 503, "{body}");
    stalled_notify(&svc, &mut rec).await;
    drop(svc);

    // 3. S3 through a proxy. A first service processes a file of stream
    // "north"; a second one starts with every read of that stream's state
    // lost in the network: its read endpoints have no state to answer from.
    let moto = Moto::start().await;
    moto.create_bucket("openapi").await;
    moto.put_object("openapi", "raw/north/site_0.csv", fixture.clone())
        .await;
    let first = serve_s3(&moto, &moto.endpoint, "openapi", &[], tmp.path()).await;
    wait_for("north processed", Duration::from_secs(60), || async {
        moto.get_object("openapi", "processed/north/site_0_summary.json")
            .await
    })
    .await;
    drop(first);
    let proxy = Proxy::start(&moto.endpoint).await;
    proxy.lose_responses("GET /openapi/state/north/engine.json", 1_000_000);
    let svc = serve_s3(
        &moto,
        &proxy.endpoint,
        "openapi",
        &["--reconcile-interval", "3600"],
        tmp.path(),
    )
    .await;
    for path in [
        "/anomalies/summary",
        "/anomalies/recent",
        "/baseline/current",
        "/dashboard/data?stream=north",
    ] {
        let (st, body) = rec.get(&svc, "a stream's state unreadable", path).await;
        assert_eq!(st, 503, "{path}: {body}");
    }
    // The store itself answers: alive and ready.
    let (st, _) = rec.get(&svc, "storage answers", "/ready").await;
    assert_eq!(st, 200);

    validate(&doc, &rec.seen);
    // The validator refuses what the document does not allow: a wrong
    // field, a missing one, an undocumented status, another content type.
    let json = "application/json";
    let wrong = [
        made_up(
            "/health",
            200,
            json,
            r#"{"status":"fine","bucket":"b","timestamp":"t"}"#,
        ),
        made_up(
            "/anomalies/recent",
            200,
            json,
            r#"{"count":0,"anomalies":[]}"#,
        ),
        made_up("/health", 500, json, r#"{"error":"x"}"#),
        made_up("/health", 200, "text/plain", "ok"),
    ];
    let (ok, text) = run_validator(&doc, &wrong);
    assert!(!ok, "{text}");
    for (line, what) in [
        ("status", "'fine' is not one of ['ok']"),
        ("limit", "'limit' is a required property"),
        ("500", "status not documented"),
        ("text/plain", "content type 'text/plain'"),
    ] {
        assert!(text.contains(what), "{line}: {text}");
    }
    let missing = unseen(&doc, &rec.seen);
    assert!(
        missing.is_empty(),
        "documented but never seen: {missing:#?}"
    );
}
