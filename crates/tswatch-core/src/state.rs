//! The persisted form of the engine: plain data, serialisable, validated on
//! load. The in-memory [`crate::Engine`] converts to and from it losslessly,
//! so saving between two files never changes a result (batch invariance).

use crate::channel::ChannelState;
use crate::error::StateError;
use crate::joint::Joint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the engine needs to continue a stream where it stopped.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineState {
    /// Per-channel models.
    pub channels: BTreeMap<String, ChannelState>,
    /// The joint (multivariate Gaussian) model, once channels are mature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joint: Option<Joint>,
    /// Retained normal rows and the isolation forest's training set.
    #[serde(default)]
    pub history: History,
}

/// A bounded window of the most recent normal rows, and the forest's
/// training set, which makes the forest a pure function of the state.
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
    /// The training rows (features in order, missing cells imputed).
    pub rows: Vec<Vec<f64>>,
}

impl EngineState {
    /// Checks that every number is usable and the shapes are consistent.
    pub fn validate(&self) -> Result<(), StateError> {
        for (name, c) in &self.channels {
            if !c.is_valid() {
                return Err(StateError::BadChannel(name.clone()));
            }
        }
        if let Some(j) = &self.joint
            && !j.is_valid()
        {
            return Err(StateError::BadChannel("(joint model)".into()));
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
            let k = f.features.len();
            if f.impute.len() != k
                || f.impute.iter().any(|v| !v.is_finite())
                || f.rows
                    .iter()
                    .any(|r| r.len() != k || r.iter().any(|v| !v.is_finite()))
            {
                return Err(StateError::BadFeature("(forest training set)".into()));
            }
        }
        Ok(())
    }

    /// Observation count per channel (what summaries report).
    pub fn observation_counts(&self) -> BTreeMap<String, u64> {
        self.channels
            .iter()
            .map(|(k, c)| (k.clone(), c.stats.count))
            .collect()
    }
}
