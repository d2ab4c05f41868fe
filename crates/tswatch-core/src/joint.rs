//! The joint model: an adaptive mean vector and covariance matrix over the
//! mature channels, and the squared Mahalanobis distance of a row from it.
//! Under Gaussian data that distance is chi-square distributed, so its tail
//! probability is calibrated like the per-channel ones.

use crate::channel::Basis;
pub(crate) use crate::config::MAX_JOINT_CHANNELS as MAX_CHANNELS;
use crate::stats::chi2_surprise;
use serde::{Deserialize, Serialize};

/// Persisted joint model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Joint {
    /// Channels, in order (sorted by name).
    pub channels: Vec<String>,
    /// Rows absorbed.
    pub n: u64,
    /// Mean vector.
    pub mean: Vec<f64>,
    /// Covariance, row-major `k x k`.
    pub cov: Vec<f64>,
    /// The baseline each channel's z-scores were taken against when the
    /// model started; the model only holds while that stays so.
    #[serde(default)]
    pub basis: Vec<Basis>,
}

/// A row's distance from the joint model.
#[derive(Debug, Clone, PartialEq)]
pub struct JointVerdict {
    /// Squared Mahalanobis distance.
    pub d2: f64,
    /// `-log10` of its chi-square tail probability.
    pub surprise: f64,
    /// Share of `d2` contributed by each channel (same order as the model).
    pub contributions: Vec<f64>,
}

impl Joint {
    /// An empty model over `channels`.
    pub fn new(channels: Vec<String>, basis: Vec<Basis>) -> Self {
        let k = channels.len();
        Self {
            channels,
            n: 0,
            mean: vec![0.0; k],
            cov: vec![0.0; k * k],
            basis,
        }
    }

    /// Whether every number is usable and the shapes agree.
    pub fn is_valid(&self) -> bool {
        let k = self.channels.len();
        self.mean.len() == k
            && self.cov.len() == k * k
            && self.mean.iter().chain(&self.cov).all(|v| v.is_finite())
    }

    /// Rows needed before the model is used.
    pub fn min_rows(&self, min_observations: u64) -> u64 {
        min_observations.max(10 * self.channels.len() as u64)
    }

    /// Absorbs a row (values in model order, all present).
    pub fn push(&mut self, x: &[f64], alpha: f64) {
        let k = self.channels.len();
        if x.len() != k || k > MAX_CHANNELS || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        self.n += 1;
        let a = crate::stats::weight(self.n, alpha);
        let mut d = [0.0; MAX_CHANNELS];
        for i in 0..k {
            d[i] = x[i] - self.mean[i];
        }
        for (m, di) in self.mean.iter_mut().zip(&d[..k]) {
            *m += a * di;
        }
        for i in 0..k {
            for j in 0..k {
                let c = &mut self.cov[i * k + j];
                *c = (1.0 - a) * (*c + a * d[i] * d[j]);
            }
        }
    }

    /// Distance of a row (values in model order, all present); `None` if the
    /// covariance cannot be factored. Per-channel contributions are computed
    /// only when `explain` is set: they are needed only to explain an alarm.
    pub fn score(&self, x: &[f64], explain: bool) -> Option<JointVerdict> {
        let k = self.channels.len();
        if x.len() != k || k == 0 || k > MAX_CHANNELS {
            return None;
        }
        // Sized scratch, and for the usual widths a copy specialised to the
        // width (loops unrolled, no bounds checks): this runs per row.
        match k {
            2 => self.solve::<2>(x, explain, 2),
            3 => self.solve::<3>(x, explain, 3),
            4 => self.solve::<4>(x, explain, 4),
            0..=8 => self.solve::<8>(x, explain, k),
            _ => self.solve::<MAX_CHANNELS>(x, explain, k),
        }
    }

    /// [`Joint::score`] for `k <= N` channels.
    #[inline(always)]
    fn solve<const N: usize>(&self, x: &[f64], explain: bool, k: usize) -> Option<JointVerdict> {
        let mut r = [0.0; N];
        for i in 0..k {
            r[i] = x[i] - self.mean[i];
        }
        // Lower Cholesky factor, with a small ridge so that collinear or
        // constant channels do not make it singular, and the reciprocals of
        // its diagonal: the solves then multiply, where a chain of
        // divisions would set the pace of every row.
        let mut l = [[0.0; N]; N];
        let mut inv = [0.0; N];
        for i in 0..k {
            let diag = self.cov[i * k + i];
            let ridge = 1e-9 * diag.abs().max(1e-12) + 1e-300;
            for j in 0..=i {
                let s: f64 = (0..j).map(|p| l[i][p] * l[j][p]).sum();
                if i == j {
                    let v = diag + ridge - s;
                    if v.is_nan() || v <= 0.0 {
                        return None;
                    }
                    l[i][i] = v.sqrt();
                    inv[i] = 1.0 / l[i][i];
                } else {
                    l[i][j] = (self.cov[i * k + j] - s) * inv[j];
                }
            }
        }
        // Solve L y = r, then L^T w = y; d2 = r . w = |y|^2.
        let mut y = [0.0; N];
        for i in 0..k {
            let s: f64 = (0..i).map(|j| l[i][j] * y[j]).sum();
            y[i] = (r[i] - s) * inv[i];
        }
        let d2: f64 = y[..k].iter().map(|v| v * v).sum();
        if !d2.is_finite() {
            return None;
        }
        let contributions = if explain {
            let mut w = [0.0; N];
            for i in (0..k).rev() {
                let s: f64 = (i + 1..k).map(|j| l[j][i] * w[j]).sum();
                w[i] = (y[i] - s) * inv[i];
            }
            (0..k)
                .map(|i| r[i] * w[i] / d2.max(f64::MIN_POSITIVE))
                .collect()
        } else {
            Vec::new()
        };
        Some(JointVerdict {
            d2,
            surprise: chi2_surprise(d2, k),
            contributions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::SplitMix64;

    #[test]
    fn correlation_breaks_are_far_and_ordinary_rows_are_not() {
        let mut rng = SplitMix64::new(3);
        let mut j = Joint::new(vec!["a".into(), "b".into()], vec![Basis::Plain; 2]);
        let rho: f64 = -0.9;
        for _ in 0..5000 {
            let (z1, z2) = (rng.normal(), rng.normal());
            j.push(&[z1, rho * z1 + (1.0 - rho * rho).sqrt() * z2], 0.0);
        }
        let ordinary = j.score(&[1.5, -1.4], true).unwrap();
        let broken = j.score(&[1.5, 1.5], true).unwrap();
        assert!(ordinary.d2 < 6.0, "{ordinary:?}");
        assert!(broken.d2 > 40.0, "{broken:?}");
        assert!(broken.surprise > 8.0);
        let total: f64 = broken.contributions.iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    /// `r' C^-1 r` by Gauss-Jordan elimination, as a reference.
    fn mahalanobis(cov: &[f64], r: &[f64]) -> f64 {
        let k = r.len();
        let mut a: Vec<Vec<f64>> = (0..k)
            .map(|i| {
                let mut row = cov[i * k..(i + 1) * k].to_vec();
                row.push(r[i]);
                row
            })
            .collect();
        for c in 0..k {
            let p = (c..k)
                .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
                .unwrap();
            a.swap(c, p);
            let pivot = a[c].clone();
            for (i, row) in a.iter_mut().enumerate() {
                if i != c {
                    let f = row[c] / pivot[c];
                    for (v, p) in row.iter_mut().zip(&pivot).skip(c) {
                        *v -= f * p;
                    }
                }
            }
        }
        (0..k).map(|i| r[i] * a[i][k] / a[i][i]).sum()
    }

    #[test]
    fn every_width_gives_the_mahalanobis_distance() {
        let mut rng = SplitMix64::new(11);
        for k in 1..=MAX_CHANNELS {
            let names = (0..k).map(|i| format!("c{i}")).collect();
            let mut j = Joint::new(names, vec![Basis::Plain; k]);
            for _ in 0..400 {
                // Correlated: each channel leans on the one before it.
                let mut x = vec![0.0; k];
                for i in 0..k {
                    x[i] = rng.normal() + if i > 0 { 0.5 * x[i - 1] } else { 0.0 };
                }
                j.push(&x, 0.0);
            }
            let probe: Vec<f64> = (0..k).map(|i| 1.5 - 0.4 * i as f64).collect();
            let r: Vec<f64> = probe.iter().zip(&j.mean).map(|(x, m)| x - m).collect();
            let got = j.score(&probe, true).unwrap();
            let want = mahalanobis(&j.cov, &r);
            assert!(
                (got.d2 - want).abs() <= 1e-6 * want,
                "k {k}: {} vs {want}",
                got.d2
            );
            let total: f64 = got.contributions.iter().sum();
            assert!((total - 1.0).abs() < 1e-9, "k {k}: {total}");
        }
    }

    #[test]
    fn degenerate_covariances_do_not_panic() {
        let mut j = Joint::new(vec!["a".into(), "b".into()], vec![Basis::Plain; 2]);
        for _ in 0..100 {
            j.push(&[1.0, 2.0], 0.0);
        }
        let v = j.score(&[1.0, 2.0], true);
        assert!(v.is_none_or(|v| v.d2.is_finite()));
        assert!(j.score(&[1.0], true).is_none());
    }
}
