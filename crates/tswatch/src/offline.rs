//! The one-shot commands: `score` (offline scoring, optionally carrying
//! state between runs) and `produce` (the seed's test producer).

use crate::cli::{ProduceArgs, ScoreArgs};
use crate::csvscore::{ScoreError, score_csv_with};
use crate::exit;
use crate::scenario::Scenario;
use crate::statedoc::{self, StateDoc, Summary, now_iso};
use crate::storage::Storage;
use anyhow::Context;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use tswatch_core::{Engine, EngineConfig};

/// `tswatch score`: scores `--input` into `--output`; with `--state DIR`
/// the baseline continues from (and is saved to) `DIR`.
pub fn score_file(args: &ScoreArgs, config: &EngineConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut doc = match &args.state {
        Some(dir) => load_state(dir)?,
        None => StateDoc::new(Default::default()),
    };
    let mut engine = Engine::from_state(*config, doc.engine.clone())
        .context("the saved state cannot be used")?;
    let input =
        File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let tmp = args.output.with_extension("csv.partial");
    let out = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(crate::csvscore::READ_BUFFER, out);
    let report = match score_csv_with(
        BufReader::with_capacity(crate::csvscore::READ_BUFFER, input),
        &mut w,
        &mut engine,
        args.spreadsheet_safe,
    ) {
        Ok(r) => r,
        Err(e) => {
            drop(w);
            let _ = fs::remove_file(&tmp);
            let input = args.input.display();
            return Err(match e {
                ScoreError::Input(e) => {
                    exit::Classified::InputRejected(anyhow::anyhow!("{input}: {e}")).into()
                }
                ScoreError::Output(e) => {
                    anyhow::anyhow!("{input}: writing the scored copy: {e}")
                }
            });
        }
    };
    w.flush()?;
    drop(w);
    fs::rename(&tmp, &args.output)?;
    doc.seq += 1;
    doc.last_updated = now_iso();
    doc.engine = engine.to_state();
    if let Some(dir) = &args.state {
        save_state(dir, &doc)?;
    }
    let summary = Summary::of_report(
        args.input.display().to_string(),
        args.output.display().to_string(),
        doc.last_updated.clone(),
        &report,
        doc.engine.observation_counts(),
        None,
        doc.seq,
        started.elapsed().as_secs_f64() * 1e3,
    );
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
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
        return Ok(StateDoc::new(statedoc::adopt_seed_baseline(&v)?));
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
pub async fn produce(storage: &Storage, args: &ProduceArgs) -> anyhow::Result<()> {
    let seed = args
        .seed
        .unwrap_or_else(|| chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64);
    // Rows are a minute apart. Unless told where to start, the batches are
    // back-dated so that the last of `--count` ends now: no file name or
    // row is in the future.
    let now = chrono::Utc::now().timestamp() as f64;
    let span = args.rows as f64 * crate::scenario::ROW_SECONDS;
    let start = match args.start {
        Some(t) => t.timestamp() as f64,
        None => now - span * args.count.max(1) as f64,
    };
    let mut warned = args.start.is_some();
    let mut sc = Scenario::new(&args.scenario, seed, start).ok_or_else(|| {
        exit::usage(format!(
            "unknown scenario {:?}; known: {}",
            args.scenario,
            crate::scenario::ALL.join(", ")
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
        let key = crate::scenario::batch_key(prefix, first);
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
pub fn eval(args: &crate::cli::EvalArgs, engine: &EngineConfig) -> anyhow::Result<()> {
    if let Some(dir) = &args.nab {
        return eval_nab(dir, args, engine);
    }
    let names: Vec<String> = if args.all || args.scenarios.is_empty() {
        crate::scenario::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    if let Some(n) = names
        .iter()
        .find(|n| !crate::scenario::ALL.contains(&n.as_str()))
    {
        return Err(exit::usage(format!(
            "unknown scenario {n:?}; known: {}",
            crate::scenario::ALL.join(", ")
        )));
    }
    let opts = crate::eval::EvalOptions {
        rows: args.rows.max(1),
        file_rows: args.file_rows.max(1),
        seed: args.seed,
        engine: *engine,
    };
    let mut results = Vec::new();
    for n in &names {
        results.push(crate::eval::run(n, &opts)?);
    }
    let targets = crate::eval::targets(&results);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "scenarios": results, "targets": targets })
            )?
        );
    } else {
        print!("{}", crate::eval::render(&results, &targets));
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
    let report = crate::nab::run(&crate::nab::NabOptions {
        dir: dir.to_path_buf(),
        file_rows: args.file_rows.max(1),
        only: args.only.clone(),
        out: args.out.clone(),
        engine: *engine,
    })
    .with_context(|| format!("NAB evaluation of {}", dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::nab::render(&report));
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
