//! The conformance suite: exactly once, nothing lost, under every fault,
//! on both backends. Each scenario below is written once, against a
//! [`Store`] (a fresh data directory or a fresh bucket in moto) and the
//! fault injector in front of it (see `stores.rs`: the TCP proxy on S3, the
//! `faultfs.c` LD_PRELOAD shim locally), and [`on_both_backends!`] runs it
//! as `conformance::local::<scenario>` and `conformance::s3::<scenario>`,
//! so a scenario cannot drift between backends:
//!
//! - `duplicates`: every notification delivered five times, with late
//!   repeats, and redeliveries of committed files;
//! - `two_instances`: two services on one store, both notified of everything;
//! - `sigkill`: instances SIGKILLed at random moments while files arrive;
//! - `outage`: storage away for a while under a running service;
//! - `lost_commit`: state commits made whose callers never learn it;
//! - `reconciliation`: files nobody is told about;
//! - `sigterm`: SIGTERM during a large file, with and without grace;
//! - `crash_at_every_write`: the service killed before its 1st, 2nd, ...
//!   write, restarted and left to finish, for every write of a small run.
//!
//! Each ends with [`assert_exactly_once`] (every file applied once, whole
//! outputs that agree, one commit per file, totals and baseline counts that
//! add up); where the order files are applied in is fixed, also with the
//! outputs and baseline of an undisturbed run of the same backend, byte for
//! byte ([`Published`]). Real binary, loopback only; the random moments
//! print their seed (`TSWATCH_FAULT_SEED` replays them).

use crate::faultkit::*;
use crate::harness::*;
use crate::stores::*;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Generates `local::<scenario>` and `s3::<scenario>` tests from each
/// `async fn <scenario>(Backend)`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Backend::Local).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Backend::S3).await
                }
            )*
        }
    };
}

on_both_backends!(
    duplicates,
    two_instances,
    sigkill,
    outage,
    lost_commit,
    reconciliation,
    sigterm,
    crash_at_every_write,
);

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

/// Whatever a crash leaves under `state/` that is not state: staged
/// outputs nobody committed (swept after 24 h).
fn crash_debris(store: &Store, leftovers: Vec<String>) {
    let debris = store.debris(leftovers);
    assert!(
        debris.iter().all(|k| k.starts_with("state/staging/")),
        "{debris:?}"
    );
}

/// Every notification delivered five times (and late repeats of earlier
/// files) ends exactly where one delivery per file does; redeliveries of
/// committed files change nothing.
async fn duplicates(backend: Backend) {
    let (_t, dir) = tmp();
    let store = Store::new(backend, &dir, "dup").await;
    let files = producer_files(12, 100, 11);
    let last = sentinel(11);
    let mut all = files.clone();
    all.push(last.clone());
    let mut runs = Vec::new();
    // The same files, in the same order: notified five times (and late
    // repeats of earlier files), then notified once.
    for copies in [5, 1] {
        let store = store.sibling(&format!("copies{copies}")).await;
        let svc = store.serve(&[]).await;
        let data = store.data();
        for (i, (key, body)) in files.iter().enumerate() {
            data.put(key, body).await;
            let mut keys = vec![key.as_str(); copies];
            if copies > 1 {
                keys.extend(i.checked_sub(1).map(|j| files[j].0.as_str()));
                keys.extend(i.checked_sub(3).map(|j| files[j].0.as_str()));
            }
            let posts = keys.iter().map(|k| store.notify(&svc, k));
            for st in futures::future::join_all(posts).await {
                assert_eq!(st, Some(200));
            }
        }
        data.put(&last.0, &last.1).await;
        assert_eq!(store.notify(&svc, &last.0).await, Some(200));
        wait_done(&svc, &last.0, 1).await;
        if copies > 1 {
            redeliver_committed_files(&store, &svc, &files).await;
        }
        let (exp, leftovers) = assert_exactly_once(&data, &all).await;
        assert_eq!(store.debris(leftovers), Vec::<String>::new());
        assert_api_totals(&svc, exp).await;
        assert_eq!(applied_count(&svc), all.len(), "one application per file");
        runs.push((exp, Published::read(&data, &all).await));
    }
    assert_eq!(runs[0].0, runs[1].0);
    runs[0]
        .1
        .assert_same(&runs[1].1, "five deliveries per file, against one");
}

/// Delivers notifications for files already fully committed and
/// published, one at a time, and checks each changes nothing: first with
/// the summary in place (the "done" marker answers), then with the summary
/// removed, so that only the ledger in `state/engine.json` knows the file
/// was applied: the file must be published again from the ledger (the same
/// summary, byte for byte), never applied a second time.
async fn redeliver_committed_files(store: &Store, svc: &Service, files: &[(String, String)]) {
    let data = store.data();
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
            assert_eq!(store.notify(svc, key).await, Some(200));
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

/// Two instances on one store, both notified of every file at once (and,
/// locally, both watching the folder): each file is applied by exactly
/// one. Which instance wins each race is not fixed, so neither is the
/// order files are applied in: the check is the exactly-once one.
async fn two_instances(backend: Backend) {
    let (_t, dir) = tmp();
    let store = Store::new(backend, &dir, "shared").await;
    let a = store.serve(&[]).await;
    let b = store.serve(&[]).await;
    let data = store.data();
    let mut files = producer_files(30, 100, 21);
    files.push(sentinel(21));
    for (key, body) in &files {
        data.put(key, body).await;
        let (ra, rb) = tokio::join!(store.notify(&a, key), store.notify(&b, key));
        assert_eq!((ra, rb), (Some(200), Some(200)));
    }
    let last = &files[files.len() - 1].0;
    wait_done(&a, last, 1).await;
    wait_done(&b, last, 1).await;
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    assert_eq!(store.debris(leftovers), Vec::<String>::new());
    assert_api_totals(&a, exp).await;
    assert_api_totals(&b, exp).await;
    let (na, nb) = (applied_count(&a), applied_count(&b));
    assert_eq!(
        na + nb,
        files.len(),
        "each file applied by exactly one instance"
    );
    eprintln!("two instances ({backend:?}): {na} + {nb} files applied");
}

/// Instances started and SIGKILLed after a random delay (every other one
/// shortly after it starts on a file) while files keep arriving, notified
/// when someone is up; then one that stays up finishes. Whatever is
/// visible after each kill is whole. Files arriving while nobody is up are
/// found by reconciliation, in no fixed order relative to the notified
/// ones: the check is the exactly-once one.
async fn sigkill(backend: Backend) {
    let kills = env_num("TSWATCH_KILL_TRIALS", 8);
    let seed = fault_seed();
    eprintln!("sigkill ({backend:?}): {kills} kills, TSWATCH_FAULT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let (_t, dir) = tmp();
    let store = Store::new(backend, &dir, "killed").await;
    let data = store.data();
    let files = producer_files(30, 500, 31);
    // The address of the instance up now, if any, for the producer's
    // notifications.
    let up: Mutex<Option<String>> = Mutex::new(None);
    let http = reqwest::Client::new();

    // Files keep arriving (notified when someone is up) while instances are
    // started and killed with SIGKILL after a random delay: spread over
    // about as long as the kills take.
    let pace = Duration::from_millis((kills * 1200 / files.len() as u64).max(100));
    let producer = async {
        for (key, body) in &files {
            data.put(key, body).await;
            let base = up.lock().unwrap().clone();
            if let Some(base) = base {
                store.notify_at(&http, &base, key).await;
            }
            tokio::time::sleep(pace).await;
        }
    };
    let killer = async {
        let (mut in_flight, mut delays) = (0, Vec::new());
        for trial in 0..kills {
            let svc = store.serve(&["--reconcile-interval", "1"]).await;
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

    let svc = store.serve(&["--reconcile-interval", "1"]).await;
    data.wait_summaries(files.len(), Duration::from_secs(120))
        .await;
    let last = sentinel(31);
    data.put(&last.0, &last.1).await;
    store.notify(&svc, &last.0).await;
    wait_done(&svc, &last.0, 1).await;
    let mut all = files.clone();
    all.push(last);
    let partials = store.take_partials();
    let (exp, leftovers) = assert_exactly_once(&data, &all).await;
    assert_api_totals(&svc, exp).await;
    let staged = leftovers.len();
    crash_debris(&store, leftovers);
    eprintln!(
        "sigkill ({backend:?}): {kills} kills (delays {delays:?} ms), {in_flight} while a file \
         was in flight; {} files exact; {staged} leftovers under state/; partial files left: \
         {partials:?}",
        all.len(),
    );
    assert!(
        partials
            .iter()
            .all(|k| k.starts_with("processed/") || k.starts_with("state/staging/")),
        "{partials:?}"
    );
}

/// Storage away for a while (`TSWATCH_OUTAGE_SECS`, 30 s) under a running
/// service while files keep arriving and being notified: it stays alive
/// and says it is not ready, its read endpoints answer from the last state
/// read, marked stale, nothing is written, and once storage is back every
/// file is applied once. Files that failed during the outage are retried
/// and handed to reconciliation in no fixed order: the check is the
/// exactly-once one.
async fn outage(backend: Backend) {
    let outage = Duration::from_secs(env_num("TSWATCH_OUTAGE_SECS", 30));
    let (_t, dir) = tmp();
    let store = Store::new(backend, &dir, "outage").await;
    let svc = store.serve(&["--reconcile-interval", "5"]).await;
    let data = store.data();
    let mut files = producer_files(20, 100, 41);
    files.push(sentinel(41));
    let (before, during) = files.split_at(10);
    for (key, body) in before {
        data.put(key, body).await;
        store.notify(&svc, key).await;
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

    svc.set_down(true);
    let down_at = Instant::now();
    // Files keep arriving and being notified while the store is away.
    for (key, body) in during {
        data.put(key, body).await;
        assert_eq!(store.notify(&svc, key).await, Some(200));
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
    svc.set_down(false);
    let up_at = Instant::now();
    data.wait_summaries(files.len(), Duration::from_secs(240))
        .await;
    assert_eq!(svc.get_json("/ready").await.0, 200);
    let recovered = up_at.elapsed();
    let last = &files[files.len() - 1].0;
    store.notify(&svc, last).await;
    wait_done(&svc, last, 2).await;
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    let staged = leftovers.len();
    crash_debris(&store, leftovers);
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
        "outage ({backend:?}): {:?} down, {polls} polls of /health and 3 read endpoints all \
         answered ({stale} marked stale); all {} files done {:.1?} after the store came back; \
         worker retries {}, given up to reconciliation {}, leftovers under state/ {staged}",
        outage,
        files.len(),
        recovered,
        count("will retry"),
        count("giving up for now"),
    );
}

/// The first three state commits are made and their callers never learn
/// it (on S3 the client resends them and their If-Match fails; locally the
/// rename reports EIO): nothing is lost, nothing applied twice, and the
/// outputs are an undisturbed run's.
async fn lost_commit(backend: Backend) {
    let (_t, dir) = tmp();
    let store = Store::new(backend, &dir, "lossy").await;
    let faults = Faults {
        lose_commits: 3,
        ..Faults::default()
    };
    let svc = store.start(faults, &[], &[]).await;
    let data = store.data();
    let mut files = producer_files(6, 100, 71);
    files.push(sentinel(71));
    for (key, body) in &files {
        data.put(key, body).await;
        store.notify(&svc, key).await;
    }
    // Each file, as a commit that failed (locally) is retried later.
    for (key, _) in &files {
        wait_done(&svc, key, 1).await;
    }
    assert_eq!(svc.lost(), 3, "the fault happened");
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    assert_eq!(store.debris(leftovers), Vec::<String>::new());
    assert_api_totals(&svc, exp).await;
    // Each file was applied (scored and committed) once: logged as such,
    // or, when its commit was made but reported failed (locally), retried
    // and found in the ledger ("already processed"), which publishes it.
    let lines = log_lines(&svc);
    let mut from_ledger = 0;
    for (key, _) in &files {
        let about = |what: &str| {
            let needle = format!("key={key}");
            lines
                .iter()
                .filter(|l| l.contains(&needle) && l.contains(what))
                .count()
        };
        match (
            about(" processed "),
            about("will retry"),
            about("already processed"),
        ) {
            (1, _, _) => {}
            (0, retried, skipped) if retried > 0 && skipped > 0 => from_ledger += 1,
            other => panic!("{key}: (applied, retried, skipped) = {other:?}"),
        }
    }
    let expected = match backend {
        // The client resends the lost PUT; its If-Match fails, and the
        // processor sees its own commit within the same attempt.
        Backend::S3 => 0,
        Backend::Local => 3,
    };
    assert_eq!(from_ledger, expected, "files published from the ledger");
    let (clean, _) = undisturbed(&store, &files).await;
    Published::read(&data, &files)
        .await
        .assert_same(&clean, "lost commit responses");
}

/// Files nobody is told about (no event on S3; locally hard-linked into
/// `raw/`, which the folder watcher does not take, as when its events are
/// lost), one at a time, each after the last is done: found by periodic
/// reconciliation passes (the interval from the environment), not just
/// the one at startup.
async fn reconciliation(backend: Backend) {
    let (_t, dir) = tmp();
    let store = Store::new(backend, &dir, "quiet").await;
    let env = [("TSWATCH_RECONCILE_INTERVAL", "1")];
    let svc = store.start(Faults::default(), &[], &env).await;
    let data = store.data();
    let mut files = producer_files(3, 100, 51);
    files.push(sentinel(51));
    for (i, (key, body)) in files.iter().enumerate() {
        store.put_quietly(key, body).await;
        data.wait_summaries(i + 1, Duration::from_secs(30)).await;
    }
    wait_done(&svc, &files[files.len() - 1].0, 1).await;
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    assert_eq!(store.debris(leftovers), Vec::<String>::new());
    assert_api_totals(&svc, exp).await;
    let found = log_lines(&svc)
        .iter()
        .filter(|l| l.contains("reconciliation queued unprocessed files"))
        .count();
    assert!(found >= files.len(), "{found} reconciliation finds");
    let (clean, _) = undisturbed(&store, &files).await;
    Published::read(&data, &files)
        .await
        .assert_same(&clean, "files found by reconciliation");
}

/// Sends SIGTERM without waiting for the exit.
fn sigterm_to(svc: &Service) {
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

/// SIGTERM while a large file is being scored: with time to spare
/// (`--shutdown-grace 60`) the file in hand is finished before the exit;
/// with none it is abandoned, nothing of it visible; both exit 0. After a
/// restart the abandoned file is done, once, as an undisturbed run does it.
async fn sigterm(backend: Backend) {
    let (_t, dir) = tmp();
    let store = Store::new(backend, &dir, "term").await;
    let data = store.data();
    // 40,000 rows (1.7 MB): seconds of scoring in a debug build.
    let big = producer_files(2, 40_000, 61);
    let (k1, k2) = (big[0].0.as_str(), big[1].0.as_str());

    // With time to spare, the file in hand is finished before the exit.
    let svc = store.serve(&["--shutdown-grace", "60"]).await;
    data.put(k1, &big[0].1).await;
    store.notify(&svc, k1).await;
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
    sigterm_to(&svc);
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
    let status = svc.terminate().await;
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
    let svc = store.serve(&["--shutdown-grace", "0"]).await;
    data.put(k2, &big[1].1).await;
    store.notify(&svc, k2).await;
    wait_log(
        &svc,
        "work on the second file",
        &format!("processing key={k2}"),
    )
    .await;
    assert!(!finished(&svc, k2), "{k2} was done before SIGTERM");
    let log = svc.proc.log.clone();
    let status = svc.terminate().await;
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
    let svc = store.serve(&["--reconcile-interval", "1"]).await;
    data.wait_summaries(2, Duration::from_secs(120)).await;
    let last = sentinel(61);
    data.put(&last.0, &last.1).await;
    store.notify(&svc, &last.0).await;
    wait_done(&svc, &last.0, 1).await;
    let mut all = big.clone();
    all.push(last);
    let (exp, leftovers) = assert_exactly_once(&data, &all).await;
    crash_debris(&store, leftovers);
    assert_api_totals(&svc, exp).await;
    let (clean, _) = undisturbed(&store, &all).await;
    Published::read(&data, &all)
        .await
        .assert_same(&clean, "a file abandoned on SIGTERM, redone");
}

/// The service is killed (SIGKILL) just before its N-th write, for N = 1,
/// 2, ... until a run finishes without reaching N: on S3 the proxy kills
/// it as the N-th PUT/POST/DELETE reaches it, locally `faultfs.c` as it is
/// about to make its N-th mutating file-system call. Files are fed one at
/// a time (so the order they are applied in is fixed); after a crash a
/// fresh instance without the fault takes over from the file in hand.
/// Every run must end as the undisturbed one does, byte for byte. Two
/// small files: one that creates the state, one that updates it (the
/// in-process `crashtest.rs` goes through more, faster).
async fn crash_at_every_write(backend: Backend) {
    let started = Instant::now();
    let (_t, dir) = tmp();
    let store = Store::new(backend, &dir, "crash").await;
    let files = producer_files(2, 50, 91);
    let (clean, writes) = undisturbed(&store, &files).await;
    let mut partials = Vec::new();
    let mut n = 1;
    loop {
        let s = store.sibling(&format!("at{n}")).await;
        let data = s.data();
        let faults = Faults {
            crash_at: Some(n),
            ..Faults::default()
        };
        let mut inst = s.start(faults, &[], &[]).await;
        // The index of the file in hand when it died, if it did.
        let mut died_on = None;
        for (i, (key, body)) in files.iter().enumerate() {
            data.put(key, body).await;
            if !inst.up_or_dead().await {
                died_on = Some(i);
                break;
            }
            let _ = s.notify(&inst, key).await;
            if !inst.done_or_dead(key).await {
                died_on = Some(i);
                break;
            }
        }
        let Some(from) = died_on else {
            assert!(inst.writes() < n, "finished, yet reached write {n}");
            break;
        };
        drop(inst);
        assert_visible_outputs_whole(&data).await;
        let inst = s.serve(&[]).await;
        for (i, (key, body)) in files.iter().enumerate().skip(from) {
            if i > from {
                data.put(key, body).await;
            }
            assert_eq!(s.notify(&inst, key).await, Some(200));
            wait_done(&inst, key, 1).await;
        }
        partials.extend(s.take_partials());
        let (exp, leftovers) = assert_exactly_once(&data, &files).await;
        crash_debris(&s, leftovers);
        assert_api_totals(&inst, exp).await;
        Published::read(&data, &files)
            .await
            .assert_same(&clean, &format!("crash before write {n}"));
        n += 1;
    }
    eprintln!(
        "crash at every write ({backend:?}): {} crashes, each run ended as the undisturbed one \
         ({writes} writes); {:.1?}; partial files left: {partials:?}",
        n - 1,
        started.elapsed()
    );
    assert!(
        partials
            .iter()
            .all(|k| k.starts_with("processed/") || k.starts_with("state/staging/")),
        "{partials:?}"
    );
}
