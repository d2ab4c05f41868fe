//! Parse → score → write for one CSV batch, on plain `Read`/`Write`, so it
//! is testable without storage and streams rows with bounded memory.
//!
//! Column rules: the first column named `timestamp` (or `time`, `date`,
//! `datetime`, `ts`, any case) is the timestamp and is never a channel; every
//! other column whose non-empty cells in the first rows are mostly numbers
//! is a channel; the rest pass through untouched. A cell that is empty,
//! non-numeric or non-finite is a missing value: counted, never absorbed.

use serde_json::{Map, Value};
use std::io::{Read, Write};
use tswatch_core::{Engine, RowScore};

/// Rows examined to decide which columns are numeric.
const SNIFF_ROWS: usize = 256;
/// Anomalous rows kept per file for `/anomalies/recent`.
pub const MAX_KEPT_ANOMALIES: usize = 1000;

/// Why a file cannot be scored. Carries the 1-based line where known.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file has no header line.
    #[error("the file is empty: a header line `timestamp,<channel>,...` is required")]
    Empty,
    /// A header problem.
    #[error("line 1: {0}")]
    Header(String),
    /// A row problem.
    #[error("line {line}: {message}")]
    Row {
        /// Line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The CSV could not be read (I/O or malformed quoting).
    #[error("{0}")]
    Csv(String),
}

impl InputError {
    /// Line number of the problem, if known.
    pub fn line(&self) -> Option<u64> {
        match self {
            InputError::Header(_) => Some(1),
            InputError::Row { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// What scoring one file produced.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    /// Data rows scored.
    pub total_rows: u64,
    /// Rows judged anomalous.
    pub anomaly_count: u64,
    /// Channel cells that were empty, non-numeric or non-finite.
    pub missing_cells: u64,
    /// Names of the scored channels.
    pub channels: Vec<String>,
    /// Columns passed through without scoring.
    pub passthrough: Vec<String>,
    /// Anomalous rows as JSON objects (the first [`MAX_KEPT_ANOMALIES`]).
    pub anomalies: Vec<Map<String, Value>>,
}

const TIMESTAMP_NAMES: [&str; 5] = ["timestamp", "time", "date", "datetime", "ts"];

/// Scores every row of `input` with `engine` (score, then absorb) and writes
/// the annotated copy to `output`.
pub fn score_csv<R: Read, W: Write>(
    input: R,
    output: W,
    engine: &mut Engine,
) -> Result<FileReport, InputError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut header = csv::ByteRecord::new();
    if !rdr.read_byte_record(&mut header).map_err(csv_err)? {
        return Err(InputError::Empty);
    }
    let columns = header_names(&header)?;
    let ts_col = columns
        .iter()
        .position(|c| TIMESTAMP_NAMES.contains(&c.to_ascii_lowercase().as_str()));

    // Buffer a bounded number of rows to tell numeric columns from text.
    let mut sniffed = Vec::new();
    let mut rec = csv::ByteRecord::new();
    while sniffed.len() < SNIFF_ROWS && rdr.read_byte_record(&mut rec).map_err(csv_err)? {
        sniffed.push(rec.clone());
    }
    let channel_cols: Vec<usize> = (0..columns.len())
        .filter(|&c| Some(c) != ts_col && looks_numeric(&sniffed, c))
        .collect();
    let channels: Vec<String> = channel_cols.iter().map(|&c| columns[c].clone()).collect();
    for ch in &channels {
        for suffix in ["_zscore", "_zscore_flag"] {
            if columns.contains(&format!("{ch}{suffix}")) {
                return Err(InputError::Header(format!(
                    "column `{ch}{suffix}` would collide with the score column tswatch adds"
                )));
            }
        }
    }
    let binding = engine.bind(&channels);
    let forest_threshold = engine.config().forest_threshold;

    let mut out = csv::WriterBuilder::new()
        .buffer_capacity(256 * 1024)
        .from_writer(output);
    let mut out_header: Vec<String> = columns.clone();
    for ch in &channels {
        out_header.push(format!("{ch}_zscore"));
        out_header.push(format!("{ch}_zscore_flag"));
    }
    out_header.extend(
        [
            "if_label",
            "if_score",
            "if_flag",
            "anomaly",
            "anomaly_score",
            "reason",
        ]
        .map(String::from),
    );
    out.write_record(&out_header).map_err(csv_err)?;

    let mut report = FileReport {
        channels: channels.clone(),
        passthrough: (0..columns.len())
            .filter(|c| !channel_cols.contains(c))
            .map(|c| columns[c].clone())
            .collect(),
        ..Default::default()
    };
    let mut values: Vec<Option<f64>> = Vec::with_capacity(channels.len());
    let mut score = RowScore::default();
    let mut num = NumBuf::default();
    let mut line = 1u64;

    let mut process = |rec: &csv::ByteRecord,
                       out: &mut csv::Writer<W>,
                       report: &mut FileReport|
     -> Result<(), InputError> {
        line = rec.position().map_or(line + 1, |p| p.line());
        if rec.len() > columns.len() {
            return Err(InputError::Row {
                line,
                message: format!(
                    "{} fields, but the header has {} columns",
                    rec.len(),
                    columns.len()
                ),
            });
        }
        if rec.len() == 1 && rec.get(0).is_some_and(|f| f.is_empty()) && columns.len() > 1 {
            return Ok(()); // a blank line
        }
        values.clear();
        for &c in &channel_cols {
            let v = rec.get(c).and_then(parse_cell);
            report.missing_cells += u64::from(v.is_none());
            values.push(v);
        }
        let ts = ts_col
            .and_then(|c| rec.get(c))
            .and_then(crate::timestamp::parse);
        engine.score_into(&binding, ts, &values, &mut score);
        engine.update(&binding, ts, &values, &score);
        report.total_rows += 1;

        for c in 0..columns.len() {
            out.write_field(rec.get(c).unwrap_or(b""))
                .map_err(csv_err)?;
        }
        for (z, f) in score.z.iter().zip(&score.z_flag) {
            match z {
                Some(z) => out.write_field(num.fixed4(*z)).map_err(csv_err)?,
                None => out.write_field(b"").map_err(csv_err)?,
            }
            out.write_field(bool_cell(*f)).map_err(csv_err)?;
        }
        match score.if_label() {
            Some(l) => {
                out.write_field(if l < 0 { "-1" } else { "1" })
                    .map_err(csv_err)?;
                let s = score.if_score(forest_threshold).unwrap_or_default();
                out.write_field(num.fixed4(s)).map_err(csv_err)?;
                out.write_field(bool_cell(Some(l < 0))).map_err(csv_err)?;
            }
            None => {
                for _ in 0..3 {
                    out.write_field(b"").map_err(csv_err)?;
                }
            }
        }
        out.write_field(bool_cell(Some(score.anomaly)))
            .map_err(csv_err)?;
        out.write_field(num.full(score.anomaly_score))
            .map_err(csv_err)?;
        let reason = score.reason(&channels);
        out.write_field(reason.as_bytes()).map_err(csv_err)?;
        out.write_record(None::<&[u8]>).map_err(csv_err)?;

        if score.anomaly {
            report.anomaly_count += 1;
            if report.anomalies.len() < MAX_KEPT_ANOMALIES {
                report.anomalies.push(row_json(
                    &columns,
                    &channel_cols,
                    rec,
                    &values,
                    &channels,
                    &score,
                    forest_threshold,
                    reason,
                ));
            }
        }
        Ok(())
    };

    for r in &sniffed {
        process(r, &mut out, &mut report)?;
    }
    drop(sniffed);
    while rdr.read_byte_record(&mut rec).map_err(csv_err)? {
        process(&rec, &mut out, &mut report)?;
    }
    out.flush()
        .map_err(|e| InputError::Csv(format!("writing output: {e}")))?;
    Ok(report)
}

fn csv_err(e: csv::Error) -> InputError {
    match e.position() {
        Some(p) => InputError::Row {
            line: p.line(),
            message: e.to_string(),
        },
        None => InputError::Csv(e.to_string()),
    }
}

fn header_names(header: &csv::ByteRecord) -> Result<Vec<String>, InputError> {
    let mut names = Vec::with_capacity(header.len());
    for (i, raw) in header.iter().enumerate() {
        let raw = if i == 0 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        } else {
            raw
        };
        let name = std::str::from_utf8(raw)
            .map_err(|_| InputError::Header(format!("column {} name is not UTF-8", i + 1)))?
            .trim()
            .to_string();
        if name.is_empty() {
            return Err(InputError::Header(format!(
                "column {} has an empty name",
                i + 1
            )));
        }
        if names.contains(&name) {
            return Err(InputError::Header(format!(
                "duplicate column name `{name}`"
            )));
        }
        names.push(name);
    }
    Ok(names)
}

/// A column is numeric when at least 80% of its non-empty sampled cells
/// parse as numbers (so a few bad cells do not turn a channel into text).
fn looks_numeric(rows: &[csv::ByteRecord], col: usize) -> bool {
    let (mut filled, mut numeric) = (0, 0);
    for r in rows {
        if let Some(cell) = r.get(col).map(trim).filter(|c| !c.is_empty()) {
            filled += 1;
            numeric += usize::from(parse_number(cell).is_some());
        }
    }
    filled == 0 || numeric * 5 >= filled * 4
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e.max(s)]
}

fn parse_number(cell: &[u8]) -> Option<f64> {
    std::str::from_utf8(cell).ok()?.parse::<f64>().ok()
}

/// A usable channel value: a finite number.
fn parse_cell(cell: &[u8]) -> Option<f64> {
    parse_number(trim(cell)).filter(|v| v.is_finite())
}

fn bool_cell(f: Option<bool>) -> &'static [u8] {
    match f {
        Some(true) => b"True",
        Some(false) => b"False",
        None => b"",
    }
}

#[allow(clippy::too_many_arguments)]
fn row_json(
    columns: &[String],
    channel_cols: &[usize],
    rec: &csv::ByteRecord,
    values: &[Option<f64>],
    channels: &[String],
    score: &RowScore,
    forest_threshold: f64,
    reason: String,
) -> Map<String, Value> {
    let mut m = Map::new();
    for (c, name) in columns.iter().enumerate() {
        let v = match channel_cols.iter().position(|&cc| cc == c) {
            Some(k) => values[k].map_or(Value::Null, Value::from),
            None => Value::from(String::from_utf8_lossy(rec.get(c).unwrap_or(b"")).into_owned()),
        };
        m.insert(name.clone(), v);
    }
    for (k, ch) in channels.iter().enumerate() {
        let z = score.z[k].map(|z| (z * 1e4).round() / 1e4);
        m.insert(format!("{ch}_zscore"), z.map_or(Value::Null, Value::from));
        m.insert(
            format!("{ch}_zscore_flag"),
            score.z_flag[k].map_or(Value::Null, Value::from),
        );
    }
    let label = score.if_label();
    m.insert("if_label".into(), label.map_or(Value::Null, Value::from));
    m.insert(
        "if_score".into(),
        score
            .if_score(forest_threshold)
            .map_or(Value::Null, |s| Value::from((s * 1e4).round() / 1e4)),
    );
    m.insert(
        "if_flag".into(),
        label.map_or(Value::Null, |l| Value::from(l < 0)),
    );
    m.insert("anomaly".into(), Value::from(score.anomaly));
    m.insert("anomaly_score".into(), Value::from(score.anomaly_score));
    m.insert("reason".into(), Value::from(reason));
    m
}

/// Reused buffer for number formatting without `format!` on the hot path.
#[derive(Default)]
struct NumBuf {
    buf: Vec<u8>,
}

impl NumBuf {
    /// Exactly four decimals, e.g. `-1.2346`. Integer arithmetic (10x
    /// faster than `{:.4}`), falling back to `format!` for huge values.
    fn fixed4(&mut self, x: f64) -> &[u8] {
        self.buf.clear();
        let scaled = (x * 1e4).round();
        if scaled.is_nan() || scaled.abs() >= 9e15 {
            let _ = write!(self.buf, "{x:.4}");
            return &self.buf;
        }
        let n = scaled as i64;
        if n < 0 {
            self.buf.push(b'-');
        }
        let n = n.unsigned_abs();
        let mut ib = itoa::Buffer::new();
        self.buf.extend_from_slice(ib.format(n / 10_000).as_bytes());
        self.buf.push(b'.');
        let frac = n % 10_000;
        let fs = ib.format(frac);
        self.buf.extend(std::iter::repeat_n(b'0', 4 - fs.len()));
        self.buf.extend_from_slice(fs.as_bytes());
        &self.buf
    }

    /// Shortest representation that round-trips (full precision).
    fn full(&mut self, x: f64) -> &[u8] {
        self.buf.clear();
        let _ = write!(self.buf, "{x}");
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tswatch_core::EngineConfig;

    fn run(input: &str) -> Result<(String, FileReport), InputError> {
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        let mut out = Vec::new();
        let r = score_csv(input.as_bytes(), &mut out, &mut e)?;
        Ok((String::from_utf8(out).unwrap(), r))
    }

    #[test]
    fn fixed4_matches_format() {
        let mut n = NumBuf::default();
        for x in [
            0.0, -0.00004, 1.23456, -1.23456, 12345.6789, 0.5, 99.99995, -7.0, 1e11,
        ] {
            let want = format!("{x:.4}");
            let got = String::from_utf8(n.fixed4(x).to_vec()).unwrap();
            // `{:.4}` rounds half to even on the decimal string; both are within 1e-4.
            let (a, b): (f64, f64) = (want.parse().unwrap(), got.parse().unwrap());
            assert!((a - b).abs() <= 1.0001e-4, "{x}: {want} vs {got}");
            assert_eq!(got.split('.').nth(1).map(str::len), Some(4), "{got}");
        }
    }

    #[test]
    fn seed_columns_in_order() {
        let (out, r) = run("timestamp,temperature,humidity\n2026-01-01T00:00:00,1,2\n").unwrap();
        let header = out.lines().next().unwrap();
        assert_eq!(
            header,
            "timestamp,temperature,humidity,temperature_zscore,temperature_zscore_flag,\
             humidity_zscore,humidity_zscore_flag,if_label,if_score,if_flag,anomaly,anomaly_score,reason"
        );
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "2026-01-01T00:00:00,1,2,,,,,,,,False,0,"
        );
        assert_eq!(r.total_rows, 1);
        assert_eq!(r.channels, ["temperature", "humidity"]);
    }

    #[test]
    fn text_columns_pass_through_and_bad_cells_are_counted() {
        let mut s = String::from("timestamp,site,value\n");
        for i in 0..40 {
            s.push_str(&format!("t{i},north,{}\n", 10 + i % 3));
        }
        s.push_str("t40,north,abc\nt41,north,inf\nt42,north,\nt43,north,NaN\n");
        let (out, r) = run(&s).unwrap();
        assert_eq!(r.channels, ["value"]);
        assert_eq!(r.passthrough, ["timestamp", "site"]);
        assert_eq!(r.missing_cells, 4);
        assert_eq!(r.total_rows, 44);
        assert!(out.contains("t40,north,abc,,,"));
    }

    #[test]
    fn header_problems_are_specific() {
        assert!(matches!(run(""), Err(InputError::Empty)));
        let e = run("timestamp,a,a\n1,2,3\n").unwrap_err();
        assert_eq!(e.to_string(), "line 1: duplicate column name `a`");
        let e = run("timestamp,,b\n").unwrap_err();
        assert!(e.to_string().contains("empty name"));
    }

    #[test]
    fn ragged_rows() {
        let e = run("timestamp,a\n1,2\n2,3,4\n").unwrap_err();
        assert_eq!(e.line(), Some(3));
        // Short rows are missing cells, not errors.
        let (_, r) = run("timestamp,a,b\n1,2\n").unwrap();
        assert_eq!(r.missing_cells, 1);
    }

    #[test]
    fn bom_crlf_quotes_and_header_only() {
        let (out, r) = run("\u{feff}timestamp,a\r\n\"2026-01-01, noon\",\"1.5\"\r\n").unwrap();
        assert_eq!(r.total_rows, 1);
        assert_eq!(r.channels, ["a"]);
        assert!(out.starts_with("timestamp,a,"));
        let (out, r) = run("timestamp,a\n").unwrap();
        assert_eq!(r.total_rows, 0);
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn anomalies_are_reported_with_reason() {
        let mut s = String::from("timestamp,t\n");
        for i in 0..50 {
            s.push_str(&format!("{i},{}\n", 20.0 + (i % 5) as f64 * 0.1));
        }
        s.push_str("50,40\n");
        let (out, r) = run(&s).unwrap();
        assert_eq!(r.anomaly_count, 1);
        let last = out.lines().last().unwrap();
        assert!(last.contains(",True,"), "{last}");
        assert!(
            last.ends_with(&format!(
                "t z={:.2}",
                r.anomalies[0]["t_zscore"].as_f64().unwrap()
            )),
            "{last}"
        );
        assert_eq!(r.anomalies[0]["t"], 40.0);
        assert_eq!(r.anomalies[0]["anomaly"], true);
    }
}
