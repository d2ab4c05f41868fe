//! The persisted form of the engine: plain data, serialisable, validated on
//! load. The in-memory [`crate::Engine`] converts to and from it losslessly,
//! so saving between two files never changes a result (batch invariance).

use crate::error::StateError;
use crate::stats::Welford;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the engine needs to continue a stream where it stopped.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineState {
    /// Running statistics of the rows judged normal, per channel.
    pub channels: BTreeMap<String, Welford>,
    /// Retained normal rows for the multivariate model.
    #[serde(default)]
    pub history: History,
}

/// A bounded ring of the most recent normal rows, and the bookkeeping that
/// makes the forest a pure function of it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct History {
    /// Column names of `rows`; only ever grows, so old rows may be shorter.
    pub channels: Vec<String>,
    /// Oldest first; `None` is a missing cell.
    pub rows: Vec<Vec<Option<f64>>>,
    /// Normal rows absorbed since the last training attempt.
    pub since_training: u64,
    /// Training attempts so far; seeds the next forest.
    pub trainings: u64,
    /// The current forest's recipe, if one is trained.
    pub forest: Option<ForestRecipe>,
}

/// What is needed to rebuild the trained forest bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestRecipe {
    /// Channels used as features, in order.
    pub features: Vec<String>,
    /// Value used for a missing cell of each feature (the channel mean at
    /// training time).
    pub impute: Vec<f64>,
    /// Generator seed.
    pub seed: u64,
    /// Number of rows trained on: the `window` rows that precede the
    /// `since_training` newest rows of the history.
    pub window: usize,
}

impl EngineState {
    /// Checks that every number is usable and the history is consistent.
    pub fn validate(&self) -> Result<(), StateError> {
        for (name, w) in &self.channels {
            if !w.is_valid() {
                return Err(StateError::BadChannel(name.clone()));
            }
        }
        let h = &self.history;
        for (i, r) in h.rows.iter().enumerate() {
            if r.len() > h.channels.len() || r.iter().flatten().any(|v| !v.is_finite()) {
                return Err(StateError::BadHistoryRow {
                    row: i,
                    got: r.len(),
                    expected: h.channels.len(),
                });
            }
        }
        if let Some(f) = &h.forest {
            if let Some(missing) = f.features.iter().find(|n| !h.channels.contains(n)) {
                return Err(StateError::BadFeature(missing.clone()));
            }
            if f.impute.len() != f.features.len() || f.impute.iter().any(|v| !v.is_finite()) {
                return Err(StateError::BadFeature("(imputation values)".into()));
            }
        }
        Ok(())
    }

    /// Observation count per channel (what summaries report).
    pub fn observation_counts(&self) -> BTreeMap<String, u64> {
        self.channels
            .iter()
            .map(|(k, w)| (k.clone(), w.count))
            .collect()
    }
}
