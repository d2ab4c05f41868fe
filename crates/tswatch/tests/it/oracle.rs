//! Independent oracles: what the service writes, recomputed by hand in the
//! test from the fixture, with plain arithmetic that shares no code with
//! the crate.

use crate::harness::*;

/// The fixture's channels and the columns of their `<ch>_zscore` in the
/// scored copy.
const CHANNELS: [(&str, usize, usize); 4] = [
    ("temperature", 1, 5),
    ("humidity", 2, 7),
    ("pressure", 3, 9),
    ("wind_speed", 4, 11),
];

/// What a z-score is written as: four decimals. A hand-computed value and
/// the written one may differ by half the last digit (and a hair more for
/// the binary representation of both).
const HALF_LAST_DIGIT: f64 = 0.5e-4 + 1e-9;

/// The z-score of `xs[i]` against every value before it, the way a fresh
/// stream's detector holds values once `min_observations` (30) have been
/// seen: the mean and the population standard deviation of the values
/// so far (the fixture's 100 rows are all learned: the tail test, which
/// keeps outliers out, learns for its first 500 rows). `None` before 30.
fn hand_z(xs: &[f64], i: usize) -> Option<f64> {
    if i < 30 {
        return None;
    }
    let before = &xs[..i];
    let n = before.len() as f64;
    let mean = before.iter().sum::<f64>() / n;
    let var = before.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Some((xs[i] - mean) / var.sqrt())
}

#[tokio::test]
async fn z_scores_in_the_scored_copy_and_the_api_match_a_hand_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let svc = Service::local(&data, tmp.path()).await;
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    let input = csv_rows(&fixture);
    drop_in(&data, "f.csv", &fixture);
    wait_file(&data.join("processed/f_summary.json")).await;
    let out = csv_rows(&std::fs::read(data.join("processed/f.csv")).unwrap());
    assert_eq!((input.len(), out.len()), (101, 101));

    let mut checked = 0;
    let mut by_time = std::collections::HashMap::new();
    for (ch, col, zcol) in CHANNELS {
        assert_eq!(
            (&input[0][col], &out[0][zcol]),
            (&ch.to_string(), &format!("{ch}_zscore"))
        );
        let xs: Vec<f64> = input[1..].iter().map(|r| r[col].parse().unwrap()).collect();
        for (i, row) in out[1..].iter().enumerate() {
            match hand_z(&xs, i) {
                None => assert_eq!(row[zcol], "", "{ch} row {}: immature", i + 1),
                Some(want) => {
                    let got: f64 = row[zcol].parse().unwrap();
                    assert!(
                        (got - want).abs() <= HALF_LAST_DIGIT,
                        "{ch} row {}: written {got}, by hand {want}",
                        i + 1
                    );
                    by_time.insert((row[0].clone(), ch), want);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 4 * 70);

    // The API's anomalies carry the same z-scores, to four decimals.
    let (st, recent) = svc.get_json("/anomalies/recent?limit=1000").await;
    assert_eq!(st, 200, "{recent}");
    let list = recent["anomalies"].as_array().unwrap();
    let flagged = out[1..].iter().filter(|r| r[16] == "True").count();
    assert!(flagged >= 3, "the fixture has rows to compare: {flagged}");
    assert_eq!(list.len(), flagged, "{recent}");
    for a in list {
        let ts = a["timestamp"].as_str().unwrap().to_string();
        for (ch, _, _) in CHANNELS {
            let want = by_time[&(ts.clone(), ch)];
            let got = a[format!("{ch}_zscore")].as_f64().unwrap();
            assert!(
                (got - want).abs() <= HALF_LAST_DIGIT,
                "{ts} {ch}: /anomalies/recent says {got}, by hand {want}"
            );
        }
    }
}
