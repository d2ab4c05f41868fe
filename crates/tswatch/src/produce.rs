//! The seed's test producer: 100-row files of four sensor channels every
//! 60 s, about 5% of rows shifted by 5-8 sigma on one channel, uploaded as
//! `raw/sensors_<YYYYmmddTHHMMSS>.csv`.

use chrono::{DateTime, Duration, Utc};
use std::fmt::Write as _;
use tswatch_core::forest::SplitMix64;

/// `(name, mean, sd)` of the seed's channels; wind speed is `|N(10, 2.5)|`.
pub const CHANNELS: [(&str, f64, f64); 4] = [
    ("temperature", 22.0, 1.5),
    ("humidity", 55.0, 5.0),
    ("pressure", 1013.0, 3.0),
    ("wind_speed", 10.0, 2.5),
];

/// Share of rows with an injected anomaly.
pub const ANOMALY_RATE: f64 = 0.05;

/// Generates batches with a deterministic generator.
#[derive(Debug)]
pub struct Producer {
    rng: SplitMix64,
    next_start: Option<DateTime<Utc>>,
}

/// One generated batch.
#[derive(Debug)]
pub struct Batch {
    /// `raw/sensors_<first row time>.csv`
    pub key: String,
    /// CSV text.
    pub csv: String,
    /// Row indices with an injected anomaly.
    pub anomalous_rows: Vec<usize>,
}

impl Producer {
    /// A producer seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            next_start: None,
        }
    }

    fn normal(&mut self) -> f64 {
        let u = self.rng.next_f64().max(1e-300);
        let v = self.rng.next_f64();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// The next batch of `rows` rows, one minute apart, starting now (or
    /// right after the previous batch, so names never collide).
    pub fn batch(&mut self, rows: usize, now: DateTime<Utc>) -> Batch {
        let start = match self.next_start {
            Some(t) if t > now => t,
            _ => now,
        };
        self.next_start = Some(start + Duration::minutes(rows.max(1) as i64));
        let mut csv = String::from("timestamp,temperature,humidity,pressure,wind_speed\n");
        let mut anomalous_rows = Vec::new();
        for i in 0..rows {
            let ts = start + Duration::minutes(i as i64);
            let mut v: Vec<f64> = CHANNELS
                .iter()
                .map(|(_, m, s)| ((m + s * self.normal()) * 100.0).round() / 100.0)
                .collect();
            v[3] = v[3].abs();
            if self.rng.next_f64() < ANOMALY_RATE {
                let c = self.rng.below(CHANNELS.len());
                let k = 5.0 + 3.0 * self.rng.next_f64();
                let sign = if self.rng.next_f64() < 0.5 { -1.0 } else { 1.0 };
                v[c] = CHANNELS[c].1 + sign * k * CHANNELS[c].2 + self.normal() * 0.1;
                anomalous_rows.push(i);
            }
            let _ = write!(csv, "{}", ts.format("%Y-%m-%dT%H:%M:%S%.6f"));
            for x in v {
                let _ = write!(csv, ",{x}");
            }
            csv.push('\n');
        }
        Batch {
            key: format!("raw/sensors_{}.csv", start.format("%Y%m%dT%H%M%S")),
            csv,
            anomalous_rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_look_like_the_seed_fixture() {
        let mut p = Producer::new(1);
        let now = Utc::now();
        let b = p.batch(100, now);
        let mut lines = b.csv.lines();
        assert_eq!(
            lines.next(),
            Some("timestamp,temperature,humidity,pressure,wind_speed")
        );
        assert_eq!(lines.count(), 100);
        assert!(b.key.starts_with("raw/sensors_") && b.key.ends_with(".csv"));
        let b2 = p.batch(100, now);
        assert_ne!(b.key, b2.key, "back-to-back batches must not collide");
    }

    #[test]
    fn about_five_percent_anomalies() {
        let mut p = Producer::new(2);
        let n: usize = (0..100)
            .map(|_| p.batch(100, Utc::now()).anomalous_rows.len())
            .sum();
        assert!((350..650).contains(&n), "{n} anomalies in 10000 rows");
    }
}
