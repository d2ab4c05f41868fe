//! The per-row step: score a row against the state built from the rows
//! before it, then absorb it if it was judged normal.
//!
//! The compiler enforces the order: [`Engine::score`] takes `&self`, so it
//! cannot change the state a row is judged by (no look-ahead), and
//! [`Engine::update`] needs the [`RowScore`] that scoring produced. Rows
//! judged anomalous are never absorbed, and neither is a missing or
//! non-finite cell.

use crate::config::EngineConfig;
use crate::error::{ConfigError, StateError};
use crate::forest::IsolationForest;
use crate::score::{ForestVerdict, RowScore};
use crate::state::{EngineState, ForestRecipe, History};
use crate::stats::Welford;
use std::collections::HashMap;

/// Streaming anomaly detector over any number of named channels.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    names: Vec<String>,
    stats: Vec<Welford>,
    index: HashMap<String, usize>,
    /// History columns, as engine channel indices.
    history_cols: Vec<usize>,
    /// Oldest first, full width of `history_cols`; NaN is a missing cell.
    history: std::collections::VecDeque<Vec<f64>>,
    since_training: u64,
    trainings: u64,
    forest: Option<TrainedForest>,
}

#[derive(Debug, Clone)]
struct TrainedForest {
    recipe: ForestRecipe,
    /// Engine channel index of each feature.
    features: Vec<usize>,
    model: IsolationForest,
}

/// Channels of one input, resolved to engine channel indices once, so the
/// per-row path does no name look-ups.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    cols: Vec<usize>,
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
            names: Vec::new(),
            stats: Vec::new(),
            index: HashMap::new(),
            history_cols: Vec::new(),
            history: Default::default(),
            since_training: state.history.since_training,
            trainings: state.history.trainings,
            forest: None,
        };
        for (name, w) in state.channels {
            let i = e.channel(&name);
            e.stats[i] = w;
        }
        let History {
            channels,
            rows,
            forest,
            ..
        } = state.history;
        e.history_cols = channels.iter().map(|n| e.channel(n)).collect();
        let width = e.history_cols.len();
        let cap = e.history_capacity();
        let skip = rows.len().saturating_sub(cap);
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
                .zip(self.stats.iter().copied())
                .collect(),
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

    /// Statistics of a channel, if it is known.
    pub fn stats(&self, name: &str) -> Option<&Welford> {
        self.index.get(name).map(|&i| &self.stats[i])
    }

    /// Whether a multivariate model is trained.
    pub fn forest_trained(&self) -> bool {
        self.forest.is_some()
    }

    /// Resolves the channel names of an input; unknown channels are added
    /// with empty statistics.
    pub fn bind<S: AsRef<str>>(&mut self, names: &[S]) -> Binding {
        Binding {
            cols: names.iter().map(|n| self.channel(n.as_ref())).collect(),
        }
    }

    fn channel(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.names.push(name.to_string());
        self.stats.push(Welford::default());
        self.index.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }

    fn history_capacity(&self) -> usize {
        self.config.forest_window + self.config.forest_retrain_every
    }

    /// Scores one row. `values[i]` belongs to the i-th bound channel; `None`
    /// or a non-finite value is a missing cell.
    ///
    /// # Panics
    /// If `values` is not as long as the binding (a programming error).
    pub fn score(&self, binding: &Binding, values: &[Option<f64>]) -> RowScore {
        let mut out = RowScore::default();
        self.score_into(binding, values, &mut out);
        out
    }

    /// As [`Engine::score`], reusing `out`'s buffers.
    pub fn score_into(&self, binding: &Binding, values: &[Option<f64>], out: &mut RowScore) {
        assert_eq!(
            binding.cols.len(),
            values.len(),
            "row width must match binding"
        );
        out.clear();
        let thr = self.config.z_threshold;
        for (&c, v) in binding.cols.iter().zip(values) {
            let w = &self.stats[c];
            let z = match v {
                Some(x) if x.is_finite() && w.count >= self.config.min_observations => {
                    Some(z_score(*x, w))
                }
                _ => None,
            };
            out.z.push(z);
            out.z_flag.push(z.map(|z| z.abs() > thr));
        }
        out.forest = self.forest.as_ref().and_then(|f| {
            let mut x = Vec::with_capacity(f.features.len());
            let mut present = 0;
            for (k, &c) in f.features.iter().enumerate() {
                let v = binding
                    .cols
                    .iter()
                    .position(|&b| b == c)
                    .and_then(|p| values[p])
                    .filter(|v| v.is_finite());
                present += usize::from(v.is_some());
                x.push(v.unwrap_or(f.recipe.impute[k]));
            }
            if present == 0 {
                return None;
            }
            let s = f.model.score(&x);
            let flagged = s >= self.config.forest_threshold;
            let drivers = if flagged {
                let a = f.model.attribution(&x);
                let mut order: Vec<usize> = (0..a.len()).collect();
                order.sort_by(|&i, &j| a[j].total_cmp(&a[i]));
                order
                    .into_iter()
                    .take(2)
                    .filter(|&i| a[i] >= 0.2)
                    .map(|i| f.recipe.features[i].clone())
                    .collect()
            } else {
                Vec::new()
            };
            Some(ForestVerdict {
                score: s,
                flagged,
                drivers,
            })
        });
        out.finish(self.config.z_threshold, self.config.forest_threshold);
    }

    /// Absorbs a scored row into the state, unless it was judged anomalous.
    /// Returns whether it was absorbed.
    pub fn update(&mut self, binding: &Binding, values: &[Option<f64>], score: &RowScore) -> bool {
        if score.anomaly {
            return false;
        }
        // What each channel actually absorbed: the history holds exactly
        // the values the baseline took (never one its statistics refused).
        let absorbed: Vec<Option<f64>> = binding
            .cols
            .iter()
            .zip(values)
            .map(|(&c, v)| v.filter(|&x| self.stats[c].push(x)))
            .collect();
        if absorbed.iter().all(Option::is_none) {
            return false;
        }
        // Retain the row for the multivariate model, widening the history
        // to any channel it has not seen yet.
        for &c in &binding.cols {
            if !self.history_cols.contains(&c) {
                self.history_cols.push(c);
                self.history.iter_mut().for_each(|r| r.push(f64::NAN));
            }
        }
        let mut row = vec![f64::NAN; self.history_cols.len()];
        for (&c, v) in binding.cols.iter().zip(&absorbed) {
            if let (Some(x), Some(p)) = (*v, self.history_cols.iter().position(|&h| h == c)) {
                row[p] = x;
            }
        }
        self.history.push_back(row);
        while self.history.len() > self.history_capacity() {
            self.history.pop_front();
        }
        self.since_training += 1;
        if self.history.len() >= self.config.forest_window
            && self.since_training >= self.config.forest_retrain_every as u64
        {
            self.retrain();
        }
        true
    }

    /// Trains a new forest on the newest `forest_window` rows.
    fn retrain(&mut self) {
        self.since_training = 0;
        self.trainings += 1;
        let window = self.config.forest_window;
        let start = self.history.len() - window;
        // Features: mature channels present in at least half the window.
        let mut features = Vec::new();
        let mut impute = Vec::new();
        for (p, &c) in self.history_cols.iter().enumerate() {
            let present = self
                .history
                .range(start..)
                .filter(|r| r[p].is_finite())
                .count();
            if self.stats[c].count >= self.config.min_observations && present * 2 >= window {
                features.push(self.names[c].clone());
                impute.push(self.stats[c].mean);
            }
        }
        self.forest = if features.is_empty() {
            None
        } else {
            self.build_forest(ForestRecipe {
                features,
                impute,
                seed: 0x7357_0000 + self.trainings,
                window,
            })
        };
    }

    /// Rebuilds a forest from its recipe and the rows it names.
    fn build_forest(&self, recipe: ForestRecipe) -> Option<TrainedForest> {
        let end = self
            .history
            .len()
            .checked_sub(self.since_training as usize)?;
        let start = end.checked_sub(recipe.window)?;
        let cols: Vec<usize> = recipe
            .features
            .iter()
            .map(|n| {
                let c = self.index[n.as_str()];
                self.history_cols.iter().position(|&h| h == c)
            })
            .collect::<Option<_>>()?;
        let rows: Vec<Vec<f64>> = self
            .history
            .range(start..end)
            .map(|r| {
                cols.iter()
                    .zip(&recipe.impute)
                    .map(|(&p, &imp)| if r[p].is_finite() { r[p] } else { imp })
                    .collect()
            })
            .collect();
        let model = IsolationForest::train(
            &rows,
            self.config.forest_trees,
            self.config.forest_sample,
            recipe.seed,
        )?;
        let features = recipe
            .features
            .iter()
            .map(|n| self.index[n.as_str()])
            .collect();
        Some(TrainedForest {
            recipe,
            features,
            model,
        })
    }
}

/// `(x - mean) / std`, with a zero spread treated as a tiny one so that any
/// departure from a constant channel is flagged and nothing divides by zero.
fn z_score(x: f64, w: &Welford) -> f64 {
    let floor = 1e-9 * w.mean.abs().max(1.0);
    let z = (x - w.mean) / w.std().max(floor);
    // Keep the number printable: a z of 1e300 says no more than 1e12.
    z.clamp(-1e12, 1e12)
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
