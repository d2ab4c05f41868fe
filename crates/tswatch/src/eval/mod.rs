//! `tswatch eval`: runs the engine over labelled scenarios exactly as the
//! service sees data (CSV files of 100 rows, state saved and restored as
//! JSON between files) and measures how trustworthy the alerts are.

pub(crate) mod nab;
pub mod scenario;

use crate::csv::scorer::score_csv;
use scenario::{Event, SEED_CHANNELS, Scenario};
use serde::Serialize;
use std::time::Instant;
use tswatch_core::{Engine, EngineConfig, EngineState};

/// How to run an evaluation.
#[derive(Debug, Clone)]
pub(crate) struct EvalOptions {
    /// Rows per scenario.
    pub(crate) rows: usize,
    /// Rows per file.
    pub(crate) file_rows: usize,
    /// Generator seed.
    pub(crate) seed: u64,
    /// Engine settings under test.
    pub(crate) engine: EngineConfig,
}

/// Figures for one scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Metrics {
    /// Scenario name.
    pub(crate) scenario: String,
    /// Rows scored.
    pub(crate) rows: usize,
    /// Rows with an injected anomaly.
    pub(crate) labelled: usize,
    /// Rows flagged.
    pub(crate) flagged: usize,
    /// Flagged and labelled.
    pub(crate) true_positives: usize,
    /// Flagged, not labelled.
    pub(crate) false_positives: usize,
    /// `tp / flagged` (1 when nothing was flagged).
    pub(crate) precision: f64,
    /// `tp / labelled` (1 when nothing was labelled).
    pub(crate) recall: f64,
    /// Harmonic mean of the two.
    pub(crate) f1: f64,
    /// Share of unlabelled rows flagged.
    pub(crate) false_positive_rate: f64,
    /// Rows from the start of a lasting change to its first flag.
    pub(crate) detection_delay: Option<usize>,
    /// Share of rows flagged from 200 rows after a lasting change on.
    pub(crate) flagged_after_relearn: Option<f64>,
    /// Largest `|baseline std / true sd - 1|` over the seed channels after 5,000 rows.
    pub(crate) std_error_at_5000: Option<f64>,
    /// Throughput of parse, score and write.
    pub(crate) rows_per_s: f64,
}

/// Runs one scenario.
pub(crate) fn run(name: &str, opts: &EvalOptions) -> anyhow::Result<Metrics> {
    let mut sc = Scenario::new(name, opts.seed, 1_769_904_000.0).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown scenario {name:?}; known: {}",
            scenario::ALL.join(", ")
        )
    })?;
    let mut state = EngineState::default();
    let mut flags = Vec::with_capacity(opts.rows);
    let mut labels = Vec::with_capacity(opts.rows);
    let mut std_error = None;
    let started = Instant::now();
    while labels.len() < opts.rows {
        let n = opts.file_rows.min(opts.rows - labels.len());
        let (csv, lab, _) = sc.batch(n);
        let out = score_as_service(&mut state, &opts.engine, csv.as_bytes())?;
        flags.extend(anomaly_column(&out)?);
        labels.extend(lab);
        if std_error.is_none() && labels.len() >= 5000 && matches!(name, "seed" | "clean") {
            std_error = Some(
                SEED_CHANNELS
                    .iter()
                    .filter_map(|(ch, _, sd)| {
                        state
                            .channels
                            .get(*ch)
                            .map(|c| (c.stats.std() / sd - 1.0).abs())
                    })
                    .fold(0.0f64, f64::max),
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let count = |f: &dyn Fn(usize) -> bool| (0..flags.len()).filter(|&i| f(i)).count();
    let labelled = count(&|i| labels[i]);
    let flagged = count(&|i| flags[i]);
    let tp = count(&|i| labels[i] && flags[i]);
    let fp = flagged - tp;
    let negatives = flags.len() - labelled;
    let precision = if flagged == 0 {
        1.0
    } else {
        tp as f64 / flagged as f64
    };
    let recall = if labelled == 0 {
        1.0
    } else {
        tp as f64 / labelled as f64
    };
    let (detection_delay, flagged_after_relearn) = match sc.event() {
        Event::ChangeAt(at) if at < flags.len() => {
            let delay = (at..flags.len()).find(|&i| flags[i]).map(|i| i - at);
            let after = at + 200;
            let rate = if after < flags.len() {
                Some(count(&|i| i >= after && flags[i]) as f64 / (flags.len() - after) as f64)
            } else {
                None
            };
            (delay, rate)
        }
        _ => (None, None),
    };
    Ok(Metrics {
        scenario: name.to_string(),
        rows: flags.len(),
        labelled,
        flagged,
        true_positives: tp,
        false_positives: fp,
        precision,
        recall,
        f1: if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        },
        false_positive_rate: if negatives == 0 {
            0.0
        } else {
            fp as f64 / negatives as f64
        },
        detection_delay,
        flagged_after_relearn,
        std_error_at_5000: std_error,
        rows_per_s: flags.len() as f64 / secs.max(1e-9),
    })
}

/// Scores one file as the service does: the engine restored from `state`
/// through its JSON form, then `state` replaced by the engine's new state.
/// Returns the scored CSV.
pub(crate) fn score_as_service(
    state: &mut EngineState,
    config: &EngineConfig,
    csv: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let json = serde_json::to_vec(&*state)?;
    let mut engine = Engine::from_state(*config, serde_json::from_slice(&json)?)?;
    let mut out = Vec::with_capacity(csv.len() * 3);
    score_csv(csv, &mut out, &mut engine)?;
    *state = engine.to_state();
    Ok(out)
}

fn anomaly_column(out: &[u8]) -> anyhow::Result<Vec<bool>> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(out);
    let col = rdr
        .headers()?
        .iter()
        .position(|h| h == "anomaly")
        .ok_or_else(|| anyhow::anyhow!("scored output has no anomaly column"))?;
    rdr.records()
        .map(|r| Ok(r?.get(col) == Some("True")))
        .collect()
}

/// One line of the targets table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    /// What is measured.
    pub(crate) measure: String,
    /// The seed design's figure.
    pub(crate) seed_design: String,
    /// The target.
    pub(crate) target: String,
    /// What this run measured.
    pub(crate) measured: String,
    /// Whether the target holds.
    pub(crate) pass: bool,
}

/// Checks the targets against the scenarios that were run.
pub(crate) fn targets(results: &[Metrics]) -> Vec<Target> {
    let get = |n: &str| results.iter().find(|m| m.scenario == n);
    let mut t = Vec::new();
    let mut add = |measure: &str, seed: &str, target: &str, measured: String, pass: bool| {
        t.push(Target {
            measure: measure.into(),
            seed_design: seed.into(),
            target: target.into(),
            measured,
            pass,
        })
    };
    if let Some(m) = get("clean") {
        let r = m.flagged as f64 / m.rows as f64;
        add(
            "clean data, rows flagged",
            "~5.4%",
            "<= 0.5%",
            format!("{:.3}%", 100.0 * r),
            r <= 0.005,
        );
    }
    if let Some(m) = get("seed") {
        add(
            "seed scenario, precision / recall",
            "0.89 / 1.00",
            ">= 0.97 / >= 0.98",
            format!("{:.3} / {:.3}", m.precision, m.recall),
            m.precision >= 0.97 && m.recall >= 0.98,
        );
        if let Some(e) = m.std_error_at_5000 {
            add(
                "baseline std vs true sd after 5,000 rows (5% anomalies)",
                "1.25-1.30x",
                "within 5%",
                format!("within {:.1}%", 100.0 * e),
                e <= 0.05,
            );
        }
    }
    if let Some(m) = get("level_shift") {
        let quiet = m.flagged_after_relearn.unwrap_or(1.0);
        let delay = m.detection_delay;
        add(
            "permanent level shift",
            "flags forever",
            "re-learned within 200 rows, then quiet",
            format!(
                "first flag after {} rows; {:.3}% flagged from 200 rows on",
                delay.map_or("never".into(), |d| d.to_string()),
                100.0 * quiet
            ),
            delay.is_some_and(|d| d < 200) && quiet <= 0.005,
        );
    }
    if let Some(m) = get("daily") {
        add(
            "daily cycle, rows flagged when nothing is wrong",
            "(not handled)",
            "<= 1%",
            format!("{:.3}%", 100.0 * m.false_positive_rate),
            m.false_positive_rate <= 0.01,
        );
    }
    if let Some(m) = get("joint") {
        add(
            "joint (correlation-breaking) anomalies, recall",
            "(not handled)",
            ">= 0.8",
            format!("{:.3}", m.recall),
            m.recall >= 0.8,
        );
    }
    t
}

/// The human-readable report.
pub(crate) fn render(results: &[Metrics], targets: &[Target]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<12} {:>7} {:>8} {:>8} {:>9} {:>7} {:>7} {:>9} {:>7} {:>10} {:>10}\n",
        "scenario",
        "rows",
        "labelled",
        "flagged",
        "precision",
        "recall",
        "F1",
        "FPR",
        "delay",
        "after-200",
        "rows/s"
    ));
    for m in results {
        // With nothing to find, precision, recall and F1 mean nothing.
        let q = |x: f64| {
            if m.labelled == 0 {
                "-".to_string()
            } else {
                format!("{x:.3}")
            }
        };
        s.push_str(&format!(
            "{:<12} {:>7} {:>8} {:>8} {:>9} {:>7} {:>7} {:>8.3}% {:>7} {:>10} {:>10.0}\n",
            m.scenario,
            m.rows,
            m.labelled,
            m.flagged,
            q(m.precision),
            q(m.recall),
            q(m.f1),
            100.0 * m.false_positive_rate,
            m.detection_delay.map_or("-".into(), |d| d.to_string()),
            m.flagged_after_relearn
                .map_or("-".into(), |r| format!("{:.3}%", 100.0 * r)),
            m.rows_per_s,
        ));
    }
    if !targets.is_empty() {
        s.push_str("\ntargets:\n");
        for t in targets {
            s.push_str(&format!(
                "  [{}] {}: {} (target {}, seed design {})\n",
                if t.pass { "PASS" } else { "FAIL" },
                t.measure,
                t.measured,
                t.target,
                t.seed_design
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_find_shows_no_precision_or_recall() {
        let opts = EvalOptions {
            rows: 300,
            file_rows: 100,
            seed: 1,
            engine: EngineConfig::default(),
        };
        let clean = run("clean", &opts).unwrap_or_else(|e| panic!("{e}"));
        let seed = run("seed", &opts).unwrap_or_else(|e| panic!("{e}"));
        let table = render(&[clean, seed], &[]);
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(&row("clean")[4..7], ["-", "-", "-"], "{table}");
        assert!(row("seed")[4].parse::<f64>().is_ok(), "{table}");
    }
}
