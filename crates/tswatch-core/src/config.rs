//! Validated engine configuration. Checked once at the boundary, trusted after.

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};

/// Most channels in a joint model (the per-row work is on the stack): the
/// highest `joint_max_channels`. Defined here, not in `joint`, so that the
/// settings depend on no model.
pub(crate) const MAX_JOINT_CHANNELS: usize = 16;

/// Tuning of the detection engine. The defaults are meant to hold on any
/// series without per-dataset tuning; docs/configuration.md says what each does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Target probability that a normal row is flagged (per row, all
    /// channels and tests together); sets where `anomaly_score` crosses
    /// 0.5. Each channel's tail and stretch tests, which extrapolate from
    /// the channel's own history, get a hundredth of it, shared between
    /// channels (Bonferroni); the joint test gets a tenth of it.
    pub false_alarm_rate: f64,
    /// Observations a channel needs before it is scored.
    pub min_observations: u64,
    /// Memory, in rows, of the adaptive baselines the joint model scores
    /// against (the detector's own window is the last 6,400 values).
    pub memory_rows: u64,
    /// Learn a time-of-day profile per channel: the detector scores
    /// departures from it, and the joint model's baseline uses it where it
    /// explains the data.
    pub seasonality: bool,
    /// A level shift is accepted (learned as the new normal) after this
    /// many consecutive rows beyond the tail test on the same side (and the
    /// joint model's baseline after as many beyond 2 sigma); 0 never.
    pub level_shift_rows: usize,
    /// Score rows jointly (Mahalanobis distance over the channels), which
    /// catches values that are each ordinary but together break the usual
    /// correlation.
    pub joint: bool,
    /// Most channels in the joint model (the first ones, by name).
    pub joint_max_channels: usize,
    /// Most channels a stream learns: a file whose new columns would take
    /// it past this is refused (each channel's state is kept and scored
    /// for every later file, so an unbounded count is unbounded memory).
    pub max_channels: usize,
    /// Isolation-forest trees (the seed's `if_*` columns).
    pub forest_trees: usize,
    /// Rows drawn for each tree (psi).
    pub forest_sample: usize,
    /// Normal rows the forest is trained on (the retained history).
    pub forest_window: usize,
    /// Normal rows absorbed between two trainings.
    pub forest_retrain_every: usize,
    /// Isolation score `s(x)` at or above which `if_flag` is set; in (0.5, 1).
    pub forest_threshold: f64,
    /// Whether `if_flag` alone makes a row anomalous. Off by default: on
    /// real data the forest's flags are not calibrated like the other tests.
    pub forest_alarm: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            false_alarm_rate: 1e-3,
            min_observations: 30,
            memory_rows: 2000,
            seasonality: true,
            level_shift_rows: 16,
            joint: true,
            joint_max_channels: 16,
            max_channels: 1024,
            forest_trees: 50,
            forest_sample: 256,
            forest_window: 512,
            forest_retrain_every: 8192,
            forest_threshold: 0.7,
            forest_alarm: false,
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
        if !(self.false_alarm_rate > 0.0 && self.false_alarm_rate < 0.5) {
            return Err(bad(
                "false_alarm_rate",
                "must be strictly between 0 and 0.5",
            ));
        }
        if self.min_observations < 2 {
            return Err(bad("min_observations", "must be at least 2"));
        }
        if self.memory_rows < self.min_observations {
            return Err(bad("memory_rows", "must be at least min_observations"));
        }
        if self.level_shift_rows == 1 || self.level_shift_rows > 10_000 {
            return Err(bad(
                "level_shift_rows",
                "must be 0 (off) or between 2 and 10000",
            ));
        }
        if !(2..=MAX_JOINT_CHANNELS).contains(&self.joint_max_channels) {
            return Err(bad("joint_max_channels", "must be between 2 and 16"));
        }
        if !(1..=100_000).contains(&self.max_channels) {
            return Err(bad("max_channels", "must be between 1 and 100000"));
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
        if self.forest_retrain_every == 0 {
            return Err(bad("forest_retrain_every", "must be at least 1"));
        }
        if !(self.forest_threshold > 0.5 && self.forest_threshold < 1.0) {
            return Err(bad(
                "forest_threshold",
                "must be strictly between 0.5 and 1",
            ));
        }
        Ok(())
    }

    /// The alarm threshold in surprise units (`-log10` of a probability).
    pub fn alarm_surprise(&self) -> f64 {
        -self.false_alarm_rate.log10()
    }

    /// Weight floor of the adaptive baselines.
    pub fn alpha(&self) -> f64 {
        1.0 / self.memory_rows as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        EngineConfig::default().validate().unwrap();
        assert_eq!(EngineConfig::default().alarm_surprise(), 3.0);
    }

    #[test]
    fn bad_values_name_the_field() {
        let c = EngineConfig {
            false_alarm_rate: f64::NAN,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("false_alarm_rate")
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
        let c = EngineConfig {
            level_shift_rows: 1,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("level_shift_rows")
        );
    }
}
