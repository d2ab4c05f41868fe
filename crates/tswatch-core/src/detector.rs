//! One channel's alarm detector, built for the series people really have
//! (counts, quantised metrics, bursts, flat stretches, daily shapes) and
//! measured on real labelled series (NAB; see `docs/detection.md`).
//! Four tests, each asking "is this more surprising than this
//! channel usually is?":
//!
//! - **Tail**: the value's z-score against the last [`WINDOW`] values, held
//!   against the channel's own tail of z-scores (an exponential tail fitted
//!   above |z| = 3 and extrapolated), not against a Gaussian: a channel whose
//!   bursts reach 10 sigma every day is not flagged for one more.
//! - **Unusual stretch** (anomaly likelihood, Ahmad et al. 2017): the mean
//!   of the last [`AVERAGE`] raw scores against their long-run distribution,
//!   for the plain values against the last [`WINDOW`] and against the last
//!   [`SHORT`] (a new regime), and for their departure from the time-of-day
//!   profile; sees slow, novel behaviour that no single row shows.
//! - **New extreme**: a value beyond the whole range seen so far by more
//!   than [`EXTREME_MARGIN`] of it.
//! - **Stuck**: one value repeated three times longer than any run of one
//!   value the channel has shown, and at least 40 times (a stuck sensor, a
//!   flat-lined feed); a channel that is constant from its start is not
//!   stuck, only constant.
//!
//! The stretch, extreme and stuck tests report onsets: after one fires, the channel
//! stays quiet for [`QUIET_ROWS`] rows, so one incident is one alarm. Every
//! spread has a floor from the channel's own range, so quantised and
//! constant channels give bounded z-scores.
//!
//! A channel adopted from a mature baseline (the seed's `baseline.json`,
//! at least [`ADOPT_MIN`] observations: see [`Detector::adopted`]) is judged
//! from its first row: until its own tail is learned the tail test holds
//! the value's z against the adopted mean and spread to a Gaussian tail at
//! the same budget, and the new-extreme test counts the range the adopted
//! observations imply as seen.
//!
//! Score-then-learn: [`Detector::score`] reads the state, [`Detector::learn`]
//! takes its verdict. Values beyond the tail test are kept out of the
//! window unless they persist (`level_shift_rows`, 16 by default, in a row
//! on one side: a level shift), which is then learned at once.

use crate::stats::ln_erfc;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Values the reference window holds.
pub(crate) const WINDOW: usize = 6400;
/// Values the recent reference window holds: the stretch test also asks
/// "unusual for the last few hundred rows?", which sees a change of regime
/// that a long window, still holding older and wilder values, absorbs.
pub(crate) const SHORT: usize = 400;
/// Rows learned before the stuck-value test speaks.
const STUCK_LEARN: u64 = LIKELIHOOD_LEARN;
/// A value repeated this many times the longest run seen so far is stuck...
const STUCK_FACTOR: u64 = 3;
/// ...if it also repeated at least this many times.
const STUCK_MIN: u64 = 40;
/// Raw scores averaged by the stretch test.
pub(crate) const AVERAGE: usize = 10;
/// Memory (rows) of the averaged scores' mean and variance.
const LIKELIHOOD_MEMORY: f64 = 8640.0;
/// Averaged scores learned before the stretch test speaks.
const LIKELIHOOD_LEARN: u64 = 388;
/// A new extreme must pass the range seen so far by this share of it.
pub(crate) const EXTREME_MARGIN: f64 = 0.01;
/// Rows of a channel kept quiet after a stretch or extreme alarm.
pub(crate) const QUIET_ROWS: u64 = 100;
/// |z| above which the tail of z-scores is modelled.
const TAIL_FROM: f64 = 3.0;
/// Memory of the tail model (rows).
const TAIL_MEMORY: f64 = 2000.0;
/// Rows the tail model learns from before the tail test speaks.
const TAIL_LEARN: u64 = 500;
/// The tail test never flags below this |z|.
const TAIL_MIN_Z: f64 = 4.0;
/// The fewest observations an adopted baseline needs to stand in for the
/// channel's own learning: as many as the tail test learns from before it
/// speaks. (Its spread is then known within about 3% (`1/sqrt(2n)`), and a
/// Student-t of that many degrees of freedom is within 3% of the Gaussian
/// threshold.)
pub(crate) const ADOPT_MIN: u64 = TAIL_LEARN;
/// The largest `level_shift_rows` the configuration allows: the most
/// values a run keeps.
const MAX_SHIFT_ROWS: usize = 10_000;
/// Time-of-day buckets of the daily profile.
pub(crate) const DAY_BUCKETS: usize = 48;
/// Weight of a new value in its time-of-day bucket (after the first few).
const DAY_ALPHA: f64 = 0.2;
/// Values a bucket needs before departures from it are scored.
const DAY_MIN: u64 = 3;
const DAY: f64 = 86_400.0;

/// Which test raised a channel's alarm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Finding {
    /// The value's |z| passed the channel's own tail threshold.
    Tail {
        /// The threshold in force.
        threshold: f64,
    },
    /// A stretch of rows more surprising than usual (`-log10` of the
    /// averaged score's tail probability), on the plain values or against
    /// the time-of-day profile.
    Stretch {
        /// `-log10` of the tail probability.
        surprise: f64,
        /// Whether against the time-of-day profile.
        daily: bool,
    },
    /// The same value, repeated far longer than the channel ever did (a
    /// stuck sensor, a flat-lined feed).
    Stuck {
        /// The value.
        value: f64,
        /// Rows it has repeated.
        rows: u64,
    },
    /// Beyond the range seen so far.
    Extreme {
        /// The lowest value seen before.
        low: f64,
        /// The highest value seen before.
        high: f64,
        /// Whether the bound crossed is the reach of an adopted baseline
        /// (the range its observations imply) rather than a value seen.
        adopted: bool,
    },
}

/// One channel's verdict on one value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Verdict {
    /// z-score against the reference window (`None` while immature).
    pub z: Option<f64>,
    /// Strength in [0, 1): 0.5 at the alarm threshold, never reaching 1.
    pub score: f64,
    /// Whether the channel raises an alarm on this row.
    pub alarm: bool,
    /// The test that decided (the strongest, when several did).
    pub finding: Option<Finding>,
    /// Whether an onset alarm was held back (within [`QUIET_ROWS`] of the last).
    pub held: bool,
    // What `learn` needs, worked out once while scoring.
    pub(crate) raw: f64,
    pub(crate) avg: f64,
    pub(crate) short: (f64, f64),
    /// The row continues a stuck run that has not had its alarm.
    pub(crate) stuck: bool,
    pub(crate) daily: Option<(usize, Option<Residual>)>,
    pub(crate) tail_hit: bool,
    /// The row completes a level shift (the run is learned).
    pub(crate) completes_shift: bool,
}

/// A value's departure from its time-of-day level, with its raw and
/// averaged scores: `(residual, raw, averaged)`.
pub(crate) type Residual = (f64, f64, f64);

/// Thresholds of one row's tests, shared by its channels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Tail probability the tail test flags below.
    pub tail_p: f64,
    /// `-log10` probability the stretch test flags above.
    pub stretch: f64,
    /// Values in the window before a channel is scored.
    pub min_observations: usize,
    /// Whether the time-of-day profile is scored (`seasonality`).
    pub daily: bool,
    /// Rows in a row beyond the tail test, on one side, that make a level
    /// shift (`level_shift_rows`; 0: never).
    pub shift_rows: usize,
}

impl Thresholds {
    /// Thresholds under `cfg` for a row of `channels` channels. The tail
    /// and stretch tests extrapolate beyond what a channel has shown, so
    /// each is held to a hundredth of the false-alarm budget (measured on
    /// real series: flagged rows outside labelled incidents stay below the
    /// budget), shared between channels (Bonferroni).
    pub fn new(cfg: &crate::EngineConfig, channels: usize) -> Self {
        let k = channels.max(1) as f64;
        let p = cfg.false_alarm_rate / 100.0 / k;
        Self {
            tail_p: p,
            stretch: -p.log10(),
            min_observations: usize::try_from(cfg.min_observations).unwrap_or(usize::MAX),
            daily: cfg.seasonality,
            shift_rows: cfg.level_shift_rows,
        }
    }
}

/// Rolling reference of recent values and the stretch test over their raw
/// scores.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct View {
    /// The last [`WINDOW`] learned values.
    window: VecDeque<f64>,
    /// Sums of `value - origin` and its square over the window (an origin
    /// near the values keeps the variance exact for large levels).
    origin: f64,
    sum: f64,
    sum_sq: f64,
    /// Values learned since the sums were last recomputed from the window.
    since_exact: usize,
    /// The last raw scores (at most [`AVERAGE`]).
    recent: VecDeque<f64>,
    /// Long-run mean and variance of the averaged raw scores.
    avg_n: u64,
    avg_mean: f64,
    avg_var: f64,
    /// Range of every value learned.
    low: f64,
    high: f64,
}

struct ViewScore {
    z: Option<f64>,
    raw: f64,
    avg: f64,
    stretch: f64,
    extreme: Option<f64>,
}

impl View {
    fn len(&self) -> usize {
        self.window.len()
    }

    fn mean_sd(&self) -> (f64, f64) {
        let m = self.window.len() as f64;
        let mean = self.sum / m;
        let var = (self.sum_sq / m - mean * mean).max(0.0);
        (self.origin + mean, var.sqrt())
    }

    /// Mean and spread, with the floor scoring uses.
    fn spread(&self) -> (f64, f64) {
        let (mean, sd) = self.mean_sd();
        let range = self.high - self.low;
        (mean, sd.max(1e-3 * range).max(1e-4 * mean.abs()).max(1e-12))
    }

    fn score(&self, v: f64, min_observations: usize) -> ViewScore {
        let mut out = ViewScore {
            z: None,
            raw: 0.0,
            avg: 0.0,
            stretch: 0.0,
            extreme: None,
        };
        if self.len() >= min_observations {
            let (mean, sd) = self.spread();
            let range = self.high - self.low;
            let z = ((v - mean) / sd).clamp(-1e12, 1e12);
            out.z = Some(z);
            out.raw = 1.0 - two_sided_tail(z);
            if range > 0.0 {
                out.extreme = Some((v - self.high).max(self.low - v) / range);
            } else if v != self.high {
                // The first departure of a constant channel.
                out.extreme = Some(1.0);
            }
        }
        let full = self.recent.len() >= AVERAGE;
        let drop = if full { self.recent[0] } else { 0.0 };
        let n = (self.recent.len() + 1).min(AVERAGE);
        out.avg = (self.recent.iter().sum::<f64>() - drop + out.raw) / n as f64;
        if self.avg_n >= LIKELIHOOD_LEARN {
            let mean = self.avg_mean.max(0.03);
            let sd = self.avg_var.max(3e-4).sqrt();
            out.stretch = -upper_tail((out.avg - mean) / sd).max(1e-300).log10();
        }
        out
    }

    fn learn(&mut self, v: f64, raw: f64, avg: f64, cap: usize) {
        // A value whose square or sum would overflow cannot be averaged:
        // it is left out rather than poisoning the window.
        let d = v - if self.window.is_empty() {
            v
        } else {
            self.origin
        };
        if !(d * d).is_finite() || !(self.sum_sq + d * d).is_finite() {
            return;
        }
        if self.window.is_empty() {
            self.origin = v;
            self.sum = 0.0;
            self.sum_sq = 0.0;
        }
        let d = v - self.origin;
        self.window.push_back(v);
        self.sum += d;
        self.sum_sq += d * d;
        if self.window.len() > cap
            && let Some(old) = self.window.pop_front()
        {
            let d = old - self.origin;
            self.sum -= d;
            self.sum_sq -= d * d;
        }
        self.since_exact += 1;
        if self.since_exact >= cap {
            self.recompute();
        }
        self.recent.push_back(raw);
        while self.recent.len() > AVERAGE {
            self.recent.pop_front();
        }
        self.avg_n += 1;
        let w = (1.0 / self.avg_n as f64).max(1.0 / LIKELIHOOD_MEMORY);
        let d = avg - self.avg_mean;
        self.avg_mean += w * d;
        self.avg_var = (1.0 - w) * (self.avg_var + w * d * d);
        if self.avg_n == 1 {
            // The first value learned sets the range.
            (self.low, self.high) = (v, v);
        } else {
            self.low = self.low.min(v);
            self.high = self.high.max(v);
        }
    }

    /// Sums again from the window, about a mean origin: rounding errors of
    /// the running sums never pile up.
    fn recompute(&mut self) {
        self.since_exact = 0;
        let n = self.window.len().max(1) as f64;
        self.origin = self.window.iter().sum::<f64>() / n;
        self.sum = self.window.iter().map(|v| v - self.origin).sum();
        self.sum_sq = self.window.iter().map(|v| (v - self.origin).powi(2)).sum();
    }

    fn is_valid(&self) -> bool {
        self.window.iter().all(|v| v.is_finite())
            && self.recent.iter().all(|v| v.is_finite())
            && [
                self.origin,
                self.sum,
                self.sum_sq,
                self.avg_mean,
                self.avg_var,
            ]
            .iter()
            .all(|v| v.is_finite())
            && self.window.len() <= WINDOW
            && self.recent.len() <= AVERAGE
    }
}

/// A mature baseline a channel was adopted with (the seed's `count`, mean
/// and spread), which judges its first rows while its own tests learn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Adopted {
    /// Observations it rests on (at least [`ADOPT_MIN`]).
    count: u64,
    /// Their mean (moved with a learned level shift).
    mean: f64,
    /// Their spread.
    sd: f64,
    /// How many spreads from the mean `count` Gaussian values reach, on
    /// median (worked out once: the extreme test asks on every row).
    reach: f64,
}

impl Adopted {
    fn new(count: u64, mean: f64, sd: f64) -> Self {
        // The largest of `n` passes `q` with probability one half when
        // `P(Z > q) = 1 - 2^(-1/n)`.
        let p = -(-std::f64::consts::LN_2 / count.max(1) as f64).exp_m1();
        Self {
            count,
            mean,
            sd,
            reach: gaussian_upper_quantile(p),
        }
    }

    /// The range the adopted observations reach.
    fn range(&self) -> (f64, f64) {
        let h = self.reach * self.sd;
        (self.mean - h, self.mean + h)
    }

    fn is_valid(&self) -> bool {
        self.count >= ADOPT_MIN
            && self.mean.is_finite()
            && self.sd.is_finite()
            && self.sd >= 0.0
            && self.reach.is_finite()
            && self.reach >= 0.0
    }
}

/// Persisted state of one channel's detector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Detector {
    /// The values themselves.
    plain: View,
    /// The values again, against the last [`SHORT`] only.
    #[serde(default)]
    short: View,
    /// Departures from the time-of-day profile.
    daily: View,
    /// Time-of-day profile: one running level per bucket.
    profile: Vec<f64>,
    /// Values each bucket has taken.
    profile_n: Vec<u64>,
    /// Tail model of |z| above [`TAIL_FROM`]: rows seen, rows above, the
    /// share above, and the mean excess.
    tail_n: u64,
    tail_above: u64,
    tail_share: f64,
    tail_excess: f64,
    /// The current run of values beyond the tail test, on one side.
    run: Vec<f64>,
    run_sign: i8,
    /// Values scored (a row counter for the quiet period).
    rows: u64,
    /// Row of the last onset alarm.
    last_onset: Option<u64>,
    /// Runs of one value, for the stuck-value test.
    #[serde(default)]
    repeats: Repeats,
    /// The mature baseline the channel was adopted with, if any (a state
    /// saved without one judges as it always did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adopted: Option<Adopted>,
}

/// Runs of one value, for the stuck-value test.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Repeats {
    /// Values learned since tracking began: its own learning period, so a
    /// state saved before this test existed learns afresh rather than
    /// calling every flat channel stuck.
    seen: u64,
    /// The last value learned, and how many times in a row it came.
    value: Option<f64>,
    run: u64,
    /// The longest run that has ended (a stuck run counts only up to its
    /// limit, so one incident does not hide the next).
    longest: u64,
    /// Whether the current run has had its alarm, or is not eligible for
    /// one (it reached the limit while the test was still learning).
    done: bool,
}

impl Repeats {
    /// Rows in a row that make the current value stuck.
    fn limit(&self) -> u64 {
        STUCK_FACTOR.saturating_mul(self.longest).max(STUCK_MIN)
    }

    /// The stuck alarm's strength if `v` continues a run that is stuck and
    /// has not had its alarm: at the row that makes it stuck, or later if
    /// that row's alarm was held back (a quiet period).
    fn check(&self, v: f64) -> Option<(u64, f64)> {
        if self.seen < STUCK_LEARN || self.done || self.value != Some(v) {
            return None;
        }
        let run = self.run.saturating_add(1);
        let usual = STUCK_FACTOR.saturating_mul(self.longest).max(1);
        (run >= self.limit()).then(|| (run, ratio(run as f64 / usual as f64)))
    }

    /// Learns `v`; `alarmed`: its row raised an alarm while the run was
    /// stuck (the incident is reported).
    fn learn(&mut self, v: f64, alarmed: bool) {
        self.seen = self.seen.saturating_add(1);
        if self.value == Some(v) {
            self.run = self.run.saturating_add(1);
        } else {
            let limit = self.limit();
            let counted = if self.run >= limit {
                limit - 1
            } else {
                self.run
            };
            self.longest = self.longest.max(counted);
            self.value = Some(v);
            self.run = 1;
            self.done = false;
        }
        if alarmed || (self.seen <= STUCK_LEARN && self.run >= self.limit()) {
            self.done = true;
        }
    }

    fn is_valid(&self) -> bool {
        self.value.is_none_or(f64::is_finite) && self.run <= self.seen
    }
}

/// The detector's baseline now, for display: values within
/// `mean ± z·sd` pass the tail test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Band {
    /// Mean of the reference window.
    pub mean: f64,
    /// Its spread (with the floor the tests use).
    pub sd: f64,
    /// The tail test's |z| threshold in force.
    pub z: f64,
    /// The time-of-day profile, once every bucket has learned: the level
    /// of each of the [`DAY_BUCKETS`] buckets of the day (UTC), and the
    /// spread of values around it.
    pub daily: Option<DailyBand>,
}

/// A time-of-day baseline, for display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DailyBand {
    /// Level per bucket (bucket `i` covers `i·24/DAY_BUCKETS` hours UTC).
    pub levels: Vec<f64>,
    /// Spread of the departures from those levels.
    pub sd: f64,
}

impl Detector {
    /// A detector adopted with a mature baseline of `count` observations of
    /// mean `mean` and spread `sd` (the seed's `baseline.json`), which
    /// judges the channel from its first row: until the channel's own tail
    /// is learned, the tail test holds the value's z against it (or against
    /// the recent values' spread, if wider) to a Gaussian tail at the same
    /// per-row budget; and the range its observations imply counts as seen
    /// by the new-extreme test. With fewer than [`ADOPT_MIN`] observations,
    /// or a non-finite or negative number, the channel learns as a new one.
    pub fn adopted(count: u64, mean: f64, sd: f64) -> Self {
        let a = Adopted::new(count, mean, sd);
        Self {
            adopted: a.is_valid().then_some(a),
            ..Self::default()
        }
    }

    /// While the channel's own tail is unlearned and it has an adopted
    /// baseline: the mean and spread values are held against, and the
    /// Gaussian |z| threshold at tail probability `p`. The spread is the
    /// adopted one, or the recent values' if they are wilder (a baseline
    /// gone stale is not a flood of alarms), with the floor every spread has.
    fn adoption(&self, th: &Thresholds) -> Option<(f64, f64, f64)> {
        let a = self.adopted.filter(|_| self.tail_n < TAIL_LEARN)?;
        let recent = if self.plain.len() >= th.min_observations.max(1) {
            self.plain.spread().1
        } else {
            0.0
        };
        let sd = a.sd.max(recent).max(1e-4 * a.mean.abs()).max(1e-12);
        let z = gaussian_upper_quantile(th.tail_p / 2.0).max(TAIL_MIN_Z);
        Some((a.mean, sd, z))
    }

    /// The baseline the tests hold values against now (`None` until the
    /// window has `min_observations` values, or an adopted baseline stands
    /// in for it).
    pub fn band(&self, th: &Thresholds) -> Option<Band> {
        let adoption = self.adoption(th);
        if self.plain.len() < th.min_observations.max(1) && adoption.is_none() {
            return None;
        }
        let (mean, sd) = match adoption {
            Some((mean, sd, _)) => (mean, sd),
            None => self.plain.spread(),
        };
        let daily = (th.daily
            && self.profile.len() == DAY_BUCKETS
            && self.profile_n.iter().all(|&n| n >= DAY_MIN)
            && self.daily.len() >= th.min_observations.max(1))
        .then(|| {
            let (m, sd) = self.daily.spread();
            DailyBand {
                levels: self.profile.iter().map(|l| l + m).collect(),
                sd,
            }
        })
        // Shown only where it explains the values better than one level.
        .filter(|d| d.sd < sd);
        let z = match adoption {
            Some((_, _, z)) => z,
            None => self.tail_threshold(th.tail_p).unwrap_or(TAIL_MIN_Z),
        };
        Some(Band { mean, sd, z, daily })
    }

    /// Whether every stored number is usable.
    pub fn is_valid(&self) -> bool {
        self.plain.is_valid()
            && self.daily.is_valid()
            && self.profile.iter().all(|v| v.is_finite())
            && (self.profile.is_empty() || self.profile.len() == DAY_BUCKETS)
            && self.profile_n.len() == self.profile.len()
            && self.tail_share.is_finite()
            && self.tail_excess.is_finite()
            && self.run.iter().all(|v| v.is_finite())
            && self.run.len() <= MAX_SHIFT_ROWS
            && self.short.is_valid()
            && self.short.len() <= SHORT
            && self.repeats.is_valid()
            && self.adopted.is_none_or(|a| a.is_valid())
    }

    /// The tail test's |z| threshold for tail probability `p`, once learned.
    pub fn tail_threshold(&self, p: f64) -> Option<f64> {
        if self.tail_n < TAIL_LEARN {
            return None;
        }
        let t = if self.tail_share > 0.0 {
            TAIL_FROM + self.tail_excess * (self.tail_share.max(1e-12) / p).ln()
        } else {
            TAIL_FROM
        };
        Some(t.max(TAIL_MIN_Z))
    }

    /// Judges finite value `v` (at `ts`, epoch seconds, if known) against
    /// the state, which it does not change.
    pub fn score(&self, v: f64, ts: Option<f64>, th: &Thresholds) -> Verdict {
        let p = self.plain.score(v, th.min_observations);
        // Adopted and still learning its own tail: z against the adopted
        // baseline, held to a Gaussian tail.
        let adoption = self.adoption(th);
        let (z, tail_threshold) = match adoption {
            Some((mean, sd, t)) => (Some(((v - mean) / sd).clamp(-1e12, 1e12)), Some(t)),
            None => (p.z, self.tail_threshold(th.tail_p)),
        };
        let mut out = Verdict {
            z,
            raw: p.raw,
            avg: p.avg,
            ..Default::default()
        };
        let sh = self.short.score(v, th.min_observations.min(SHORT));
        out.short = (sh.raw, sh.avg);
        let mut best: Option<(f64, Finding)> = None;
        let mut consider = |score: f64, f: Finding| {
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, f));
            }
        };
        consider(
            ratio(p.stretch / th.stretch),
            Finding::Stretch {
                surprise: p.stretch,
                daily: false,
            },
        );
        consider(
            ratio(sh.stretch / th.stretch),
            Finding::Stretch {
                surprise: sh.stretch,
                daily: false,
            },
        );
        // One alarm per stuck run; its strength grows with how far the run
        // outruns the longest seen.
        if let Some((rows, strength)) = self.repeats.check(v) {
            out.stuck = true;
            consider(strength, Finding::Stuck { value: v, rows });
        }
        let (extreme, low, high, adopted) = match self.adopted {
            // The adopted observations' range was seen too.
            Some(a) => {
                let (reach_low, reach_high) = a.range();
                let (mut low, mut high) = (reach_low, reach_high);
                if self.plain.avg_n > 0 {
                    (low, high) = (low.min(self.plain.low), high.max(self.plain.high));
                }
                let range = high - low;
                let e = if range > 0.0 {
                    Some((v - high).max(low - v) / range)
                } else {
                    (v != high).then_some(1.0)
                };
                // The side crossed, and whether its bound is the reach
                // (no value seen went beyond it).
                let adopted = if v > high {
                    self.plain.avg_n == 0 || reach_high > self.plain.high
                } else {
                    self.plain.avg_n == 0 || reach_low < self.plain.low
                };
                (e, low, high, adopted)
            }
            None => (p.extreme, self.plain.low, self.plain.high, false),
        };
        if let Some(e) = extreme.filter(|&e| e > 0.0) {
            consider(
                0.5 + 0.5 * (e - EXTREME_MARGIN).tanh(),
                Finding::Extreme { low, high, adopted },
            );
        }
        if let Some(t) = ts.filter(|t| th.daily && t.is_finite()) {
            let b = day_bucket(t);
            if self.profile_n.get(b).is_some_and(|&n| n >= DAY_MIN) {
                let r = v - self.profile[b];
                let d = self.daily.score(r, th.min_observations);
                out.daily = Some((b, Some((r, d.raw, d.avg))));
                consider(
                    ratio(d.stretch / th.stretch),
                    Finding::Stretch {
                        surprise: d.stretch,
                        daily: true,
                    },
                );
            } else {
                out.daily = Some((b, None));
            }
        }
        let (mut score, mut finding) = match best {
            Some((s, f)) => (s, Some(f)),
            None => (0.0, None),
        };
        let mut alarm = score >= 0.5;
        if alarm
            && self
                .last_onset
                .is_some_and(|l| self.rows.saturating_sub(l) <= QUIET_ROWS)
        {
            alarm = false;
            out.held = true;
            score = held(score);
        }
        // The tail test: every row beyond it, no quiet period (isolated
        // spikes are each an incident).
        if let (Some(z), Some(t)) = (z, tail_threshold)
            && z.abs() >= t
        {
            out.tail_hit = true;
            let sign = if z > 0.0 { 1 } else { -1 };
            let run = if self.run_sign == sign {
                self.run.len()
            } else {
                0
            };
            // The value that completes a level shift is the new normal.
            out.completes_shift = th.shift_rows > 0 && run + 1 >= th.shift_rows;
            if !out.completes_shift && run > 0 && th.shift_rows > 0 {
                // A run that may yet be a level shift is one incident: its
                // first row was the alarm. (With `level_shift_rows = 0` a
                // shift is never normal, so every row of it stays flagged.)
                // Whatever else fired on it belongs to the same incident.
                out.held = true;
                alarm = false;
                score = held(score);
            } else if !out.completes_shift {
                let a = z.abs();
                let s = 0.5 + 0.5 * (a - t) / a;
                if !alarm || s > score {
                    finding = Some(Finding::Tail { threshold: t });
                }
                alarm = true;
                score = score.max(s);
            }
        }
        if !alarm {
            score = score.min(0.499_999_999);
        }
        out.score = score;
        out.alarm = alarm;
        out.finding = if alarm { finding } else { None };
        out
    }

    /// Learns value `v` after it was scored as `verdict`.
    pub fn learn(&mut self, v: f64, verdict: &Verdict) {
        self.rows += 1;
        self.repeats.learn(v, verdict.stuck && verdict.alarm);
        let onset = verdict.alarm
            && matches!(
                verdict.finding,
                Some(Finding::Stretch { .. } | Finding::Extreme { .. } | Finding::Stuck { .. })
            );
        if onset {
            self.last_onset = Some(self.rows - 1);
        }
        if let Some((b, residual)) = verdict.daily {
            if let Some((r, raw, avg)) = residual.filter(|r| r.0.is_finite()) {
                self.daily.learn(r, raw, avg, WINDOW);
            }
            if self.profile.is_empty() {
                self.profile = vec![0.0; DAY_BUCKETS];
                self.profile_n = vec![0; DAY_BUCKETS];
            }
            let n = self.profile_n[b];
            let w = if n == 0 {
                1.0
            } else {
                DAY_ALPHA.max(1.0 / (n + 1) as f64)
            };
            let next = self.profile[b] + w * (v - self.profile[b]);
            if next.is_finite() {
                self.profile[b] = next;
                self.profile_n[b] = n + 1;
            }
        }
        if verdict.tail_hit {
            let sign = match verdict.z {
                Some(z) if z > 0.0 => 1,
                _ => -1,
            };
            if self.run_sign != sign {
                self.run.clear();
                self.run_sign = sign;
            }
            // Bounded by the largest `level_shift_rows` (with 0, runs never
            // complete and only this bound holds them).
            if self.run.len() < MAX_SHIFT_ROWS {
                self.run.push(v);
            }
            if verdict.completes_shift {
                // A level shift: the run is the new normal, and an adopted
                // baseline moves to it with its spread.
                if let Some(a) = self.adopted.as_mut() {
                    let mean = self.run.iter().sum::<f64>() / self.run.len() as f64;
                    if mean.is_finite() {
                        a.mean = mean;
                    }
                }
                for x in std::mem::take(&mut self.run) {
                    self.plain.learn(x, verdict.raw, verdict.avg, WINDOW);
                    self.short.learn(x, verdict.short.0, verdict.short.1, SHORT);
                }
                self.run_sign = 0;
            }
            return;
        }
        self.run.clear();
        self.run_sign = 0;
        self.plain.learn(v, verdict.raw, verdict.avg, WINDOW);
        self.short.learn(v, verdict.short.0, verdict.short.1, SHORT);
        if let Some(z) = verdict.z {
            let a = z.abs();
            self.tail_n += 1;
            let w = (1.0 / self.tail_n as f64).max(1.0 / TAIL_MEMORY);
            let above = a > TAIL_FROM;
            self.tail_share += w * (f64::from(u8::from(above)) - self.tail_share);
            if above {
                self.tail_above += 1;
                let w = (1.0 / self.tail_above as f64).max(20.0 / TAIL_MEMORY);
                self.tail_excess += w * ((a - TAIL_FROM) - self.tail_excess);
            }
        }
    }
}

/// The strength of an alarm held back as part of an incident already
/// reported: far below the threshold, so held rows rank below fresh ones.
fn held(score: f64) -> f64 {
    (score * 0.1).min(0.499_999_999)
}

fn day_bucket(ts: f64) -> usize {
    ((ts.rem_euclid(DAY) / DAY) * DAY_BUCKETS as f64) as usize % DAY_BUCKETS
}

/// `x / (1 + x)`: 0.5 at 1, below 1 for any finite `x`.
fn ratio(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        0.0
    } else if x.is_infinite() {
        1.0 - f64::EPSILON
    } else {
        x / (1.0 + x)
    }
}

/// `P(|Z| >= |z|)` for a standard normal `Z`.
fn two_sided_tail(z: f64) -> f64 {
    ln_erfc(z.abs() / std::f64::consts::SQRT_2).exp()
}

/// `P(Z >= x)` for a standard normal `Z`.
fn upper_tail(x: f64) -> f64 {
    let half = 0.5 * ln_erfc(x.abs() / std::f64::consts::SQRT_2).exp();
    if x >= 0.0 { half } else { 1.0 - half }
}

/// The `q >= 0` with `P(Z >= q) = p` for a standard normal `Z` (`p` in
/// (0, 0.5]; 0 for larger `p`, 38 for smaller, where `f64` ends), by
/// bisection on the log of the tail, so tiny `p` keep their precision.
fn gaussian_upper_quantile(p: f64) -> f64 {
    if p.is_nan() || p >= 0.5 {
        return 0.0;
    }
    let target = p.max(f64::MIN_POSITIVE).ln();
    let ln_tail = |q: f64| ln_erfc(q / std::f64::consts::SQRT_2) - std::f64::consts::LN_2;
    let (mut lo, mut hi) = (0.0_f64, 38.0_f64);
    for _ in 0..64 {
        let mid = 0.5 * (lo + hi);
        if ln_tail(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut Detector, xs: impl IntoIterator<Item = f64>, th: &Thresholds) -> Vec<Verdict> {
        xs.into_iter()
            .map(|x| {
                let v = d.score(x, None, th);
                d.learn(x, &v);
                v
            })
            .collect()
    }

    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut r = crate::forest::SplitMix64::new(seed);
        (0..n).map(|_| r.normal()).collect()
    }

    #[test]
    fn the_gaussian_quantile_inverts_the_tail() {
        assert!((gaussian_upper_quantile(0.025) - 1.959_964).abs() < 1e-5);
        assert!((gaussian_upper_quantile(1.25e-6) - 4.708_130).abs() < 1e-4);
        assert_eq!(gaussian_upper_quantile(0.7), 0.0);
        assert_eq!(gaussian_upper_quantile(f64::NAN), 0.0);
        let tiny = gaussian_upper_quantile(0.0);
        assert!(tiny.is_finite() && tiny > 37.0, "{tiny}");
    }

    proptest::proptest! {
        #[test]
        fn the_gaussian_quantile_is_exact_on_the_log_scale(e in -300.0f64..-0.31) {
            let p = 10f64.powf(e);
            let q = gaussian_upper_quantile(p);
            let back = upper_tail(q);
            proptest::prop_assert!((back / p - 1.0).abs() < 1e-6, "{} -> {} -> {}", p, q, back);
        }

        /// On its first row, an adopted channel flags exactly the values
        /// beyond the Gaussian tail threshold at the budget, or beyond the
        /// range its observations imply (by the extreme margin); whatever
        /// the level and spread.
        #[test]
        fn an_adopted_channel_judges_its_first_row(
            mean in -1.0e4f64..1.0e4,
            sd in 2.0f64..1.0e3,
            count in ADOPT_MIN..1_000_000_000,
            k in -12.0f64..12.0,
        ) {
            let th = Thresholds::new(&crate::EngineConfig::default(), 4);
            let d = Detector::adopted(count, mean, sd);
            let t = gaussian_upper_quantile(th.tail_p / 2.0);
            let q = gaussian_upper_quantile(-(-std::f64::consts::LN_2 / count as f64).exp_m1());
            let v = d.score(mean + k * sd, None, &th);
            let z = v.z.unwrap_or(f64::NAN);
            proptest::prop_assert!((z - k).abs() < 1e-6 * (1.0 + mean.abs() / sd), "{} vs {}", z, k);
            // Away from the two edges (rounding), the verdict is exact.
            let (a, edge) = (k.abs(), (1.0 + 2.0 * EXTREME_MARGIN) * q);
            if (a - t).abs() > 1e-3 && (a - edge).abs() > 1e-3 {
                proptest::prop_assert_eq!(v.alarm, a >= t.min(edge), "{:?}", v);
            }
        }
    }

    #[test]
    fn an_adopted_baseline_judges_from_the_first_row() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 4);
        // The seed's wind_speed after 3,700 rows.
        let (mean, sd) = (10.06, 3.2);
        let mut d = Detector::adopted(3_700, mean, sd);
        let spike = d.score(mean - 7.0 * sd, None, &th);
        assert!(spike.alarm, "{spike:?}");
        assert!((spike.z.unwrap_or_default() + 7.0).abs() < 1e-9);
        // The tail test speaks on its own: a baseline of 10^12 values
        // implies a range (about 7 sigma) beyond the tail threshold.
        let big = Detector::adopted(1_000_000_000_000, mean, sd);
        let spike = big.score(mean - 6.0 * sd, None, &th);
        assert!(spike.alarm, "{spike:?}");
        assert!(matches!(spike.finding, Some(Finding::Tail { .. })));
        // Ordinary values are ordinary from the first row, and are not new
        // extremes of the few rows seen since adoption; a fresh channel fed
        // the same calls the first value past their range one.
        let mut fresh = Detector::default();
        let ordinary: Vec<f64> = noise(60, 61)
            .into_iter()
            .map(|x| mean + 0.5 * sd * x)
            .collect();
        assert!(feed(&mut d, ordinary.clone(), &th).iter().all(|v| !v.alarm));
        feed(&mut fresh, ordinary, &th);
        let wider = mean + 2.5 * sd;
        assert!(!d.score(wider, None, &th).alarm);
        let e = fresh.plain.score(wider, th.min_observations).extreme;
        assert!(e.is_some_and(|e| e > EXTREME_MARGIN), "{e:?}");
        // The band shows what values are held against.
        let b = d.band(&th).unwrap_or_else(|| panic!("no band"));
        assert_eq!((b.mean, b.sd), (mean, sd));
        assert!((b.z - gaussian_upper_quantile(th.tail_p / 2.0)).abs() < 1e-12);
    }

    #[test]
    fn an_adopted_channel_of_gaussian_noise_stays_within_its_budget() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::adopted(5_000, 0.0, 1.0);
        let v = feed(&mut d, noise(20_000, 62), &th);
        let flagged = v.iter().filter(|v| v.alarm).count();
        assert!(flagged <= 20, "{flagged} of 20000 flagged");
        // Its own tail takes over once learned.
        assert!(d.adoption(&th).is_none() && d.tail_threshold(th.tail_p).is_some());
    }

    #[test]
    fn a_stale_adopted_baseline_is_judged_by_the_wilder_recent_spread() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        // Adopted at sd 1, the channel now varies with sd 3: once its window
        // has `min_observations` values (the first rows flag the wildest,
        // which are kept out of it) its own spread is used, so a 4-sigma
        // move of the adopted baseline (1.3 of the recent) is not a spike.
        let mut d = Detector::adopted(5_000, 0.0, 1.0);
        let wild: Vec<f64> = noise(200, 63).into_iter().map(|x| 3.0 * x).collect();
        let v = feed(&mut d, wild, &th);
        let tails = v[2 * th.min_observations..]
            .iter()
            .filter(|v| matches!(v.finding, Some(Finding::Tail { .. })))
            .count();
        assert_eq!(tails, 0, "{v:?}");
        let (_, sd, _) = d.adoption(&th).unwrap_or_else(|| panic!("not adopted"));
        assert!(sd > 2.5, "{sd}");
    }

    #[test]
    fn an_adopted_baseline_follows_a_level_shift() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::adopted(5_000, 0.0, 1.0);
        feed(&mut d, noise(50, 64), &th);
        let shifted: Vec<f64> = noise(200, 65).into_iter().map(|x| x + 30.0).collect();
        let v = feed(&mut d, shifted, &th);
        let alarms: Vec<usize> = (0..v.len()).filter(|&i| v[i].alarm).collect();
        assert_eq!(alarms, [0], "one onset, then the new level is learned");
        let (mean, _, _) = d.adoption(&th).unwrap_or_else(|| panic!("not adopted"));
        assert!((mean - 30.0).abs() < 1.0, "{mean}");
    }

    #[test]
    fn too_small_or_broken_baselines_are_not_adopted() {
        for d in [
            Detector::adopted(ADOPT_MIN - 1, 0.0, 1.0),
            Detector::adopted(5_000, f64::NAN, 1.0),
            Detector::adopted(5_000, 0.0, -1.0),
            Detector::adopted(5_000, 0.0, f64::INFINITY),
        ] {
            assert_eq!(d, Detector::default());
        }
    }

    #[test]
    fn an_adopted_state_round_trips_and_an_old_state_is_not_adopted() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::adopted(3_700, 10.0, 2.0);
        feed(
            &mut d,
            noise(50, 66).into_iter().map(|x| 10.0 + 2.0 * x),
            &th,
        );
        let json = serde_json::to_value(&d).unwrap_or_default();
        let back: Detector = serde_json::from_value(json.clone()).unwrap_or_default();
        assert!(back.is_valid());
        assert_eq!(back, d);
        // A state saved before adoption existed has no field: as before.
        let mut old = json;
        if let Some(m) = old.as_object_mut() {
            assert!(m.remove("adopted").is_some());
        }
        let old: Detector = serde_json::from_value(old).unwrap_or_default();
        assert!(old.adoption(&th).is_none());
        // And a detector never adopted writes no field.
        let plain = serde_json::to_value(Detector::default()).unwrap_or_default();
        assert!(plain.get("adopted").is_none());
    }

    #[test]
    fn tails_match_the_normal_distribution() {
        assert!((two_sided_tail(1.959_964) - 0.05).abs() < 1e-6);
        assert!((upper_tail(1.644_854) - 0.05).abs() < 1e-6);
        assert!((upper_tail(-1.644_854) - 0.95).abs() < 1e-6);
    }

    #[test]
    fn a_constant_channel_gives_bounded_z_and_a_jump_is_flagged() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        let v = feed(&mut d, std::iter::repeat_n(20.0, 1000), &th);
        assert!(v.iter().all(|v| !v.alarm));
        let jump = d.score(68.0, None, &th);
        let z = jump.z.unwrap_or_default();
        assert!(z.is_finite() && z <= 1e12, "{z}");
    }

    #[test]
    fn gaussian_noise_is_quiet() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        let v = feed(&mut d, noise(20_000, 7), &th);
        let flagged = v.iter().filter(|v| v.alarm).count();
        assert!(flagged <= 20, "{flagged} of 20000 flagged");
    }

    #[test]
    fn a_far_spike_after_quiet_data_is_flagged_with_a_reason() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, noise(5_000, 3), &th);
        let v = d.score(25.0, None, &th);
        assert!(v.alarm && v.score >= 0.5 && v.score < 1.0);
        assert!(matches!(
            v.finding,
            Some(Finding::Tail { .. } | Finding::Extreme { .. })
        ));
    }

    #[test]
    fn a_level_shift_is_learned_and_then_quiet() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 11), &th);
        let shifted: Vec<f64> = noise(3_000, 12).into_iter().map(|x| x + 30.0).collect();
        let v = feed(&mut d, shifted, &th);
        assert!(v[0].alarm, "the onset is flagged");
        let late = v[500..].iter().filter(|v| v.alarm).count();
        assert!(late <= 3, "{late} flagged after re-learning");
    }

    #[test]
    fn level_shift_rows_zero_never_relearns() {
        let cfg = crate::EngineConfig {
            level_shift_rows: 0,
            ..Default::default()
        };
        let th = Thresholds::new(&cfg, 1);
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 11), &th);
        let shifted: Vec<f64> = noise(3_000, 12).into_iter().map(|x| x + 30.0).collect();
        let v = feed(&mut d, shifted, &th);
        assert!(
            v.iter().all(|v| v.alarm),
            "a shift that is never learned stays flagged"
        );
        assert!(d.is_valid() && d.run.len() <= MAX_SHIFT_ROWS);
    }

    #[test]
    fn seasonality_off_leaves_the_time_of_day_alone() {
        let off = crate::EngineConfig {
            seasonality: false,
            ..Default::default()
        };
        let (on, off) = (
            Thresholds::new(&crate::EngineConfig::default(), 1),
            Thresholds::new(&off, 1),
        );
        let (mut a, mut b) = (Detector::default(), Detector::default());
        for (i, x) in noise(2_000, 9).into_iter().enumerate() {
            let ts = Some(i as f64 * 300.0);
            let v = a.score(x, ts, &on);
            a.learn(x, &v);
            let v = b.score(x, ts, &off);
            assert!(v.daily.is_none());
            b.learn(x, &v);
        }
        assert_eq!(a.profile.len(), DAY_BUCKETS);
        assert!(b.profile.is_empty() && b.daily.len() == 0);
    }

    #[test]
    fn onsets_are_followed_by_a_quiet_period() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, (0..2000).map(|i| f64::from(i % 7)), &th);
        // A slow climb to new extremes: one onset, then quiet for QUIET_ROWS.
        let v = feed(&mut d, (0..50).map(|i| 7.0 + f64::from(i) * 0.2), &th);
        let alarms: Vec<usize> = (0..v.len()).filter(|&i| v[i].alarm).collect();
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        assert!(v.iter().any(|v| v.held));
    }

    #[test]
    fn a_run_beyond_the_tail_is_one_alarm_until_it_is_learned() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 21), &th);
        let v = feed(&mut d, std::iter::repeat_n(30.0, 10), &th);
        assert!(v[0].alarm);
        assert!(v[1..].iter().all(|v| !v.alarm && v.held && v.score < 0.5));
        // Even where another test fires within the run (a long run, past
        // the quiet period after its onset), the run stays one alarm.
        let cfg = crate::EngineConfig {
            level_shift_rows: 300,
            ..Default::default()
        };
        let th = Thresholds::new(&cfg, 1);
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 25), &th);
        let v = feed(&mut d, std::iter::repeat_n(8.0, 250), &th);
        let alarms: Vec<usize> = (0..v.len()).filter(|&i| v[i].alarm).collect();
        assert_eq!(alarms, [0], "{alarms:?}");
        // The run broke before it became a level shift: a later spike is a
        // new incident, not yet normal.
        feed(&mut d, noise(50, 22), &th);
        assert!(d.score(30.0, None, &th).alarm);
    }

    #[test]
    fn outliers_that_alternate_in_sign_never_become_a_level_shift() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 23), &th);
        let alternating = (0..64).map(|i| if i % 2 == 0 { 30.0 } else { -30.0 });
        let v = feed(&mut d, alternating, &th);
        assert!(v.iter().all(|v| v.alarm && !v.completes_shift));
        let (mean, _) = d.plain.mean_sd();
        assert!(
            mean.abs() < 0.2,
            "the window took the outliers: mean {mean}"
        );
    }

    #[test]
    fn a_change_of_side_restarts_the_run_beyond_the_tail() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        assert_eq!(th.shift_rows, 16);
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 27), &th);
        let b = d.band(&th).unwrap_or_else(|| panic!("no band"));
        // Beyond the tail test on either side (about 7 sigma).
        let (hi, lo) = (b.mean + 1.5 * b.z * b.sd, b.mean - 1.5 * b.z * b.sd);
        let window: Vec<f64> = d.plain.window.iter().copied().collect();
        let alternating = (0..64).map(|i| if i % 2 == 0 { hi } else { lo });
        for (i, v) in feed(&mut d, alternating, &th).iter().enumerate() {
            assert!(
                v.tail_hit && v.alarm && !v.completes_shift,
                "row {i}: {v:?}"
            );
        }
        let now: Vec<f64> = d.plain.window.iter().copied().collect();
        assert_eq!(now, window, "alternating outliers were learned");
        // One row above, then rows below: the run below is one incident
        // from its own first row, and becomes the level at its 16th.
        assert!(feed(&mut d, [hi], &th)[0].alarm);
        let below = feed(&mut d, std::iter::repeat_n(lo, 16), &th);
        let alarms: Vec<usize> = (0..16).filter(|&i| below[i].alarm).collect();
        let shifts: Vec<usize> = (0..16).filter(|&i| below[i].completes_shift).collect();
        assert_eq!((alarms, shifts), (vec![0], vec![15]));
        // Exactly the 16 values below were learned, not the one above.
        let n = d.plain.window.len();
        let learned: Vec<f64> = d.plain.window.iter().skip(n - 17).copied().collect();
        assert_eq!(&learned[1..], &[lo; 16]);
        assert_eq!(learned[0], window[window.len() - 1]);
    }

    /// A verdict's strength is worked out from the evidence it reports:
    /// a stretch of surprise `S` against the threshold `T` scores
    /// `S / (S + T)`, and a tail hit at |z| against threshold `t` scores
    /// `0.5 + 0.5 (|z| - t) / |z|`; both are 0.5 exactly at the threshold.
    #[test]
    fn strengths_follow_from_the_evidence() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        assert!((th.stretch - 5.0).abs() < 1e-12, "{}", th.stretch);
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 51), &th);
        // A sustained move of 2.5 sigma: no single row passes the tail
        // test, the stretch does; then spikes for the tail test.
        let moved: Vec<f64> = noise(60, 52).into_iter().map(|x| 0.3 * x + 2.5).collect();
        let mut v = feed(&mut d, moved, &th);
        feed(&mut d, noise(300, 53), &th);
        v.extend(feed(&mut d, [9.0, 0.0, -12.0, 0.0, 20.0], &th));
        let (mut stretches, mut tails) = (0, 0);
        for v in v.iter().filter(|v| v.alarm) {
            match v.finding {
                Some(Finding::Stretch { surprise, .. }) => {
                    let want = surprise / (surprise + th.stretch);
                    assert!((v.score - want).abs() < 1e-12, "{v:?}: want {want}");
                    stretches += 1;
                }
                Some(Finding::Tail { threshold }) => {
                    let a = v.z.map_or(0.0, f64::abs);
                    let want = 0.5 + 0.5 * (a - threshold) / a;
                    assert!((v.score - want).abs() < 1e-12, "{v:?}: want {want}");
                    tails += 1;
                }
                _ => {}
            }
        }
        assert!(stretches >= 1 && tails >= 2, "{stretches} {tails}: {v:?}");
    }

    /// What one row's scoring saw, for the test below: each stretch
    /// view's evidence and the verdict.
    fn stretch_evidence(d: &Detector, v: f64, ts: Option<f64>, th: &Thresholds) -> [f64; 4] {
        let long = d.plain.score(v, th.min_observations).stretch;
        let recent = d.short.score(v, th.min_observations.min(SHORT)).stretch;
        let daily = ts.map_or(0.0, |t| {
            let r = v - d.profile[day_bucket(t)];
            d.daily.score(r, th.min_observations).stretch
        });
        [long, recent, daily, d.score(v, ts, th).score]
    }

    /// The stretch test scores each of its views on its own evidence: a
    /// surprise `S` against the threshold `T` scores `S / (S + T)`. Pinned
    /// for the long window, the recent window and the time-of-day residual,
    /// each on a state where its evidence is the strongest there is and
    /// nothing else fires (so no other view's score can stand in for it).
    #[test]
    fn each_stretch_view_scores_its_evidence_against_the_threshold() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let t = th.stretch;
        // No alarm, no held score: the row's score is the best evidence's.
        let quiet = |d: &Detector, v: f64, ts: Option<f64>| {
            let verdict = d.score(v, ts, &th);
            assert!(
                !verdict.alarm && !verdict.tail_hit && !verdict.held && !verdict.stuck,
                "{verdict:?}"
            );
            assert!(
                d.plain
                    .score(v, th.min_observations)
                    .extreme
                    .is_none_or(|e| e <= 0.0),
                "{verdict:?}"
            );
        };

        // The long window: steady noise, then a wider recent regime. A
        // value at 2 sigmas, held, is unusual for the long window only.
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 61), &th);
        let wide = noise(400, 62)
            .into_iter()
            .map(|x| (2.0 * x).clamp(-3.5, 3.5));
        feed(&mut d, wide, &th);
        feed(&mut d, [2.0; 3], &th);
        quiet(&d, 2.0, None);
        let [long, recent, _, score] = stretch_evidence(&d, 2.0, None, &th);
        assert!(long > 2.0 * recent && long > 1.0, "{long} vs {recent}");
        assert!((score - long / (long + t)).abs() < 1e-12, "{score}: {long}");

        // The recent window: a level shift the long window holds both
        // sides of, then a dip to between them (4.5 sigmas for the recent
        // window, near the long window's mean).
        let mut d = Detector::default();
        feed(&mut d, noise(3_000, 8), &th);
        feed(&mut d, noise(3_000, 9).into_iter().map(|x| x + 10.0), &th);
        feed(&mut d, noise(9, 10).into_iter().map(|x| x + 5.5), &th);
        quiet(&d, 5.5, None);
        let [long, recent, _, score] = stretch_evidence(&d, 5.5, None, &th);
        assert!(recent > 2.0 * long && recent > 1.0, "{recent} vs {long}");
        assert!(
            (score - recent / (recent + t)).abs() < 1e-12,
            "{score}: {recent}"
        );

        // The time-of-day residual: a channel at 0 by night and 50 by day;
        // 8 at night is inside the range and near neither window's edge,
        // but far from the night's level.
        let mut d = Detector::default();
        let half_hour = |i: usize| i as f64 * 1800.0;
        let n = noise(48 * 30, 32);
        for (i, e) in n.iter().enumerate() {
            let level = if (i % 48) < 24 { 0.0 } else { 50.0 };
            let v = d.score(level + e, Some(half_hour(i)), &th);
            d.learn(level + e, &v);
        }
        // Held for a few rows, so that the averaged scores move.
        for i in n.len()..n.len() + 6 {
            let v = d.score(8.0, Some(half_hour(i)), &th);
            d.learn(8.0, &v);
        }
        let night = Some(half_hour(n.len() + 6));
        quiet(&d, 8.0, night);
        let [long, recent, daily, score] = stretch_evidence(&d, 8.0, night, &th);
        assert!(
            daily > 2.0 * long.max(recent) && daily > 1.0,
            "{daily}: {long} {recent}"
        );
        assert!(
            (score - daily / (daily + t)).abs() < 1e-12,
            "{score}: {daily}"
        );
    }

    /// A new extreme `e` (the share of the range seen by which it passes
    /// it) scores `0.5 + 0.5 tanh(e - margin)`, on either side; a stuck run
    /// of `r` rows, against three times the longest run seen `L`, scores
    /// `r / (r + 3L)`.
    #[test]
    fn an_extreme_and_a_stuck_run_score_their_evidence() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, (0..2000).map(|i| f64::from(i % 7)), &th);
        // Beyond [0, 6] by 0.6 above, 1.5 below: no tail test hit.
        for (v, e) in [(6.6, 0.1), (-1.5, 0.25)] {
            let verdict = d.score(v, None, &th);
            assert!(verdict.alarm && !verdict.tail_hit, "{verdict:?}");
            assert_eq!(
                verdict.finding,
                Some(Finding::Extreme {
                    low: 0.0,
                    high: 6.0,
                    adopted: false
                })
            );
            let want = 0.5 + 0.5 * (e - EXTREME_MARGIN).tanh();
            assert!((verdict.score - want).abs() < 1e-12, "{verdict:?}: {want}");
        }

        // Noise repeats no value: the longest run is 1, and a run is stuck
        // from STUCK_MIN rows on, where it scores r / (r + 3).
        let mut d = Detector::default();
        feed(&mut d, noise(1_000, 21), &th);
        assert_eq!(d.repeats.longest, 1);
        let v = feed(&mut d, std::iter::repeat_n(0.5, STUCK_MIN as usize), &th);
        let last = v[v.len() - 1];
        assert!(last.alarm && !last.tail_hit, "{last:?}");
        assert_eq!(
            last.finding,
            Some(Finding::Stuck {
                value: 0.5,
                rows: STUCK_MIN
            })
        );
        let (r, usual) = (STUCK_MIN as f64, 3.0);
        let want = r / (r + usual);
        assert!((last.score - want).abs() < 1e-12, "{last:?}: {want}");
    }

    #[test]
    fn values_inside_the_range_seen_get_no_extreme_score() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, (0..2000).map(|i| f64::from(i % 7)), &th);
        // 5.9 is near the top of [0, 6], but inside it.
        let v = d.score(5.9, None, &th);
        assert!(!v.alarm && v.score < 0.25, "{v:?}");
        assert!(d.score(6.5, None, &th).alarm);
    }

    #[test]
    fn state_round_trips_and_scores_the_same() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        let xs = noise(3_000, 5);
        for (i, x) in xs.iter().enumerate() {
            let v = d.score(*x, Some(i as f64 * 300.0), &th);
            d.learn(*x, &v);
        }
        let json = serde_json::to_string(&d).unwrap_or_default();
        let back: Detector = serde_json::from_str(&json).unwrap_or_default();
        assert!(back.is_valid());
        for x in [0.0, 3.0, 9.0] {
            assert_eq!(d.score(x, Some(1e6), &th), back.score(x, Some(1e6), &th));
        }
    }

    #[test]
    fn a_stuck_value_is_one_alarm() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, noise(1_000, 21), &th);
        // 0.5 is an ordinary value; only its repetition is unusual.
        let v = feed(&mut d, std::iter::repeat_n(0.5, 300), &th);
        let alarms: Vec<usize> = (0..v.len()).filter(|&i| v[i].alarm).collect();
        assert_eq!(alarms, vec![STUCK_MIN as usize - 1], "{:?}", &v[..3]);
        assert!(matches!(
            v[alarms[0]].finding,
            Some(Finding::Stuck { value, rows }) if value == 0.5 && rows == STUCK_MIN
        ));
        assert!(v[alarms[0]].score > 0.5);
    }

    #[test]
    fn a_channel_that_often_repeats_is_stuck_only_beyond_its_own_runs() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        // Steps that each hold for 30 rows (a quantised, slow metric).
        let steps = (0..100).flat_map(|i| std::iter::repeat_n(f64::from(i % 7), 30));
        let v = feed(&mut d, steps, &th);
        let stuck = |v: &[Verdict]| {
            v.iter()
                .position(|v| matches!(v.finding, Some(Finding::Stuck { .. })))
        };
        assert_eq!(stuck(&v), None);
        feed(&mut d, [7.5], &th);
        // The longest run seen is 30: 80 in a row is within three times that.
        assert_eq!(
            stuck(&feed(&mut d, std::iter::repeat_n(0.0, 80), &th)),
            None
        );
        feed(&mut d, [7.5], &th);
        let long = feed(&mut d, std::iter::repeat_n(1.0, 1_000), &th);
        // The 80 ended, so the longest run is now 80.
        assert_eq!(stuck(&long).map(|i| i + 1), Some(3 * 80));
    }

    #[test]
    fn a_constant_channel_is_not_stuck() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        let v = feed(&mut d, std::iter::repeat_n(3.0, 5_000), &th);
        assert!(v.iter().all(|v| !v.alarm));
    }

    #[test]
    fn a_new_regime_is_seen_against_the_recent_window() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        // A level shift, learned: the long window now holds both levels,
        // so a dip to between them is inside its range and near its mean;
        // against the recent window it is 4.5 sigmas out.
        feed(&mut d, noise(3_000, 8), &th);
        feed(&mut d, noise(3_000, 9).into_iter().map(|x| x + 10.0), &th);
        let dip: Vec<f64> = noise(10, 10).into_iter().map(|x| x + 5.5).collect();
        let v = feed(&mut d, dip, &th);
        assert!(v.iter().all(|v| v.z.is_some_and(|z| z.abs() < 1.0)));
        let recent = d.short.score(5.5, th.min_observations).stretch;
        let long = d.plain.score(5.5, th.min_observations).stretch;
        assert!(recent > 2.0 && recent > 3.0 * long, "{recent} vs {long}");
        assert!(v[9].score > 0.3, "{:?}", v[9]);
    }

    #[test]
    fn the_band_is_what_the_tail_test_holds_values_against() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        assert!(d.band(&th).is_none());
        feed(
            &mut d,
            noise(3_000, 31).into_iter().map(|x| 10.0 + 2.0 * x),
            &th,
        );
        let b = d.band(&th).unwrap_or_else(|| panic!("no band"));
        assert!(
            (b.mean - 10.0).abs() < 0.2 && (b.sd - 2.0).abs() < 0.2,
            "{b:?}"
        );
        assert!(b.z >= TAIL_MIN_Z);
        // Just outside the band is flagged, just inside is not.
        let out = b.mean + 1.05 * b.z * b.sd;
        assert!(d.score(out, None, &th).alarm);
        assert!(!d.score(b.mean + 0.9 * b.z * b.sd, None, &th).alarm);
        // No timestamps: no daily profile.
        assert!(b.daily.is_none());
    }

    #[test]
    fn a_daily_shape_gives_a_daily_band() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        let n = noise(48 * 30, 32);
        for (i, e) in n.iter().enumerate() {
            let t = i as f64 * 1800.0;
            let level = if (i % 48) < 24 { 0.0 } else { 50.0 };
            let v = d.score(level + e, Some(t), &th);
            d.learn(level + e, &v);
        }
        let b = d.band(&th).unwrap_or_else(|| panic!("no band"));
        let daily = b
            .daily
            .clone()
            .unwrap_or_else(|| panic!("no daily band: {b:?}"));
        assert_eq!(daily.levels.len(), DAY_BUCKETS);
        assert!(
            daily.levels[5].abs() < 3.0 && (daily.levels[30] - 50.0).abs() < 3.0,
            "{daily:?}"
        );
        assert!(daily.sd < b.sd / 5.0, "{} vs {}", daily.sd, b.sd);
    }

    #[test]
    fn a_state_saved_before_the_stuck_test_does_not_call_a_flat_channel_stuck() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, std::iter::repeat_n(3.0, 5_000), &th);
        let mut json = serde_json::to_value(&d).unwrap_or_default();
        if let Some(m) = json.as_object_mut() {
            assert!(m.remove("repeats").is_some());
        }
        let mut old: Detector = serde_json::from_value(json).unwrap_or_default();
        assert!(old.is_valid());
        let v = feed(&mut old, std::iter::repeat_n(3.0, 2_000), &th);
        assert!(v.iter().all(|v| !v.alarm));
    }

    #[test]
    fn a_stuck_alarm_held_by_a_quiet_period_is_raised_after_it() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, noise(1_000, 41), &th);
        // A new extreme (an onset: 100 quiet rows follow), then 30 rows on,
        // a flat line whose 40th row falls in the quiet period.
        let spike = feed(&mut d, [30.0], &th);
        assert!(spike[0].alarm);
        feed(&mut d, noise(30, 42), &th);
        let flat = feed(&mut d, std::iter::repeat_n(0.25, 500), &th);
        let alarms: Vec<usize> = (0..flat.len()).filter(|&i| flat[i].alarm).collect();
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        assert!(
            alarms[0] > STUCK_MIN as usize && alarms[0] <= 110,
            "{alarms:?}"
        );
        assert!(matches!(
            flat[alarms[0]].finding,
            Some(Finding::Stuck { .. })
        ));
    }

    #[test]
    fn a_long_stuck_incident_does_not_hide_the_next() {
        let th = Thresholds::new(&crate::EngineConfig::default(), 1);
        let mut d = Detector::default();
        feed(&mut d, noise(1_000, 43), &th);
        let first = feed(&mut d, std::iter::repeat_n(0.5, 3_000), &th);
        assert_eq!(first.iter().filter(|v| v.alarm).count(), 1);
        feed(&mut d, noise(300, 44), &th);
        // Counted as 39 rows, not 3,000: the next limit is 3 x 39.
        let second = feed(&mut d, std::iter::repeat_n(-0.5, 500), &th);
        let at = second
            .iter()
            .position(|v| matches!(v.finding, Some(Finding::Stuck { .. })));
        assert_eq!(at.map(|i| i + 1), Some(3 * (STUCK_MIN as usize - 1)));
    }
}
