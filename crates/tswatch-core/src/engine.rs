//! The per-row step: score a row against the state built from the rows
//! before it, then absorb it if it was judged normal.
//!
//! The compiler enforces the order: [`Engine::score`] takes `&self`, so it
//! cannot change the state a row is judged by (no look-ahead), and
//! [`Engine::update`] needs the [`RowScore`] that scoring produced. Rows
//! judged anomalous are never absorbed, and neither is a missing or
//! non-finite cell.
//!
//! A row's evidence: per channel, the two-sided normal tail of its z-score
//! against the channel's adaptive (or time-of-day) baseline; jointly, the
//! chi-square tail of its Mahalanobis distance. The strongest evidence,
//! corrected for how many tests were made (Bonferroni), is compared with the
//! configured false-alarm rate. So one threshold fits any number of channels.

use crate::channel::{Basis, ChannelState, Moment};
use crate::config::EngineConfig;
use crate::error::{ChannelLimit, ConfigError, StateError};
use crate::forest::IsolationForest;
use crate::joint::Joint;
use crate::score::{ForestVerdict, JointFinding, RowScore};
use crate::state::{EngineState, ForestRecipe, History};
use std::collections::{HashMap, VecDeque};

/// Streaming anomaly detector over any number of named channels.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    /// `config.alarm_surprise()`, worked out once rather than per row.
    alarm: f64,
    names: Vec<String>,
    channels: Vec<ChannelState>,
    index: HashMap<String, usize>,
    joint: Option<Joint>,
    /// Engine channel index of each joint-model channel.
    joint_cols: Vec<usize>,
    /// History columns, as engine channel indices.
    history_cols: Vec<usize>,
    /// Oldest first, full width of `history_cols`; NaN is a missing cell.
    history: VecDeque<Vec<f64>>,
    since_training: u64,
    trainings: u64,
    forest: Option<TrainedForest>,
    /// Scratch space of `update` (what each channel absorbed), kept to save
    /// an allocation per row.
    absorbed: Vec<Option<f64>>,
}

#[derive(Debug, Clone)]
struct TrainedForest {
    recipe: ForestRecipe,
    /// Engine channel index of each feature.
    features: Vec<usize>,
    model: std::sync::Arc<LazyForest>,
}

/// A forest trained on first use, by whichever thread needs it first (by
/// default the one writing verdicts, not the one scoring rows). Training is
/// a pure function of the rows and seed, so when it happens changes nothing.
#[derive(Debug)]
struct LazyForest {
    rows: Vec<Vec<f64>>,
    trees: usize,
    sample: usize,
    seed: u64,
    model: std::sync::OnceLock<Option<IsolationForest>>,
}

impl LazyForest {
    fn get(&self) -> Option<&IsolationForest> {
        self.model
            .get_or_init(|| IsolationForest::train(&self.rows, self.trees, self.sample, self.seed))
            .as_ref()
    }
}

/// Channels of one input, resolved to engine channel indices once, so the
/// per-row path does no name look-ups.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    cols: Vec<usize>,
    /// The distinct channels of `cols`, ordered by name: the joint model's
    /// channel order, worked out once instead of per row.
    by_name: Vec<usize>,
    /// The detectors' thresholds for this many channels, worked out once
    /// instead of per row.
    thresholds: crate::detector::Thresholds,
}

impl Binding {
    /// Number of channels bound.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// Whether no channel is bound.
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }
}

impl Engine {
    /// An engine with no history.
    pub fn new(config: EngineConfig) -> Result<Self, ConfigError> {
        Self::from_state(config, EngineState::default()).map_err(|e| match e {
            LoadError::Config(c) => c,
            LoadError::State(_) => unreachable!("the empty state is valid"),
        })
    }

    /// Restores an engine from its persisted state.
    pub fn from_state(config: EngineConfig, state: EngineState) -> Result<Self, LoadError> {
        config.validate()?;
        state.validate()?;
        let mut e = Engine {
            config,
            alarm: config.alarm_surprise(),
            names: Vec::new(),
            channels: Vec::new(),
            index: HashMap::new(),
            joint: None,
            joint_cols: Vec::new(),
            history_cols: Vec::new(),
            history: VecDeque::new(),
            since_training: state.history.since_training,
            trainings: state.history.trainings,
            forest: None,
            absorbed: Vec::new(),
        };
        for (name, c) in state.channels {
            let i = e.channel(&name);
            e.channels[i] = c;
        }
        if let Some(j) = state.joint {
            e.joint_cols = j.channels.iter().map(|n| e.channel(n)).collect();
            e.joint = Some(j);
        }
        let History {
            channels,
            rows,
            forest,
            ..
        } = state.history;
        e.history_cols = channels.iter().map(|n| e.channel(n)).collect();
        let width = e.history_cols.len();
        let skip = rows.len().saturating_sub(e.config.forest_window);
        e.history = rows
            .into_iter()
            .skip(skip)
            .map(|r| {
                let mut v: Vec<f64> = r.into_iter().map(|c| c.unwrap_or(f64::NAN)).collect();
                v.resize(width, f64::NAN);
                v
            })
            .collect();
        if let Some(recipe) = forest {
            e.forest = e.build_forest(recipe);
        }
        Ok(e)
    }

    /// The persisted form of this engine.
    pub fn to_state(&self) -> EngineState {
        EngineState {
            channels: self
                .names
                .iter()
                .cloned()
                .zip(self.channels.iter().cloned())
                .collect(),
            joint: self.joint.clone(),
            history: History {
                channels: self
                    .history_cols
                    .iter()
                    .map(|&i| self.names[i].clone())
                    .collect(),
                rows: self
                    .history
                    .iter()
                    .map(|r| r.iter().map(|&v| v.is_finite().then_some(v)).collect())
                    .collect(),
                since_training: self.since_training,
                trainings: self.trainings,
                forest: self.forest.as_ref().map(|f| f.recipe.clone()),
            },
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A channel's state, if it is known.
    pub fn channel_state(&self, name: &str) -> Option<&ChannelState> {
        self.index.get(name).map(|&i| &self.channels[i])
    }

    /// All-time statistics of a channel (the seed's baseline), if known.
    pub fn stats(&self, name: &str) -> Option<&crate::Welford> {
        self.channel_state(name).map(|c| &c.stats)
    }

    /// Whether a multivariate isolation forest is trained.
    pub fn forest_trained(&self) -> bool {
        self.forest.is_some()
    }

    /// Whether the joint model is in use.
    pub fn joint_active(&self) -> bool {
        self.joint
            .as_ref()
            .is_some_and(|j| j.n >= j.min_rows(self.config.min_observations))
    }

    /// Resolves the channel names of an input; unknown channels are added
    /// with empty statistics.
    pub fn bind<S: AsRef<str>>(&mut self, names: &[S]) -> Binding {
        let cols: Vec<usize> = names.iter().map(|n| self.channel(n.as_ref())).collect();
        let mut by_name = cols.clone();
        by_name.sort_by(|&a, &b| self.names[a].cmp(&self.names[b]));
        by_name.dedup();
        let thresholds = crate::detector::Thresholds::new(&self.config, cols.len());
        Binding {
            cols,
            by_name,
            thresholds,
        }
    }

    /// As [`Engine::bind`], but refuses (changing nothing) an input whose
    /// new channels would take the engine past `max_channels`.
    pub fn try_bind<S: AsRef<str>>(&mut self, names: &[S]) -> Result<Binding, ChannelLimit> {
        let mut new: Vec<&str> = names
            .iter()
            .map(AsRef::as_ref)
            .filter(|n| !self.index.contains_key(*n))
            .collect();
        new.sort_unstable();
        new.dedup();
        let total = self.names.len() + new.len();
        if !new.is_empty() && total > self.config.max_channels {
            return Err(ChannelLimit {
                new: new.len(),
                total,
                max: self.config.max_channels,
            });
        }
        Ok(self.bind(names))
    }

    fn channel(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.names.push(name.to_string());
        self.channels.push(ChannelState::default());
        self.index.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }

    /// Scores one row. `values[i]` belongs to the i-th bound channel; `None`
    /// or a non-finite value is a missing cell. `ts` is the row's time in
    /// seconds since the Unix epoch, if known.
    ///
    /// # Panics
    /// If `values` is not as long as the binding (a programming error).
    pub fn score(&self, binding: &Binding, ts: Option<f64>, values: &[Option<f64>]) -> RowScore {
        let mut out = RowScore::default();
        self.score_into(binding, ts, values, &mut out);
        out
    }

    /// As [`Engine::score`], reusing `out`'s buffers.
    pub fn score_into(
        &self,
        binding: &Binding,
        ts: Option<f64>,
        values: &[Option<f64>],
        out: &mut RowScore,
    ) {
        assert_eq!(
            binding.cols.len(),
            values.len(),
            "row width must match binding"
        );
        out.clear();
        let cfg = &self.config;
        let th = &binding.thresholds;
        let secs = ts;
        let ts = ts.map(Moment::new);
        for (&c, v) in binding.cols.iter().zip(values) {
            let ch = &self.channels[c];
            let x = v.filter(|x| x.is_finite());
            let verdict = x.map(|x| ch.detector.score(x, secs, th));
            out.verdicts.push(verdict);
            let scored = x.and_then(|x| ch.reference(ts, cfg).map(|r| (x, r)));
            let base = match scored {
                Some((x, r)) => {
                    out.basis.push(r.basis);
                    Some(ch.z(x, &r))
                }
                None => {
                    out.basis.push(Basis::Plain);
                    None
                }
            };
            out.base_z.push(base);
            // Until the detector's window is full enough (e.g. right after
            // adopting a seed baseline), the adaptive baseline's z is shown.
            out.z.push(verdict.and_then(|v| v.z).or(base));
        }
        out.joint = self.score_joint(binding, out);
        // The forest decides nothing unless `forest_alarm` is set, so by
        // default its verdicts are left to the caller, who can compute many
        // rows at once (much faster) with a `ForestView`.
        if self.config.forest_alarm {
            out.forest = self.score_forest(binding, values);
        }
        out.finish(cfg, self.alarm);
    }

    /// The z-scores of the joint model's channels into `input`, if all are
    /// present, and the baseline each was taken against. Filled in place:
    /// returning it would copy 150 bytes per row.
    fn joint_input(&self, binding: &Binding, row: &RowScore, input: &mut JointInput) -> bool {
        let k = self.joint_cols.len();
        if k > MAX_JOINT {
            return false;
        }
        input.k = k;
        for (i, &c) in self.joint_cols.iter().enumerate() {
            let Some(p) = binding.cols.iter().position(|&b| b == c) else {
                return false;
            };
            let Some(z) = row.base_z[p] else {
                return false;
            };
            input.z[i] = z;
            input.basis[i] = row.basis[p];
        }
        true
    }

    /// The joint model works on the channels' z-scores (each against its own
    /// plain or time-of-day baseline), so it sees correlation breaks without
    /// mistaking a shared daily cycle for one.
    fn score_joint(&self, binding: &Binding, row: &RowScore) -> Option<JointFinding> {
        if !self.config.joint || !self.joint_active() {
            return None;
        }
        let j = self.joint.as_ref()?;
        let mut input = JointInput::default();
        if !self.joint_input(binding, row, &mut input) {
            return None;
        }
        if input.basis() != j.basis.as_slice() {
            return None;
        }
        let mut v = j.score(input.z(), false)?;
        if v.surprise - crate::score::JOINT_PENALTY < self.alarm {
            return Some(JointFinding {
                d2: v.d2,
                surprise: v.surprise,
                drivers: Vec::new(),
            });
        }
        // An alarm: work out which channels drive it.
        v = j.score(input.z(), true)?;
        let mut order: Vec<usize> = (0..v.contributions.len()).collect();
        order.sort_by(|&a, &b| v.contributions[b].total_cmp(&v.contributions[a]));
        let drivers = order
            .into_iter()
            .take(2)
            .filter(|&i| v.contributions[i] >= 0.15)
            .map(|i| j.channels[i].clone())
            .collect();
        Some(JointFinding {
            d2: v.d2,
            surprise: v.surprise,
            drivers,
        })
    }

    /// Changes whenever a new forest is trained (rows scored under different
    /// versions need different [`ForestView`]s).
    pub fn forest_version(&self) -> u64 {
        self.trainings
    }

    /// Whether [`Engine::score`] fills in the forest's verdict itself
    /// (`forest_alarm`); otherwise use [`Engine::forest_view`].
    pub fn forest_inline(&self) -> bool {
        self.config.forest_alarm
    }

    /// The current forest, for scoring rows of `binding` in bulk.
    pub fn forest_view(&self, binding: &Binding) -> Option<ForestView> {
        let f = self.forest.as_ref()?;
        Some(ForestView {
            model: f.model.clone(),
            cols: f
                .features
                .iter()
                .map(|&c| binding.cols.iter().position(|&b| b == c))
                .collect(),
            impute: f.recipe.impute.clone(),
            names: f.recipe.features.clone(),
            threshold: self.config.forest_threshold,
        })
    }

    /// The forest's verdict on one row, when it decides inline
    /// (`forest_alarm`): the same computation as a batch of one.
    fn score_forest(&self, binding: &Binding, values: &[Option<f64>]) -> Option<ForestVerdict> {
        self.forest_view(binding)?
            .verdicts(std::iter::once(values))
            .pop()
            .flatten()
    }

    /// Absorbs a scored row into the state, unless it was judged anomalous
    /// (level-shift tracking sees every row). Returns whether it was absorbed.
    pub fn update(
        &mut self,
        binding: &Binding,
        ts: Option<f64>,
        values: &[Option<f64>],
        score: &RowScore,
    ) -> bool {
        let cfg = self.config;
        for (i, (&c, v)) in binding.cols.iter().zip(values).enumerate() {
            if let (Some(x), Some(Some(verdict))) =
                (v.filter(|x| x.is_finite()), score.verdicts.get(i))
            {
                self.channels[c].detector.learn(x, verdict);
            }
        }
        let ts = ts.map(Moment::new);
        for (i, (&c, v)) in binding.cols.iter().zip(values).enumerate() {
            if let Some(x) = v.filter(|x| x.is_finite())
                && self.channels[c].track_shift(x, score.base_z.get(i).copied().flatten(), ts, &cfg)
                && self.joint_cols.contains(&c)
            {
                // The joint model's mean and covariance no longer hold.
                self.joint = None;
                self.joint_cols.clear();
            }
        }
        if score.anomaly {
            return false;
        }
        // What each channel actually absorbed: the history holds exactly
        // the values the baseline took (never one its statistics refused).
        let mut absorbed = std::mem::take(&mut self.absorbed);
        absorbed.clear();
        for (&c, v) in binding.cols.iter().zip(values) {
            let took = v.filter(|&x| self.channels[c].absorb(x, ts, &cfg));
            absorbed.push(took);
        }
        if absorbed.iter().all(Option::is_none) {
            self.absorbed = absorbed;
            return false;
        }
        if cfg.joint {
            self.update_joint(binding, score);
        }
        self.retain(binding, &absorbed);
        self.absorbed = absorbed;
        true
    }

    fn update_joint(&mut self, binding: &Binding, row: &RowScore) {
        let min = self.config.min_observations;
        // Sorted by name, as `by_name` is; no allocation unless it changed.
        let mature = binding
            .by_name
            .iter()
            .copied()
            .filter(|&c| self.channels[c].ew.n >= min)
            .take(self.config.joint_max_channels);
        if mature.clone().nth(1).is_none() {
            return;
        }
        if self.joint.is_none() || !self.joint_cols.iter().copied().eq(mature.clone()) {
            // The set of channels changed (a channel matured, appeared or
            // went away): start a model over the new set.
            let mature: Vec<usize> = mature.collect();
            let k = mature.len();
            self.joint = Some(Joint::new(
                mature.iter().map(|&c| self.names[c].clone()).collect(),
                vec![Basis::Plain; k],
            ));
            self.joint_cols = mature;
        }
        let mut input = JointInput::default();
        if !self.joint_input(binding, row, &mut input) {
            return;
        }
        let alpha = self.config.alpha();
        if let Some(j) = self.joint.as_mut() {
            if j.basis.as_slice() != input.basis() {
                // A channel switched baseline (time of day, log scale): its
                // z-scores mean something else now.
                *j = Joint::new(j.channels.clone(), input.basis().to_vec());
            }
            j.push(input.z(), alpha);
        }
    }

    /// Keeps the row for the isolation forest and retrains on schedule.
    fn retain(&mut self, binding: &Binding, values: &[Option<f64>]) {
        for &c in &binding.cols {
            if !self.history_cols.contains(&c) {
                self.history_cols.push(c);
                self.history.iter_mut().for_each(|r| r.push(f64::NAN));
            }
        }
        let was_full = self.history.len() >= self.config.forest_window;
        // Reuse the buffer of the row that falls out of the window.
        let mut row = if was_full {
            self.history.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        row.clear();
        row.resize(self.history_cols.len(), f64::NAN);
        for (&c, v) in binding.cols.iter().zip(values) {
            if let (Some(x), Some(p)) = (*v, self.history_cols.iter().position(|&h| h == c)) {
                row[p] = x;
            }
        }
        self.history.push_back(row);
        while self.history.len() > self.config.forest_window {
            self.history.pop_front();
        }
        self.since_training += 1;
        let n = self.history.len();
        let full = n >= self.config.forest_window;
        // While the window fills, a forest on what there is, retrained as
        // the rows double (32, 64, 128, ...): the seed's columns are not
        // left to the placeholder for a whole window.
        let growing = !full && n >= FOREST_FIRST_ROWS && n.is_power_of_two();
        let first = self.trainings == 0 || !was_full;
        if growing
            || (full && (first || self.since_training >= self.config.forest_retrain_every as u64))
        {
            self.retrain();
        }
    }

    /// Trains a new forest on the retained window.
    fn retrain(&mut self) {
        self.since_training = 0;
        self.trainings += 1;
        let window = self.history.len();
        let mut features = Vec::new();
        let mut cols = Vec::new();
        let mut impute = Vec::new();
        for (p, &c) in self.history_cols.iter().enumerate() {
            let present = self.history.iter().filter(|r| r[p].is_finite()).count();
            if self.channels[c].ew.n >= self.config.min_observations && present * 2 >= window {
                features.push(self.names[c].clone());
                cols.push(p);
                impute.push(self.channels[c].ew.mean);
            }
        }
        let rows = self
            .history
            .iter()
            .map(|r| {
                cols.iter()
                    .zip(&impute)
                    .map(|(&p, &imp)| if r[p].is_finite() { r[p] } else { imp })
                    .collect()
            })
            .collect();
        self.forest = if features.is_empty() {
            None
        } else {
            self.build_forest(ForestRecipe {
                features,
                impute,
                seed: 0x7357_0000 + self.trainings,
                rows,
            })
        };
    }

    /// Rebuilds a forest from its recipe (trained when first used).
    fn build_forest(&mut self, recipe: ForestRecipe) -> Option<TrainedForest> {
        let model = LazyForest {
            rows: recipe.rows.clone(),
            trees: self.config.forest_trees,
            sample: self.config.forest_sample,
            seed: recipe.seed,
            model: std::sync::OnceLock::new(),
        };
        let features = recipe.features.iter().map(|n| self.channel(n)).collect();
        Some(TrainedForest {
            recipe,
            features,
            model: std::sync::Arc::new(model),
        })
    }
}

/// A trained forest, detached from the engine, that scores many rows at
/// once: tree by tree, so each tree stays in cache for the whole batch.
#[derive(Debug, Clone)]
pub struct ForestView {
    model: std::sync::Arc<LazyForest>,
    /// Position in the row (binding order) of each feature, if bound.
    cols: Vec<Option<usize>>,
    impute: Vec<f64>,
    names: Vec<String>,
    threshold: f64,
}

impl ForestView {
    /// Verdicts for `rows` (values in binding order), as [`Engine::score`]
    /// would give them; `None` for a row with no feature value.
    pub fn verdicts<'a>(
        &self,
        rows: impl ExactSizeIterator<Item = &'a [Option<f64>]>,
    ) -> Vec<Option<ForestVerdict>> {
        let k = self.cols.len();
        let n = rows.len();
        let mut x = Vec::with_capacity(n * k);
        let mut usable = Vec::with_capacity(n);
        for row in rows {
            let mut present = false;
            for (f, col) in self.cols.iter().enumerate() {
                let v = col
                    .and_then(|p| row.get(p).copied().flatten())
                    .filter(|v| v.is_finite());
                present |= v.is_some();
                x.push(v.unwrap_or(self.impute[f]));
            }
            usable.push(present);
        }
        let Some(model) = self.model.get() else {
            return vec![None; n];
        };
        let mut scores = vec![0.0; n];
        model.score_many(&x, &mut scores);
        (0..n)
            .map(|i| {
                if !usable[i] {
                    return None;
                }
                let s = scores[i];
                let flagged = s >= self.threshold;
                let drivers = if flagged {
                    let a = model.attribution(&x[i * k..(i + 1) * k]);
                    let mut order: Vec<usize> = (0..a.len()).collect();
                    order.sort_by(|&p, &q| a[q].total_cmp(&a[p]));
                    order
                        .into_iter()
                        .take(2)
                        .filter(|&p| a[p] >= 0.2)
                        .map(|p| self.names[p].clone())
                        .collect()
                } else {
                    Vec::new()
                };
                Some(ForestVerdict {
                    score: s,
                    flagged,
                    drivers,
                })
            })
            .collect()
    }
}

const MAX_JOINT: usize = crate::joint::MAX_CHANNELS;

/// Retained rows the first isolation forest is trained on.
const FOREST_FIRST_ROWS: usize = 32;

/// A row's input to the joint model, on the stack (this runs per row).
#[derive(Default)]
struct JointInput {
    z: [f64; MAX_JOINT],
    basis: [Basis; MAX_JOINT],
    k: usize,
}

impl JointInput {
    fn z(&self) -> &[f64] {
        &self.z[..self.k]
    }

    fn basis(&self) -> &[Basis] {
        &self.basis[..self.k]
    }
}

/// Why a persisted engine could not be restored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state is invalid.
    #[error(transparent)]
    State(#[from] StateError),
}
