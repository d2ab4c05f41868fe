//! Alert webhooks (`--alert-webhook`) against a real HTTP receiver started
//! in the test on 127.0.0.1: what an alert carries, once per file under
//! duplicate notifications and racing instances, retries when the receiver
//! is down or answers 500, processing never slowed by a slow receiver, and
//! the rate limit.

use crate::faultkit::{Data, notify, serve_s3, strip_ansi, tmp};
use crate::harness::{
    Moto, Service, drop_in, free_port, tswatch, wait_file, wait_for, with_a_spike,
};
use crate::metrics::{scrape, value};
use serde_json::Value;
use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    /// Path and query.
    target: String,
    content_type: String,
    body: Value,
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Got>>,
    /// Statuses to answer with, in order; then `otherwise`.
    script: Mutex<VecDeque<u16>>,
    otherwise: u16,
    delay: Duration,
    /// Requests answered (after the delay).
    answered: AtomicUsize,
}

/// A local webhook receiver: records every request, then (after `delay`)
/// answers with the next scripted status. Stopped when dropped.
struct Receiver {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[u16], otherwise: u16, delay: Duration) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, script, otherwise, delay)
    }

    fn on(
        listener: tokio::net::TcpListener,
        script: &[u16],
        otherwise: u16,
        delay: Duration,
    ) -> Receiver {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            script: Mutex::new(script.iter().copied().collect()),
            otherwise,
            delay,
            ..Default::default()
        });
        let s = shared.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let s = s.clone();
                async move {
                    let got = Got {
                        target: uri.to_string(),
                        content_type: headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string(),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    };
                    s.got.lock().unwrap().push(got);
                    tokio::time::sleep(s.delay).await;
                    let status = s.script.lock().unwrap().pop_front().unwrap_or(s.otherwise);
                    s.answered.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            },
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, shared, task }
    }

    fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }

    fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests came in; returns them all.
    async fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Got> {
        wait_for(&format!("{n} webhook request(s)"), timeout, || async {
            let g = self.got();
            (g.len() >= n).then_some(g)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Ten rows: too few for any channel to be scored, so no anomaly.
fn too_short_to_flag() -> String {
    let mut s = String::from("timestamp,temp\n");
    for i in 0..10 {
        s.push_str(&format!("2026-01-01T00:{i:02}:00Z,{}\n", 20 + i));
    }
    s
}

async fn serve(data: &Path, logs: &Path, extra: &[&str]) -> Service {
    let mut args = vec!["--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    Service::start(tswatch(), &args, logs).await
}

/// The summary of `processed/<name>` once it exists.
async fn summary(data: &Path, name: &str) -> Value {
    let path = data.join("processed").join(format!("{name}_summary.json"));
    serde_json::from_slice(&wait_file(&path).await).unwrap()
}

fn log(svc: &Service) -> String {
    strip_ansi(&svc.proc.log_text())
}

/// A metric's value now (0 when the series does not exist yet).
async fn metric(svc: &Service, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(svc).await, name, labels).unwrap_or(0.0)
}

/// Gives the service time to send anything it would still send.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_file_with_anomalies_sends_one_alert_and_a_quiet_file_none() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rx = Receiver::start(&[], 200, Duration::ZERO).await;
    let hook = format!("{}/hook?token=SECRET-TOKEN", rx.url);
    let svc = serve(
        &data,
        tmp.path(),
        &[
            "--alert-webhook",
            &hook,
            "--public-url",
            "https://tswatch.example.com:9443/",
        ],
    )
    .await;

    drop_in(&data, "quiet/q.csv", too_short_to_flag().as_bytes());
    let quiet = summary(&data, "quiet/q").await;
    assert_eq!(quiet["anomaly_count"], 0, "{quiet}");
    drop_in(&data, "north/a.csv", with_a_spike().as_bytes());
    let s = summary(&data, "north/a").await;
    assert!(s["anomaly_count"].as_u64().unwrap() >= 1, "{s}");

    rx.wait_requests(1, Duration::from_secs(30)).await;
    settle().await;
    let got = rx.got();
    assert_eq!(
        got.len(),
        1,
        "one alert, for the file with anomalies: {got:?}"
    );
    let g = &got[0];
    assert_eq!(g.target, "/hook?token=SECRET-TOKEN");
    assert_eq!(g.content_type, "application/json");
    let b = &g.body;
    assert_eq!(b["stream"], "north");
    assert_eq!(b["source_key"], "raw/north/a.csv");
    assert_eq!(b["output_key"], "processed/north/a.csv");
    assert_eq!(b["processed_at"], s["processed_at"]);
    assert_eq!(b["total_rows"], 301);
    assert_eq!(b["anomaly_count"], s["anomaly_count"]);
    assert_eq!(b["event_count"], s["event_count"]);
    assert_eq!(b["dashboard"], "https://tswatch.example.com:9443/");
    let text = b["text"].as_str().unwrap();
    assert!(
        text.starts_with(":rotating_light: tswatch: ")
            && text.contains(" in raw/north/a.csv (stream north)"),
        "{text}"
    );
    let top = b["top_rows"].as_array().unwrap();
    assert!(!top.is_empty() && top.len() <= 5, "{top:?}");
    for r in top {
        assert!(r["anomaly_score"].as_f64().unwrap() >= 0.5, "{r}");
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    }
    let spike = top
        .iter()
        .find(|r| r["timestamp"] == "2026-01-01T05:00:00Z")
        .unwrap_or_else(|| panic!("the spike is among the top rows: {top:?}"));
    assert_eq!(spike["values"]["temp"], 500.0);
    assert!(
        spike["reason"].as_str().unwrap().contains("temp"),
        "{spike}"
    );
    // The top row's reason is the text's.
    assert!(
        text.ends_with(&format!(": {}", top[0]["reason"].as_str().unwrap())),
        "{text}"
    );

    assert_eq!(metric(&svc, "tswatch_alerts_sent_total", &[]).await, 1.0);
    assert_eq!(metric(&svc, "tswatch_alerts_failed_total", &[]).await, 0.0);
    let l = log(&svc);
    assert!(l.contains("alert sent"), "{l}");
    assert!(
        !l.contains("SECRET-TOKEN"),
        "the URL's query is logged:\n{l}"
    );
    svc.proc.terminate();
}

#[tokio::test]
async fn duplicate_notifications_to_two_instances_alert_each_file_once() {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let bucket = "alerts";
    moto.create_bucket(bucket).await;
    let rx = Receiver::start(&[], 200, Duration::ZERO).await;
    let extra = ["--alert-webhook", rx.url.as_str()];
    let a = serve_s3(&moto, &moto.endpoint, bucket, &extra, &dir).await;
    let b = serve_s3(&moto, &moto.endpoint, bucket, &extra, &dir).await;
    let data = Data::S3(&moto, bucket);
    let keys: Vec<String> = (0..6).map(|i| format!("raw/s{i}/a.csv")).collect();
    let body = with_a_spike();
    for key in &keys {
        data.put(key, &body).await;
        // Each instance is told three times, all at once.
        let posts = [&a, &b, &a, &b, &a, &b]
            .map(|svc| notify(&svc.http, &svc.base, bucket, key))
            .into_iter();
        for st in futures::future::join_all(posts).await {
            assert_eq!(st, Some(200));
        }
    }
    for i in 0..6 {
        let key = format!("processed/s{i}/a_summary.json");
        wait_for(&key, Duration::from_secs(120), || async {
            moto.get_object(bucket, &key).await
        })
        .await;
    }
    rx.wait_requests(keys.len(), Duration::from_secs(60)).await;
    settle().await;
    let got = rx.got();
    let alerted: Vec<&str> = got
        .iter()
        .map(|g| g.body["source_key"].as_str().unwrap())
        .collect();
    let distinct: BTreeSet<&str> = alerted.iter().copied().collect();
    assert_eq!(alerted.len(), keys.len(), "one alert per file: {alerted:?}");
    assert_eq!(distinct, keys.iter().map(String::as_str).collect());
    let sent = [&a, &b].map(|s| log(s).matches("alert sent").count());
    assert_eq!(sent[0] + sent[1], keys.len(), "{sent:?}");
    eprintln!("six files, each notified six times to two instances: alerts sent {sent:?}");
}

/// A service whose webhook (`path` on a port nothing listens on) has an
/// alert for a processed file, failing and being retried.
async fn an_alert_in_its_retries(tmp: &std::path::Path, path: &str) -> (Service, u16) {
    let data = tmp.join("data");
    let port = free_port();
    let svc = serve(
        &data,
        tmp,
        &["--alert-webhook", &format!("http://127.0.0.1:{port}{path}")],
    )
    .await;
    drop_in(&data, "a.csv", with_a_spike().as_bytes());
    summary(&data, "a").await;
    wait_for("a failed attempt", Duration::from_secs(30), || async {
        log(&svc).contains("will retry").then_some(())
    })
    .await;
    (svc, port)
}

#[tokio::test]
async fn a_receiver_that_is_down_at_first_gets_the_alert_after_retries() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens there yet.
    let (svc, port) = an_alert_in_its_retries(tmp.path(), "/down").await;
    assert_eq!(metric(&svc, "tswatch_alerts_sent_total", &[]).await, 0.0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let rx = Receiver::on(listener, &[], 200, Duration::ZERO);
    let got = rx.wait_requests(1, Duration::from_secs(60)).await;
    assert_eq!(got[0].body["source_key"], "raw/a.csv");
    assert_eq!(got[0].body["stream"], "");
    assert!(
        got[0].body["text"]
            .as_str()
            .unwrap()
            .contains("(default stream)")
    );
    settle().await;
    assert_eq!(rx.got().len(), 1);
    wait_for("the sent counter", Duration::from_secs(10), || async {
        (metric(&svc, "tswatch_alerts_sent_total", &[]).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(&svc, "tswatch_alerts_failed_total", &[]).await, 0.0);
    svc.proc.terminate();
}

#[tokio::test]
async fn a_receiver_answering_500_is_retried_and_one_always_failing_is_given_up() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let flaky = Receiver::start(&[500, 500], 200, Duration::ZERO).await;
    let broken = Receiver::start(&[], 500, Duration::ZERO).await;
    // Credentials and a secret path: never logged.
    let broken_url =
        broken.url.replace("http://", "http://user:PASSWORD@") + "/services/SECRET-PATH";
    let both = format!("{},{broken_url}", flaky.url);
    let svc = serve(&data, tmp.path(), &["--alert-webhook", &both]).await;
    drop_in(&data, "a.csv", with_a_spike().as_bytes());
    summary(&data, "a").await;

    // 1 + 2 + 4 + 8 s between the five attempts.
    let got = flaky.wait_requests(3, Duration::from_secs(60)).await;
    broken.wait_requests(5, Duration::from_secs(90)).await;
    wait_for("the failed counter", Duration::from_secs(30), || async {
        (metric(&svc, "tswatch_alerts_failed_total", &[]).await == 1.0).then_some(())
    })
    .await;
    settle().await;
    assert_eq!(flaky.got().len(), 3, "two 500s, then delivered once");
    assert_eq!(broken.got().len(), 5, "five attempts, then given up");
    let ids: BTreeSet<String> = got
        .iter()
        .chain(broken.got().iter())
        .map(|g| g.body["alert_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "every attempt carries the same alert: {ids:?}"
    );
    assert_eq!(metric(&svc, "tswatch_alerts_sent_total", &[]).await, 1.0);
    let l = log(&svc);
    let give_up = l
        .lines()
        .find(|l| l.contains("giving up"))
        .unwrap_or_else(|| panic!("no give-up warning:\n{l}"));
    assert!(give_up.contains("WARN"), "{give_up}");
    assert!(give_up.contains(&broken.url), "names the host: {give_up}");
    for secret in ["PASSWORD", "SECRET-PATH", "user:"] {
        assert!(!l.contains(secret), "{secret} is logged:\n{l}");
    }
    svc.proc.terminate();
}

#[tokio::test]
async fn a_slow_receiver_does_not_slow_processing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Each answer takes 4 s (under the 5 s request timeout).
    let rx = Receiver::start(&[], 200, Duration::from_secs(4)).await;
    let svc = serve(&data, tmp.path(), &["--alert-webhook", &rx.url]).await;
    let body = with_a_spike();
    let started = Instant::now();
    for i in 0..5 {
        drop_in(&data, &format!("s{i}/a.csv"), body.as_bytes());
    }
    for i in 0..5 {
        summary(&data, &format!("s{i}/a")).await;
    }
    let processed = started.elapsed();
    // Were processing waiting on the receiver, one of the two workers would
    // have had three of the five files, and seen two answers before its last.
    let answered = rx.answered();
    assert!(
        answered <= 1,
        "{answered} answers before the last file was done ({processed:?})"
    );
    // All five arrive: four at a time, each answer 4 s.
    wait_for("five answered alerts", Duration::from_secs(60), || async {
        (rx.answered() >= 5).then_some(())
    })
    .await;
    let delivered = started.elapsed();
    settle().await;
    let keys: BTreeSet<String> = rx
        .got()
        .iter()
        .map(|g| g.body["source_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rx.got().len(), 5);
    assert_eq!(keys.len(), 5);
    assert_eq!(metric(&svc, "tswatch_alerts_sent_total", &[]).await, 5.0);
    eprintln!(
        "slow receiver (4 s per answer): 5 files processed in {processed:?}, their alerts delivered after {delivered:?}"
    );
    svc.proc.terminate();
}

#[tokio::test]
async fn alerts_beyond_the_rate_limit_are_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rx = Receiver::start(&[], 200, Duration::ZERO).await;
    let svc = serve(
        &data,
        tmp.path(),
        &["--alert-webhook", &rx.url, "--alert-max-per-minute", "2"],
    )
    .await;
    let body = with_a_spike();
    for i in 0..5 {
        drop_in(&data, &format!("s{i}/a.csv"), body.as_bytes());
    }
    for i in 0..5 {
        summary(&data, &format!("s{i}/a")).await;
    }
    let labels = [("reason", "rate_limit")];
    wait_for("three drops", Duration::from_secs(30), || async {
        (metric(&svc, "tswatch_alerts_dropped_total", &labels).await >= 3.0).then_some(())
    })
    .await;
    rx.wait_requests(2, Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(rx.got().len(), 2, "two a minute");
    assert_eq!(
        metric(&svc, "tswatch_alerts_dropped_total", &labels).await,
        3.0
    );
    assert_eq!(metric(&svc, "tswatch_alerts_sent_total", &[]).await, 2.0);
    let l = log(&svc);
    // Logged once for the three (at most once a minute per webhook).
    assert_eq!(l.matches("alert dropped").count(), 1, "{l}");
    svc.proc.terminate();
}

/// Runs `tswatch serve` with `args`, which must make it exit (killed, and
/// the test failed, if it still runs after 30 s); its stderr.
fn refused(data: &Path, args: &[&str]) -> String {
    let log = data.with_extension("log");
    let mut child = tswatch()
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tswatch serve {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A usage error (docs/configuration.md), from a flag or from the file.
    assert_eq!(status.code(), Some(2), "{args:?}");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn bad_webhook_and_public_urls_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let err = refused(&data, &["--alert-webhook", "ftp://example.com/SECRET"]);
    assert!(
        err.contains("--alert-webhook: only http and https URLs are supported, not ftp:"),
        "{err}"
    );
    assert!(!err.contains("SECRET"), "{err}");
    let err = refused(&data, &["--alert-webhook", "not a url"]);
    assert!(err.contains("--alert-webhook: not a valid URL"), "{err}");
    let err = refused(&data, &["--public-url", "file:///x"]);
    assert!(err.contains("--public-url: only http and https"), "{err}");
    let err = refused(&data, &["--alert-max-per-minute", "0"]);
    assert!(err.contains("--alert-max-per-minute"), "{err}");
    // The same check for the configuration file's list.
    let config = tmp.path().join("alerts.toml");
    std::fs::write(&config, "alert_webhook = [\"ftp://example.com/x\"]\n").unwrap();
    let err = refused(&data, &["--config", config.to_str().unwrap()]);
    assert!(err.contains("only http and https"), "{err}");
}

#[tokio::test]
async fn sigterm_gives_pending_alerts_a_short_grace_then_exits() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing ever listens there: the alert stays in its retries.
    let (svc, _) = an_alert_in_its_retries(tmp.path(), "/").await;
    let started = Instant::now();
    let proc = svc.proc;
    let logfile = proc.log.clone();
    // It exits before the alert's retries run out (checked below by the
    // log); `terminate` fails the test if it ignores SIGTERM.
    let status = proc.terminate();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    let l = strip_ansi(&std::fs::read_to_string(logfile).unwrap());
    assert!(
        l.contains("alert deliveries still in progress at shutdown were abandoned")
            && l.contains("abandoned=1"),
        "{l}"
    );
    assert!(!l.contains("giving up"), "the retries ran out first:\n{l}");
    eprintln!("SIGTERM with an alert in its retries: exited after {took:?}");
}
