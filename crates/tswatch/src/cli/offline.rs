//! The one-shot commands: `score` (offline scoring, optionally carrying
//! state between runs) and `produce` (the seed's test producer).

use crate::cli::exit;
use crate::cli::{ProduceArgs, ScoreArgs};
use crate::csv::scorer::{ScoreError, score_csv_with};
use crate::eval::scenario::Scenario;
use crate::progress::{Count, Progress, ProgressRead};
use crate::state::documents::{self, StateDoc, Summary, now_iso};
use crate::storage::Storage;
use anyhow::Context;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};
use tswatch_core::{Engine, EngineConfig};

/// `tswatch score`: scores `--input` into `--output` (`-`: standard input,
/// standard output); with `--state DIR` the baseline continues from (and is
/// saved to) `DIR`. The summary goes to stdout (JSON with `--json`), or to
/// stderr when stdout carries the scored copy.
pub(crate) fn score_file(args: &ScoreArgs, config: &EngineConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout && args.json {
        return Err(exit::usage(
            "--json prints the summary on stdout, where --output - writes the scored copy: use one or the other",
        ));
    }
    let mut doc = match &args.state {
        Some(dir) => load_state(dir)?,
        None => StateDoc::new(Default::default()),
    };
    let mut engine = Engine::from_state(*config, doc.engine.clone())
        .context("the saved state cannot be used")?;
    let (input, input_name) = open_input(&args.input)?;
    // A regular file (given by name, or as stdin) shows its bytes, anything
    // else (a pipe) its rows as they stream by.
    let size = input
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    let progress = match size {
        Some(total) => (Progress::bytes("scoring", total), Count::Bytes),
        None => (Progress::rows("scoring"), Count::Lines),
    };
    let reader = BufReader::with_capacity(
        crate::csv::records::READ_BUFFER,
        ProgressRead::new(input, progress.0.clone(), progress.1),
    );
    let (out, tmp) = if to_stdout {
        (stdout_file()?, None)
    } else {
        let tmp = args.output.with_extension("csv.partial");
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        (f, Some(tmp))
    };
    let mut w = BufWriter::with_capacity(crate::csv::records::READ_BUFFER, out);
    let scored = score_csv_with(reader, &mut w, &mut engine, args.spreadsheet_safe);
    progress.0.finish();
    let written = scored.map_err(|e| -> anyhow::Error {
        match e {
            ScoreError::Input(e) => {
                exit::Classified::InputRejected(anyhow::anyhow!("{input_name}: {e}")).into()
            }
            // I/O failures are the run's, not the input's (exit 1, not 3).
            ScoreError::Read(e) => anyhow::anyhow!("{input_name}: reading the input: {e}"),
            ScoreError::Output(e) => anyhow::anyhow!("{input_name}: writing the scored copy: {e}"),
        }
    });
    let report =
        match written.and_then(|r| w.flush().context("writing the scored copy").map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                drop(w);
                if let Some(tmp) = &tmp {
                    let _ = fs::remove_file(tmp);
                }
                return Err(e);
            }
        };
    drop(w);
    if let Some(tmp) = &tmp {
        fs::rename(tmp, &args.output)
            .with_context(|| format!("cannot write {}", args.output.display()))?;
    }
    doc.seq += 1;
    doc.last_updated = now_iso();
    doc.engine = engine.to_state();
    if let Some(dir) = &args.state {
        save_state(dir, &doc)?;
    }
    let output_name = if to_stdout {
        "-".to_string()
    } else {
        args.output.display().to_string()
    };
    let summary = Summary::of_report(
        input_name,
        output_name,
        doc.last_updated.clone(),
        &report,
        doc.engine.observation_counts(),
        None,
        doc.seq,
        started.elapsed().as_secs_f64() * 1e3,
    );
    if args.json {
        print_stdout(&serde_json::to_string_pretty(&summary)?)
    } else {
        let text = render_summary(&summary);
        if to_stdout {
            eprint!("{text}");
            Ok(())
        } else {
            print_stdout(text.trim_end())
        }
    }
}

/// The summary of `tswatch score` as people read it.
fn render_summary(s: &Summary) -> String {
    let rate = 100.0 * s.anomaly_rate;
    let mut t = format!(
        "scored {} rows of {} into {} in {:.0} ms\n  {} anomalous rows ({rate:.2}%), {} events\n  channels: {}\n",
        s.total_rows,
        s.source_key,
        s.output_key,
        s.duration_ms,
        s.anomaly_count,
        s.event_count,
        s.channels.join(", "),
    );
    if s.missing_cells > 0 {
        t.push_str(&format!(
            "  missing or non-numeric cells: {}\n",
            s.missing_cells
        ));
    }
    t
}

/// The input of `score`: the file, or standard input for `-`; and its
/// name for messages and the summary.
fn open_input(path: &Path) -> anyhow::Result<(File, String)> {
    if path.as_os_str() == "-" {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot read standard input")?;
        return Ok((File::from(fd), "-".to_string()));
    }
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok((f, path.display().to_string()))
}

/// Standard output as a plain file (unbuffered: `score` buffers itself, and
/// its writer runs on a thread of its own).
fn stdout_file() -> anyhow::Result<File> {
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot write standard output")?;
    Ok(File::from(fd))
}

/// Writes `text` and a newline to stdout; a reader that went away (`| head`)
/// ends the output quietly instead of a panic.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

fn load_state(dir: &Path) -> anyhow::Result<StateDoc> {
    let engine_path = dir.join("engine.json");
    if let Ok(b) = fs::read(&engine_path) {
        return serde_json::from_slice(&b)
            .with_context(|| format!("{} is not a tswatch state file", engine_path.display()));
    }
    let seed = dir.join("baseline.json");
    if let Ok(b) = fs::read(&seed) {
        let v = serde_json::from_slice(&b)
            .with_context(|| format!("{} is not JSON", seed.display()))?;
        return Ok(StateDoc::new(documents::adopt_seed_baseline(&v)?));
    }
    Ok(StateDoc::new(Default::default()))
}

fn save_state(dir: &Path, doc: &StateDoc) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, body) in [
        ("engine.json", serde_json::to_vec(doc)?),
        (
            "baseline.json",
            serde_json::to_vec_pretty(&doc.baseline_json())?,
        ),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, body)?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `tswatch produce`: uploads batches to the configured storage.
pub(crate) async fn produce(storage: &Storage, args: &ProduceArgs) -> anyhow::Result<()> {
    let seed = args
        .seed
        .unwrap_or_else(|| chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64);
    // Rows are a minute apart. Unless told where to start, the batches are
    // back-dated so that the last of `--count` ends now: no file name or
    // row is in the future.
    let now = chrono::Utc::now().timestamp() as f64;
    let span = args.rows as f64 * crate::eval::scenario::ROW_SECONDS;
    let start = match args.start {
        Some(t) => t.timestamp() as f64,
        None => now - span * args.count.max(1) as f64,
    };
    let mut warned = args.start.is_some();
    let mut sc = Scenario::new(&args.scenario, seed, start).ok_or_else(|| {
        exit::usage(format!(
            "unknown scenario {:?}; known: {}",
            args.scenario,
            crate::eval::scenario::ALL.join(", ")
        ))
    })?;
    let prefix = if args.scenario == "seed" {
        "sensors"
    } else {
        sc.name()
    };
    let mut sent = 0u64;
    loop {
        let (csv, labels, first) = sc.batch(args.rows);
        let key = crate::eval::scenario::batch_key(prefix, first);
        let anomalous: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
        if args.labels {
            // Written first, so the truth is there when the batch is scored.
            let sidecar = key.replace(".csv", ".labels.json");
            let body = serde_json::json!({ "source_key": key, "anomalous_rows": anomalous });
            storage.put(&sidecar, serde_json::to_vec(&body)?).await?;
        }
        storage
            .put(&key, csv.into_bytes())
            .await
            .with_context(|| format!("uploading {key}"))?;
        sent += 1;
        println!(
            "{key} ({} rows, {} anomalies injected)",
            args.rows,
            anomalous.len()
        );
        if args.count != 0 && sent >= args.count {
            return Ok(());
        }
        if !warned && sc.clock() > chrono::Utc::now().timestamp() as f64 {
            warned = true;
            eprintln!(
                "note: {} rows a minute apart per file, every {} s: row times now run ahead of the clock (use --interval {} to keep pace, or --start)",
                args.rows, args.interval, span
            );
        }
        tokio::time::sleep(Duration::from_secs_f64(args.interval.max(0.0))).await;
    }
}

/// `tswatch eval`: prints the quality table (or JSON); with `--all`, fails
/// ([`exit::ExitCode::GateFailed`]) when a target is missed.
pub(crate) fn eval(args: &crate::cli::EvalArgs, engine: &EngineConfig) -> anyhow::Result<()> {
    if let Some(dir) = &args.nab {
        return eval_nab(dir, args, engine);
    }
    let names: Vec<String> = if args.all || args.scenarios.is_empty() {
        crate::eval::scenario::ALL
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.scenarios.clone()
    };
    if let Some(n) = names
        .iter()
        .find(|n| !crate::eval::scenario::ALL.contains(&n.as_str()))
    {
        return Err(exit::usage(format!(
            "unknown scenario {n:?}; known: {}",
            crate::eval::scenario::ALL.join(", ")
        )));
    }
    let opts = crate::eval::EvalOptions {
        rows: args.rows.max(1),
        file_rows: args.file_rows.max(1),
        seed: args.seed,
        engine: *engine,
    };
    let progress = Progress::steps("scenarios", names.len() as u64);
    let mut results = Vec::new();
    for n in &names {
        progress.set_message(n.clone());
        results.push(crate::eval::run(n, &opts)?);
        progress.inc(1);
    }
    progress.finish();
    let targets = crate::eval::targets(&results);
    if args.json {
        print_stdout(&serde_json::to_string_pretty(
            &serde_json::json!({ "scenarios": results, "targets": targets }),
        )?)?;
    } else {
        print_stdout(crate::eval::render(&results, &targets).trim_end())?;
    }
    let missed: Vec<&str> = targets
        .iter()
        .filter(|t| !t.pass)
        .map(|t| t.measure.as_str())
        .collect();
    if args.all && !missed.is_empty() {
        return Err(exit::Classified::GateFailed(anyhow::anyhow!(
            "{} of {} detection targets missed: {}",
            missed.len(),
            targets.len(),
            missed.join("; ")
        ))
        .into());
    }
    Ok(())
}

/// `tswatch eval --nab DIR`: the NAB table (or JSON), then the
/// `--min-flag-score` guard ([`exit::ExitCode::GateFailed`]).
fn eval_nab(dir: &Path, args: &crate::cli::EvalArgs, engine: &EngineConfig) -> anyhow::Result<()> {
    let progress = Progress::steps("series", 0);
    let report = crate::eval::nab::run(&crate::eval::nab::NabOptions {
        dir: dir.to_path_buf(),
        file_rows: args.file_rows.max(1),
        only: args.only.clone(),
        out: args.out.clone(),
        engine: *engine,
        progress: progress.clone(),
    })
    .with_context(|| format!("NAB evaluation of {}", dir.display()));
    progress.finish();
    let report = report?;
    if args.json {
        print_stdout(&serde_json::to_string_pretty(&report)?)?;
    } else {
        print_stdout(crate::eval::nab::render(&report).trim_end())?;
    }
    if let Some(min) = args.min_flag_score {
        let got = report
            .own_flag
            .get("standard")
            .map_or(f64::NEG_INFINITY, |r| r.score);
        if got.is_nan() || got < min {
            return Err(exit::Classified::GateFailed(anyhow::anyhow!(
                "own-flag NAB standard score {got:.2} is below --min-flag-score {min}"
            ))
            .into());
        }
    }
    Ok(())
}
