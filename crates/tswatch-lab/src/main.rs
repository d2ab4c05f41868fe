//! `tswatch-lab`: measurements of tswatch, kept out of the product binary.
//!
//! `tswatch-lab bench` times the real processor end to end, locally and on
//! S3 (a moto server), against the I/O floor, notes peak memory per size,
//! read-endpoint latency, small-file latency and one stream against two.
//! It drives the `tswatch` library directly; for the idle memory of the
//! service (`--latency`) it starts the `tswatch` binary itself.

mod bench;

use bench::Backend;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// tswatch-lab: measurements of tswatch (not part of the product).
#[derive(Debug, Parser)]
#[command(name = "tswatch-lab", version)]
struct Cli {
    /// The tswatch TOML configuration file; only its `[engine]` table is used.
    #[arg(long, global = true, env = "TSWATCH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Measure throughput and memory end to end against the I/O floor.
    Bench(BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file = tswatch::cli::config::Layer::from_file(cli.config.as_deref())?;
    // The service's runtime: two worker threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        match cli.command {
            Command::Bench(a) => bench(&a, file.engine).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `bench` options.
#[derive(Debug, Args)]
struct BenchArgs {
    /// File sizes in rows (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 10_000, 100_000, 1_000_000])]
    rows: Vec<usize>,
    /// Also measure every size on S3: start `moto_server` (pip install
    /// "moto[server]") on a free loopback port, use a fresh bucket per
    /// size, and stop it at the end. Moto keeps objects in its own memory
    /// (about twice the input per size, freed after each).
    #[arg(long)]
    moto: bool,
    /// Also time the read endpoints with this many processed files
    /// (comma-separated, e.g. 10,1000,100000); each set is first processed
    /// by the real processor, its streams concurrently.
    #[arg(long, value_delimiter = ',', value_name = "FILES")]
    reads: Vec<usize>,
    /// Streams (`raw/s<k>/`) the files of --reads are spread over.
    #[arg(long, default_value_t = 4, value_name = "N")]
    read_streams: usize,
    /// Also time the service on small files: start it on an empty
    /// directory, note its idle memory, then drop this many 100-row files
    /// into `raw/` one at a time and time each until its summary exists.
    #[arg(long, value_name = "FILES")]
    latency: Option<usize>,
    /// Also compare one stream with two: eight 100,000-row files through
    /// the real service, all in `raw/` and then split over `raw/s0/`, `raw/s1/`.
    #[arg(long)]
    streams: bool,
    /// Measure each size this many times, each in a fresh process and
    /// directory, and report the median run (shared machines are noisy).
    #[arg(long, default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=99))]
    repeat: u32,
    /// Scratch directory [default: a temporary directory]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The service binary whose idle memory --latency notes [default:
    /// `tswatch` beside this binary].
    #[arg(long, value_name = "PATH")]
    tswatch: Option<PathBuf>,
    /// Internal: measure one size in this process and print it as JSON.
    #[arg(long, hide = true)]
    child: Option<usize>,
    /// Internal: which part of the measurement the child does.
    #[arg(long, hide = true, value_enum, default_value_t = BenchPhase::Process)]
    child_phase: BenchPhase,
    /// Internal: the child measures in this S3 bucket (`AWS_*` environment).
    #[arg(long, hide = true, value_name = "BUCKET")]
    child_bucket: Option<String>,
}

/// One part of a `tswatch-lab bench` measurement. Each runs in its own child
/// process, so the peak memory of processing is that of processing alone:
/// not of generating and uploading the input, nor of the floor run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchPhase {
    /// Generate the input file (and upload it to the bucket).
    Prepare,
    /// Time the floor: parse the input and write an output of the scored shape.
    Floor,
    /// Time the real processing and note its peak memory.
    Process,
}

/// `tswatch-lab bench`: each size in a child process (its own peak memory),
/// locally and, with `--moto`, on a moto server it starts and stops.
async fn bench(a: &BenchArgs, engine: tswatch_core::EngineConfig) -> anyhow::Result<()> {
    let scratch = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("tswatch-bench-{}", std::process::id())),
    };
    if let Some(rows) = a.child {
        let backend = match &a.child_bucket {
            Some(bucket) => Backend::S3 {
                bucket: bucket.clone(),
            },
            None => Backend::Local,
        };
        let m = bench::measure_part(rows, &scratch, &backend, engine, a.child_phase).await?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    // The service whose idle memory --latency notes: checked before any
    // measurement starts.
    let service = a
        .tswatch
        .clone()
        .unwrap_or_else(|| exe.with_file_name("tswatch"));
    anyhow::ensure!(
        a.latency.is_none() || service.is_file(),
        "{} is missing: build it (cargo build --release -p tswatch) or name it with --tswatch",
        service.display()
    );
    std::fs::create_dir_all(&scratch)?;
    let repeat = a.repeat as usize;
    // One step per child phase (prepare, floor, process) of each run, then
    // one per read set, latency run and stream count.
    let runs = a.rows.len() * repeat * 3;
    let steps = runs * (1 + usize::from(a.moto))
        + a.reads.len()
        + usize::from(a.latency.is_some())
        + 2 * usize::from(a.streams);
    let progress = tswatch::progress::Progress::steps("bench", steps as u64);
    let results =
        bench::measure_in_children(&exe, &a.rows, repeat, &scratch, None, !a.json, &progress)
            .await?;
    let mut moto_results = Vec::new();
    if a.moto {
        progress.set_message("starting moto_server");
        let moto = bench::MotoServer::start(&scratch.join("moto.log")).await?;
        if !a.json {
            progress.note(&format!("moto_server at {}", moto.endpoint()));
        }
        moto_results = bench::measure_in_children(
            &exe,
            &a.rows,
            repeat,
            &scratch,
            Some(&moto),
            !a.json,
            &progress,
        )
        .await?;
    }
    let mut reads = Vec::new();
    for &files in &a.reads {
        progress.set_message(format!("reads over {files} files"));
        let dir = scratch.join(format!("reads-{files}"));
        let _ = std::fs::remove_dir_all(&dir);
        let m = bench::measure_reads(files, a.read_streams, &dir, engine).await?;
        if !a.json {
            progress.note(&format!(
                "measured reads over {files} files (prepared in {:.1} s); removing them",
                m.prepare_s
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
        reads.push(m);
        progress.inc(1);
    }
    let mut latency = None;
    if let Some(files) = a.latency {
        progress.set_message(format!("latency of {files} small files"));
        let dir = scratch.join("latency");
        let _ = std::fs::remove_dir_all(&dir);
        let idle_rss_kib = bench::measure_idle_rss(&service, &dir).await?;
        let _ = std::fs::remove_dir_all(&dir);
        latency = Some((
            idle_rss_kib,
            bench::measure_latency(files, &dir, engine).await?,
        ));
        let _ = std::fs::remove_dir_all(&dir);
        progress.inc(1);
    }
    let mut streams = Vec::new();
    if a.streams {
        for n in [1, 2] {
            progress.set_message(format!("{n} stream(s)"));
            let dir = scratch.join(format!("streams-{n}"));
            let _ = std::fs::remove_dir_all(&dir);
            streams.push(bench::measure_streams(n, 8, 100_000, &dir, engine).await?);
            let _ = std::fs::remove_dir_all(&dir);
            progress.inc(1);
        }
    }
    progress.finish();
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "files": results,
                "moto": moto_results,
                "reads": reads,
                "latency": latency.as_ref().map(|(idle_rss_kib, l)| serde_json::json!({
                    "idle_rss_kib": idle_rss_kib,
                    "files": l.files,
                    "p50_ms": l.ms.0,
                    "p99_ms": l.ms.1,
                    "max_ms": l.max_ms,
                })),
                "streams": streams,
            }))?
        );
    } else {
        let runs = if repeat > 1 {
            format!(", median of {repeat} runs per size")
        } else {
            String::new()
        };
        if !results.is_empty() {
            print!("{}", bench::render(&format!("local{runs}"), &results));
        }
        if !moto_results.is_empty() {
            print!(
                "\n{}",
                bench::render(&format!("S3 on moto{runs}"), &moto_results)
            );
        }
        if !reads.is_empty() {
            print!("\n{}", bench::render_reads(&reads));
        }
        if let Some((idle_rss_kib, l)) = &latency {
            println!(
                "\nidle service: {:.1} MiB resident\n{} files of 100 rows, dropped into raw/ until the summary exists: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                *idle_rss_kib as f64 / 1024.0,
                l.files,
                l.ms.0,
                l.ms.1,
                l.max_ms
            );
        }
        for m in &streams {
            println!(
                "\n{} x {} rows over {} stream(s): {:.2} s, {:.0} rows/s{}",
                m.files,
                m.rows,
                m.streams,
                m.seconds,
                (m.files * m.rows) as f64 / m.seconds,
                match streams.first() {
                    Some(one) if m.streams > 1 =>
                        format!(" ({:.2}x one stream)", one.seconds / m.seconds),
                    _ => String::new(),
                }
            );
        }
    }
    Ok(())
}
