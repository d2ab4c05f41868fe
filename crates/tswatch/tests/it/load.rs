//! Sustained concurrent load on `/notify` and the read endpoints, from this
//! process to the real binary on loopback, while the notified files are
//! being processed. Bounded in requests and time. Figures are printed, never
//! asserted; what is asserted is zero errors and every notified file applied
//! exactly once.
//!
//! `load_small` runs in the suite; `load_full` is the measurement
//! (`scripts/load`, sizes from `TSWATCH_LOAD_REQUESTS`,
//! `TSWATCH_LOAD_CONCURRENCY`, `TSWATCH_LOAD_FILES`).

use crate::faultkit::*;
use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Notify,
    Read,
}

/// Latency percentile (nearest rank) of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn run(label: &str, requests: usize, concurrency: usize, n_files: usize) {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let bucket = "load";
    moto.create_bucket(bucket).await;
    // Reconciliation out of the way: files are processed because they are notified.
    let svc = serve_s3(
        &moto,
        &moto.endpoint,
        bucket,
        &["--reconcile-interval", "3600"],
        &dir,
    )
    .await;
    let data = Data::S3(&moto, bucket);
    let mut files = producer_files(n_files, 100, 81);
    for (key, body) in &files {
        data.put(key, body).await;
    }
    let keys: Arc<Vec<String>> = Arc::new(files.iter().map(|(k, _)| k.clone()).collect());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let next_file = Arc::new(AtomicUsize::new(0));
    let per_task = requests.div_ceil(concurrency);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (client, base, keys, next_file) = (
            client.clone(),
            svc.base.clone(),
            keys.clone(),
            next_file.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_task);
            let mut errors = Vec::new();
            for j in 0..per_task {
                // 20% notifications (round robin over the files), 80% reads.
                let (kind, req) = match (t + j) % 10 {
                    0 | 1 => {
                        let k = &keys[next_file.fetch_add(1, Ordering::Relaxed) % keys.len()];
                        (
                            Kind::Notify,
                            client
                                .post(format!("{base}/notify"))
                                .header("content-type", "text/plain; charset=UTF-8")
                                .body(sns_s3_event(bucket, &[k])),
                        )
                    }
                    2..=4 => (Kind::Read, client.get(format!("{base}/anomalies/summary"))),
                    5 | 6 => (
                        Kind::Read,
                        client.get(format!("{base}/anomalies/recent?limit=50")),
                    ),
                    7 | 8 => (Kind::Read, client.get(format!("{base}/baseline/current"))),
                    _ => (Kind::Read, client.get(format!("{base}/health"))),
                };
                let t0 = Instant::now();
                let r = req.send().await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    Ok(r) => {
                        errors.push(format!("status {}", r.status()));
                        false
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        false
                    }
                };
                if ok {
                    samples.push((kind, t0.elapsed()));
                }
            }
            (samples, errors)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (s, e) = t.await.unwrap();
        samples.extend(s);
        errors.extend(e);
    }
    let elapsed = started.elapsed();
    let total = samples.len() + errors.len();
    assert!(
        errors.is_empty(),
        "{} of {total} requests failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let stats = |k: Option<Kind>| {
        let mut v: Vec<Duration> = samples
            .iter()
            .filter(|(kind, _)| k.is_none_or(|k| k == *kind))
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        format!(
            "n={} p50={} p99={} max={}",
            v.len(),
            ms(pct(&v, 50.0)),
            ms(pct(&v, 99.0)),
            ms(v.last().copied().unwrap_or_default())
        )
    };
    let notified = next_file.load(Ordering::Relaxed);
    eprintln!(
        "load[{label}]: {total} requests, {concurrency} connections, {:.2?}: {:.0} req/s, 0 errors\n\
         load[{label}]: all      {}\n\
         load[{label}]: /notify  {}\n\
         load[{label}]: reads    {}",
        elapsed,
        total as f64 / elapsed.as_secs_f64(),
        stats(None),
        stats(Some(Kind::Notify)),
        stats(Some(Kind::Read)),
    );
    assert!(notified >= n_files, "every file was notified at least once");

    // Nothing lost, nothing doubled.
    let drain = Instant::now();
    data.wait_summaries(n_files, Duration::from_secs(600)).await;
    let last = sentinel(81);
    data.put(&last.0, &last.1).await;
    notify(&svc.http, &svc.base, bucket, &last.0).await;
    wait_done(&svc, &last.0, 1).await;
    files.push(last);
    let (exp, leftovers) = assert_exactly_once(&data, &files).await;
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_api_totals(&svc, exp).await;
    eprintln!(
        "load[{label}]: {n_files} files notified {notified} times in all, each applied once \
         ({:.1?} after the load to finish processing)",
        drain.elapsed()
    );
}

#[tokio::test]
async fn load_small() {
    run("small", 4_000, 16, 60).await;
}

/// The measurement behind the load figures in docs/architecture.md: `scripts/load`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check: run with scripts/load"]
async fn load_full() {
    run(
        "full",
        env_num("TSWATCH_LOAD_REQUESTS", 100_000) as usize,
        env_num("TSWATCH_LOAD_CONCURRENCY", 64) as usize,
        env_num("TSWATCH_LOAD_FILES", 300) as usize,
    )
    .await;
}
