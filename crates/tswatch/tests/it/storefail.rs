//! A storage failure never rejects a file: a disk that fills while the
//! scored copy is written, an S3 multipart upload whose connection dies on
//! a later part, or a download of the input cut mid-body, makes the attempt
//! fail and be retried (logged and counted as a retry), never an
//! `_error.json`; once storage recovers the
//! same running service applies the file, once, with exactly the bytes an
//! undisturbed run writes. Real binary, real data directory or moto.

use crate::faultkit::*;
use crate::harness::*;
use crate::metrics::{scrape, value};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Producer batches of the given sizes, one stream, in time order.
fn batches(seed: u64, rows: &[usize]) -> Vec<(String, String)> {
    let mut sc = tswatch::eval::scenario::Scenario::new("seed", seed, 1_770_000_000.0).unwrap();
    rows.iter()
        .map(|&n| {
            let (csv, _, first) = sc.batch(n);
            (tswatch::eval::scenario::batch_key("sensors", first), csv)
        })
        .collect()
}

/// The outputs (scored copy, summary) of `key` after an undisturbed run of
/// `files` on S3, in a bucket of their own, by a service stopped after.
async fn undisturbed_on_s3(
    moto: &Moto,
    files: &[(String, String)],
    key: &str,
    dir: &Path,
) -> (Vec<u8>, Value) {
    moto.create_bucket("undisturbed").await;
    let svc = serve_s3(moto, &moto.endpoint, "undisturbed", &[], dir).await;
    let data = Data::S3(moto, "undisturbed");
    process_in_turn(&data, files, Some(&svc)).await;
    outputs(&data, key).await
}

/// Puts each file in turn, waiting for its summary: the undisturbed run.
async fn process_in_turn(data: &Data<'_>, files: &[(String, String)], notify_to: Option<&Service>) {
    for (i, (key, body)) in files.iter().enumerate() {
        data.put(key, body).await;
        if let Some(svc) = notify_to {
            assert_eq!(
                notify(&svc.http, &svc.base, bucket_of(data), key).await,
                Some(200)
            );
        }
        data.wait_summaries(i + 1, Duration::from_secs(180)).await;
    }
}

fn bucket_of<'a>(data: &Data<'a>) -> &'a str {
    match data {
        Data::S3(_, b) => b,
        Data::Local(_) => "",
    }
}

/// Log lines of `svc` about `key` (colours removed).
fn lines_about(svc: &Service, key: &str) -> Vec<String> {
    strip_ansi(&svc.proc.log_text())
        .lines()
        .filter(|l| l.contains(key))
        .map(str::to_string)
        .collect()
}

/// Waits until `svc` has failed on `key` and scheduled a retry `times`
/// times, each time for a reason containing `cause`.
async fn wait_retries(svc: &Service, key: &str, cause: &str, times: usize) {
    let started = std::time::Instant::now();
    let seen = wait_for(
        &format!("{times} retries of {key} for {cause:?}"),
        Duration::from_secs(180),
        || async {
            let lines = lines_about(svc, key);
            if let Some(l) = lines.iter().find(|l| l.contains("rejected input file")) {
                panic!("rejected for a storage failure, not retried: {l}");
            }
            let seen: Vec<String> = lines
                .into_iter()
                .filter(|l| l.contains("will retry") && l.contains(cause))
                .collect();
            (seen.len() >= times).then_some(seen)
        },
    )
    .await;
    eprintln!(
        "{times} retries after {:.1?}; the first: {}",
        started.elapsed(),
        seen[0]
    );
}

/// Everything that must hold while storage fails under `key`: not
/// rejected (no `_error.json`, no rejection logged or counted, not in the
/// ledger), nothing of it published, and the failures counted as retries.
async fn assert_retried_not_rejected(svc: &Service, data: &Data<'_>, key: &str) {
    let name = stem(key);
    for out in [
        format!("processed/{name}_error.json"),
        format!("processed/{name}_summary.json"),
        format!("processed/{name}.csv"),
    ] {
        assert!(
            data.get(&out).await.is_none(),
            "{out} exists during the failure"
        );
    }
    let engine = data.json("state/engine.json").await.unwrap();
    assert_eq!(engine["seq"], 1, "only the first file is committed");
    assert!(
        !engine.to_string().contains(key),
        "{key} is in the ledger while storage fails"
    );
    let log = strip_ansi(&svc.proc.log_text());
    assert!(!log.contains("rejected input file"), "{log}");
    let m = scrape(svc).await;
    assert_eq!(value(&m, "tswatch_files_rejected_total", &[]), None);
    let retries = value(&m, "tswatch_retries_total", &[("what", "file")]);
    assert!(retries.is_some_and(|n| n >= 2.0), "{retries:?}");
}

/// After recovery: `key` applied once by this very process, with the
/// bytes of the undisturbed run, and no rejection anywhere.
async fn assert_applied_once_alike(
    svc: &Service,
    data: &Data<'_>,
    files: &[(String, String)],
    undisturbed: &(Vec<u8>, Value),
) {
    let key = &files[1].0;
    let got = outputs(data, key).await;
    assert!(
        got.0 == undisturbed.0,
        "the scored copy differs from an undisturbed run's"
    );
    assert_eq!(
        got.1, undisturbed.1,
        "the summary differs from an undisturbed run's"
    );
    let (exp, _) = assert_exactly_once(data, files).await;
    assert_api_totals(svc, exp).await;
    let applied = lines_about(svc, key)
        .iter()
        .filter(|l| l.contains(" processed ") && l.contains("rows="))
        .count();
    assert_eq!(applied, 1, "applied once");
    assert!(
        data.get(&format!("processed/{}_error.json", stem(key)))
            .await
            .is_none()
    );
    let m = scrape(svc).await;
    assert_eq!(value(&m, "tswatch_files_rejected_total", &[]), None);
    assert_eq!(
        value(
            &m,
            "tswatch_files_processed_total",
            &[("stream", "default")]
        ),
        Some(2.0)
    );
}

/// A valid 20,000-row file while the disk has 1 MiB left: the scored copy
/// (about 3 MB) dies part-way with ENOSPC, while the small `_error.json` a
/// rejection would write still fits, as it did in the reported defect.
#[tokio::test]
async fn a_full_disk_delays_a_file_and_never_rejects_it() {
    let (_t, dir) = tmp();
    let files = batches(81, &[100, 20_000]);
    let big = files[1].0.clone();

    let reference = dir.join("undisturbed");
    let svc = serve_local(&reference, &[], &dir).await;
    let data = Data::Local(&reference);
    process_in_turn(&data, &files, None).await;
    let undisturbed = outputs(&data, &big).await;
    assert!(
        undisturbed.0.len() > 2 << 20,
        "{} bytes",
        undisturbed.0.len()
    );
    drop(svc);

    let root = dir.join("data");
    std::fs::create_dir_all(&root).unwrap();
    let flag = dir.join("disk-full");
    let mut cmd = tswatch();
    cmd.env("LD_PRELOAD", crate::stores::faultfs_library())
        .env("TSWATCH_FAULTFS_DIR", root.canonicalize().unwrap())
        .env("TSWATCH_FAULTFS_FULL", &flag);
    let svc = Service::start(cmd, &["--data-dir", root.to_str().unwrap()], &dir).await;
    let data = Data::Local(&root);
    process_in_turn(&data, &files[..1], None).await;

    std::fs::write(&flag, (1u64 << 20).to_string()).unwrap();
    data.put(&big, &files[1].1).await;
    wait_retries(&svc, &big, "No space left on device", 2).await;
    assert_retried_not_rejected(&svc, &data, &big).await;

    // Space is freed; the service is not restarted.
    std::fs::remove_file(&flag).unwrap();
    data.wait_summaries(2, Duration::from_secs(120)).await;
    assert_applied_once_alike(&svc, &data, &files, &undisturbed).await;
    // The partial copies of the failed attempts are gone.
    assert!(files_under(&root.join("state/staging")).is_empty());
}

/// A valid file whose scored copy (about 21 MB: four parts of at most
/// 6 MiB) is uploaded through a network that drops every connection
/// carrying part 2, while every other request (a rejection's `_error.json`
/// included) goes through, until the network recovers. With two parts in
/// flight at most, part 2's failure is seen while part 4 is being written:
/// mid-file, as the scorer still writes.
#[tokio::test]
async fn an_upload_dying_on_a_later_part_delays_a_file_and_never_rejects_it() {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let files = batches(82, &[100, 160_000]);
    let big = files[1].0.clone();

    let undisturbed = undisturbed_on_s3(&moto, &files, &big, &dir).await;
    assert!(
        undisturbed.0.len() > 18 << 20,
        "{} bytes",
        undisturbed.0.len()
    );

    let bucket = "cut";
    moto.create_bucket(bucket).await;
    let proxy = Proxy::start(&moto.endpoint).await;
    let svc = serve_s3(&moto, &proxy.endpoint, bucket, &[], &dir).await;
    let data = Data::S3(&moto, bucket); // direct, not through the proxy
    process_in_turn(&data, &files[..1], Some(&svc)).await;

    proxy.cut_requests("?partNumber=2&");
    data.put(&big, &files[1].1).await;
    assert_eq!(notify(&svc.http, &svc.base, bucket, &big).await, Some(200));
    wait_retries(&svc, &big, "partNumber=2", 2).await;
    assert!(proxy.cuts() >= 2, "the upload died on part 2");
    assert_retried_not_rejected(&svc, &data, &big).await;
    // Logged as the S3 failure it is.
    let retried = lines_about(&svc, &big);
    assert!(
        retried
            .iter()
            .filter(|l| l.contains("will retry"))
            .all(|l| l.contains("storage error: ") && !l.contains("local storage error")),
        "{retried:#?}"
    );

    // The network recovers; the service is not restarted.
    proxy.stop_cutting();
    data.wait_summaries(2, Duration::from_secs(180)).await;
    assert_applied_once_alike(&svc, &data, &files, &undisturbed).await;
    // The uploads that died were aborted, not left to the lifecycle rule.
    let uploads = moto.s3_text(&format!("/{bucket}?uploads")).await;
    assert!(!uploads.contains("<Upload>"), "{uploads}");
}

/// A download of the input cut mid-body (and each range request the
/// object store client resumes it with, cut too) is storage's failure:
/// retried, never a rejection, though the scorer was fed a file that
/// stopped part-way; once the network recovers the file is applied once,
/// as an undisturbed run applies it.
#[tokio::test]
async fn a_download_cut_mid_file_delays_a_file_and_never_rejects_it() {
    let (_t, dir) = tmp();
    let moto = Moto::start().await;
    let files = batches(83, &[100, 20_000]);
    let big = files[1].0.clone();

    let undisturbed = undisturbed_on_s3(&moto, &files, &big, &dir).await;

    let bucket = "cutdown";
    moto.create_bucket(bucket).await;
    let proxy = Proxy::start(&moto.endpoint).await;
    let svc = serve_s3(&moto, &proxy.endpoint, bucket, &[], &dir).await;
    let data = Data::S3(&moto, bucket);
    process_in_turn(&data, &files[..1], Some(&svc)).await;

    // 16 KiB of each response: eleven tries fetch far less than the
    // ~0.9 MB file.
    proxy.cut_responses(&format!("GET /{bucket}/{big} "), 16 << 10);
    data.put(&big, &files[1].1).await;
    assert_eq!(notify(&svc.http, &svc.base, bucket, &big).await, Some(200));
    wait_retries(&svc, &big, "storage error: ", 2).await;
    assert!(proxy.cuts() >= 2, "the download was cut");
    assert_retried_not_rejected(&svc, &data, &big).await;

    proxy.stop_cutting();
    data.wait_summaries(2, Duration::from_secs(180)).await;
    assert_applied_once_alike(&svc, &data, &files, &undisturbed).await;
}
