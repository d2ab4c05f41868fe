//! `cargo bench -p tswatch-core`: nanoseconds per row of the engine, with
//! each detector switched on in turn, on the seed producer's four channels.
//! A plain timing harness (no external crate), best of five runs.

use std::hint::black_box;
use std::time::Instant;
use tswatch_core::SplitMix64;
use tswatch_core::{Engine, EngineConfig};

fn rows(n: usize) -> Vec<(f64, Vec<Option<f64>>)> {
    let mut rng = SplitMix64::new(1);
    let mut normal = move || {
        let u = rng.next_f64().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.next_f64()).cos()
    };
    (0..n)
        .map(|i| {
            let ts = 1_769_904_000.0 + 60.0 * i as f64;
            let r = vec![
                Some(22.0 + 1.5 * normal()),
                Some(55.0 + 5.0 * normal()),
                Some(1013.0 + 3.0 * normal()),
                Some((10.0 + 2.5 * normal()).abs()),
            ];
            (ts, r)
        })
        .collect()
}

fn ns_per_row(cfg: EngineConfig, data: &[(f64, Vec<Option<f64>>)]) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let mut e = Engine::new(cfg).expect("valid config");
        let b = e.bind(&["temperature", "humidity", "pressure", "wind_speed"]);
        let start = Instant::now();
        for (ts, r) in data {
            let s = e.score(&b, Some(*ts), r);
            e.update(&b, Some(*ts), r, black_box(&s));
        }
        let mut verdicts = 0;
        if let Some(v) = e.forest_view(&b) {
            verdicts = v
                .verdicts(data.iter().take(256).map(|(_, r)| r.as_slice()))
                .len();
        }
        black_box(verdicts);
        best = best.min(start.elapsed().as_nanos() as f64 / data.len() as f64);
    }
    best
}

fn main() {
    let data = rows(200_000);
    let base = EngineConfig {
        seasonality: false,
        joint: false,
        level_shift_rows: 0,
        forest_trees: 1,
        ..Default::default()
    };
    let cases = [
        ("per-channel z only", base),
        (
            "+ level shifts",
            EngineConfig {
                level_shift_rows: 16,
                ..base
            },
        ),
        (
            "+ time of day",
            EngineConfig {
                level_shift_rows: 16,
                seasonality: true,
                ..base
            },
        ),
        (
            "+ joint (defaults, forest aside)",
            EngineConfig {
                forest_trees: 1,
                ..Default::default()
            },
        ),
        (
            "defaults, forest inline (50 trees)",
            EngineConfig {
                forest_alarm: true,
                ..Default::default()
            },
        ),
    ];
    println!(
        "{:<38} {:>10}",
        "engine (score + update, 4 channels)", "ns/row"
    );
    for (name, cfg) in cases {
        println!("{name:<38} {:>10.0}", ns_per_row(cfg, &data));
    }
    // Batch scoring, as the service does by default.
    let mut e = Engine::new(EngineConfig::default()).expect("valid config");
    let b = e.bind(&["temperature", "humidity", "pressure", "wind_speed"]);
    for (ts, r) in data.iter().take(20_000) {
        let s = e.score(&b, Some(*ts), r);
        e.update(&b, Some(*ts), r, &s);
    }
    if let Some(v) = e.forest_view(&b) {
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = Instant::now();
            for chunk in data.chunks(256) {
                black_box(v.verdicts(chunk.iter().map(|(_, r)| r.as_slice())));
            }
            best = best.min(start.elapsed().as_nanos() as f64 / data.len() as f64);
        }
        println!("{:<38} {:>10.0}", "forest verdicts, 256-row batches", best);
    }
}
