//! Labelled synthetic series for `tswatch produce --scenario` and
//! `tswatch eval`: the seed's sensors, and the situations real users meet
//! (drift, level shifts, variance changes, daily cycles, heavy tails,
//! correlation breaks, gaps). Deterministic for a seed.

use std::f64::consts::PI;
use tswatch_core::SplitMix64;

/// Every scenario, in the order `eval --all` runs them.
pub(crate) const ALL: [&str; 9] = [
    "seed",
    "clean",
    "drift",
    "level_shift",
    "variance",
    "daily",
    "heavy_tail",
    "joint",
    "gaps",
];

/// What a scenario tells the evaluation besides per-row labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Event {
    /// Only point anomalies (labels say which rows).
    Points,
    /// A lasting change starts at this row; it should be flagged soon and
    /// then re-learned (quiet again).
    ChangeAt(usize),
}

/// A row: time (epoch seconds), cells as text, and the ground truth.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Seconds since the Unix epoch.
    pub(crate) ts: f64,
    /// One cell per channel, as written to the CSV.
    pub(crate) cells: Vec<String>,
    /// Whether an anomaly was injected in this row.
    pub(crate) anomalous: bool,
}

/// A running scenario.
#[derive(Debug)]
pub struct Scenario {
    name: &'static str,
    rng: SplitMix64,
    row: usize,
    ts: f64,
}

/// The seed producer's channels: `(name, mean, sd)`; wind speed is `|N(10, 2.5)|`.
pub(crate) const SEED_CHANNELS: [(&str, f64, f64); 4] = [
    ("temperature", 22.0, 1.5),
    ("humidity", 55.0, 5.0),
    ("pressure", 1013.0, 3.0),
    ("wind_speed", 10.0, 2.5),
];

const ONSET: usize = 10_000;

/// Seconds between rows (on average, for `gaps`).
pub(crate) const ROW_SECONDS: f64 = 60.0;

impl Scenario {
    /// Starts scenario `name` at time `start` (epoch seconds).
    pub fn new(name: &str, seed: u64, start: f64) -> Option<Self> {
        let name = ALL.iter().find(|n| **n == name)?;
        Some(Self {
            name,
            rng: SplitMix64::new(seed ^ 0x5EED),
            row: 0,
            ts: start,
        })
    }

    /// Time of the next row (epoch seconds).
    pub(crate) fn clock(&self) -> f64 {
        self.ts
    }

    /// The scenario's name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Channel names (the CSV header after `timestamp`).
    pub(crate) fn channels(&self) -> Vec<&'static str> {
        match self.name {
            "daily" => vec!["cpu", "memory", "requests"],
            "heavy_tail" => vec!["latency_ms", "queue_depth"],
            _ => SEED_CHANNELS.iter().map(|c| c.0).collect(),
        }
    }

    /// The lasting change, if the scenario has one.
    pub(crate) fn event(&self) -> Event {
        match self.name {
            "level_shift" | "variance" => Event::ChangeAt(ONSET),
            _ => Event::Points,
        }
    }

    fn normal(&mut self) -> f64 {
        self.rng.normal()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.next_f64() < p
    }

    fn sign(&mut self) -> f64 {
        if self.chance(0.5) { -1.0 } else { 1.0 }
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.next_f64()
    }

    /// The seed's rows: ~5% shifted by 5-8 sigma on one channel (the shift
    /// is added to the noisy value, as the seed's producer does).
    fn seed_row(&mut self, anomalies: bool) -> (Vec<f64>, bool) {
        let mut v: Vec<f64> = SEED_CHANNELS
            .iter()
            .map(|&(_, m, s)| ((m + s * self.normal()) * 100.0).round() / 100.0)
            .collect();
        v[3] = v[3].abs();
        let bad = anomalies && self.chance(0.05);
        if bad {
            let c = self.rng.below(4);
            let k = self.uniform(5.0, 8.0);
            v[c] += self.sign() * k * SEED_CHANNELS[c].2;
        }
        (v, bad)
    }

    /// The next row.
    pub(crate) fn next_row(&mut self) -> Row {
        let i = self.row;
        self.row += 1;
        let mut step = ROW_SECONDS;
        let (values, anomalous): (Vec<f64>, bool) = match self.name {
            "seed" => self.seed_row(true),
            "clean" => self.seed_row(false),
            "drift" => {
                let (mut v, _) = self.seed_row(false);
                // +4 sigma of temperature over 20,000 rows.
                v[0] += 1.5 * 4.0 * i as f64 / 20_000.0;
                let bad = self.chance(0.01);
                if bad {
                    let c = self.rng.below(4);
                    v[c] += self.sign() * self.uniform(6.0, 8.0) * SEED_CHANNELS[c].2;
                }
                (v, bad)
            }
            "level_shift" => {
                let (mut v, _) = self.seed_row(false);
                if i >= ONSET {
                    v[2] += 6.0 * 3.0;
                }
                (v, (ONSET..ONSET + 16).contains(&i))
            }
            "variance" => {
                let (mut v, _) = self.seed_row(false);
                if i >= ONSET {
                    // Humidity's spread doubles.
                    v[1] = 55.0 + 2.0 * (v[1] - 55.0);
                }
                (v, false)
            }
            "daily" => {
                let phase = 2.0 * PI * (self.ts.rem_euclid(86_400.0) / 86_400.0);
                let mut v = vec![
                    50.0 + 20.0 * phase.sin() + 3.0 * self.normal(),
                    60.0 + 10.0 * (phase - 0.5).sin() + 2.0 * self.normal(),
                    1000.0 + 600.0 * phase.sin() + 50.0 * self.normal(),
                ];
                let bad = self.chance(0.003);
                if bad {
                    let c = self.rng.below(3);
                    let sd = [3.0, 2.0, 50.0][c];
                    v[c] += self.sign() * self.uniform(6.0, 9.0) * sd;
                }
                (
                    v.into_iter().map(|x| (x * 100.0).round() / 100.0).collect(),
                    bad,
                )
            }
            "heavy_tail" => {
                let latency = (3.0 + 0.6 * self.normal()).exp();
                // Poisson(4) by inversion.
                let (mut k, mut p, mut f) = (0.0, (-4.0f64).exp(), 0.0);
                let u = self.rng.next_f64();
                f += p;
                while u > f && k < 100.0 {
                    k += 1.0;
                    p *= 4.0 / k;
                    f += p;
                }
                let mut v = vec![(latency * 10.0).round() / 10.0, k];
                let bad = self.chance(0.005);
                if bad {
                    if self.chance(0.5) {
                        v[0] *= 20.0;
                    } else {
                        v[1] += 40.0;
                    }
                }
                (v, bad)
            }
            "joint" => {
                let (z1, z2) = (self.normal(), self.normal());
                let rho: f64 = -0.9;
                let (mut t, mut h) = (z1, rho * z1 + (1.0 - rho * rho).sqrt() * z2);
                let bad = self.chance(0.02);
                if bad {
                    // Each within 2 sigma, together against the correlation.
                    let a = self.uniform(1.2, 2.0);
                    let s = self.sign();
                    (t, h) = (s * a, s * a);
                }
                let w = (10.0 + 2.5 * self.normal()).abs();
                let p = 1013.0 + 3.0 * self.normal();
                let r2 = |x: f64| (x * 100.0).round() / 100.0;
                (
                    vec![r2(22.0 + 1.5 * t), r2(55.0 + 5.0 * h), r2(p), r2(w)],
                    bad,
                )
            }
            "gaps" => {
                step = if self.chance(0.001) {
                    3600.0
                } else {
                    self.uniform(30.0, 90.0)
                };
                self.seed_row(true)
            }
            _ => unreachable!("names are checked in new()"),
        };
        // Two decimals, as the seed's sensors write them: an injected
        // anomaly must not give itself away by its precision.
        let mut cells: Vec<String> = values
            .iter()
            .map(|v| format!("{}", (v * 100.0).round() / 100.0))
            .collect();
        if self.name == "gaps" {
            for c in &mut cells {
                let u = self.rng.next_f64();
                if u < 0.05 {
                    c.clear();
                } else if u < 0.06 {
                    *c = "NaN".into();
                } else if u < 0.065 {
                    *c = "err".into();
                }
            }
        }
        let row = Row {
            ts: self.ts,
            cells,
            anomalous,
        };
        self.ts += step;
        row
    }

    /// The next `n` rows as CSV text (with header) and their labels.
    pub fn batch(&mut self, n: usize) -> (String, Vec<bool>, f64) {
        let mut csv = String::from("timestamp");
        for c in self.channels() {
            csv.push(',');
            csv.push_str(c);
        }
        csv.push('\n');
        let mut labels = Vec::with_capacity(n);
        let first = self.ts;
        for _ in 0..n {
            let r = self.next_row();
            csv.push_str(&iso(r.ts));
            for c in &r.cells {
                csv.push(',');
                csv.push_str(c);
            }
            csv.push('\n');
            labels.push(r.anomalous);
        }
        (csv, labels, first)
    }
}

/// The producer's key for a batch whose first row is at `first`:
/// `raw/<prefix>_<YYYYmmddTHHMMSS>.csv` (names sort chronologically).
pub fn batch_key(prefix: &str, first: f64) -> String {
    let stamp = chrono::DateTime::from_timestamp(first.floor() as i64, 0)
        .map(|d| d.format("%Y%m%dT%H%M%S").to_string())
        .unwrap_or_default();
    format!("raw/{prefix}_{stamp}.csv")
}

/// `YYYY-MM-DDTHH:MM:SS` for epoch seconds.
pub(crate) fn iso(ts: f64) -> String {
    chrono::DateTime::from_timestamp(ts.floor() as i64, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_generates_rows_of_its_width() {
        for name in ALL {
            let mut s = Scenario::new(name, 1, 1.7e9).unwrap();
            let (csv, labels, _) = s.batch(200);
            let width = s.channels().len() + 1;
            assert!(csv.lines().all(|l| l.split(',').count() == width), "{name}");
            assert_eq!(labels.len(), 200);
        }
        assert!(Scenario::new("nope", 1, 0.0).is_none());
    }

    #[test]
    fn deterministic() {
        let a = Scenario::new("seed", 9, 1.7e9).unwrap().batch(50).0;
        let b = Scenario::new("seed", 9, 1.7e9).unwrap().batch(50).0;
        assert_eq!(a, b);
    }
}
