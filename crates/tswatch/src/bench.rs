//! `tswatch bench`: end-to-end throughput on the local backend against the
//! floor (the same input parsed and an output of the same shape written,
//! without scoring), with each size measured in a fresh child process so
//! its peak memory is its own.

use crate::processor::{Outcome, Processor};
use crate::scenario::Scenario;
use crate::storage::Storage;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Instant;
use tswatch_core::EngineConfig;

/// Figures for one file size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measure {
    /// Data rows.
    pub rows: usize,
    /// Input size in bytes.
    pub input_bytes: u64,
    /// Seconds to parse the input and write an output of the scored shape.
    pub floor_s: f64,
    /// Seconds from the start of processing to the committed summary (the
    /// state already exists: a warm-up file is processed first).
    pub end_to_end_s: f64,
    /// Peak resident memory of the process (KiB).
    pub peak_rss_kib: u64,
    /// CPU seconds of the reading/scoring and the writing thread.
    #[serde(default)]
    pub stage_cpu_ms: Option<crate::csvscore::StageCpu>,
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

/// Parses `input` and writes rows of the scored shape with constant score
/// cells: the cost of I/O and CSV alone.
fn floor(input: &Path, output: &Path) -> anyhow::Result<()> {
    let mut rdr =
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(input)?,
            ));
    let mut out = csv::WriterBuilder::new()
        .buffer_capacity(256 * 1024)
        .from_writer(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(output)?,
        ));
    let mut rec = csv::ByteRecord::new();
    let mut channels = 0;
    let mut first = true;
    while rdr.read_byte_record(&mut rec)? {
        for f in rec.iter() {
            // Parse every cell as the scorer does (and keep the result, so
            // the parse cannot be optimised away).
            std::hint::black_box(
                std::str::from_utf8(f)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok()),
            );
            out.write_field(f)?;
        }
        if first {
            channels = rec.len().saturating_sub(1);
            first = false;
        }
        for _ in 0..channels {
            out.write_field(b"-1.2345")?;
            out.write_field(b"False")?;
        }
        for f in [
            &b"1"[..],
            b"0.1234",
            b"False",
            b"False",
            b"0.123456789012345",
            b"",
        ] {
            out.write_field(f)?;
        }
        out.write_record(None::<&[u8]>)?;
    }
    out.flush()?;
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One size, in this process: generate, floor, then the real pipeline.
pub async fn measure_one(rows: usize, dir: &Path, engine: EngineConfig) -> anyhow::Result<Measure> {
    std::fs::create_dir_all(dir.join("raw"))?;
    let input = dir.join("raw/bench.csv");
    generate(&input, rows)?;
    let input_bytes = std::fs::metadata(&input)?.len();
    let t = Instant::now();
    floor(&input, &dir.join("floor.csv"))?;
    let floor_s = t.elapsed().as_secs_f64();
    std::fs::remove_file(dir.join("floor.csv")).ok();
    let storage = Storage::local(dir)?;
    let p = Processor::new(storage, engine);
    // Warm up: the first file of a fresh directory also creates the state.
    generate(&dir.join("raw/warmup.csv"), 10)?;
    p.process(&crate::keys::RawKey::parse("raw/warmup.csv")?)
        .await?;
    let key = crate::keys::RawKey::parse("raw/bench.csv")?;
    let t = Instant::now();
    let outcome = p.process(&key).await?;
    let end_to_end_s = t.elapsed().as_secs_f64();
    let Outcome::Applied(summary) = outcome else {
        anyhow::bail!("bench file not applied: {outcome:?}");
    };
    Ok(Measure {
        rows,
        input_bytes,
        floor_s,
        end_to_end_s,
        peak_rss_kib: peak_rss_kib(),
        stage_cpu_ms: summary.stage_cpu_ms,
    })
}

/// The table.
pub fn render(ms: &[Measure]) -> String {
    let mut s = format!(
        "{:>10} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8} {:>10} {:>19}\n",
        "rows",
        "input MB",
        "floor s",
        "e2e s",
        "rows/s",
        "MB/s",
        "x floor",
        "peak RSS",
        "CPU s score/write"
    );
    for m in ms {
        let mb = m.input_bytes as f64 / 1e6;
        s.push_str(&format!(
            "{:>10} {:>9.1} {:>9.3} {:>9.3} {:>11.0} {:>8.1} {:>8.2} {:>7.1} MB {:>19}\n",
            m.rows,
            mb,
            m.floor_s,
            m.end_to_end_s,
            m.rows as f64 / m.end_to_end_s.max(1e-9),
            mb / m.end_to_end_s.max(1e-9),
            m.end_to_end_s / m.floor_s.max(1e-9),
            m.peak_rss_kib as f64 / 1024.0,
            m.stage_cpu_ms.map_or("-".into(), |c| format!(
                "{:.3} / {:.3}",
                c.read_score / 1e3,
                c.write / 1e3
            )),
        ));
    }
    s
}

/// Read-endpoint latency with `files` processed files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadMeasure {
    /// Processed files behind the endpoints.
    pub files: usize,
    /// `/anomalies/summary` latency, median and 99th percentile (ms).
    pub summary_ms: (f64, f64),
    /// `/anomalies/recent?limit=50` latency, median and 99th percentile (ms).
    pub recent_ms: (f64, f64),
}

/// Processes `files` small files through the real service (local backend,
/// found by the start-up reconciliation), then times the read endpoints
/// over loopback HTTP, one request at a time.
pub async fn measure_reads(
    files: usize,
    dir: &Path,
    engine: EngineConfig,
) -> anyhow::Result<ReadMeasure> {
    std::fs::create_dir_all(dir.join("raw"))?;
    let mut sc = Scenario::new("seed", 5, 1_769_904_000.0).context("seed scenario")?;
    for i in 0..files {
        let (csv, _, _) = sc.batch(20);
        std::fs::write(dir.join(format!("raw/f{i:06}.csv")), csv)?;
    }
    let svc = BenchService::start(dir, engine, files).await?;
    svc.wait_processed(files, std::time::Duration::from_secs(600))
        .await?;
    let (base, http) = (&svc.base, &svc.http);
    let time = |path: String| {
        let http = http.clone();
        async move {
            let mut ms = Vec::with_capacity(1000);
            for _ in 0..1000 {
                let t = Instant::now();
                let r = http.get(&path).send().await?;
                anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
                r.bytes().await?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ms.sort_by(f64::total_cmp);
            Ok::<_, anyhow::Error>((ms[499], ms[989]))
        }
    };
    let summary_ms = time(format!("{base}/anomalies/summary")).await?;
    let recent_ms = time(format!("{base}/anomalies/recent?limit=50")).await?;
    svc.stop().await?;
    Ok(ReadMeasure {
        files,
        summary_ms,
        recent_ms,
    })
}

/// The read-latency table.
pub fn render_reads(ms: &[ReadMeasure]) -> String {
    let mut s = format!(
        "{:>10} {:>22} {:>22}\n",
        "files", "summary p50/p99 ms", "recent p50/p99 ms"
    );
    for m in ms {
        s.push_str(&format!(
            "{:>10} {:>13.2} / {:>6.2} {:>13.2} / {:>6.2}\n",
            m.files, m.summary_ms.0, m.summary_ms.1, m.recent_ms.0, m.recent_ms.1
        ));
    }
    s
}

/// Throughput of the real service over `files` files of `rows` rows, all
/// in one stream or spread over `streams` streams (seconds from start to
/// the last commit).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamMeasure {
    /// Streams the files were spread over.
    pub streams: usize,
    /// Files processed.
    pub files: usize,
    /// Rows per file.
    pub rows: usize,
    /// Wall time for all of them.
    pub seconds: f64,
}

/// Runs the service over `files` files spread round-robin over `streams`
/// streams (`raw/s<k>/…`, or `raw/…` for one stream) and times it.
pub async fn measure_streams(
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
    svc.wait_processed(files, std::time::Duration::from_secs(1800))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    svc.stop().await?;
    Ok(StreamMeasure {
        streams,
        files,
        rows,
        seconds,
    })
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
        let server = tokio::spawn(crate::server::run(listener, storage, settings, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            base,
            http: reqwest::Client::new(),
            stop,
            server,
        })
    }

    /// Waits until `/anomalies/summary` counts `files` processed files.
    async fn wait_processed(&self, files: usize, limit: std::time::Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let v: serde_json::Value = match self
                .http
                .get(format!("{}/anomalies/summary", self.base))
                .send()
                .await
            {
                Ok(r) => r.json().await?,
                Err(_) => serde_json::Value::Null,
            };
            if v["files_processed"].as_u64() == Some(files as u64) {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "files were not processed in {limit:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await?
    }
}

/// Service settings for a benchmark run on the local backend: no SNS, no
/// SQS, reconciliation only at start.
fn bench_settings(engine: EngineConfig, queue_capacity: usize) -> crate::server::Settings {
    crate::server::Settings {
        engine,
        reconcile_every: std::time::Duration::from_secs(3600),
        shutdown_grace: std::time::Duration::from_secs(5),
        insecure_skip_sns_verify: false,
        sns_topics: Vec::new(),
        sns_cert_endpoint: None,
        request_timeout: std::time::Duration::from_secs(15),
        queue_capacity,
        sqs: None,
    }
}
