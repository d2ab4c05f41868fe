//! Validated engine configuration. Checked once at the boundary, trusted after.

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};

/// Tuning of the detection engine. Build with [`EngineConfig::default`] and
/// adjust, then call [`EngineConfig::validate`] (the engine does it too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `|z|` above which a channel value is flagged (the seed uses 3).
    pub z_threshold: f64,
    /// Observations a channel needs before its z-score is reported.
    pub min_observations: u64,
    /// Isolation-forest trees.
    pub forest_trees: usize,
    /// Rows drawn for each tree (psi).
    pub forest_sample: usize,
    /// Normal rows the forest is trained on (the retained history).
    pub forest_window: usize,
    /// Normal rows absorbed between two trainings.
    pub forest_retrain_every: usize,
    /// Isolation score `s(x)` at or above which a row is flagged as a joint
    /// (multivariate) anomaly; in (0.5, 1).
    pub forest_threshold: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            z_threshold: 3.0,
            min_observations: 30,
            forest_trees: 100,
            forest_sample: 256,
            forest_window: 512,
            forest_retrain_every: 256,
            forest_threshold: 0.65,
        }
    }
}

impl EngineConfig {
    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, why: &str| ConfigError::Invalid {
            field,
            reason: why.to_string(),
        };
        if !(self.z_threshold.is_finite() && self.z_threshold > 0.0) {
            return Err(bad("z_threshold", "must be a finite number above 0"));
        }
        if self.min_observations < 2 {
            return Err(bad("min_observations", "must be at least 2"));
        }
        if !(1..=1000).contains(&self.forest_trees) {
            return Err(bad("forest_trees", "must be between 1 and 1000"));
        }
        if !(16..=4096).contains(&self.forest_sample) {
            return Err(bad("forest_sample", "must be between 16 and 4096"));
        }
        if self.forest_window < self.forest_sample || self.forest_window > 100_000 {
            return Err(bad(
                "forest_window",
                "must be at least forest_sample and at most 100000",
            ));
        }
        if self.forest_retrain_every == 0 || self.forest_retrain_every > self.forest_window {
            return Err(bad(
                "forest_retrain_every",
                "must be between 1 and forest_window",
            ));
        }
        if !(self.forest_threshold > 0.5 && self.forest_threshold < 1.0) {
            return Err(bad(
                "forest_threshold",
                "must be strictly between 0.5 and 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        EngineConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_field() {
        let c = EngineConfig {
            z_threshold: f64::NAN,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("z_threshold")
        );
        let c = EngineConfig {
            forest_threshold: 1.0,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("forest_threshold")
        );
        let c = EngineConfig {
            forest_window: 10,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("forest_window")
        );
    }
}
