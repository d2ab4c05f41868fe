//! The verdict on one row, and how it becomes a calibrated score and a
//! human reason.
//!
//! `anomaly_score` is built from tail probabilities, so it means the same on
//! every channel and in every file: with evidence `S` (`-log10` of the row's
//! multiplicity-corrected tail probability) and alarm threshold `T`
//! (`-log10` of the configured false-alarm rate), the score is `S / (S + T)`:
//! exactly 0.5 at the threshold, approaching 1 without reaching it.

use crate::channel::Basis;
use crate::config::EngineConfig;
use crate::stats::{format_epoch, two_sided_surprise};

/// The joint test is held to a ten times stricter standard than the
/// per-channel tests (`-log10(10)`): its Gaussian assumption is the weakest,
/// and it spends little of the false-alarm budget that way.
pub const JOINT_PENALTY: f64 = 1.0;

/// The isolation forest's view of a row (the seed's `if_*` columns).
#[derive(Debug, Clone, PartialEq)]
pub struct ForestVerdict {
    /// `s(x)` in (0, 1]; higher is more isolated.
    pub score: f64,
    /// Whether `score` reached the configured threshold.
    pub flagged: bool,
    /// Channels that isolated the row most often (flagged rows only).
    pub drivers: Vec<String>,
}

impl ForestVerdict {
    /// Seed's `if_label`: -1 for a forest outlier, 1 otherwise.
    pub fn if_label(&self) -> i8 {
        if self.flagged { -1 } else { 1 }
    }

    /// Seed's `if_score` (scikit-learn's `decision_function` sense): the
    /// threshold minus `s(x)`, so lower is more anomalous and negative is flagged.
    pub fn if_score(&self, forest_threshold: f64) -> f64 {
        forest_threshold - self.score
    }
}

/// The joint model's view of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct JointFinding {
    /// Squared Mahalanobis distance.
    pub d2: f64,
    /// `-log10` of its chi-square tail probability.
    pub surprise: f64,
    /// The (at most two) channels contributing most to `d2`.
    pub drivers: Vec<String>,
}

/// Scores of one row, per bound channel in binding order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowScore {
    /// z-score per channel; `None` while immature or for a missing cell.
    pub z: Vec<Option<f64>>,
    /// Whether the channel's own evidence flags the row; `None` where `z` is.
    pub z_flag: Vec<Option<bool>>,
    /// The largest per-channel evidence: `-log10` of the two-sided tail
    /// probability of the largest `|z|` (0 when there is none). Per channel
    /// it is [`RowScore::surprise`], worked out only where needed.
    pub surprise_max: f64,
    /// The baseline each `z` was taken against.
    pub basis: Vec<Basis>,
    /// Whether this row completes a level shift of the channel.
    pub shift: Vec<bool>,
    /// When that shift started (epoch seconds), if known.
    pub shift_since: Vec<Option<f64>>,
    /// The joint model's finding, once it is mature.
    pub joint: Option<JointFinding>,
    /// `None` until a forest is trained (or when the row has no feature value).
    pub forest: Option<ForestVerdict>,
    /// The row's evidence after the multiplicity correction.
    pub evidence: f64,
    /// Whether the row is anomalous.
    pub anomaly: bool,
    /// Calibrated score in [0, 1); at least 0.5 exactly when `anomaly`.
    pub anomaly_score: f64,
}

impl RowScore {
    pub(crate) fn clear(&mut self) {
        self.z.clear();
        self.z_flag.clear();
        self.surprise_max = 0.0;
        self.basis.clear();
        self.shift.clear();
        self.shift_since.clear();
        self.joint = None;
        self.forest = None;
        self.evidence = 0.0;
        self.anomaly = false;
        self.anomaly_score = 0.0;
    }

    /// Works out the flags and verdict under `cfg`, whose alarm surprise
    /// ([`EngineConfig::alarm_surprise`]) the caller passes as `threshold`.
    pub(crate) fn finish(&mut self, cfg: &EngineConfig, threshold: f64) {
        let k = self.z.iter().flatten().count().max(1);
        let penalty = log10(k);
        // The surprise grows with |z|: only the largest |z| (and any within
        // a hair of it, where rounding could reorder them) needs one.
        let top = self.z.iter().flatten().fold(0.0f64, |m, z| m.max(z.abs()));
        self.surprise_max = self
            .z
            .iter()
            .flatten()
            .filter(|z| z.abs() >= top * (1.0 - 1e-12))
            .fold(0.0f64, |m, z| m.max(two_sided_surprise(*z)));
        let uni = self.surprise_max - penalty;
        let joint = self
            .joint
            .as_ref()
            .map_or(0.0, |j| j.surprise - JOINT_PENALTY);
        self.evidence = uni.max(joint).max(0.0);
        self.z_flag.clear();
        // Below the threshold at the largest |z|, below it everywhere.
        let any_flag = uni >= threshold;
        for z in &self.z {
            self.z_flag
                .push(z.map(|z| any_flag && two_sided_surprise(z) - penalty >= threshold));
        }
        let forest_alarm = cfg.forest_alarm && self.forest.as_ref().is_some_and(|f| f.flagged);
        self.anomaly = self.evidence >= threshold || self.shift.contains(&true) || forest_alarm;
        let mut s = ratio_score(self.evidence, threshold);
        // Keep the promise "score >= 0.5 iff anomaly" where a rule other than
        // the evidence threshold decided, or rounding disagrees.
        if self.anomaly {
            s = s.max(0.5);
        } else {
            s = s.min(0.499_999_999);
        }
        self.anomaly_score = s;
    }

    /// `-log10` two-sided tail probability of channel `i`'s z-score (0 when
    /// absent).
    pub fn surprise(&self, i: usize) -> f64 {
        self.z
            .get(i)
            .copied()
            .flatten()
            .map_or(0.0, two_sided_surprise)
    }

    /// Seed's `if_label` ([`ForestVerdict::if_label`]), once a forest decided.
    pub fn if_label(&self) -> Option<i8> {
        self.forest.as_ref().map(ForestVerdict::if_label)
    }

    /// Seed's `if_score` ([`ForestVerdict::if_score`]), once a forest decided.
    pub fn if_score(&self, forest_threshold: f64) -> Option<f64> {
        self.forest.as_ref().map(|f| f.if_score(forest_threshold))
    }

    /// Human explanation of a flagged row, e.g. `temperature z=6.12`,
    /// `pressure level shift since 2026-03-01T12:00:00 (z=5.10)` or
    /// `joint: temperature×humidity (d²=31.2)`. Empty when normal.
    /// `names[i]` is the name of the i-th bound channel.
    pub fn reason(&self, names: &[impl AsRef<str>]) -> String {
        if !self.anomaly {
            return String::new();
        }
        let mut parts = Vec::new();
        let mut flagged: Vec<usize> = (0..self.z.len())
            .filter(|&i| self.z_flag[i] == Some(true) || self.shift[i])
            .collect();
        flagged.sort_by(|&a, &b| self.surprise(b).total_cmp(&self.surprise(a)));
        for i in flagged {
            let name = names[i].as_ref();
            let z = self.z[i].unwrap_or(0.0);
            if self.shift[i] {
                let since = self.shift_since[i]
                    .map(|t| format!(" since {}", format_epoch(t)))
                    .unwrap_or_default();
                parts.push(format!("{name} level shift{since} (z={z:.2}); re-learning"));
            } else if self.basis[i] == Basis::Daily {
                parts.push(format!("{name} z={z:.2} for this time of day"));
            } else if self.basis[i] == Basis::Log {
                parts.push(format!("{name} z={z:.2} on a log scale"));
            } else {
                parts.push(format!("{name} z={z:.2}"));
            }
        }
        if let Some(j) = &self.joint {
            let uni_ok = self.z_flag.iter().all(|f| *f != Some(true));
            if uni_ok && self.evidence >= 0.0 && j.surprise >= self.surprise_max {
                let who = if j.drivers.is_empty() {
                    "all channels".to_string()
                } else {
                    j.drivers.join("×")
                };
                parts.push(format!("joint: {who} (d²={:.1})", j.d2));
            }
        }
        if let Some(f) = self.forest.as_ref().filter(|f| f.flagged)
            && parts.is_empty()
        {
            let who = if f.drivers.is_empty() {
                "all channels".to_string()
            } else {
                f.drivers.join("×")
            };
            parts.push(format!("isolation: {who} (s={:.2})", f.score));
        }
        if parts.is_empty() {
            parts.push(format!("combined evidence {:.1}", self.evidence));
        }
        parts.join("; ")
    }
}

/// `log10(k)`, the Bonferroni penalty of `k` tests, from a table for the
/// usual counts (the same values: this runs per row).
fn log10(k: usize) -> f64 {
    const TABLE: [f64; 17] = [
        f64::NEG_INFINITY,
        0.0,
        std::f64::consts::LOG10_2,
        0.47712125471966244,
        0.6020599913279624,
        0.6989700043360189,
        0.7781512503836436,
        0.8450980400142568,
        0.9030899869919435,
        0.9542425094393249,
        1.0,
        1.041392685158225,
        1.0791812460476249,
        1.1139433523068367,
        1.146128035678238,
        1.1760912590556813,
        1.2041199826559248,
    ];
    TABLE.get(k).copied().unwrap_or_else(|| (k as f64).log10())
}

/// Maps a non-negative evidence value to [0, 1): `x / (x + at_half)`, which
/// is 0.5 exactly at `at_half` and never saturates.
fn ratio_score(x: f64, at_half: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 0.0;
    }
    if x.is_infinite() {
        return 1.0 - f64::EPSILON;
    }
    x / (x + at_half.max(f64::MIN_POSITIVE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::two_sided_surprise;

    fn with_z(z: &[Option<f64>]) -> RowScore {
        let n = z.len();
        let mut s = RowScore {
            z: z.to_vec(),
            basis: vec![Basis::Plain; n],
            shift: vec![false; n],
            shift_since: vec![None; n],
            ..Default::default()
        };
        let cfg = EngineConfig::default();
        s.finish(&cfg, cfg.alarm_surprise());
        s
    }

    #[test]
    fn penalty_table_is_log10() {
        for k in 0..40 {
            assert_eq!(log10(k).to_bits(), (k as f64).log10().to_bits(), "{k}");
        }
    }

    proptest::proptest! {
        /// Surprise is worked out for the largest |z| only; flags and the
        /// evidence are exactly those of every channel's own surprise.
        #[test]
        fn flags_and_evidence_equal_every_channels_own(
            z in proptest::collection::vec(proptest::option::of(-12.0f64..12.0), 1..8),
            tie in proptest::bool::ANY,
        ) {
            let mut z = z;
            if tie && z.len() > 1 {
                z[1] = z[0].map(|v| -v);
            }
            let s = with_z(&z);
            let cfg = EngineConfig::default();
            let k = z.iter().flatten().count().max(1) as f64;
            let each: Vec<f64> = z.iter().map(|z| z.map_or(0.0, two_sided_surprise)).collect();
            let max = each.iter().fold(0.0f64, |m, v| m.max(*v));
            proptest::prop_assert_eq!(s.surprise_max.to_bits(), max.to_bits());
            for (i, z) in z.iter().enumerate() {
                let want = z.map(|_| each[i] - k.log10() >= cfg.alarm_surprise());
                proptest::prop_assert_eq!(s.z_flag[i], want);
                proptest::prop_assert_eq!(s.surprise(i).to_bits(), each[i].to_bits());
            }
        }
    }

    #[test]
    fn half_at_threshold_and_monotone() {
        // One channel: threshold at p = 1e-3, i.e. |z| = 3.29.
        let a = with_z(&[Some(3.2)]);
        let b = with_z(&[Some(3.35)]);
        let c = with_z(&[Some(30.0)]);
        let d = with_z(&[Some(40.0)]);
        assert!(!a.anomaly && a.anomaly_score < 0.5);
        assert!(b.anomaly && b.anomaly_score >= 0.5);
        assert!(c.anomaly_score < d.anomaly_score && d.anomaly_score < 1.0);
    }

    #[test]
    fn more_channels_need_more_evidence() {
        let one = with_z(&[Some(3.5)]);
        let four = with_z(&[Some(3.5), Some(0.0), Some(0.0), Some(0.0)]);
        assert!(one.anomaly);
        assert!(!four.anomaly, "Bonferroni over 4 channels");
    }

    #[test]
    fn immature_rows_score_zero() {
        let s = with_z(&[None, None]);
        assert!(!s.anomaly);
        assert_eq!(s.anomaly_score, 0.0);
        assert_eq!(s.reason(&["a", "b"]), "");
    }

    #[test]
    fn reason_orders_by_strength() {
        let s = with_z(&[Some(-6.0), Some(8.123), Some(1.0)]);
        assert_eq!(s.reason(&["a", "b", "c"]), "b z=8.12; a z=-6.00");
    }

    #[test]
    fn joint_reason_and_seed_columns() {
        let mut s = RowScore {
            z: vec![Some(1.0), Some(1.5)],
            basis: vec![Basis::Plain; 2],
            shift: vec![false; 2],
            shift_since: vec![None; 2],
            joint: Some(JointFinding {
                d2: 40.0,
                surprise: 8.7,
                drivers: vec!["h".into(), "t".into()],
            }),
            forest: Some(ForestVerdict {
                score: 0.75,
                flagged: true,
                drivers: vec!["h".into()],
            }),
            ..Default::default()
        };
        let cfg = EngineConfig::default();
        s.finish(&cfg, cfg.alarm_surprise());
        assert!(s.anomaly && s.anomaly_score > 0.5);
        assert_eq!(s.if_label(), Some(-1));
        assert!(s.if_score(0.7).unwrap() < 0.0);
        assert_eq!(s.reason(&["t", "h"]), "joint: h×t (d²=40.0)");
    }
}
