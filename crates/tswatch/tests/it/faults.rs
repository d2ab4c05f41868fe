//! Exactly once, nothing lost, under injected faults: duplicate deliveries,
//! two instances on one bucket or data directory, SIGKILL at random
//! moments, the object store unreachable, a lost response to the state
//! commit, a lost notification, SIGTERM during a large file. Each runs the
//! real binary against a real moto server (or a real data directory) and
//! checks the result with [`assert_exactly_once`].

use crate::faultkit::*;
use crate::harness::*;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn without_time(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("last_updated");
    v
}

/// Lines of `svc`'s log (colours removed).
fn log_lines(svc: &Service) -> Vec<String> {
    strip_ansi(&svc.proc.log_text())
        .lines()
        .map(str::to_string)
        .collect()
}

/// How many files `svc` applied (not skipped as already applied).
fn applied_count(svc: &Service) -> usize {
    log_lines(svc)
        .iter()
        .filter(|l| l.contains(" processed ") && l.contains("rows="))
        .count()
}

#[tokio::test]
async fn five_deliveries_of_every_notification_count_once() {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let files = producer_files(12, 100, 11);
    let last = sentinel(11);
    let mut all = files.clone();
    all.push(last.clone());
    let mut runs = Vec::new();
    // The same files, in the same order: notified five times (and late
    // repeats of earlier files), then notified once.
    for (bucket, copies) in [("dup", 5), ("clean", 1)] {
        moto.create_bucket(bucket).await;
        let svc = serve_s3(&moto, &moto.endpoint, bucket, &[], &dir).await;
        let data = Data::S3(&moto, bucket);
        for (i, (key, body)) in files.iter().enumerate() {
            data.put(key, body).await;
            let mut keys = vec![key.as_str(); copies];
            if copies > 1 {
                keys.extend(i.checked_sub(1).map(|j| files[j].0.as_str()));
                keys.extend(i.checked_sub(3).map(|j| files[j].0.as_str()));
            }
            let posts = keys.iter().map(|k| notify(&svc.http, &svc.base, bucket, k));
            for st in futures::future::join_all(posts).await {
                assert_eq!(st, Some(200));
            }
        }
        data.put(&last.0, &last.1).await;
        assert_eq!(
            notify(&svc.http, &svc.base, bucket, &last.0).await,
            Some(200)
        );
        wait_done(&svc, &last.0, 1).await;
        if copies > 1 {
            redeliver_committed_files(&svc, &data, &files).await;
        }
        let (exp, leftovers) = assert_exactly_once(&data, &all).await;
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_api_totals(&svc, exp).await;
        assert_eq!(applied_count(&svc), all.len(), "one application per file");
        let baseline = without_time(data.json("state/baseline.json").await.unwrap());
        runs.push((exp, baseline));
    }
    assert_eq!(
        runs[0], runs[1],
        "five deliveries per file end exactly where one delivery does"
    );
}

/// How many times `svc` has taken `key` from its queue and finished it
/// (applied, skipped or rejected: it logs each).
fn handled(svc: &Service, key: &str) -> usize {
    let needle = format!("key={key}");
    log_lines(svc)
        .iter()
        .filter(|l| {
            l.contains(&needle) && (l.contains("processed") || l.contains("rejected input file"))
        })
        .count()
}

/// Delivers notifications for files already fully committed and
/// published, one at a time, and checks each changes nothing: first with
/// the summary in place (the "done" marker answers), then with the summary
/// removed, so that only the ledger in `state/engine.json` knows the file
/// was applied: the file must be published again from the ledger (the same
/// summary, byte for byte), never applied a second time.
async fn redeliver_committed_files(svc: &Service, data: &Data<'_>, files: &[(String, String)]) {
    let engine = data.get("state/engine.json").await.unwrap();
    let applied = applied_count(svc);
    for (key, _) in files.iter().take(3) {
        let summary_key = format!("processed/{}_summary.json", stem(key));
        let summary = data.get(&summary_key).await.unwrap();
        for marker in [true, false] {
            if !marker {
                data.delete(&summary_key).await;
                assert!(data.get(&summary_key).await.is_none());
            }
            let n = handled(svc, key);
            assert_eq!(
                notify(&svc.http, &svc.base, data_bucket(data), key).await,
                Some(200)
            );
            wait_for(
                "the redelivery handled",
                Duration::from_secs(60),
                || async { (handled(svc, key) > n).then_some(()) },
            )
            .await;
            let again = data.get(&summary_key).await.map(String::from_utf8);
            assert_eq!(
                again,
                Some(String::from_utf8(summary.clone())),
                "{key}: the summary (marker {marker}) is the committed one"
            );
        }
    }
    assert!(
        data.get("state/engine.json").await.unwrap() == engine,
        "a redelivery committed something"
    );
    assert_eq!(applied_count(svc), applied, "no redelivery was applied");
}

/// The bucket of an S3 data location.
fn data_bucket<'a>(data: &Data<'a>) -> &'a str {
    match data {
        Data::S3(_, b) => b,
        Data::Local(_) => panic!("an S3 location"),
    }
}

#[tokio::test]
async fn two_instances_on_one_bucket_apply_each_file_once() {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let bucket = "shared";
    moto.create_bucket(bucket).await;
    let a = serve_s3(&moto, &moto.endpoint, bucket, &[], &dir).await;
    let b = serve_s3(&moto, &moto.endpoint, bucket, &[], &dir).await;
    let data = Data::S3(&moto, bucket);
    let mut files = producer_files(30, 100, 21);
    files.push(sentinel(21));
    for (key, body) in &files {
        data.put(key, body).await;
        let (ra, rb) = tokio::join!(
            notify(&a.http, &a.base, bucket, key),
            notify(&b.http, &b.base, bucket, key)
        );
        assert_eq!((ra, rb), (Some(200), Some(200)));
    }
    let last = &files[files.len() - 1].0;
    wait_done(&a, last, 1).await;
    wait_done(&b, last, 1).await;
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_api_totals(&a, exp).await;
    assert_api_totals(&b, exp).await;
    let (na, nb) = (applied_count(&a), applied_count(&b));
    assert_eq!(
        na + nb,
        files.len(),
        "each file applied by exactly one instance"
    );
    eprintln!("two instances on S3: {na} + {nb} files applied");
}

#[tokio::test]
async fn two_instances_on_one_data_directory_apply_each_file_once() {
    let (_t, dir) = tmp();
    let root = dir.join("data");
    let a = serve_local(&root, &[], &dir).await;
    let b = serve_local(&root, &[], &dir).await;
    let data = Data::Local(&root);
    let mut files = producer_files(30, 100, 22);
    files.push(sentinel(22));
    // Both instances watch the folder: each sees every file.
    for (key, body) in &files {
        data.put(key, body).await;
    }
    let last = &files[files.len() - 1].0;
    wait_done(&a, last, 1).await;
    wait_done(&b, last, 1).await;
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    // The lock files of the local compare-and-swap.
    assert_eq!(leftovers, ["state/baseline.lock", "state/engine.lock"]);
    assert_api_totals(&a, exp).await;
    assert_api_totals(&b, exp).await;
    let (na, nb) = (applied_count(&a), applied_count(&b));
    assert_eq!(
        na + nb,
        files.len(),
        "each file applied by exactly one instance"
    );
    eprintln!("two instances on a data directory: {na} + {nb} files applied");
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let kills = env_num("TSWATCH_KILL_TRIALS", 8);
    let seed = fault_seed();
    eprintln!("sigkill: {kills} kills, TSWATCH_FAULT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let bucket = "killed";
    moto.create_bucket(bucket).await;
    let data = Data::S3(&moto, bucket);
    let files = producer_files(30, 500, 31);
    let http = reqwest::Client::new();
    // The instance up now, if any, for the producer's notifications.
    let up: Mutex<Option<String>> = Mutex::new(None);

    // Files keep arriving (notified when someone is up) while instances are
    // started and killed with SIGKILL after a random delay: spread over
    // about as long as the kills take.
    let pace = Duration::from_millis((kills * 1200 / files.len() as u64).max(100));
    let producer = async {
        for (key, body) in &files {
            data.put(key, body).await;
            let base = up.lock().unwrap().clone();
            if let Some(base) = base {
                notify(&http, &base, bucket, key).await;
            }
            tokio::time::sleep(pace).await;
        }
    };
    let killer = async {
        let (mut in_flight, mut delays) = (0, Vec::new());
        for trial in 0..kills {
            let svc = serve_s3(
                &moto,
                &moto.endpoint,
                bucket,
                &["--reconcile-interval", "1"],
                &dir,
            )
            .await;
            *up.lock().unwrap() = Some(svc.base.clone());
            // Every other kill aims at work in progress: shortly after the
            // instance starts on a file (if it does within 5 s).
            let aimed = trial % 2 == 1
                && tokio::time::timeout(Duration::from_secs(5), async {
                    while !log_lines(&svc).iter().any(|l| l.contains(" processing ")) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .is_ok();
            let delay = rng.below(if aimed { 300 } else { 1500 });
            delays.push(delay);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            *up.lock().unwrap() = None;
            let lines = log_lines(&svc);
            drop(svc); // SIGKILL
            let last_start = lines.iter().rposition(|l| l.contains(" processing "));
            let last_end = lines
                .iter()
                .rposition(|l| l.contains(" processed ") || l.contains("already processed"));
            if last_start > last_end {
                in_flight += 1;
            }
            // Whatever is visible after a kill is whole.
            assert_visible_outputs_whole(&data).await;
        }
        (in_flight, delays)
    };
    let ((), (in_flight, delays)) = tokio::join!(producer, killer);

    let svc = serve_s3(
        &moto,
        &moto.endpoint,
        bucket,
        &["--reconcile-interval", "1"],
        &dir,
    )
    .await;
    data.wait_summaries(files.len(), Duration::from_secs(120))
        .await;
    let last = sentinel(31);
    data.put(&last.0, &last.1).await;
    notify(&svc.http, &svc.base, bucket, &last.0).await;
    wait_done(&svc, &last.0, 1).await;
    let mut all = files.clone();
    all.push(last);
    let (exp, leftovers) = assert_exactly_once(&data, &all).await;
    assert_api_totals(&svc, exp).await;
    assert!(
        leftovers.iter().all(|k| k.starts_with("state/staging/")),
        "{leftovers:?}"
    );
    eprintln!(
        "sigkill: {kills} kills (delays {delays:?} ms), {in_flight} while a file was in flight; \
         {} files exact; {} staged leftovers (swept after 24 h)",
        all.len(),
        leftovers.len()
    );
}

#[tokio::test]
async fn object_store_outage_is_ridden_out() {
    let outage = Duration::from_secs(env_num("TSWATCH_OUTAGE_SECS", 30));
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let bucket = "outage";
    moto.create_bucket(bucket).await;
    let proxy = Proxy::start(&moto.endpoint).await;
    let svc = serve_s3(
        &moto,
        &proxy.endpoint,
        bucket,
        &["--reconcile-interval", "5"],
        &dir,
    )
    .await;
    let data = Data::S3(&moto, bucket); // direct, not through the proxy
    let mut files = producer_files(20, 100, 41);
    files.push(sentinel(41));
    let (before, during) = files.split_at(10);
    for (key, body) in before {
        data.put(key, body).await;
        notify(&svc.http, &svc.base, bucket, key).await;
    }
    data.wait_summaries(10, Duration::from_secs(60)).await;
    let (st, s) = svc.get_json("/anomalies/summary").await;
    assert_eq!((st, &s["files_processed"]), (200, &Value::from(10)));
    let (st, r) = svc.get_json("/ready").await;
    assert_eq!(
        (st, &r["status"], &r["storage"]["reachable"]),
        (200, &json!("ready"), &json!(true)),
        "{r}"
    );

    proxy.set_down(true);
    let down_at = Instant::now();
    // Files keep arriving and being notified while the store is away.
    for (key, body) in during {
        data.put(key, body).await;
        assert_eq!(notify(&svc.http, &svc.base, bucket, key).await, Some(200));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (mut polls, mut stale) = (0, 0);
    while down_at.elapsed() < outage {
        let h = client
            .get(format!("{}/health", svc.base))
            .send()
            .await
            .unwrap();
        assert_eq!(h.status().as_u16(), 200);
        // Alive, but not ready: storage does not answer.
        let r = client
            .get(format!("{}/ready", svc.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503);
        let r: Value = r.json().await.unwrap();
        assert_eq!(
            (&r["status"], &r["storage"]["reachable"]),
            (&json!("not ready"), &json!(false)),
            "{r}"
        );
        assert!(
            r["storage"]["error"].is_string() && r["queue"]["waiting"].is_u64(),
            "{r}"
        );
        // Read endpoints answer from the last state read, marked stale.
        for path in [
            "/anomalies/summary",
            "/baseline/current",
            "/anomalies/recent",
        ] {
            let r = client
                .get(format!("{}{path}", svc.base))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path} during the outage: {e}"));
            assert_eq!(r.status().as_u16(), 200, "{path}");
            stale += usize::from(r.headers().contains_key("x-tswatch-stale-seconds"));
            let body: Value = r.json().await.unwrap();
            if path == "/anomalies/summary" {
                assert_eq!(body["files_processed"], 10);
            }
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(stale > 0, "stale answers are marked as such");
    assert_eq!(
        data.summaries().await.len(),
        10,
        "nothing could be written while the store was away"
    );
    proxy.set_down(false);
    let up_at = Instant::now();
    data.wait_summaries(files.len(), Duration::from_secs(240))
        .await;
    assert_eq!(svc.get_json("/ready").await.0, 200);
    let recovered = up_at.elapsed();
    let last = &files[files.len() - 1].0;
    notify(&svc.http, &svc.base, bucket, last).await;
    wait_done(&svc, last, 2).await;
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    assert!(
        leftovers.iter().all(|k| k.starts_with("state/staging/")),
        "{leftovers:?}"
    );
    assert_api_totals(&svc, exp).await;
    wait_for("fresh reads again", Duration::from_secs(10), || async {
        let r = client
            .get(format!("{}/anomalies/summary", svc.base))
            .send()
            .await
            .ok()?;
        (!r.headers().contains_key("x-tswatch-stale-seconds")).then_some(())
    })
    .await;
    let lines = log_lines(&svc);
    let count = |s: &str| lines.iter().filter(|l| l.contains(s)).count();
    eprintln!(
        "outage: {:?} down, {polls} polls of /health and 3 read endpoints all answered \
         ({stale} marked stale); all {} files done {:.1?} after the store came back; \
         worker retries {}, given up to reconciliation {}, staged leftovers {}",
        outage,
        files.len(),
        recovered,
        count("will retry"),
        count("giving up for now"),
        leftovers.len()
    );
}

#[tokio::test]
async fn a_lost_commit_response_neither_loses_nor_doubles_a_file() {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let bucket = "lossy";
    moto.create_bucket(bucket).await;
    let proxy = Proxy::start(&moto.endpoint).await;
    let svc = serve_s3(&moto, &proxy.endpoint, bucket, &[], &dir).await;
    // The store applies these commits; tswatch never hears back, and its
    // client resends them (then their If-Match fails: 412).
    proxy.lose_responses(&format!("PUT /{bucket}/state/engine.json "), 3);
    let data = Data::S3(&moto, bucket);
    let mut files = producer_files(6, 100, 71);
    files.push(sentinel(71));
    for (key, body) in &files {
        data.put(key, body).await;
        notify(&svc.http, &svc.base, bucket, key).await;
    }
    wait_done(&svc, &files[files.len() - 1].0, 1).await;
    assert_eq!(proxy.lost(), 3, "the fault happened");
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_api_totals(&svc, exp).await;
    assert_eq!(applied_count(&svc), files.len());
}

#[tokio::test]
async fn files_without_a_notification_are_found_by_reconciliation() {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let bucket = "quiet";
    moto.create_bucket(bucket).await;
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, bucket);
    // The interval from the environment this time (the flag elsewhere).
    cmd.env("TSWATCH_RECONCILE_INTERVAL", "1");
    let svc = Service::start(cmd, &[], &dir).await;
    let data = Data::S3(&moto, bucket);
    let mut files = producer_files(3, 100, 51);
    files.push(sentinel(51));
    // One at a time, each after the last is done: found by periodic passes,
    // not just the one at startup. Nothing is ever notified.
    for (i, (key, body)) in files.iter().enumerate() {
        data.put(key, body).await;
        data.wait_summaries(i + 1, Duration::from_secs(30)).await;
    }
    wait_done(&svc, &files[files.len() - 1].0, 1).await;
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_api_totals(&svc, exp).await;
    let found = log_lines(&svc)
        .iter()
        .filter(|l| l.contains("reconciliation queued unprocessed files"))
        .count();
    assert!(found >= files.len(), "{found} reconciliation finds");
}

/// Sends SIGTERM without waiting for the exit.
fn sigterm(svc: &Service) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &svc.proc.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn wait_log(svc: &Service, what: &str, needle: &str) {
    wait_for(what, Duration::from_secs(60), || async {
        log_lines(svc)
            .iter()
            .any(|l| l.contains(needle))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_during_a_large_file_finishes_or_abandons_it_cleanly() {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let bucket = "term";
    moto.create_bucket(bucket).await;
    let data = Data::S3(&moto, bucket);
    // 40,000 rows (1.7 MB): seconds of scoring in a debug build.
    let big = producer_files(2, 40_000, 61);
    let (k1, k2) = (big[0].0.as_str(), big[1].0.as_str());

    // With time to spare, the file in hand is finished before the exit.
    let svc = serve_s3(
        &moto,
        &moto.endpoint,
        bucket,
        &["--shutdown-grace", "60"],
        &dir,
    )
    .await;
    data.put(k1, &big[0].1).await;
    notify(&svc.http, &svc.base, bucket, k1).await;
    wait_log(
        &svc,
        "work on the large file",
        &format!("processing key={k1}"),
    )
    .await;
    // The precondition: the file is still in flight as SIGTERM is sent
    // (not finished, nothing of it out). The log checked after the exit
    // confirms the shutdown began before the file was finished.
    let finished = |svc: &Service, k: &str| {
        log_lines(svc)
            .iter()
            .any(|l| l.contains(&format!("processed key={k}")))
    };
    assert!(!finished(&svc, k1), "{k1} was done before SIGTERM");
    assert!(data.summaries().await.is_empty());
    sigterm(&svc);
    // It stops taking requests at once, while it finishes the file.
    wait_for(
        "new connections refused",
        Duration::from_secs(20),
        || async {
            reqwest::get(format!("{}/health", svc.base))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let log = svc.proc.log.clone();
    let status = svc.proc.terminate();
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    let text = strip_ansi(&std::fs::read_to_string(log).unwrap());
    let stop = text.find("shutting down").unwrap();
    let done = text
        .find(&format!("processed key={k1}"))
        .expect("the file in hand was finished");
    assert!(done > stop, "it was in flight when the shutdown began");
    assert_visible_outputs_whole(&data).await;
    assert_eq!(data.summaries().await.len(), 1);

    // With no grace, the file in hand is abandoned: exit 0, nothing of it visible.
    let svc = serve_s3(
        &moto,
        &moto.endpoint,
        bucket,
        &["--shutdown-grace", "0"],
        &dir,
    )
    .await;
    data.put(k2, &big[1].1).await;
    notify(&svc.http, &svc.base, bucket, k2).await;
    wait_log(
        &svc,
        "work on the second file",
        &format!("processing key={k2}"),
    )
    .await;
    assert!(!finished(&svc, k2), "{k2} was done before SIGTERM");
    let log = svc.proc.log.clone();
    let status = svc.proc.terminate();
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    let text = strip_ansi(&std::fs::read_to_string(log).unwrap());
    assert!(text.contains("abandoning the file in hand"), "{text}");
    let name = stem(k2);
    assert!(
        data.get(&format!("processed/{name}_summary.json"))
            .await
            .is_none()
    );
    assert!(data.get(&format!("processed/{name}.csv")).await.is_none());
    assert_visible_outputs_whole(&data).await;

    // After a restart the abandoned file is done, once.
    let svc = serve_s3(
        &moto,
        &moto.endpoint,
        bucket,
        &["--reconcile-interval", "1"],
        &dir,
    )
    .await;
    data.wait_summaries(2, Duration::from_secs(120)).await;
    let last = sentinel(61);
    data.put(&last.0, &last.1).await;
    notify(&svc.http, &svc.base, bucket, &last.0).await;
    wait_done(&svc, &last.0, 1).await;
    let mut all = big.clone();
    all.push(last);
    let (exp, leftovers) = assert_exactly_once(&data, &all).await;
    assert!(
        leftovers.iter().all(|k| k.starts_with("state/staging/")),
        "{leftovers:?}"
    );
    assert_api_totals(&svc, exp).await;
}
