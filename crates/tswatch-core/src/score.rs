//! The verdict on one row, and how it becomes a calibrated score and a
//! human reason.
//!
//! `anomaly_score` is built from tail probabilities, so it means the same on
//! every channel and in every file: `0.5` sits exactly at the flagging
//! threshold, and it approaches 1 without ever reaching it for finite input.

use crate::stats::two_sided_surprise;

/// The isolation forest's view of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestVerdict {
    /// `s(x)` in (0, 1]; higher is more isolated.
    pub score: f64,
    /// Whether `score` reached the configured threshold.
    pub flagged: bool,
    /// Channels that isolated the row most often (flagged rows only).
    pub drivers: Vec<String>,
}

/// Scores of one row, in the order of the bound channels.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowScore {
    /// z-score per channel; `None` while immature or for a missing cell.
    pub z: Vec<Option<f64>>,
    /// `|z| > threshold` per channel; `None` where `z` is `None`.
    pub z_flag: Vec<Option<bool>>,
    /// `None` until a forest is trained (or when the row has no feature value).
    pub forest: Option<ForestVerdict>,
    /// Whether the row is anomalous (any z flag, or the forest's flag).
    pub anomaly: bool,
    /// Calibrated score in [0, 1); at least 0.5 exactly when `anomaly`.
    pub anomaly_score: f64,
}

impl RowScore {
    pub(crate) fn clear(&mut self) {
        self.z.clear();
        self.z_flag.clear();
        self.forest = None;
        self.anomaly = false;
        self.anomaly_score = 0.0;
    }

    pub(crate) fn finish(&mut self, z_threshold: f64, forest_threshold: f64) {
        let max_z = self.z.iter().flatten().fold(0.0f64, |m, z| m.max(z.abs()));
        let z_part = ratio_score(two_sided_surprise(max_z), two_sided_surprise(z_threshold));
        // The forest's excess over 0.5, relative to the threshold's excess.
        let f_part = self.forest.as_ref().map_or(0.0, |f| {
            ratio_score((f.score - 0.5).max(0.0), forest_threshold - 0.5)
        });
        let z_flagged = self.z_flag.contains(&Some(true));
        let f_flagged = self.forest.as_ref().is_some_and(|f| f.flagged);
        self.anomaly = z_flagged || f_flagged;
        let mut s = z_part.max(f_part);
        // Keep the promise "score >= 0.5 iff anomaly" at the boundary, where
        // `>` vs `>=` and rounding could disagree.
        if self.anomaly {
            s = s.max(0.5);
        } else {
            s = s.min(0.499_999_999);
        }
        self.anomaly_score = s;
    }

    /// Seed's `if_label`: -1 for a forest outlier, 1 otherwise.
    pub fn if_label(&self) -> Option<i8> {
        self.forest.as_ref().map(|f| if f.flagged { -1 } else { 1 })
    }

    /// Seed's `if_score` (scikit-learn's `decision_function` sense): the
    /// threshold minus `s(x)`, so lower is more anomalous and negative is flagged.
    pub fn if_score(&self, forest_threshold: f64) -> Option<f64> {
        self.forest.as_ref().map(|f| forest_threshold - f.score)
    }

    /// Human explanation of a flagged row, e.g. `temperature z=6.12`, or
    /// `joint: temperature×humidity (isolation 0.71)`. Empty when normal.
    /// `names[i]` is the name of the i-th bound channel.
    pub fn reason(&self, names: &[impl AsRef<str>]) -> String {
        if !self.anomaly {
            return String::new();
        }
        let mut flagged: Vec<(usize, f64)> = self
            .z
            .iter()
            .zip(&self.z_flag)
            .enumerate()
            .filter(|(_, (_, f))| **f == Some(true))
            .map(|(i, (z, _))| (i, z.unwrap_or(0.0)))
            .collect();
        flagged.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        let mut parts: Vec<String> = flagged
            .iter()
            .map(|(i, z)| format!("{} z={:.2}", names[*i].as_ref(), z))
            .collect();
        if let Some(f) = self.forest.as_ref().filter(|f| f.flagged) {
            let who = if f.drivers.is_empty() {
                "all channels".to_string()
            } else {
                f.drivers.join("×")
            };
            parts.push(format!("joint: {who} (isolation {:.2})", f.score));
        }
        parts.join("; ")
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

    fn with_z(z: &[Option<f64>], thr: f64) -> RowScore {
        let mut s = RowScore {
            z: z.to_vec(),
            z_flag: z.iter().map(|z| z.map(|z| z.abs() > thr)).collect(),
            ..Default::default()
        };
        s.finish(thr, 0.65);
        s
    }

    #[test]
    fn half_at_threshold_and_monotone() {
        let a = with_z(&[Some(2.9)], 3.0);
        let b = with_z(&[Some(3.1)], 3.0);
        let c = with_z(&[Some(30.0)], 3.0);
        let d = with_z(&[Some(40.0)], 3.0);
        assert!(!a.anomaly && a.anomaly_score < 0.5);
        assert!(b.anomaly && b.anomaly_score >= 0.5);
        assert!(c.anomaly_score < d.anomaly_score && d.anomaly_score < 1.0);
    }

    #[test]
    fn immature_rows_score_zero() {
        let s = with_z(&[None, None], 3.0);
        assert!(!s.anomaly);
        assert_eq!(s.anomaly_score, 0.0);
        assert_eq!(s.reason(&["a", "b"]), "");
    }

    #[test]
    fn reason_orders_by_strength() {
        let s = with_z(&[Some(-4.0), Some(6.123), Some(1.0)], 3.0);
        assert_eq!(s.reason(&["a", "b", "c"]), "b z=6.12; a z=-4.00");
    }

    #[test]
    fn forest_reason_and_seed_columns() {
        let mut s = RowScore {
            z: vec![Some(1.0), Some(1.5)],
            z_flag: vec![Some(false), Some(false)],
            forest: Some(ForestVerdict {
                score: 0.7,
                flagged: true,
                drivers: vec!["h".into(), "t".into()],
            }),
            ..Default::default()
        };
        s.finish(3.0, 0.65);
        assert!(s.anomaly && s.anomaly_score > 0.5);
        assert_eq!(s.if_label(), Some(-1));
        assert!(s.if_score(0.65).unwrap() < 0.0);
        let names = ["t", "h"];
        assert_eq!(s.reason(&names), "joint: h×t (isolation 0.70)");
    }
}
