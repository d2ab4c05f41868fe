//! `tswatch eval --nab DIR`: runs the engine over a Numenta Anomaly Benchmark
//! layout (`DIR/data/<category>/<series>.csv`, `DIR/labels/combined_windows.json`)
//! exactly as the service sees data (100-row files, state saved and restored
//! as JSON between files) and scores the result with the NAB v1 rules, ported
//! from the reference scorer `nab_score.py` (same numbers, to rounding).

use anyhow::{Context, bail};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tswatch_core::{EngineConfig, EngineState};

/// One NAB cost profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Profile {
    /// NAB's name for it.
    pub(crate) name: &'static str,
    /// Reward weight of a true positive (`A_TP`).
    pub(crate) tp: f64,
    /// Cost of a missed window (`A_FN`).
    pub(crate) fn_: f64,
    /// Cost weight of a false positive (`A_FP`).
    pub(crate) fp: f64,
}

/// The three NAB profiles, in NAB's order.
pub(crate) const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fn_: 1.0,
        fp: 0.11,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fn_: 1.0,
        fp: 0.22,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fn_: 2.0,
        fp: 0.11,
    },
];

/// The threshold reported for "flag nothing".
const NO_DETECTION_THRESHOLD: f64 = 1.1;

/// `2 / (1 + exp(5x)) - 1`, forced to -1 for `x > 3`.
pub(crate) fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// Rows at the start of an `n`-row file that are not scored:
/// `min(floor(0.15 n), 750)`.
pub(crate) fn probation_rows(n: usize) -> usize {
    ((0.15 * n as f64).floor()).min(750.0) as usize
}

/// Parses a NAB timestamp (`2014-04-01 00:00:00`, optionally with a
/// fraction, or with `T`) to nanoseconds since the epoch.
pub(crate) fn parse_timestamp(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .with_context(|| format!("bad timestamp {s:?}"))?;
    t.and_utc()
        .timestamp_nanos_opt()
        .with_context(|| format!("timestamp {s:?} out of range"))
}

/// Detector-independent per-row facts for one data file (`FileGeometry` in
/// `nab_score.py`).
#[derive(Debug, Clone)]
pub(crate) struct FileGeometry {
    /// Relative path (`category/series.csv`).
    pub(crate) rel: String,
    /// Rows in the file.
    pub(crate) n: usize,
    /// Window id (unique in the corpus) of each row, or -1.
    pub(crate) win: Vec<i64>,
    /// In-window value of each row (before `A_TP`).
    pub(crate) tpv: Vec<f64>,
    /// Out-of-window value of each row (before `A_FP`).
    pub(crate) fpv: Vec<f64>,
    /// First scored row.
    pub(crate) first_scorable: usize,
    /// Windows with at least one scored row.
    pub(crate) n_scorable_windows: usize,
}

impl FileGeometry {
    /// Builds the geometry; `windows` are (start, end) in the same units as
    /// `timestamps`, and must be data timestamps.
    pub(crate) fn new(
        rel: &str,
        timestamps: &[i64],
        windows: &[(i64, i64)],
        first_window_id: i64,
    ) -> anyhow::Result<FileGeometry> {
        let n = timestamps.len();
        let index: HashMap<i64, usize> = timestamps
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, i))
            .collect();
        let mut spans = Vec::with_capacity(windows.len());
        for &(s, e) in windows {
            match (index.get(&s), index.get(&e)) {
                (Some(&a), Some(&b)) => spans.push((a, b)),
                _ => bail!("{rel}: window edge {s} / {e} (ns) is not a data timestamp"),
            }
        }
        spans.sort();
        let max_tp = scaled_sigmoid(-1.0);
        let mut win = vec![-1i64; n];
        let mut tpv = vec![0.0; n];
        let mut fpv = vec![-1.0; n];
        for (k, &(left, right)) in spans.iter().enumerate() {
            let width = right as i64 - left as i64 + 1;
            for i in left..=right {
                win[i] = first_window_id + k as i64;
                tpv[i] =
                    scaled_sigmoid(-((right as i64 - i as i64 + 1) as f64) / width as f64) / max_tp;
            }
            let next = spans.get(k + 1).map_or(n, |s| s.0);
            if right + 1 < next {
                if width < 2 {
                    bail!("{rel}: window of width 1 row");
                }
                for (i, v) in fpv.iter_mut().enumerate().take(next).skip(right + 1) {
                    *v = scaled_sigmoid((i - right) as f64 / (width - 1) as f64);
                }
            }
        }
        let first_scorable = probation_rows(n);
        let mut ids: Vec<i64> = win[first_scorable.min(n)..]
            .iter()
            .copied()
            .filter(|&w| w >= 0)
            .collect();
        ids.dedup();
        Ok(FileGeometry {
            rel: rel.to_string(),
            n,
            win,
            tpv,
            fpv,
            first_scorable,
            n_scorable_windows: ids.len(),
        })
    }

    /// The reward of row `i` if it were a detection, for one profile.
    pub(crate) fn weighted(&self, i: usize, p: &Profile) -> f64 {
        if self.win[i] >= 0 {
            self.tpv[i] * p.tp
        } else {
            self.fpv[i] * p.fp
        }
    }
}

/// The labelled files of a NAB corpus.
#[derive(Debug, Clone)]
pub(crate) struct Corpus {
    /// Files, sorted by relative path.
    pub(crate) files: Vec<FileGeometry>,
    /// Windows in the label file (of the files in the corpus).
    pub(crate) total_windows: usize,
    /// The null detector's raw score per profile (in [`PROFILES`] order):
    /// it depends on the corpus only, so it is worked out once.
    null: [f64; 3],
}

impl Corpus {
    /// A corpus from its files (in order) and the total number of windows.
    pub(crate) fn new(files: Vec<FileGeometry>, total_windows: usize) -> Corpus {
        let mut c = Corpus {
            files,
            total_windows,
            null: [0.0; 3],
        };
        c.null = PROFILES.map(|p| null_raw(&c, &p));
        c
    }
}

/// Result of a threshold sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sweep {
    /// Best threshold (ties go to the highest).
    pub(crate) threshold: f64,
    /// Raw score at that threshold.
    pub(crate) raw: f64,
}

/// Optimises one threshold over the whole corpus for one profile: among all
/// distinct scores plus "detect nothing", the one maximising the raw score.
/// `scores[f]` has one value per row of `corpus.files[f]`.
pub(crate) fn sweep(corpus: &Corpus, scores: &[Vec<f64>], p: &Profile) -> Sweep {
    let mut s = Vec::new();
    let mut w = Vec::new();
    let mut v = Vec::new();
    let mut n_windows = 0usize;
    for (geo, sc) in corpus.files.iter().zip(scores) {
        for (i, &x) in sc.iter().enumerate().take(geo.n).skip(geo.first_scorable) {
            s.push(x);
            w.push(geo.win[i]);
            v.push(geo.weighted(i, p));
        }
        n_windows += geo.n_scorable_windows;
    }
    let base = -p.fn_ * n_windows as f64;
    let mut order: Vec<usize> = (0..s.len()).collect();
    // Stable, descending: equal scores keep corpus order (argsort(-s, stable)).
    order.sort_by(|&a, &b| s[b].partial_cmp(&s[a]).unwrap_or(std::cmp::Ordering::Equal));
    let mut best_raw = base;
    let top = order.first().map_or(0.0, |&i| s[i].next_up());
    let mut best_thr = NO_DETECTION_THRESHOLD.max(top);
    let mut run_max: HashMap<i64, f64> = HashMap::new();
    let mut cum = 0.0;
    for (k, &i) in order.iter().enumerate() {
        let delta = if w[i] < 0 {
            v[i]
        } else {
            let prev = run_max.get(&w[i]).copied().unwrap_or(-p.fn_);
            let cm = prev.max(v[i]);
            run_max.insert(w[i], cm);
            cm - prev
        };
        cum += delta;
        let last_of_group = order.get(k + 1).is_none_or(|&j| s[j] != s[i]);
        if last_of_group {
            let total = base + cum;
            if total > best_raw {
                best_raw = total;
                best_thr = s[i];
            }
        }
    }
    Sweep {
        threshold: best_thr,
        raw: best_raw,
    }
}

/// Figures for one file at one threshold.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct FileScore {
    /// Raw NAB score.
    pub(crate) raw: f64,
    /// Windows with a detection.
    pub(crate) windows_hit: usize,
    /// Scorable windows.
    pub(crate) windows: usize,
    /// Detections outside every window.
    pub(crate) fp_rows: usize,
}

/// Raw score of every file when detections are `score >= threshold`.
pub(crate) fn score_at(
    corpus: &Corpus,
    scores: &[Vec<f64>],
    p: &Profile,
    threshold: f64,
) -> Vec<FileScore> {
    corpus
        .files
        .iter()
        .zip(scores)
        .map(|(geo, sc)| {
            let mut fp = 0.0;
            let mut fp_rows = 0;
            let mut best: BTreeMap<i64, Option<f64>> = BTreeMap::new();
            for (i, &x) in sc.iter().enumerate().take(geo.n).skip(geo.first_scorable) {
                let det = x >= threshold;
                if geo.win[i] >= 0 {
                    let e = best.entry(geo.win[i]).or_insert(None);
                    if det {
                        let v = geo.weighted(i, p);
                        *e = Some(e.map_or(v, |b: f64| b.max(v)));
                    }
                } else if det {
                    fp += geo.weighted(i, p);
                    fp_rows += 1;
                }
            }
            let mut wscore = 0.0;
            let mut hits = 0;
            for b in best.values() {
                match b {
                    Some(v) => {
                        wscore += v;
                        hits += 1;
                    }
                    None => wscore -= p.fn_,
                }
            }
            FileScore {
                raw: fp + wscore,
                windows_hit: hits,
                windows: geo.n_scorable_windows,
                fp_rows,
            }
        })
        .collect()
}

/// Raw score of the null detector (constant 0.5, threshold swept).
pub(crate) fn null_raw(corpus: &Corpus, p: &Profile) -> f64 {
    let constant: Vec<Vec<f64>> = corpus.files.iter().map(|g| vec![0.5; g.n]).collect();
    sweep(corpus, &constant, p).raw
}

/// Figures for one profile.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProfileResult {
    /// Normalised score: 100 perfect, 0 the null detector.
    pub(crate) score: f64,
    /// Raw score.
    pub(crate) raw: f64,
    /// Threshold used.
    pub(crate) threshold: f64,
    /// Windows with a detection.
    pub(crate) windows_detected: usize,
    /// Windows in the label file.
    pub(crate) windows_total: usize,
    /// Detections outside every window.
    pub(crate) fp_rows: usize,
    /// The null detector's raw score.
    pub(crate) null_raw: f64,
    /// The perfect detector's raw score.
    pub(crate) perfect_raw: f64,
    /// Per file, in corpus order.
    #[serde(skip)]
    pub(crate) files: Vec<FileScore>,
}

/// Scores a detector on every profile: with `threshold: None` the threshold
/// is swept per profile (ranking quality), else fixed.
pub(crate) fn evaluate(
    corpus: &Corpus,
    scores: &[Vec<f64>],
    threshold: Option<f64>,
) -> BTreeMap<&'static str, ProfileResult> {
    PROFILES
        .iter()
        .zip(corpus.null)
        .map(|(p, null)| {
            let thr = threshold.unwrap_or_else(|| sweep(corpus, scores, p).threshold);
            let files = score_at(corpus, scores, p, thr);
            let raw: f64 = files.iter().map(|f| f.raw).sum();
            let perfect = p.tp * corpus.total_windows as f64;
            let r = ProfileResult {
                score: 100.0 * (raw - null) / (perfect - null),
                raw,
                threshold: thr,
                windows_detected: files.iter().map(|f| f.windows_hit).sum(),
                windows_total: corpus.total_windows,
                fp_rows: files.iter().map(|f| f.fp_rows).sum(),
                null_raw: null,
                perfect_raw: perfect,
                files,
            };
            (p.name, r)
        })
        .collect()
}

/// One series after the run.
#[derive(Debug, Clone)]
struct SeriesRun {
    timestamps: Vec<String>,
    values: Vec<String>,
    score: Vec<f64>,
    flag: Vec<bool>,
}

/// Reads `timestamp,value` cells of a NAB data file.
fn read_series(path: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let h = rdr.headers()?.clone();
    let col = |name: &str| {
        h.iter()
            .position(|c| c == name)
            .with_context(|| format!("{}: no {name} column", path.display()))
    };
    let (tc, vc) = (col("timestamp")?, col("value")?);
    let (mut ts, mut vs) = (Vec::new(), Vec::new());
    for r in rdr.records() {
        let r = r.with_context(|| format!("{}: bad CSV", path.display()))?;
        ts.push(r.get(tc).unwrap_or("").to_string());
        vs.push(r.get(vc).unwrap_or("").to_string());
    }
    Ok((ts, vs))
}

/// Feeds one series to the engine in `file_rows`-row CSV files, restoring
/// the state from JSON before each, as the service does.
fn run_series(path: &Path, file_rows: usize, config: &EngineConfig) -> anyhow::Result<SeriesRun> {
    let (timestamps, values) = read_series(path)?;
    let mut state = EngineState::default();
    let mut score = Vec::with_capacity(values.len());
    let mut flag = Vec::with_capacity(values.len());
    for (tchunk, vchunk) in timestamps.chunks(file_rows).zip(values.chunks(file_rows)) {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["timestamp", "value"])?;
        for (t, v) in tchunk.iter().zip(vchunk) {
            w.write_record([t, v])?;
        }
        let csv_bytes = w.into_inner().context("building a chunk")?;
        let out = crate::eval::score_as_service(&mut state, config, &csv_bytes)
            .with_context(|| path.display().to_string())?;
        let mut rdr = csv::Reader::from_reader(out.as_slice());
        let h = rdr.headers()?.clone();
        let col = |name: &str| {
            h.iter()
                .position(|c| c == name)
                .with_context(|| format!("scored output has no {name} column"))
        };
        let (sc, fc) = (col("anomaly_score")?, col("anomaly")?);
        let before = score.len();
        for r in rdr.records() {
            let r = r?;
            let cell = r.get(sc).unwrap_or("").trim();
            let s = if cell.is_empty() {
                0.0
            } else {
                cell.parse::<f64>()
                    .with_context(|| format!("bad anomaly_score {cell:?}"))?
            };
            score.push(if s.is_nan() { 0.0 } else { s });
            flag.push(r.get(fc) == Some("True"));
        }
        if score.len() - before != tchunk.len() {
            bail!(
                "{}: a {}-row file was scored into {} rows",
                path.display(),
                tchunk.len(),
                score.len() - before
            );
        }
    }
    Ok(SeriesRun {
        timestamps,
        values,
        score,
        flag,
    })
}

/// How to run `eval --nab`.
#[derive(Debug, Clone)]
pub(crate) struct NabOptions {
    /// The NAB-layout directory.
    pub(crate) dir: PathBuf,
    /// Rows per file.
    pub(crate) file_rows: usize,
    /// Only series whose relative path contains one of these (all if empty).
    pub(crate) only: Vec<String>,
    /// Where to write one result CSV per series, if anywhere.
    pub(crate) out: Option<PathBuf>,
    /// Engine settings under test.
    pub(crate) engine: EngineConfig,
    /// Ticks once per series scored.
    pub(crate) progress: crate::progress::Progress,
}

/// Per-category figures for one measure and profile.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CategoryFigures {
    /// Sum of the files' raw scores.
    pub(crate) raw: f64,
    /// Windows with a detection.
    pub(crate) windows_hit: usize,
    /// Detections outside every window.
    pub(crate) fp_rows: usize,
}

/// One category (first path component).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Category {
    /// Category name.
    pub(crate) category: String,
    /// Series in it.
    pub(crate) files: usize,
    /// Scorable windows in it.
    pub(crate) windows: usize,
    /// Ranking (swept threshold over `anomaly_score`), per profile.
    pub(crate) ranking: BTreeMap<&'static str, CategoryFigures>,
    /// Own `anomaly` flag, per profile.
    pub(crate) own_flag: BTreeMap<&'static str, CategoryFigures>,
}

/// The full `eval --nab` result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NabReport {
    /// Series scored.
    pub(crate) series: usize,
    /// Rows scored.
    pub(crate) rows: usize,
    /// Rows per file.
    pub(crate) file_rows: usize,
    /// Ranking quality: one best threshold over `anomaly_score` per profile.
    pub(crate) ranking: BTreeMap<&'static str, ProfileResult>,
    /// The service's own `anomaly` flag (1.0/0.0, threshold 1).
    pub(crate) own_flag: BTreeMap<&'static str, ProfileResult>,
    /// Per category, raw (not normalised).
    pub(crate) categories: Vec<Category>,
    /// Wall-clock seconds for run and scoring.
    pub(crate) seconds: f64,
}

/// Runs the engine over a NAB directory and scores it.
pub(crate) fn run(opts: &NabOptions) -> anyhow::Result<NabReport> {
    let started = Instant::now();
    let data = opts.dir.join("data");
    if !data.is_dir() {
        bail!(
            "{} is not a directory (expected a NAB layout)",
            data.display()
        );
    }
    let wpath = opts.dir.join("labels").join("combined_windows.json");
    let body = fs::read(&wpath).with_context(|| format!("cannot read {}", wpath.display()))?;
    let windows: BTreeMap<String, Vec<(String, String)>> = serde_json::from_slice(&body)
        .with_context(|| format!("{} is not a NAB windows file", wpath.display()))?;
    let rels: Vec<&String> = windows
        .keys()
        .filter(|r| opts.only.is_empty() || opts.only.iter().any(|o| r.contains(o.as_str())))
        .collect();
    if rels.is_empty() {
        bail!("no series selected in {}", wpath.display());
    }
    let file_rows = opts.file_rows.max(1);
    opts.progress.set_length(rels.len() as u64);

    // Series are independent: two workers pull them in order.
    let next = AtomicUsize::new(0);
    let mut runs: Vec<(usize, anyhow::Result<SeriesRun>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(rel) = rels.get(i) else { break };
                        let r = run_series(&data.join(rel.as_str()), file_rows, &opts.engine);
                        opts.progress.inc(1);
                        let failed = r.is_err();
                        done.push((i, r));
                        if failed {
                            break;
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    runs.sort_by_key(|(i, _)| *i);
    if runs.len() != rels.len() {
        // A worker stopped on an error (or panicked): report the first error.
        if let Some(pos) = runs.iter().position(|(_, r)| r.is_err())
            && let (_, Err(e)) = runs.swap_remove(pos)
        {
            return Err(e);
        }
        bail!("a worker thread panicked");
    }
    let mut series = Vec::with_capacity(runs.len());
    for (_, r) in runs {
        series.push(r?);
    }

    // Geometry, from the data timestamps and the windows.
    let mut files = Vec::with_capacity(rels.len());
    let mut total_windows = 0;
    for (rel, s) in rels.iter().zip(&series) {
        let ts: Vec<i64> = s
            .timestamps
            .iter()
            .map(|t| parse_timestamp(t))
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("data/{rel}"))?;
        let wins = windows[rel.as_str()]
            .iter()
            .map(|(a, b)| Ok((parse_timestamp(a)?, parse_timestamp(b)?)))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{}: windows of {rel}", wpath.display()))?;
        files.push(FileGeometry::new(rel, &ts, &wins, total_windows as i64)?);
        total_windows += wins.len();
    }
    let corpus = Corpus::new(files, total_windows);
    let scores: Vec<Vec<f64>> = series.iter().map(|s| s.score.clone()).collect();
    let flags: Vec<Vec<f64>> = series
        .iter()
        .map(|s| s.flag.iter().map(|&f| if f { 1.0 } else { 0.0 }).collect())
        .collect();
    let ranking = evaluate(&corpus, &scores, None);
    let own_flag = evaluate(&corpus, &flags, Some(1.0));

    let mut categories: Vec<Category> = Vec::new();
    for (k, geo) in corpus.files.iter().enumerate() {
        let name = geo.rel.split('/').next().unwrap_or("").to_string();
        if categories.last().is_none_or(|c| c.category != name) {
            categories.push(Category {
                category: name,
                files: 0,
                windows: 0,
                ranking: BTreeMap::new(),
                own_flag: BTreeMap::new(),
            });
        }
        let Some(c) = categories.last_mut() else {
            continue;
        };
        c.files += 1;
        c.windows += geo.n_scorable_windows;
        for (res, dst) in [(&ranking, &mut c.ranking), (&own_flag, &mut c.own_flag)] {
            for (p, r) in res {
                let f = &r.files[k];
                let e = dst.entry(p).or_insert(CategoryFigures {
                    raw: 0.0,
                    windows_hit: 0,
                    fp_rows: 0,
                });
                e.raw += f.raw;
                e.windows_hit += f.windows_hit;
                e.fp_rows += f.fp_rows;
            }
        }
    }

    if let Some(out) = &opts.out {
        for (rel, s) in rels.iter().zip(&series) {
            write_result(&out.join(rel.as_str()), s)?;
        }
    }
    Ok(NabReport {
        series: series.len(),
        rows: series.iter().map(|s| s.score.len()).sum(),
        file_rows,
        ranking,
        own_flag,
        categories,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes `timestamp,value,anomaly_score,anomaly` (anomaly as 0/1).
fn write_result(path: &Path, s: &SeriesRun) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut w = csv::Writer::from_path(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    w.write_record(["timestamp", "value", "anomaly_score", "anomaly"])?;
    for i in 0..s.score.len() {
        w.write_record([
            s.timestamps[i].as_str(),
            s.values[i].as_str(),
            &format!("{}", s.score[i]),
            if s.flag[i] { "1" } else { "0" },
        ])?;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The report as a table.
pub(crate) fn render(r: &NabReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "NAB: {} series, {} rows, {}-row files ({:.1} s)",
        r.series, r.rows, r.file_rows, r.seconds
    );
    let _ = writeln!(
        s,
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "measure", "standard", "low_FP", "low_FN", "windows", "fp_rows"
    );
    for (label, res) in [
        ("ranking (best threshold, score)", &r.ranking),
        ("own anomaly flag (threshold 1)", &r.own_flag),
    ] {
        let g = |p: &str| res.get(p).map_or(f64::NAN, |x| x.score);
        let st = res.get("standard");
        let _ = writeln!(
            s,
            "{:<34} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>9}",
            label,
            g("standard"),
            g("reward_low_FP_rate"),
            g("reward_low_FN_rate"),
            st.map_or(String::new(), |x| format!(
                "{}/{}",
                x.windows_detected, x.windows_total
            )),
            st.map_or(0, |x| x.fp_rows),
        );
    }
    for (label, res) in [("ranking", &r.ranking), ("own flag", &r.own_flag)] {
        for p in PROFILES {
            if let Some(x) = res.get(p.name) {
                let _ = writeln!(
                    s,
                    "  {label:<9} {:<20} thr={:<14.10} raw={:>9.3} null={:>9.3} windows {}/{} fp_rows {}",
                    p.name,
                    x.threshold,
                    x.raw,
                    x.null_raw,
                    x.windows_detected,
                    x.windows_total,
                    x.fp_rows
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nper category, standard profile, raw score (sum of the files' raw NAB scores, not normalised):"
    );
    let _ = writeln!(
        s,
        "{:<24} {:>5} {:>7} | {:>9} {:>7} {:>8} | {:>9} {:>7} {:>8}",
        "category", "files", "windows", "rank raw", "hit", "fp_rows", "flag raw", "hit", "fp_rows"
    );
    for c in &r.categories {
        let (a, b) = (c.ranking.get("standard"), c.own_flag.get("standard"));
        let f = |x: Option<&CategoryFigures>| {
            x.map_or((f64::NAN, 0, 0), |x| (x.raw, x.windows_hit, x.fp_rows))
        };
        let (a, b) = (f(a), f(b));
        let _ = writeln!(
            s,
            "{:<24} {:>5} {:>7} | {:>9.3} {:>7} {:>8} | {:>9.3} {:>7} {:>8}",
            c.category, c.files, c.windows, a.0, a.1, a.2, b.0, b.1, b.2
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Corpus {
        // 20 rows a minute apart: probation 3 rows; one window, rows 10..=14.
        let ts: Vec<i64> = (0..20).map(|i| i * 60_000_000_000).collect();
        let geo = FileGeometry::new("cat/a.csv", &ts, &[(ts[10], ts[14])], 0).unwrap();
        Corpus::new(vec![geo], 1)
    }

    fn at(rows: &[usize]) -> Vec<Vec<f64>> {
        let mut s = vec![0.0; 20];
        for &r in rows {
            s[r] = 1.0;
        }
        vec![s]
    }

    #[test]
    fn detection_at_left_edge_earns_one_and_early_fp_costs_fp() {
        let c = tiny();
        let p = &PROFILES[0];
        let hit = score_at(&c, &at(&[10]), p, 1.0);
        assert!((hit[0].raw - 1.0).abs() < 1e-12, "{hit:?}");
        assert_eq!((hit[0].windows_hit, hit[0].fp_rows), (1, 0));
        let both = score_at(&c, &at(&[5, 10]), p, 1.0);
        assert!((both[0].raw - (1.0 - 0.11)).abs() < 1e-12, "{both:?}");
        assert_eq!(both[0].fp_rows, 1);
        // Probation rows are not scored; a miss costs A_FN.
        let miss = score_at(&c, &at(&[1]), &PROFILES[2], 1.0);
        assert!((miss[0].raw + 2.0).abs() < 1e-12, "{miss:?}");
        // The sweep picks the threshold that keeps the hit and drops the FP.
        let mut s = at(&[10]);
        s[0][5] = 0.5;
        let sw = sweep(&c, &s, p);
        assert_eq!(sw.threshold, 1.0);
        assert!((sw.raw - 1.0).abs() < 1e-12);
        // Perfect detector normalises to 100.
        let r = evaluate(&c, &at(&[10]), Some(1.0));
        assert!((r["standard"].score - 100.0).abs() < 1e-9);
    }

    #[test]
    fn window_edges_must_be_data_timestamps() {
        let ts: Vec<i64> = (0..20).collect();
        assert!(FileGeometry::new("x", &ts, &[(3, 99)], 0).is_err());
        assert_eq!(
            parse_timestamp("2014-02-19 10:50:00.000000").unwrap(),
            parse_timestamp("2014-02-19 10:50:00").unwrap()
        );
        assert_eq!(scaled_sigmoid(3.5), -1.0);
        assert_eq!(probation_rows(10_000), 750);
        assert_eq!(probation_rows(20), 3);
    }
}
