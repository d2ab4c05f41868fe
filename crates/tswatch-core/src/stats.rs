//! Numerically stable running statistics and normal-tail arithmetic.
//!
//! Invariants: [`Welford`] only ever absorbs finite values, so its mean and
//! `M2` stay finite; `std` is the population standard deviation
//! `sqrt(M2 / count)`, the definition the seed's `baseline.json` uses.

use serde::{Deserialize, Serialize};

/// Welford's online mean and variance (population form).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Welford {
    /// Number of values absorbed.
    pub count: u64,
    /// Running mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    #[serde(rename = "M2")]
    pub m2: f64,
}

impl Welford {
    /// Absorbs one value. Non-finite values are ignored (they must never
    /// reach the baseline), and so is a finite value so far from the mean
    /// that the statistics would overflow (e.g. `1e308` after `-1e308`):
    /// the state is left untouched. Returns whether the value was absorbed.
    pub fn push(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        let count = self.count + 1;
        let delta = x - self.mean;
        let mean = self.mean + delta / count as f64;
        // Rounding can leave M2 a hair below zero on constant input.
        let m2 = (self.m2 + delta * (x - mean)).max(0.0);
        if !(delta.is_finite() && mean.is_finite() && m2.is_finite()) {
            return false;
        }
        self.count = count;
        self.mean = mean;
        self.m2 = m2;
        true
    }

    /// Population variance `M2 / count` (0 before the first value).
    pub fn variance(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.m2 / self.count as f64
        }
    }

    /// Population standard deviation `sqrt(M2 / count)`.
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }

    /// Combines two independent summaries (Chan et al.), as if every value
    /// of `other` had been pushed after those of `self`.
    pub fn merge(&mut self, other: &Welford) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let n = self.count + other.count;
        let delta = other.mean - self.mean;
        let (na, nb) = (self.count as f64, other.count as f64);
        self.mean += delta * nb / n as f64;
        self.m2 += other.m2 + delta * delta * na * nb / n as f64;
        self.count = n;
    }

    /// Whether the stored numbers are usable (finite, non-negative M2).
    pub fn is_valid(&self) -> bool {
        self.mean.is_finite() && self.m2.is_finite() && self.m2 >= 0.0
    }
}

/// `-log10` of the two-sided standard normal tail probability `P(|Z| >= z)`.
///
/// Computed in log space, so it stays finite and strictly increasing for any
/// finite `z` (no underflow to `p = 0` at large `z`): this is what keeps
/// anomaly scores from saturating. The detector takes one-sided tails; this
/// is the reference the chi-square tail is checked against.
#[cfg(test)]
fn two_sided_surprise(z: f64) -> f64 {
    let z = z.abs();
    if z.is_nan() {
        return 0.0;
    }
    if z.is_infinite() {
        return f64::MAX;
    }
    // P(|Z| >= z) = erfc(z / sqrt 2).
    -ln_erfc(z / std::f64::consts::SQRT_2) / std::f64::consts::LN_10
}

/// Natural log of the complementary error function for `x >= 0`.
///
/// Chebyshev fit from Numerical Recipes (`erfcc`), fractional error below
/// 1.2e-7 everywhere; written as an exponent so the log needs no `exp`.
pub(crate) fn ln_erfc(x: f64) -> f64 {
    let x = x.max(0.0);
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t.ln() + poly
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn two_pass(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let m2 = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
        (mean, m2)
    }

    #[test]
    fn matches_two_pass_reference() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f64 / 10.0)
            .collect();
        let mut w = Welford::default();
        xs.iter().for_each(|&x| {
            w.push(x);
        });
        let (mean, m2) = two_pass(&xs);
        assert_eq!(w.count, 1000);
        assert!((w.mean - mean).abs() < 1e-10);
        assert!((w.m2 - m2).abs() / m2 < 1e-12);
        assert!((w.std() - (m2 / 1000.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn huge_offset_small_noise_keeps_precision() {
        // The naive sum-of-squares formula loses every digit here.
        let xs: Vec<f64> = (0..10_000)
            .map(|i| 1e9 + ((i % 7) as f64 - 3.0) * 0.01)
            .collect();
        let mut w = Welford::default();
        for &x in &xs {
            w.push(x);
        }
        // Reference computed on the offset-free values, where it is exact.
        let small: Vec<f64> = xs.iter().map(|x| x - 1e9).collect();
        let (mean, m2) = two_pass(&small);
        assert!(
            (w.mean - 1e9 - mean).abs() < 1e-5,
            "mean off by {}",
            w.mean - 1e9 - mean
        );
        assert!((w.m2 - m2).abs() / m2 < 1e-4, "{} vs {}", w.m2, m2);
        // True population sd of the pattern -3..3 (×0.01) repeated.
        assert!((w.std() - 0.02).abs() < 1e-6);
    }

    #[test]
    fn non_finite_values_are_refused() {
        let mut w = Welford::default();
        assert!(w.push(1.0));
        assert!(!w.push(f64::NAN));
        assert!(!w.push(f64::INFINITY));
        assert!(!w.push(f64::NEG_INFINITY));
        assert_eq!(w.count, 1);
        assert!(w.is_valid());
    }

    #[test]
    fn values_that_would_overflow_are_refused() {
        let mut w = Welford::default();
        assert!(w.push(-1e308));
        // 1e308 - (-1e308) overflows: refused, state untouched.
        assert!(!w.push(1e308));
        assert_eq!((w.count, w.mean, w.m2), (1, -1e308, 0.0));
        let mut w = Welford::default();
        assert!(w.push(1e200));
        // A finite delta whose square overflows M2.
        assert!(!w.push(-1e200));
        assert_eq!(w.count, 1);
        assert!(w.push(1e200));
        assert!(w.is_valid() && w.std().is_finite());
    }

    #[test]
    fn empty_and_single_have_zero_std() {
        let mut w = Welford::default();
        assert_eq!(w.std(), 0.0);
        w.push(5.0);
        assert_eq!(w.std(), 0.0);
        assert_eq!(w.mean, 5.0);
    }

    #[test]
    fn seed_json_field_names() {
        let mut w = Welford::default();
        w.push(1.0);
        w.push(3.0);
        let v = serde_json::to_value(w).unwrap();
        assert_eq!(v["count"], 2);
        assert_eq!(v["mean"], 2.0);
        assert_eq!(v["M2"], 2.0);
    }

    #[test]
    fn surprise_matches_known_tails() {
        // P(|Z|>=1.96) = 0.05, P(|Z|>=3) = 0.0026998.
        assert!((two_sided_surprise(1.959964) - (-(0.05f64).log10())).abs() < 1e-5);
        assert!((two_sided_surprise(3.0) - (-(0.002_699_796f64).log10())).abs() < 1e-5);
        assert!(two_sided_surprise(0.0).abs() < 1e-6);
        // Far in the tail it is still finite and increasing.
        assert!(two_sided_surprise(50.0) > two_sided_surprise(40.0));
        assert!(two_sided_surprise(1e6).is_finite());
    }

    proptest! {
        #[test]
        fn welford_agrees_with_two_pass(xs in prop::collection::vec(-1e6f64..1e6, 1..300)) {
            let mut w = Welford::default();
            for &x in &xs { w.push(x); }
            let (mean, m2) = two_pass(&xs);
            prop_assert!((w.mean - mean).abs() <= 1e-9 * (1.0 + mean.abs()));
            prop_assert!((w.m2 - m2).abs() <= 1e-7 * (1.0 + m2));
        }

        #[test]
        fn merge_equals_sequential(a in prop::collection::vec(-1e3f64..1e3, 0..100),
                                   b in prop::collection::vec(-1e3f64..1e3, 0..100)) {
            let mut wa = Welford::default();
            for &x in &a { wa.push(x); }
            let mut wb = Welford::default();
            for &x in &b { wb.push(x); }
            let mut all = Welford::default();
            for &x in a.iter().chain(&b) { all.push(x); }
            wa.merge(&wb);
            prop_assert_eq!(wa.count, all.count);
            prop_assert!((wa.mean - all.mean).abs() < 1e-9);
            prop_assert!((wa.m2 - all.m2).abs() < 1e-6 * (1.0 + all.m2));
        }

        #[test]
        fn closed_form_chi2_tail_agrees_with_the_general_one(
            half in 1usize..9,
            x in 0.01f64..2000.0,
        ) {
            let closed = ln_gamma_q_int(half, x).unwrap();
            let general = ln_gamma_q(half as f64, x);
            prop_assert!(
                (closed - general).abs() <= 1e-12 * general.abs().max(1e-3),
                "m {} x {}: {} vs {}", half, x, closed, general
            );
        }

        #[test]
        fn weight_is_the_larger_of_one_over_n_and_alpha(
            n in 1u64..10_000_000,
            memory in 1.0f64..1.0e6,
        ) {
            let alpha = 1.0 / memory;
            for n in [n, (2.0 * memory) as u64, (2.0 * memory) as u64 + 1] {
                let n = n.max(1);
                prop_assert_eq!(weight(n, alpha).to_bits(), (1.0 / n as f64).max(alpha).to_bits());
            }
        }

        #[test]
        fn surprise_is_monotone(a in 0f64..60.0, d in 0.001f64..10.0) {
            prop_assert!(two_sided_surprise(a + d) > two_sided_surprise(a));
        }
    }
}

/// Exponentially weighted mean and variance that starts as an exact running
/// mean/variance: the weight of a new value is `max(1/n, alpha)`, so the
/// first `1/alpha` values are weighted equally (Welford), and after that the
/// estimate follows the recent past (drift) with a memory of about `1/alpha`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Ew {
    /// Values absorbed.
    pub n: u64,
    /// Weighted mean.
    pub mean: f64,
    /// Weighted (population) variance.
    pub var: f64,
}

impl Ew {
    /// Absorbs a finite value with minimum weight `alpha`.
    pub fn push(&mut self, x: f64, alpha: f64) {
        if !x.is_finite() {
            return;
        }
        self.n += 1;
        let a = weight(self.n, alpha);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = ((1.0 - a) * (self.var + a * d * d)).max(0.0);
    }

    /// Standard deviation.
    pub fn sd(&self) -> f64 {
        self.var.sqrt()
    }

    /// Whether the numbers are usable.
    pub fn is_valid(&self) -> bool {
        self.mean.is_finite() && self.var.is_finite() && self.var >= 0.0
    }
}

/// `max(1/n, alpha)`, the weight of the n-th value of a running estimate
/// with memory `1/alpha`, without a division once `n` is past that memory
/// (this runs several times per value): if the product, rounded, exceeds 2,
/// then `1/n < alpha / 1.99`, so even rounded up `1/n` is below `alpha`, and
/// the maximum is exactly `alpha`.
pub(crate) fn weight(n: u64, alpha: f64) -> f64 {
    if n as f64 * alpha > 2.0 {
        alpha
    } else {
        (1.0 / n as f64).max(alpha)
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; ~1e-15 relative).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// `ln Q(a, x)`, the log of the regularised upper incomplete gamma function,
/// finite far into the tail (series for small `x`, continued fraction else).
pub(crate) fn ln_gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let gln = ln_gamma(a);
    if x < a + 1.0 {
        // P by series, Q = 1 - P.
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..500 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        let p = (sum.ln() - x + a * x.ln() - gln).exp();
        (1.0 - p).max(f64::MIN_POSITIVE).ln()
    } else {
        // Modified Lentz continued fraction for Q.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..500 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        h.ln() - x + a * x.ln() - gln
    }
}

/// `-log10 P(X >= d2)` for `X ~ chi-square(k)`: the surprise of a squared
/// Mahalanobis distance over `k` Gaussian channels.
pub(crate) fn chi2_surprise(d2: f64, k: usize) -> f64 {
    if d2.is_nan() || d2 <= 0.0 || k == 0 {
        return 0.0;
    }
    if d2.is_infinite() {
        return f64::MAX;
    }
    if k.is_multiple_of(2)
        && let Some(ln_q) = ln_gamma_q_int(k / 2, d2 / 2.0)
    {
        return -ln_q / std::f64::consts::LN_10;
    }
    -ln_gamma_q(k as f64 / 2.0, d2 / 2.0) / std::f64::consts::LN_10
}

/// `ln Q(m, x)` for a whole `m >= 1`, in closed form: `Q(m, x) = e^-x
/// sum_{i<m} x^i / i!` (the Poisson tail), one logarithm instead of an
/// iteration; `None` where the sum overflows. Rounding can leave the log a
/// hair above zero for tiny `x`, so it is capped at zero.
fn ln_gamma_q_int(m: usize, x: f64) -> Option<f64> {
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for i in 1..m {
        term *= x / i as f64;
        sum += term;
    }
    sum.is_finite().then(|| (sum.ln() - x).min(0.0))
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn ew_starts_exact_then_forgets() {
        let mut e = Ew::default();
        let mut w = Welford::default();
        for i in 0..50 {
            let x = (i % 7) as f64;
            e.push(x, 0.01);
            w.push(x);
        }
        assert!((e.mean - w.mean).abs() < 1e-12);
        assert!((e.var - w.variance()).abs() < 1e-9);
        for _ in 0..2000 {
            e.push(100.0, 0.01);
        }
        assert!(
            (e.mean - 100.0).abs() < 1e-3,
            "follows a new level: {}",
            e.mean
        );
    }

    #[test]
    fn chi_square_tails() {
        // Known values: P(chi2_1 >= 3.841459) = 0.05, P(chi2_4 >= 9.487729) = 0.05,
        // P(chi2_2 >= x) = exp(-x/2).
        assert!((chi2_surprise(3.841_459, 1) - (-(0.05f64).log10())).abs() < 1e-5);
        assert!((chi2_surprise(9.487_729, 4) - (-(0.05f64).log10())).abs() < 1e-5);
        for x in [0.5, 2.0, 10.0, 100.0, 1000.0] {
            let want = x / 2.0 / std::f64::consts::LN_10;
            assert!(
                (chi2_surprise(x, 2) - want).abs() < 1e-6 * want.max(1.0),
                "x={x}"
            );
        }
        // Agrees with the normal tail for one degree of freedom.
        for z in [1.0f64, 3.0, 6.0, 20.0] {
            let a = chi2_surprise(z * z, 1);
            let b = two_sided_surprise(z);
            assert!((a - b).abs() < 1e-4 * b.max(1.0), "z={z}: {a} vs {b}");
        }
        assert!(chi2_surprise(1e6, 3).is_finite());
        // Beyond where the closed form's sum overflows.
        assert!(chi2_surprise(1e300, 16).is_finite() && chi2_surprise(1e300, 16) > 1e298);
    }

    #[test]
    fn gamma_function() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }
}
