//! The verdict on one row, and how it becomes a score and a human reason.
//!
//! Each channel's [`Detector`](crate::detector::Detector) gives a verdict
//! whose strength is 0.5 at its alarm threshold; the joint model's evidence
//! (`-log10` of its chi-square tail, held to a ten times stricter standard)
//! is put on the same scale. `anomaly_score` is the strongest of them: at
//! least 0.5 exactly when the row is anomalous, never reaching 1, so it
//! ranks rows across files and channels.

use crate::channel::Basis;
use crate::config::EngineConfig;
use crate::detector::{Finding, Verdict};

/// The joint test is held to a ten times stricter standard than the
/// configured false-alarm rate (`-log10(10)`): its Gaussian assumption is
/// the weakest, and it spends little of the false-alarm budget that way.
pub(crate) const JOINT_PENALTY: f64 = 1.0;

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
    /// The verdict on a row before any forest could be trained: the
    /// isolation score of a point no forest can set apart (`s(x) = 0.5`,
    /// an average path length), not flagged. The seed's columns are thus
    /// filled from the first row, as the seed filled them.
    pub fn indistinct() -> Self {
        Self {
            score: 0.5,
            flagged: false,
            drivers: Vec::new(),
        }
    }

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
    /// z-score per channel against its recent values (the `<ch>_zscore`
    /// column); `None` while immature or for a missing cell.
    pub(crate) z: Vec<Option<f64>>,
    /// Whether the channel's own detector flags the row; `None` where `z` is.
    pub(crate) z_flag: Vec<Option<bool>>,
    /// Each channel's verdict; `None` for a missing cell.
    pub(crate) verdicts: Vec<Option<Verdict>>,
    /// z-score per channel against its adaptive (or time-of-day) baseline:
    /// the joint model's input.
    pub(crate) base_z: Vec<Option<f64>>,
    /// The baseline each `base_z` was taken against.
    pub(crate) basis: Vec<Basis>,
    /// The joint model's finding, once it is mature.
    pub(crate) joint: Option<JointFinding>,
    /// `None` until a forest is trained (or when the row has no feature value).
    pub(crate) forest: Option<ForestVerdict>,
    /// Whether the row is anomalous.
    pub(crate) anomaly: bool,
    /// Score in [0, 1); at least 0.5 exactly when `anomaly`.
    pub(crate) anomaly_score: f64,
}

/// Read-only: a score is made by [`crate::Engine::score`] and handed back to
/// [`crate::Engine::update`] as it is.
impl RowScore {
    /// z-score per channel against its recent values (the `<ch>_zscore`
    /// column); `None` while immature or for a missing cell.
    #[inline]
    pub fn z(&self) -> &[Option<f64>] {
        &self.z
    }

    /// Whether each channel's own detector flags the row; `None` where
    /// [`RowScore::z`] is.
    #[inline]
    pub fn z_flag(&self) -> &[Option<bool>] {
        &self.z_flag
    }

    /// Each channel's verdict; `None` for a missing cell.
    #[inline]
    pub fn verdicts(&self) -> &[Option<Verdict>] {
        &self.verdicts
    }

    /// The joint model's finding, once it is mature.
    #[inline]
    pub fn joint(&self) -> Option<&JointFinding> {
        self.joint.as_ref()
    }

    /// The isolation forest's verdict: `None` until a forest is trained (or
    /// when the row has no feature value, or the forest scores in batches:
    /// see [`RowScore::set_forest`]).
    #[inline]
    pub fn forest(&self) -> Option<&ForestVerdict> {
        self.forest.as_ref()
    }

    /// Whether the row is anomalous.
    #[inline]
    pub fn anomaly(&self) -> bool {
        self.anomaly
    }

    /// Score in [0, 1); at least 0.5 exactly when [`RowScore::anomaly`].
    #[inline]
    pub fn anomaly_score(&self) -> f64 {
        self.anomaly_score
    }

    /// Records the forest verdict of a row scored in a batch after the row
    /// itself ([`crate::ForestView::verdicts`]). The forest never decides
    /// `anomaly` here: it is set after the state was updated.
    #[inline]
    pub fn set_forest(&mut self, forest: Option<ForestVerdict>) {
        self.forest = forest;
    }

    pub(crate) fn clear(&mut self) {
        self.z.clear();
        self.z_flag.clear();
        self.verdicts.clear();
        self.base_z.clear();
        self.basis.clear();
        self.joint = None;
        self.forest = None;
        self.anomaly = false;
        self.anomaly_score = 0.0;
    }

    /// Works out the flags and verdict under `cfg`, whose alarm surprise
    /// ([`EngineConfig::alarm_surprise`]) the caller passes as `threshold`
    /// (the joint test's).
    pub(crate) fn finish(&mut self, cfg: &EngineConfig, threshold: f64) {
        self.z_flag.clear();
        let mut score = 0.0f64;
        let mut alarm = false;
        for (z, v) in self.z.iter().zip(&self.verdicts) {
            self.z_flag.push(z.and(v.map(|v| v.alarm)));
            if let Some(v) = v {
                score = score.max(v.score);
                alarm |= v.alarm;
            }
        }
        let joint = self
            .joint
            .as_ref()
            .map_or(0.0, |j| (j.surprise - JOINT_PENALTY).max(0.0));
        let joint_alarm = joint >= threshold;
        score = score.max(ratio_score(joint, threshold));
        let forest_alarm = cfg.forest_alarm && self.forest.as_ref().is_some_and(|f| f.flagged);
        self.anomaly = alarm || joint_alarm || forest_alarm;
        // Keep the promise "score >= 0.5 iff anomaly" where a rule other
        // than a channel's or the joint model's strength decided.
        self.anomaly_score = if self.anomaly {
            score.max(0.5)
        } else {
            score.min(0.499_999_999)
        };
    }

    /// Seed's `if_label` ([`ForestVerdict::if_label`]); 1 before a forest
    /// decided ([`ForestVerdict::indistinct`]).
    pub fn if_label(&self) -> i8 {
        self.forest.as_ref().map_or(1, ForestVerdict::if_label)
    }

    /// Seed's `if_score` ([`ForestVerdict::if_score`]); that of
    /// [`ForestVerdict::indistinct`] before a forest decided.
    pub fn if_score(&self, forest_threshold: f64) -> f64 {
        self.forest.as_ref().map_or_else(
            || ForestVerdict::indistinct().if_score(forest_threshold),
            |f| f.if_score(forest_threshold),
        )
    }

    /// Human explanation of a flagged row, e.g. `temperature z=6.12`,
    /// `cpu 97.1 above the highest seen (88.0)`, `requests unusual for this
    /// time of day` or `joint: temperature×humidity (d²=31.2)`. Empty when
    /// normal. `names[i]` is the name of the i-th bound channel.
    pub fn reason(&self, names: &[impl AsRef<str>]) -> String {
        if !self.anomaly {
            return String::new();
        }
        let mut flagged: Vec<(usize, Verdict)> = self
            .verdicts
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| v.alarm).map(|v| (i, v)))
            .collect();
        flagged.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
        let mut parts = Vec::new();
        for (i, v) in flagged {
            let name = names[i].as_ref();
            let z = v.z.unwrap_or(0.0);
            parts.push(match v.finding {
                Some(Finding::Extreme { low, high, adopted }) => {
                    let (side, bound) = match (z >= 0.0, adopted) {
                        (true, false) => ("above the highest seen", high),
                        (false, false) => ("below the lowest seen", low),
                        (true, true) => ("above the adopted baseline's range", high),
                        (false, true) => ("below the adopted baseline's range", low),
                    };
                    format!("{name} {side} ({}; z={z:.2})", short(bound))
                }
                Some(Finding::Stretch { daily: true, .. }) => {
                    format!("{name} unusual for this time of day (z={z:.2})")
                }
                Some(Finding::Stretch { daily: false, .. }) => {
                    format!("{name} unusual stretch (z={z:.2})")
                }
                Some(Finding::Stuck { value, rows }) => {
                    format!("{name} stuck at {} for {rows} rows", short(value))
                }
                Some(Finding::Tail { .. }) | None => format!("{name} z={z:.2}"),
            });
        }
        if let Some(j) = &self.joint
            && parts.is_empty()
            && j.surprise - JOINT_PENALTY > 0.0
        {
            let who = if j.drivers.is_empty() {
                "all channels".to_string()
            } else {
                j.drivers.join("×")
            };
            parts.push(format!("joint: {who} (d²={:.1})", j.d2));
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
            parts.push("anomalous".to_string());
        }
        parts.join("; ")
    }
}

/// A value as a reason shows it: at most 6 significant digits, trailing
/// zeros dropped (Display for large, zero or non-finite values).
fn short(x: f64) -> String {
    if x.abs() >= 1e6 || x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = 6i32 - 1 - x.abs().log10().floor() as i32;
    let s = format!("{:.*}", digits.clamp(0, 6) as usize, x);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        // No fraction: the zeros are the integer's own.
        s
    }
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

    fn verdict(z: f64, score: f64, finding: Option<Finding>) -> Option<Verdict> {
        Some(Verdict {
            z: Some(z),
            score,
            alarm: score >= 0.5,
            finding,
            ..Default::default()
        })
    }

    fn row(v: Vec<Option<Verdict>>) -> RowScore {
        let mut s = RowScore {
            z: v.iter().map(|v| v.and_then(|v| v.z)).collect(),
            verdicts: v,
            ..Default::default()
        };
        let cfg = EngineConfig::default();
        s.finish(&cfg, cfg.alarm_surprise());
        s
    }

    #[test]
    fn the_strongest_channel_decides_and_half_means_alarm() {
        let s = row(vec![
            verdict(1.0, 0.1, None),
            verdict(-6.0, 0.7, Some(Finding::Tail { threshold: 4.5 })),
        ]);
        assert!(s.anomaly);
        assert_eq!(s.anomaly_score, 0.7);
        assert_eq!(s.z_flag, vec![Some(false), Some(true)]);
        assert_eq!(s.reason(&["a", "b"]), "b z=-6.00");
        let quiet = row(vec![verdict(1.0, 0.3, None), None]);
        assert!(!quiet.anomaly && quiet.anomaly_score < 0.5);
        assert_eq!(quiet.z_flag, vec![Some(false), None]);
        assert_eq!(quiet.reason(&["a", "b"]), "");
    }

    #[test]
    fn reasons_name_the_test() {
        let e = row(vec![verdict(
            9.0,
            0.6,
            Some(Finding::Extreme {
                low: 1.0,
                high: 88.25,
                adopted: false,
            }),
        )]);
        assert_eq!(
            e.reason(&["cpu"]),
            "cpu above the highest seen (88.25; z=9.00)"
        );
        // A bound no value reached, only an adopted baseline's reach.
        let a = row(vec![verdict(
            -7.1,
            0.6,
            Some(Finding::Extreme {
                low: -0.9,
                high: 20.0,
                adopted: true,
            }),
        )]);
        assert_eq!(
            a.reason(&["wind"]),
            "wind below the adopted baseline's range (-0.9; z=-7.10)"
        );
        let d = row(vec![verdict(
            2.0,
            0.6,
            Some(Finding::Stretch {
                surprise: 7.0,
                daily: true,
            }),
        )]);
        assert_eq!(
            d.reason(&["rq"]),
            "rq unusual for this time of day (z=2.00)"
        );
        let s = row(vec![verdict(
            0.1,
            0.9,
            Some(Finding::Stuck {
                value: 40.0,
                rows: 40,
            }),
        )]);
        assert_eq!(s.reason(&["temp"]), "temp stuck at 40 for 40 rows");
    }

    #[test]
    fn immature_rows_score_zero() {
        let s = row(vec![None, None]);
        assert!(!s.anomaly);
        assert_eq!(s.anomaly_score, 0.0);
        assert_eq!(s.reason(&["a", "b"]), "");
    }

    #[test]
    fn joint_reason_and_seed_columns() {
        let mut s = RowScore {
            z: vec![Some(1.0), Some(1.5)],
            verdicts: vec![verdict(1.0, 0.1, None), verdict(1.5, 0.1, None)],
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
        assert_eq!(s.if_label(), -1);
        assert!(s.if_score(0.7) < 0.0);
        assert_eq!(s.reason(&["t", "h"]), "joint: h×t (d²=40.0)");
    }

    /// The joint model's evidence `S` (its surprise less the penalty)
    /// against the alarm threshold `T` scores exactly `S / (S + T)`:
    /// 0.5 at the threshold, worked out by hand here for known evidence.
    #[test]
    fn joint_evidence_scores_s_over_s_plus_t() {
        let cfg = EngineConfig::default();
        let t = cfg.alarm_surprise();
        assert_eq!(t, 3.0, "false_alarm_rate 1e-3");
        assert_eq!(JOINT_PENALTY, 1.0);
        // (surprise, S / (S + T) with S = surprise - 1, T = 3)
        for (surprise, want) in [
            (4.0f64, 0.5f64),
            (7.0, 6.0 / 9.0),
            (2.5, 1.5 / 4.5),
            (13.0, 12.0 / 15.0),
            (1.0, 0.0),
            (0.5, 0.0),
        ] {
            let mut s = RowScore {
                z: vec![Some(0.0)],
                verdicts: vec![verdict(0.0, 0.0, None)],
                joint: Some(JointFinding {
                    d2: 1.0,
                    surprise,
                    drivers: Vec::new(),
                }),
                ..Default::default()
            };
            s.finish(&cfg, t);
            let want = if want >= 0.5 {
                want
            } else {
                want.min(0.499_999_999)
            };
            assert!(
                (s.anomaly_score - want).abs() < 1e-12,
                "surprise {surprise}: {} != {want}",
                s.anomaly_score
            );
            assert_eq!(s.anomaly, surprise - JOINT_PENALTY >= t, "{surprise}");
        }
        // Under another false-alarm rate the threshold moves with it:
        // T = -log10(1e-4) = 4, so S = 4 is the half-way point.
        let strict = EngineConfig {
            false_alarm_rate: 1e-4,
            ..Default::default()
        };
        let mut s = RowScore {
            joint: Some(JointFinding {
                d2: 1.0,
                surprise: 5.0,
                drivers: Vec::new(),
            }),
            ..Default::default()
        };
        s.finish(&strict, strict.alarm_surprise());
        assert!((s.anomaly_score - 0.5).abs() < 1e-12 && s.anomaly);
        assert_eq!(ratio_score(6.0, 3.0), 6.0 / 9.0);
        assert_eq!(ratio_score(0.0, 3.0), 0.0);
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(88.25), "88.25");
        assert_eq!(short(0.1234567), "0.123457");
        assert_eq!(short(12345678.0), "12345678");
        assert_eq!(short(100000.0), "100000");
        assert_eq!(short(-250000.0), "-250000");
        assert_eq!(short(120.5), "120.5");
    }
}
