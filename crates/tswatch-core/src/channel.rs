//! One channel's model: the seed's all-time Welford statistics (what
//! `baseline.json` shows), the adaptive baseline rows are scored against, an
//! optional time-of-day baseline, and the level-shift tracker.

use crate::config::EngineConfig;
use crate::stats::{Ew, Welford, weight};
use serde::{Deserialize, Serialize};

/// Time-of-day buckets of the seasonal baseline (30 minutes each).
pub(crate) const SEASON_BUCKETS: usize = 48;
const DAY: f64 = 86_400.0;
/// Memory of the error trackers that decide whether the cycle is real.
const SEASON_ERR_ALPHA: f64 = 1.0 / 500.0;
/// |z| beyond which a value counts towards a level shift.
pub(crate) const SHIFT_Z: f64 = 2.0;

/// Persisted state of one channel.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChannelState {
    /// All-time statistics of absorbed values (seed: `count`, `mean`, `M2`).
    #[serde(flatten)]
    pub stats: Welford,
    /// Adaptive baseline (follows drift with a memory of `memory_rows`).
    #[serde(default)]
    pub ew: Ew,
    /// Time-of-day baseline.
    #[serde(default)]
    pub season: Season,
    /// Values of the current run beyond 2 sigma on one side.
    #[serde(default)]
    pub run: ShiftRun,
    /// When the channel last re-learned a level shift (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relearned_at: Option<f64>,
    /// The evidence for scoring on a log scale (positive, right-skewed data).
    #[serde(default)]
    pub log: LogScale,
    /// The alarm detector (what flags rows and writes `<ch>_zscore`).
    #[serde(default)]
    pub detector: crate::detector::Detector,
}

/// Tracks whether a channel is better modelled on a log scale: all values
/// positive, and much less skewed after taking logs (latencies, sizes,
/// prices). Heavy right tails otherwise read as endless anomalies.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LogScale {
    /// Adaptive baseline of `ln x`.
    pub ew: Ew,
    /// Running skewness of the values.
    pub skew: f64,
    /// Running skewness of their logarithms.
    pub log_skew: f64,
    /// Values that updated both skewness trackers.
    pub n: u64,
    /// A value at or below zero was seen: logs do not apply.
    pub nonpositive: bool,
}

/// Memory of the skewness trackers.
const SKEW_ALPHA: f64 = 1.0 / 1000.0;

/// Which baseline a z-score was taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// The adaptive baseline of the values.
    #[default]
    Plain,
    /// The baseline of the same time of day.
    Daily,
    /// The adaptive baseline of the values' logarithms.
    Log,
}

/// A daily profile and the evidence for using it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Season {
    /// One baseline per time-of-day bucket (empty until a timestamped value).
    pub buckets: Vec<Ew>,
    /// Running mean squared error against the plain baseline.
    pub err_plain: f64,
    /// Running mean squared error against the time-of-day baseline.
    pub err_season: f64,
    /// Values that updated both errors.
    pub n: u64,
}

/// Consecutive values beyond [`SHIFT_Z`] on one side.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ShiftRun {
    /// +1 above, -1 below, 0 no run.
    pub sign: i8,
    /// The values (capped at `level_shift_rows`).
    pub values: Vec<f64>,
    /// Timestamp of the first value of the run (epoch seconds), if known.
    pub since: Option<f64>,
}

/// The baseline a value is judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reference {
    /// Expected value.
    pub mean: f64,
    /// Expected spread.
    pub sd: f64,
    /// Which baseline it is.
    pub basis: Basis,
}

impl Reference {
    /// The value on this baseline's scale (`None`: not representable, as a
    /// non-positive value on a log scale).
    pub(crate) fn scale(&self, x: f64) -> Option<f64> {
        match self.basis {
            Basis::Log => (x > 0.0).then(|| x.ln()),
            _ => Some(x),
        }
    }
}

/// A row's time: epoch seconds and its time-of-day bucket, worked out once
/// when a row is scored and once when it is absorbed, rather than for every
/// channel and step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moment {
    /// Seconds since the Unix epoch.
    pub secs: f64,
    bucket: usize,
}

impl Moment {
    /// The moment `secs` seconds after the Unix epoch.
    pub fn new(secs: f64) -> Self {
        Self {
            secs,
            bucket: bucket(secs),
        }
    }
}

fn bucket(ts: f64) -> usize {
    ((seconds_of_day(ts) / DAY) * SEASON_BUCKETS as f64) as usize % SEASON_BUCKETS
}

/// `ts.rem_euclid(DAY)`, without the cost of `fmod` on every row. The
/// quotient's product with `DAY` is an integer below 2^53, and the
/// difference is smaller than `ts` and a multiple of its last place, so both
/// are exact; the quotient itself can round to the next day, which the
/// corrections undo. Beyond 2^53 seconds it falls back to `rem_euclid`.
fn seconds_of_day(ts: f64) -> f64 {
    if ts.abs() >= 9.0e15 || !ts.is_finite() {
        return ts.rem_euclid(DAY);
    }
    let mut r = ts - floor(ts / DAY) * DAY;
    if r < 0.0 {
        r += DAY;
    }
    if r >= DAY {
        r -= DAY;
    }
    r
}

/// `q.floor()` for `|q| < 2^52` without the library call `floor` is on
/// baseline x86-64 (this runs per value): truncation, one down for negatives.
fn floor(q: f64) -> f64 {
    let t = q as i64 as f64;
    if t > q { t - 1.0 } else { t }
}

impl ChannelState {
    /// A channel adopted from seed statistics: mature from its first row
    /// (see [`crate::detector::Detector::adopted`]).
    pub fn from_welford(w: Welford) -> Self {
        Self {
            stats: w,
            ew: Ew {
                n: w.count,
                mean: w.mean,
                var: w.variance(),
            },
            detector: crate::detector::Detector::adopted(w.count, w.mean, w.std()),
            ..Default::default()
        }
    }

    /// Whether every stored number is usable.
    pub fn is_valid(&self) -> bool {
        self.stats.is_valid()
            && self.ew.is_valid()
            && self.season.buckets.iter().all(Ew::is_valid)
            && self.season.err_plain.is_finite()
            && self.season.err_season.is_finite()
            && self.log.ew.is_valid()
            && self.log.skew.is_finite()
            && self.log.log_skew.is_finite()
            && self.run.values.iter().all(|v| v.is_finite())
            && self.detector.is_valid()
    }

    fn season_active(&self, cfg: &EngineConfig) -> bool {
        let s = &self.season;
        cfg.seasonality
            && s.n >= SEASON_BUCKETS as u64 * cfg.min_observations
            && s.err_season < 0.5 * s.err_plain
    }

    /// The baseline for a value at `ts`, or `None` while immature.
    pub(crate) fn reference(&self, ts: Option<Moment>, cfg: &EngineConfig) -> Option<Reference> {
        if self.ew.n < cfg.min_observations {
            return None;
        }
        if let Some(t) = ts
            && self.season_active(cfg)
            && let Some(b) = self.season.buckets.get(t.bucket)
            && b.n >= cfg.min_observations
        {
            return Some(Reference {
                mean: b.mean,
                sd: b.sd(),
                basis: Basis::Daily,
            });
        }
        if self.log_active(cfg) {
            return Some(Reference {
                mean: self.log.ew.mean,
                sd: self.log.ew.sd(),
                basis: Basis::Log,
            });
        }
        Some(Reference {
            mean: self.ew.mean,
            sd: self.ew.sd(),
            basis: Basis::Plain,
        })
    }

    fn log_active(&self, cfg: &EngineConfig) -> bool {
        let l = &self.log;
        !l.nonpositive
            && l.n >= 10 * cfg.min_observations
            && l.skew > 1.0
            && l.log_skew.abs() < 0.5 * l.skew
            && l.ew.n >= cfg.min_observations
    }

    /// The z-score of `x` against `r` (on `r`'s scale; a value a log scale
    /// cannot represent is judged on the plain baseline).
    pub(crate) fn z(&self, x: f64, r: &Reference) -> f64 {
        match r.scale(x) {
            Some(v) => z_score(v, r.mean, r.sd),
            None => z_score(x, self.ew.mean, self.ew.sd()),
        }
    }

    /// Absorbs a normal value. A value the running statistics cannot hold
    /// (non-finite, or so extreme that they would overflow) is refused and
    /// leaves the channel untouched; returns whether it was absorbed.
    pub(crate) fn absorb(&mut self, x: f64, ts: Option<Moment>, cfg: &EngineConfig) -> bool {
        let mut probe = self.ew;
        probe.push(x, cfg.alpha());
        if !x.is_finite() || !probe.is_valid() || !self.stats.push(x) {
            return false;
        }
        if cfg.seasonality
            && let Some(t) = ts
        {
            let s = &mut self.season;
            if s.buckets.is_empty() {
                s.buckets = vec![Ew::default(); SEASON_BUCKETS];
            }
            let b = &mut s.buckets[t.bucket];
            if b.n >= cfg.min_observations && self.ew.n >= cfg.min_observations {
                let (ep, es) = ((x - self.ew.mean).powi(2), (x - b.mean).powi(2));
                if s.n == 0 {
                    (s.err_plain, s.err_season) = (ep, es);
                } else {
                    s.err_plain += SEASON_ERR_ALPHA * (ep - s.err_plain);
                    s.err_season += SEASON_ERR_ALPHA * (es - s.err_season);
                }
                s.n += 1;
            }
            b.push(x, (SEASON_BUCKETS as f64 * cfg.alpha()).min(0.5));
            if !b.is_valid() {
                *b = Ew::default();
            }
        }
        let l = &mut self.log;
        if x <= 0.0 {
            l.nonpositive = true;
        } else if !l.nonpositive {
            let lx = x.ln();
            if self.ew.n >= cfg.min_observations && l.ew.n >= cfg.min_observations {
                let (sd, lsd) = (self.ew.sd(), l.ew.sd());
                if sd > 0.0 && lsd > 0.0 {
                    let u = ((x - self.ew.mean) / sd).clamp(-50.0, 50.0);
                    let v = ((lx - l.ew.mean) / lsd).clamp(-50.0, 50.0);
                    let w = weight(l.n + 1, SKEW_ALPHA);
                    l.skew += w * (u.powi(3) - l.skew);
                    l.log_skew += w * (v.powi(3) - l.log_skew);
                    l.n += 1;
                }
            }
            l.ew.push(lx, cfg.alpha());
        }
        self.ew = probe;
        true
    }

    /// Whether a value with this z would complete a level shift (read by
    /// the tests to see the run's state).
    #[cfg(test)]
    fn completes_shift(&self, z: f64, cfg: &EngineConfig) -> bool {
        cfg.level_shift_rows > 0
            && z.abs() > SHIFT_Z
            && self.run.sign == sign(z)
            && self.run.values.len() + 1 >= cfg.level_shift_rows
    }

    /// Tracks runs beyond 2 sigma; when a run is long enough, re-learns the
    /// channel at the new level. Returns whether it re-learned.
    pub(crate) fn track_shift(
        &mut self,
        x: f64,
        z: Option<f64>,
        ts: Option<Moment>,
        cfg: &EngineConfig,
    ) -> bool {
        let Some(z) = z.filter(|z| z.abs() > SHIFT_Z) else {
            self.run = ShiftRun::default();
            return false;
        };
        if cfg.level_shift_rows == 0 {
            return false;
        }
        if self.run.sign != sign(z) {
            self.run = ShiftRun {
                sign: sign(z),
                values: Vec::new(),
                since: ts.map(|t| t.secs),
            };
        }
        // Record the departure from the baseline in force, so a shift of a
        // channel with a daily cycle moves the whole profile.
        let reference = self.reference(ts, cfg);
        let basis = reference.map_or(Basis::Plain, |r| r.basis);
        let resid = match reference {
            Some(r) => r.scale(x).map_or(x - self.ew.mean, |v| v - r.mean),
            None => x - self.ew.mean,
        };
        if !resid.is_finite() {
            // Too extreme to average: no level can be learned from it.
            self.run = ShiftRun::default();
            return false;
        }
        self.run.values.push(resid);
        if self.run.values.len() < cfg.level_shift_rows {
            return false;
        }
        let run = std::mem::take(&mut self.run);
        let delta = run.values.iter().sum::<f64>() / run.values.len() as f64;
        // The spread is kept: a short run measures it poorly, and shrinking
        // it would turn ordinary variation into new "shifts".
        if basis == Basis::Log {
            // A shift on the log scale is a change of scale of the values.
            self.log.ew.mean += delta;
            self.ew.mean *= delta.exp();
            self.ew.var *= (2.0 * delta).exp();
        } else {
            self.ew.mean += delta;
        }
        self.ew.n = self.ew.n.max(cfg.min_observations);
        // Only a profile in use moves with the level; one still being
        // learned keeps learning from the data itself.
        if basis == Basis::Daily {
            for b in &mut self.season.buckets {
                b.mean += delta;
            }
        }
        let delta = if basis == Basis::Log {
            self.ew.mean - self.stats.mean
        } else {
            delta
        };
        // The all-time statistics restart at the new level, with the spread
        // they had.
        let var = self.stats.variance();
        let n = self.stats.count.min(cfg.memory_rows);
        self.stats = Welford {
            count: n,
            mean: self.stats.mean + delta,
            m2: var * n as f64,
        };
        self.relearned_at = run.since;
        true
    }
}

/// `(x - mean) / sd`, with a zero spread treated as a tiny one so that any
/// departure from a constant channel is flagged and nothing divides by zero.
pub(crate) fn z_score(x: f64, mean: f64, sd: f64) -> f64 {
    let floor = 1e-9 * mean.abs().max(1.0);
    let z = (x - mean) / sd.max(floor);
    // Keep the number printable: a z of 1e300 says no more than 1e12.
    z.clamp(-1e12, 1e12)
}

fn sign(z: f64) -> i8 {
    if z > 0.0 { 1 } else { -1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn season_buckets_wrap_the_day() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(DAY - 1.0), SEASON_BUCKETS - 1);
        assert_eq!(bucket(DAY + 1800.0), 1);
        assert_eq!(bucket(-1.0), SEASON_BUCKETS - 1);
        for ts in [
            0.0,
            -0.0,
            DAY,
            -DAY,
            DAY - 1e-9,
            -5e-324,
            1_769_904_000.0 - 1e-7,
            1_769_904_000.0,
            1.769_904_000_123_456_7e9,
            -1.5e9,
            8.9e15,
            1e300,
        ] {
            let (got, want) = (seconds_of_day(ts), ts.rem_euclid(DAY));
            assert!(
                got == want || (got == 0.0 && want == DAY),
                "{ts}: {got} vs {want}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn seconds_of_day_is_rem_euclid(ts in -1.0e13f64..1.0e13, day in -20_000i64..40_000) {
            // rem_euclid rounds a value just below a midnight up to DAY
            // itself (-5e-324 gives 86400.0); seconds_of_day gives 0.0, the
            // same moment of the day, inside [0, DAY).
            let same = |a: f64, b: f64| a == b || (a == 0.0 && b == DAY);
            proptest::prop_assert!(same(seconds_of_day(ts), ts.rem_euclid(DAY)), "{}", ts);
            // Near day boundaries, where the quotient rounds.
            let edge = day as f64 * DAY;
            for t in [edge, edge.next_down(), edge.next_up(), edge + ts.fract()] {
                let (got, want) = (seconds_of_day(t), t.rem_euclid(DAY));
                proptest::prop_assert!(same(got, want), "{}: {} vs {}", t, got, want);
                proptest::prop_assert!((0.0..DAY).contains(&got), "{}", t);
            }
        }
    }

    #[test]
    fn a_long_run_relearns_the_level() {
        let cfg = EngineConfig::default();
        let mut c = ChannelState::default();
        for i in 0..100 {
            c.absorb(10.0 + (i % 5) as f64 * 0.1, None, &cfg);
        }
        let mut relearned = false;
        for i in 0..cfg.level_shift_rows {
            let x = 20.0 + (i % 5) as f64 * 0.1;
            let r = c.reference(None, &cfg).unwrap();
            relearned = c.track_shift(x, Some(c.z(x, &r)), Some(Moment::new(i as f64)), &cfg);
        }
        assert!(relearned);
        assert!((c.ew.mean - 20.2).abs() < 0.2, "{}", c.ew.mean);
        assert!((c.stats.mean - 20.2).abs() < 0.2, "{}", c.stats.mean);
        assert_eq!(c.relearned_at, Some(0.0));
        assert_eq!(c.stats.count, 100);
    }

    #[test]
    fn a_change_of_side_restarts_the_run() {
        let cfg = EngineConfig::default();
        assert_eq!(cfg.level_shift_rows, 16);
        let quiet = |c: &mut ChannelState| {
            for i in 0..100 {
                c.absorb(10.0 + (i % 5) as f64 * 0.1, None, &cfg);
            }
        };
        let mut c = ChannelState::default();
        quiet(&mut c);
        let before = c.clone();
        // Outliers at +-5 sigma that alternate in sign are not a level:
        // every one is beyond 2 sigma, but no side holds for 16 rows.
        for i in 0..64 {
            let z = if i % 2 == 0 { 5.0 } else { -5.0 };
            let x = 10.2 + z * c.ew.var.sqrt();
            assert!(!c.completes_shift(z, &cfg), "row {i}");
            assert!(
                !c.track_shift(x, Some(z), None, &cfg),
                "re-learned at row {i}"
            );
            assert!(c.run.values.len() <= 1, "row {i}: {:?}", c.run);
        }
        assert_eq!(
            (c.ew.mean, c.stats.mean),
            (before.ew.mean, before.stats.mean)
        );
        // One row above, then rows below: the run below counts from its
        // own first row, and completes at its 16th, not before.
        let mut c = before.clone();
        assert!(!c.track_shift(20.0, Some(5.0), None, &cfg));
        for i in 1..=cfg.level_shift_rows {
            let last = i == cfg.level_shift_rows;
            assert_eq!(c.completes_shift(-5.0, &cfg), last, "row {i} below");
            assert_eq!(
                c.track_shift(0.0, Some(-5.0), None, &cfg),
                last,
                "row {i} below"
            );
        }
        // What was learned is the run below alone: the level is 0.
        assert!(c.ew.mean.abs() < 1e-9, "{}", c.ew.mean);
    }

    #[test]
    fn an_interrupted_run_does_not_relearn() {
        let cfg = EngineConfig::default();
        let mut c = ChannelState::default();
        for _ in 0..40 {
            c.absorb(0.0, None, &cfg);
            c.absorb(1.0, None, &cfg);
        }
        for i in 0..100 {
            let z = if i % 10 == 9 { 0.5 } else { 5.0 };
            assert!(!c.track_shift(3.0, Some(z), None, &cfg));
        }
    }
}
