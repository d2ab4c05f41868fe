//! `tswatch bench`: end-to-end throughput on the local backend and on S3
//! (a moto server) against the floor (the same input parsed and an output
//! of the same shape written, without scoring), with each size measured in
//! a fresh child process so its peak memory is its own; and read-endpoint
//! latency over many processed files.

use crate::BenchPhase;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tswatch::apply::pipeline::stream_object;
use tswatch::apply::processor::{Outcome, Processor};
use tswatch::csv::scorer::CsvLine;
use tswatch::eval::scenario::Scenario;
use tswatch::progress::Progress;
use tswatch::state::documents::Summary;
use tswatch::storage::{Location, Storage};
use tswatch_core::EngineConfig;

/// Figures for one file size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Measure {
    /// Data rows.
    pub(crate) rows: usize,
    /// Input size in bytes.
    pub(crate) input_bytes: u64,
    /// Seconds to parse the input and write an output of the scored shape.
    pub(crate) floor_s: f64,
    /// Seconds from the start of processing to the committed summary (the
    /// state already exists: a warm-up file is processed first).
    pub(crate) end_to_end_s: f64,
    /// Peak resident memory (KiB) of a fresh process that processes a
    /// 10-row warm-up file and then this one. Generating and uploading the
    /// input, and the floor, run in processes of their own.
    pub(crate) peak_rss_kib: u64,
    /// CPU seconds (user and system, every thread) the processing took.
    #[serde(default)]
    pub(crate) cpu_s: Option<f64>,
}

/// Where the measured files live.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// A local data directory (the scratch directory itself).
    Local,
    /// An S3 bucket, reached through the `AWS_*` environment (endpoint,
    /// region, credentials), as `tswatch serve --bucket` does.
    S3 {
        /// The bucket; it must exist and may be empty.
        bucket: String,
    },
}

impl Backend {
    /// The storage this backend names; `dir` is the local data directory.
    async fn open(&self, dir: &Path) -> anyhow::Result<Storage> {
        Ok(match self {
            Backend::Local => Storage::local(dir)?,
            Backend::S3 { bucket } => Storage::s3(bucket).await?,
        })
    }
}

/// Writes a seed-scenario file of `rows` rows.
fn generate(path: &Path, rows: usize) -> anyhow::Result<()> {
    let mut sc = Scenario::new("seed", 11, 1_769_904_000.0).context("seed scenario")?;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut left = rows;
    let mut first = true;
    while left > 0 {
        let n = left.min(10_000);
        let (csv, _, _) = sc.batch(n);
        let body = if first {
            csv.as_str()
        } else {
            csv.split_once('\n').map_or("", |x| x.1)
        };
        w.write_all(body.as_bytes())?;
        first = false;
        left -= n;
    }
    w.flush()?;
    Ok(())
}

/// Generates a `rows`-row input as `key` of `storage` (for S3: written to
/// `dir` first, uploaded, then removed locally). Returns its size in bytes.
async fn place_input(storage: &Storage, dir: &Path, key: &str, rows: usize) -> anyhow::Result<u64> {
    let path = dir.join(key);
    std::fs::create_dir_all(path.parent().context("an input has a folder")?)?;
    generate(&path, rows)?;
    let bytes = std::fs::metadata(&path)?.len();
    if let Location::S3 { .. } = storage.location() {
        upload_file(storage, &path, key).await?;
        std::fs::remove_file(&path)?;
    }
    Ok(bytes)
}

/// Streams a local file to `key` through a multipart upload.
async fn upload_file(storage: &Storage, path: &Path, key: &str) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut w = object_store::buffered::BufWriter::with_capacity(
        storage.store(),
        tswatch::state::keys::validate(key)?,
        8 * 1024 * 1024,
    )
    .with_max_concurrency(2);
    tokio::io::copy(&mut file, &mut w)
        .await
        .with_context(|| format!("uploading {key}"))?;
    w.shutdown()
        .await
        .with_context(|| format!("uploading {key}"))?;
    Ok(())
}

/// Parses `input` and writes rows of the scored shape with constant score
/// cells: the cost of I/O and CSV alone.
fn floor_csv(input: impl Read, mut output: impl Write) -> anyhow::Result<()> {
    // The scorer's own reader, so the floor reads exactly as the scorer does.
    let mut records = tswatch::csv::records::Records::new(input);
    let mut rows = tswatch::csv::records::Rows::default();
    // Rows are written as the scorer writes them (`CsvLine`), so the floor
    // is not slower than the scorer's own output path.
    let mut out = CsvLine::default();
    let mut channels = None;
    while records.read(&mut rows)?.is_some() {
        let rec = rows.row(0);
        for f in rec.fields() {
            // Parse every cell with the scorer's own parser (and keep the
            // result, so the parse cannot be optimised away).
            std::hint::black_box(tswatch::csv::scorer::parse_cell(f));
            out.text(f);
        }
        for _ in 0..*channels.get_or_insert_with(|| rec.fields().count().saturating_sub(1)) {
            out.raw(b"-1.2345");
            out.raw(b"False");
        }
        for f in [
            &b"1"[..],
            b"0.1234",
            b"False",
            b"False",
            b"0.123456789012345",
            b"",
        ] {
            out.raw(f);
        }
        out.end();
        rows.clear();
        if out.buf.len() >= tswatch::csv::scorer::WRITE_CHUNK {
            output.write_all(&out.buf)?;
            out.buf.clear();
        }
    }
    output.write_all(&out.buf)?;
    output.flush()?;
    Ok(())
}

/// The floor for `key`: the object read and an output of the scored shape
/// written through the pipeline's own I/O ([`stream_object`]: plain files
/// locally; the GET stream and the multipart upload on S3), then deleted.
/// Returns the seconds it took, deletion aside.
async fn floor(storage: &Storage, key: &str) -> anyhow::Result<f64> {
    let out = "bench/floor.csv";
    let t = Instant::now();
    let streamed = stream_object(
        storage,
        &tswatch::state::keys::validate(key)?,
        "",
        &tswatch::state::keys::validate(out)?,
        |input, output| floor_csv(input, output),
    )
    .await?;
    streamed.value?;
    streamed.upload?;
    let seconds = t.elapsed().as_secs_f64();
    storage.delete(out).await?;
    Ok(seconds)
}

/// CPU seconds (user and system, of every thread, finished ones included)
/// this process has used so far: fields 14 and 15 of `/proc/self/stat`, in
/// the kernel's fixed 1/100 s; `None` where there is no such file.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn peak_rss_kib() -> u64 {
    status_kib("/proc/self/status", "VmHWM:")
}

/// A `kB` field of a `/proc/<pid>/status` file (0 where there is none).
fn status_kib(status: &str, field: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Processes `key` and checks it was applied now.
async fn process_applied(p: &Processor, key: &str) -> anyhow::Result<Summary> {
    match p
        .process(&tswatch::state::keys::RawKey::parse(key)?)
        .await?
    {
        Outcome::Applied(summary) => Ok(summary),
        other => anyhow::bail!("{key} not applied: {other:?}"),
    }
}

/// What one child process reports: one part of a measurement (see
/// [`BenchPhase`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Part {
    /// The input is in place.
    Prepared {
        /// Its size in bytes.
        input_bytes: u64,
    },
    /// The floor was timed.
    Floor {
        /// Seconds.
        floor_s: f64,
    },
    /// The file was processed.
    Processed {
        /// Seconds, as [`Measure::end_to_end_s`].
        end_to_end_s: f64,
        /// The process's peak resident memory (KiB).
        peak_rss_kib: u64,
        /// CPU seconds, as [`Measure::cpu_s`].
        cpu_s: Option<f64>,
    },
}

/// One part of the measurement of `rows` rows, in this process, on
/// `backend` with `dir` as the local data or scratch directory.
pub(crate) async fn measure_part(
    rows: usize,
    dir: &Path,
    backend: &Backend,
    engine: EngineConfig,
    phase: BenchPhase,
) -> anyhow::Result<Part> {
    std::fs::create_dir_all(dir)?;
    let storage = backend.open(dir).await?;
    Ok(match phase {
        BenchPhase::Prepare => {
            let input_bytes = place_input(&storage, dir, "raw/bench.csv", rows).await?;
            place_input(&storage, dir, "raw/warmup.csv", 10).await?;
            Part::Prepared { input_bytes }
        }
        BenchPhase::Floor => Part::Floor {
            floor_s: floor(&storage, "raw/bench.csv").await?,
        },
        BenchPhase::Process => {
            let p = Processor::new(storage, engine);
            // Warm up: the first file of a fresh state also creates the state.
            process_applied(&p, "raw/warmup.csv").await?;
            let (t, cpu) = (Instant::now(), process_cpu_s());
            process_applied(&p, "raw/bench.csv").await?;
            Part::Processed {
                end_to_end_s: t.elapsed().as_secs_f64(),
                peak_rss_kib: peak_rss_kib(),
                cpu_s: cpu.zip(process_cpu_s()).map(|(a, b)| b - a),
            }
        }
    })
}

/// The table, under a `backend` heading line.
pub(crate) fn render(backend: &str, ms: &[Measure]) -> String {
    let mut s = format!(
        "{backend}\n{:>10} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8} {:>10} {:>8}\n",
        "rows", "input MB", "floor s", "e2e s", "rows/s", "MB/s", "x floor", "peak RSS", "CPU s"
    );
    for m in ms {
        let mb = m.input_bytes as f64 / 1e6;
        s.push_str(&format!(
            "{:>10} {:>9.1} {:>9.3} {:>9.3} {:>11.0} {:>8.1} {:>8.2} {:>6.1} MiB {:>8}\n",
            m.rows,
            mb,
            m.floor_s,
            m.end_to_end_s,
            m.rows as f64 / m.end_to_end_s.max(1e-9),
            mb / m.end_to_end_s.max(1e-9),
            m.end_to_end_s / m.floor_s.max(1e-9),
            m.peak_rss_kib as f64 / 1024.0,
            m.cpu_s.map_or("-".into(), |c| format!("{c:.2}")),
        ));
    }
    s
}

/// Read-endpoint latency with `files` processed files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReadMeasure {
    /// Processed files behind the endpoints.
    pub(crate) files: usize,
    /// Streams they were spread over (`raw/s<k>/…`).
    pub(crate) streams: usize,
    /// Seconds to write and process them before the service started.
    pub(crate) prepare_s: f64,
    /// `/anomalies/summary` latency, median and 99th percentile (ms).
    pub(crate) summary_ms: (f64, f64),
    /// `/anomalies/recent?limit=50` latency, median and 99th percentile (ms).
    pub(crate) recent_ms: (f64, f64),
}

/// Writes `files` 20-row files round-robin over `streams` streams
/// (`raw/s<k>/f<i>.csv`) and has the real processor apply every one of
/// them, the streams concurrently (they commit independently) and each
/// stream's files in order. Returns the wall time.
pub(crate) async fn prepare_processed(
    files: usize,
    streams: usize,
    dir: &Path,
    engine: EngineConfig,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let streams = streams.max(1);
    let mut sc = Scenario::new("seed", 5, 1_769_904_000.0).context("seed scenario")?;
    let mut keys: Vec<Vec<String>> = vec![Vec::new(); streams];
    for i in 0..files {
        let key = format!("raw/s{}/f{i:06}.csv", i % streams);
        let path = dir.join(&key);
        std::fs::create_dir_all(path.parent().context("a file has a folder")?)?;
        std::fs::write(&path, sc.batch(20).0)?;
        keys[i % streams].push(key);
    }
    let p = Arc::new(Processor::new(Storage::local(dir)?, engine));
    let mut tasks = tokio::task::JoinSet::new();
    for stream in keys {
        let p = p.clone();
        tasks.spawn(async move {
            for key in stream {
                process_applied(&p, &key).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Processes `files` small files with [`prepare_processed`], then starts
/// the real service (local backend) on them and times the read endpoints
/// over loopback HTTP, one request at a time, after a warm-up long enough
/// for the service's start-up reconciliation to have listed everything.
pub(crate) async fn measure_reads(
    files: usize,
    streams: usize,
    dir: &Path,
    engine: EngineConfig,
) -> anyhow::Result<ReadMeasure> {
    let prepare_s = prepare_processed(files, streams, dir, engine).await?;
    let listing = time_listing(dir).await?;
    let svc = BenchService::start(dir, engine, files).await?;
    svc.wait_processed(files, Duration::from_secs(600)).await?;
    let warm_up = (listing * 2).max(Duration::from_secs(1));
    svc.warm_up("/anomalies/summary", warm_up).await?;
    let summary_ms = percentiles(svc.time_get("/anomalies/summary", 1000).await?);
    let recent_ms = percentiles(svc.time_get("/anomalies/recent?limit=50", 1000).await?);
    svc.stop().await?;
    Ok(ReadMeasure {
        files,
        streams: streams.max(1),
        prepare_s,
        summary_ms,
        recent_ms,
    })
}

/// How long listing `raw/` and `processed/` takes: the bulk of the
/// service's start-up reconciliation.
async fn time_listing(dir: &Path) -> anyhow::Result<Duration> {
    let storage = Storage::local(dir)?;
    let t = Instant::now();
    storage.list_modified("processed/").await?;
    storage.list_modified("raw/").await?;
    Ok(t.elapsed())
}

/// Median and 99th percentile of latencies in milliseconds.
fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.50), at(0.99))
}

/// The read-latency table.
pub(crate) fn render_reads(ms: &[ReadMeasure]) -> String {
    let mut s = format!(
        "{:>10} {:>8} {:>10} {:>22} {:>22}\n",
        "files", "streams", "prepare s", "summary p50/p99 ms", "recent p50/p99 ms"
    );
    for m in ms {
        s.push_str(&format!(
            "{:>10} {:>8} {:>10.1} {:>13.2} / {:>6.2} {:>13.2} / {:>6.2}\n",
            m.files,
            m.streams,
            m.prepare_s,
            m.summary_ms.0,
            m.summary_ms.1,
            m.recent_ms.0,
            m.recent_ms.1
        ));
    }
    s
}

/// Throughput of the real service over `files` files of `rows` rows, all
/// in one stream or spread over `streams` streams (seconds from start to
/// the last commit).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StreamMeasure {
    /// Streams the files were spread over.
    pub(crate) streams: usize,
    /// Files processed.
    pub(crate) files: usize,
    /// Rows per file.
    pub(crate) rows: usize,
    /// Wall time for all of them.
    pub(crate) seconds: f64,
}

/// Runs the service over `files` files spread round-robin over `streams`
/// streams (`raw/s<k>/…`, or `raw/…` for one stream) and times it.
pub(crate) async fn measure_streams(
    streams: usize,
    files: usize,
    rows: usize,
    dir: &Path,
    engine: EngineConfig,
) -> anyhow::Result<StreamMeasure> {
    let mut sc = Scenario::new("seed", 9, 1_769_904_000.0).context("seed scenario")?;
    for i in 0..files {
        let sub = if streams <= 1 {
            String::new()
        } else {
            format!("s{}/", i % streams)
        };
        let path = dir.join(format!("raw/{sub}f{i:04}.csv"));
        std::fs::create_dir_all(path.parent().context("a file has a folder")?)?;
        std::fs::write(&path, sc.batch(rows).0)?;
    }
    let started = Instant::now();
    let svc = BenchService::start(dir, engine, files).await?;
    svc.wait_processed(files, Duration::from_secs(1800)).await?;
    let seconds = started.elapsed().as_secs_f64();
    svc.stop().await?;
    Ok(StreamMeasure {
        streams,
        files,
        rows,
        seconds,
    })
}

/// The service's latency for small files: from a 100-row file appearing in
/// `raw/` (renamed into place, as an uploader would) to its summary existing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatencyMeasure {
    /// Files dropped, one at a time.
    pub(crate) files: usize,
    /// Median and 99th percentile, milliseconds.
    pub(crate) ms: (f64, f64),
    /// The slowest, milliseconds.
    pub(crate) max_ms: f64,
}

/// Starts the real service on an empty local directory, then drops
/// `files` 100-row files into `raw/` one at a time (each found by the
/// file watcher, as in `tswatch serve`) and times each until its summary
/// exists, polling every 0.1 ms.
pub(crate) async fn measure_latency(
    files: usize,
    dir: &Path,
    engine: EngineConfig,
) -> anyhow::Result<LatencyMeasure> {
    std::fs::create_dir_all(dir.join("raw"))?;
    let mut sc = Scenario::new("seed", 3, 1_769_904_000.0).context("seed scenario")?;
    let svc = BenchService::start(dir, engine, files).await?;
    svc.wait_healthy(Duration::from_secs(30)).await?;
    // Dropping and polling run on a thread of their own: the runtime's
    // timers tick in whole milliseconds, too coarse for what is measured.
    let (dir_owned, batches): (std::path::PathBuf, Vec<String>) = (
        dir.to_path_buf(),
        (0..files).map(|_| sc.batch(100).0).collect(),
    );
    let ms = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f64>> {
        let dir = dir_owned;
        let mut ms = Vec::with_capacity(batches.len());
        for (i, csv) in batches.into_iter().enumerate() {
            let name = format!("lat{i:05}");
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, csv)?;
            let summary = dir.join(format!("processed/{name}_summary.json"));
            let t = Instant::now();
            std::fs::rename(&tmp, dir.join(format!("raw/{name}.csv")))?;
            while !summary.exists() {
                anyhow::ensure!(
                    t.elapsed() < Duration::from_secs(30),
                    "{name} was not processed within 30 s"
                );
                std::thread::sleep(Duration::from_micros(100));
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(ms)
    })
    .await??;
    svc.stop().await?;
    let max_ms = ms.iter().copied().fold(0.0, f64::max);
    Ok(LatencyMeasure {
        files,
        ms: percentiles(ms),
        max_ms,
    })
}

/// Resident memory (KiB) of `tswatch serve` (the binary `exe`) on an empty
/// data directory, once `/health` answers.
pub(crate) async fn measure_idle_rss(exe: &Path, dir: &Path) -> anyhow::Result<u64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Reaped(
        std::process::Command::new(exe)
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let pid = child.0.id();
    let (http, base) = (reqwest::Client::new(), format!("http://127.0.0.1:{port}"));
    poll_until(
        Duration::from_secs(15),
        "the service answering /health",
        || healthy(&http, &base),
    )
    .await?;
    // Let start-up work (reconciliation, watcher set-up) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(status_kib(&format!("/proc/{pid}/status"), "VmRSS:"))
}

/// Whether `GET {base}/health` answers with success.
async fn healthy(http: &reqwest::Client, base: &str) -> anyhow::Result<bool> {
    Ok(http
        .get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success()))
}

/// Checks `ready` every 20 ms until it says yes; an error from it, or
/// `limit` passing without `what`, ends the wait with an error.
async fn poll_until<F, Fut>(limit: Duration, what: &str, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    while !ready().await? {
        anyhow::ensure!(started.elapsed() < limit, "no {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real service on a loopback port over a local data directory.
struct BenchService {
    base: String,
    http: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl BenchService {
    async fn start(dir: &Path, engine: EngineConfig, files: usize) -> anyhow::Result<Self> {
        let storage = Storage::local(dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let settings = bench_settings(engine, files + 16);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tswatch::service::run(listener, storage, settings, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            base,
            http: reqwest::Client::new(),
            stop,
            server,
        })
    }

    /// Waits until `/health` answers.
    async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        poll_until(limit, "an answer from /health", || {
            healthy(&self.http, &self.base)
        })
        .await
    }

    /// Waits until `/anomalies/summary` counts `files` processed files.
    async fn wait_processed(&self, files: usize, limit: Duration) -> anyhow::Result<()> {
        let what = format!("{files} processed files");
        poll_until(limit, &what, || async {
            let v: serde_json::Value = match self
                .http
                .get(format!("{}/anomalies/summary", self.base))
                .send()
                .await
            {
                Ok(r) => r.json().await?,
                Err(_) => serde_json::Value::Null,
            };
            Ok(v["files_processed"].as_u64() == Some(files as u64))
        })
        .await
    }

    /// One GET of `path`, checked and read whole; its latency in ms.
    async fn get_ms(&self, path: &str) -> anyhow::Result<f64> {
        let t = Instant::now();
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
        r.bytes().await?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }

    /// GETs `path` over and over for `how_long`.
    async fn warm_up(&self, path: &str, how_long: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < how_long {
            self.get_ms(path).await?;
        }
        Ok(())
    }

    /// The latencies (ms) of `n` GETs of `path`, one at a time.
    async fn time_get(&self, path: &str, n: usize) -> anyhow::Result<Vec<f64>> {
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            ms.push(self.get_ms(path).await?);
        }
        Ok(ms)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await?
    }
}

/// Service settings for a benchmark run on the local backend: no SNS, no
/// SQS, reconciliation only at start.
fn bench_settings(engine: EngineConfig, queue_capacity: usize) -> tswatch::service::Settings {
    tswatch::service::Settings {
        engine,
        reconcile_every: Duration::from_secs(3600),
        shutdown_grace: Duration::from_secs(5),
        insecure_skip_sns_verify: false,
        sns_topics: Vec::new(),
        sns_cert_endpoint: None,
        request_timeout: Duration::from_secs(15),
        http_header_timeout: Duration::from_secs(10),
        max_connections: tswatch::http::server::default_max_connections(),
        spreadsheet_safe: Default::default(),
        queue_capacity,
        sqs: None,
        alerts: Default::default(),
    }
}

/// Measures each size in a child process of `exe` (`tswatch bench --child
/// ROWS --dir DIR`), so that its peak memory is its own: on the local
/// backend, or with `moto` in a fresh bucket of that server, which is
/// reset after each size (moto keeps objects in its own memory).
pub(crate) async fn measure_in_children(
    exe: &Path,
    sizes: &[usize],
    repeat: usize,
    scratch: &Path,
    moto: Option<&MotoServer>,
    notes: bool,
    progress: &Progress,
) -> anyhow::Result<Vec<Measure>> {
    let mut results = Vec::new();
    for &rows in sizes {
        let mut runs = Vec::new();
        for _ in 0..repeat.max(1) {
            runs.push(measure_child(exe, rows, scratch, moto, progress).await?);
        }
        results.push(Measure::median(runs));
        if notes {
            let label = if moto.is_some() { "moto" } else { "local" };
            progress.note(&format!(
                "measured {rows} rows ({label}), median of {}",
                repeat.max(1)
            ));
        }
    }
    Ok(results)
}

impl Measure {
    /// The run with the median end-to-end time, with the median floor of
    /// all runs (so the ratio compares medians) and the highest peak memory.
    fn median(mut runs: Vec<Measure>) -> Measure {
        let mut floors: Vec<f64> = runs.iter().map(|m| m.floor_s).collect();
        floors.sort_by(f64::total_cmp);
        let peak = runs.iter().map(|m| m.peak_rss_kib).max().unwrap_or(0);
        runs.sort_by(|a, b| a.end_to_end_s.total_cmp(&b.end_to_end_s));
        let mid = runs.len() / 2;
        let mut m = runs.swap_remove(mid);
        m.floor_s = floors[mid];
        m.peak_rss_kib = peak;
        m
    }
}

/// One measurement of `rows` rows in child processes, one per
/// [`BenchPhase`], on a fresh directory (and, with `moto`, a fresh bucket).
async fn measure_child(
    exe: &Path,
    rows: usize,
    scratch: &Path,
    moto: Option<&MotoServer>,
    progress: &Progress,
) -> anyhow::Result<Measure> {
    let label = if moto.is_some() { "moto" } else { "local" };
    let dir = scratch.join(format!("{label}-rows-{rows}"));
    let _ = std::fs::remove_dir_all(&dir);
    let bucket = format!("bench-{rows}");
    if let Some(moto) = moto {
        moto.create_bucket(&bucket).await?;
    }
    let run = |phase: BenchPhase| -> anyhow::Result<Part> {
        let name = clap::ValueEnum::to_possible_value(&phase)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        progress.set_message(format!("{label}, {rows} rows: {name}"));
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "bench",
            "--child",
            &rows.to_string(),
            "--child-phase",
            &name,
            "--dir",
        ])
        .arg(&dir);
        if let Some(moto) = moto {
            moto.configure(&mut cmd);
            cmd.args(["--child-bucket", &bucket]);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running the {rows}-row {name} ({label})"))?;
        anyhow::ensure!(
            out.status.success(),
            "the {rows}-row {name} ({label}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        progress.inc(1);
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let out_of_turn =
        || anyhow::anyhow!("the {rows}-row measurement's children answered out of turn");
    let measured = (|| {
        let Part::Prepared { input_bytes } = run(BenchPhase::Prepare)? else {
            return Err(out_of_turn());
        };
        let Part::Floor { floor_s } = run(BenchPhase::Floor)? else {
            return Err(out_of_turn());
        };
        let Part::Processed {
            end_to_end_s,
            peak_rss_kib,
            cpu_s,
        } = run(BenchPhase::Process)?
        else {
            return Err(out_of_turn());
        };
        Ok(Measure {
            rows,
            input_bytes,
            floor_s,
            end_to_end_s,
            peak_rss_kib,
            cpu_s,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(moto) = moto {
        moto.reset().await?;
    }
    measured
}

/// A `moto_server` (the S3 emulator, from PyPI `moto[server]`) on a free
/// loopback port, started by `tswatch bench --moto` and stopped (killed)
/// when dropped.
#[derive(Debug)]
pub(crate) struct MotoServer {
    child: Reaped,
    endpoint: String,
    http: reqwest::Client,
}

impl MotoServer {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` with its output in `log`,
    /// and waits (up to 30 s) until it answers.
    pub(crate) async fn start(log: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context(
                "cannot start moto_server: install it with `pip install \"moto[server]\"` \
                 (./scripts/test does)",
            )?;
        let mut moto = Self {
            child: Reaped(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let what = format!(
            "moto_server answering on {} (log: {})",
            moto.endpoint,
            log.display()
        );
        poll_until(Duration::from_secs(30), &what, || {
            let exited = moto.child.0.try_wait();
            let ping = moto.http.get(format!("{}/moto-api/", moto.endpoint)).send();
            async move {
                if ping.await.is_ok() {
                    return Ok(true);
                }
                if let Some(status) = exited? {
                    anyhow::bail!("moto_server exited ({status}); see {}", log.display());
                }
                Ok(false)
            }
        })
        .await?;
        Ok(moto)
    }

    /// Where it listens (`http://127.0.0.1:PORT`).
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A request to moto's S3 (moto routes by the credential scope of the
    /// `Authorization` header and does not check signatures).
    fn s3_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.endpoint))
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
    }

    /// Creates an empty bucket.
    pub(crate) async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let r = self
            .s3_request(reqwest::Method::PUT, &format!("/{bucket}"))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "creating bucket {bucket} on moto: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// Forgets every bucket and object, freeing moto's memory.
    pub(crate) async fn reset(&self) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/moto-api/reset", self.endpoint))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "resetting moto: {}", r.status());
        Ok(())
    }

    /// Points a `tswatch` command at this server (the `AWS_*` environment
    /// that `Storage::s3` honours, with moto's dummy credentials).
    pub(crate) fn configure(&self, cmd: &mut std::process::Command) {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_runs_report_the_median() {
        let run = |floor_s, end_to_end_s, peak_rss_kib| Measure {
            rows: 10,
            input_bytes: 100,
            floor_s,
            end_to_end_s,
            peak_rss_kib,
            cpu_s: None,
        };
        let m = Measure::median(vec![
            run(0.3, 2.0, 10),
            run(0.1, 0.9, 30),
            run(0.2, 1.1, 20),
        ]);
        assert_eq!((m.floor_s, m.end_to_end_s, m.peak_rss_kib), (0.2, 1.1, 30));
        let one = Measure::median(vec![run(0.5, 1.0, 7)]);
        assert_eq!(
            (one.floor_s, one.end_to_end_s, one.peak_rss_kib),
            (0.5, 1.0, 7)
        );
    }

    #[test]
    fn the_floor_writes_the_scored_shape() {
        let mut sc = Scenario::new("seed", 3, 1_769_904_000.0).expect("seed scenario");
        let input = sc.batch(300).0;
        let mut scored = Vec::new();
        let mut engine = tswatch_core::Engine::new(EngineConfig::default()).expect("engine");
        tswatch::csv::scorer::score_csv(input.as_bytes(), &mut scored, &mut engine)
            .expect("scores");
        let mut floor = Vec::new();
        floor_csv(input.as_bytes(), &mut floor).expect("floor");
        let fields = |b: &[u8]| -> Vec<usize> {
            csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(b)
                .byte_records()
                .map(|r| r.expect("a record").len())
                .collect()
        };
        assert_eq!(fields(&floor), fields(&scored));
        let ratio = floor.len() as f64 / scored.len() as f64;
        assert!((0.75..1.25).contains(&ratio), "size ratio {ratio}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(percentiles(ms), (500.0, 990.0));
        assert!(percentiles(Vec::new()).0.is_nan());
    }
}
