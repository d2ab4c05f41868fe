//! Parse → score → write for one CSV batch, on plain `Read`/`Write`, so it
//! is testable without storage and streams rows with bounded memory.
//!
//! Column rules: the first column named `timestamp` (or `time`, `date`,
//! `datetime`, `ts`, any case) is the timestamp and is never a channel; every
//! other column whose non-empty cells in the first rows are mostly numbers
//! is a channel; the rest pass through untouched. A cell that is empty,
//! non-numeric or non-finite is a missing value: counted, never absorbed.
//!
//! Memory stays bounded whatever the input: a record (a line, or a quoted
//! field spanning lines) longer than [`MAX_RECORD_BYTES`] and a header wider
//! than [`MAX_COLUMNS`] are refused, and the rows held back to sniff column
//! types are capped in count and bytes. Line numbers in errors are physical
//! lines ([`crate::csv::records`] reads the records and counts them).

use crate::csv::records::{InputError, RecordError, Records, Row, Rows};
use crate::state::scored::FileReport;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::mpsc;
use tswatch_core::{Engine, ForestVerdict, ForestView, RowScore};

/// Rows examined to decide which columns are numeric.
const SNIFF_ROWS: usize = 256;
/// At most this many bytes of rows are held back for sniffing.
const SNIFF_BYTES: usize = 4 * 1024 * 1024;
/// Most columns accepted in a header.
pub(crate) const MAX_COLUMNS: usize = 1024;
/// Names of the columns tswatch appends (besides `<ch>_zscore[_flag]`).
const SCORE_COLUMNS: [&str; 6] = [
    "if_label",
    "if_score",
    "if_flag",
    "anomaly",
    "anomaly_score",
    "reason",
];
/// Longest column name, in bytes.
pub(crate) const MAX_COLUMN_NAME: usize = 256;
/// Anomalous rows kept per file for `/anomalies/recent`.
pub(crate) const MAX_KEPT_ANOMALIES: usize = 1000;
/// Longest text cell (in bytes) of a kept anomalous row; longer ones are
/// cut and marked, so an input cannot fill the state with its cells.
pub(crate) const MAX_KEPT_CELL: usize = 256;
/// Bytes of JSON the kept anomalous rows of one file may take; the rows
/// past it are counted but not kept.
pub(crate) const MAX_KEPT_BYTES: usize = 512 * 1024;

/// Which cells of the scored copy are made safe to open in a spreadsheet:
/// a text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return
/// gets a leading `'`, so it is shown as text and never run as a formula.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellSafety {
    /// The columns tswatch writes (`reason`, the score columns' names,
    /// which repeat the channel names); input cells are copied as they are.
    #[default]
    Generated,
    /// Every text cell, the input's included (numbers are never changed).
    All,
    /// Nothing is changed.
    Off,
}

impl CellSafety {
    /// `cell` as it may be written under this setting; `generated` says
    /// whether tswatch wrote it (else it is copied from the input).
    pub(crate) fn guard<'a>(self, cell: &'a [u8], generated: bool) -> std::borrow::Cow<'a, [u8]> {
        let applies = match self {
            CellSafety::Off => false,
            CellSafety::Generated => generated,
            CellSafety::All => true,
        };
        if applies
            && matches!(
                cell.first(),
                Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
            )
            && (generated || parse_number(cell.trim_ascii()).is_none())
        {
            let mut safe = Vec::with_capacity(cell.len() + 1);
            safe.push(b'\'');
            safe.extend_from_slice(cell);
            std::borrow::Cow::Owned(safe)
        } else {
            std::borrow::Cow::Borrowed(cell)
        }
    }

    /// As [`CellSafety::guard`], for a name.
    fn guard_str(self, name: &str, generated: bool) -> String {
        String::from_utf8_lossy(&self.guard(name.as_bytes(), generated)).into_owned()
    }
}

/// Why [`score_csv`] stopped, by where the failure came from: the input's
/// own content, or the I/O on either side of it (storage: never the
/// input's fault).
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The input is unusable.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Reading the input failed (a disk error, a download cut short, ...).
    #[error("reading the input: {0}")]
    Read(#[source] std::io::Error),
    /// Writing the scored copy failed (disk full, upload cut, ...).
    #[error("writing the scored copy: {0}")]
    Output(#[source] std::io::Error),
}

impl From<RecordError> for ScoreError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Input(e) => Self::Input(e),
            RecordError::Read(e) => Self::Read(e),
        }
    }
}

impl ScoreError {
    /// Line number of the input's problem, if there is one.
    #[cfg(test)]
    fn line(&self) -> Option<u64> {
        match self {
            ScoreError::Input(e) => e.line(),
            ScoreError::Read(_) | ScoreError::Output(_) => None,
        }
    }
}

impl InputError {
    /// Line number of the problem, if known.
    pub(crate) fn line(&self) -> Option<u64> {
        match self {
            InputError::Header(_) => Some(1),
            InputError::Row { line, .. } => Some(*line),
            _ => None,
        }
    }
}

pub(crate) const TIMESTAMP_NAMES: [&str; 5] = ["timestamp", "time", "date", "datetime", "ts"];

/// Scores every row of `input` with `engine` (score, then absorb) and writes
/// the annotated copy to `output`, its generated cells spreadsheet-safe.
pub fn score_csv<R: Read, W: Write + Send>(
    input: R,
    output: W,
    engine: &mut Engine,
) -> Result<FileReport, ScoreError> {
    score_csv_with(input, output, engine, CellSafety::default())
}

/// As [`score_csv`], with the cells made safe as `safety` says.
pub(crate) fn score_csv_with<R: Read, W: Write + Send>(
    input: R,
    output: W,
    engine: &mut Engine,
    safety: CellSafety,
) -> Result<FileReport, ScoreError> {
    let mut records = Records::new(input);
    let mut header = Rows::default();
    if records.read(&mut header)?.is_none() {
        return Err(InputError::Empty.into());
    }
    let columns = header_names(header.row(0))?;
    let ts_col = columns
        .iter()
        .position(|c| TIMESTAMP_NAMES.contains(&c.to_ascii_lowercase().as_str()));

    // Buffer a bounded number of rows to tell numeric columns from text.
    let mut sniffed = Rows::default();
    let mut sniffed_lines = Vec::new();
    while sniffed.len() < SNIFF_ROWS && sniffed.byte_len() < SNIFF_BYTES {
        match records.read(&mut sniffed)? {
            Some(line) => sniffed_lines.push(line),
            None => break,
        }
    }
    let channel_cols: Vec<usize> = (0..columns.len())
        .filter(|&c| Some(c) != ts_col && looks_numeric(&sniffed, c))
        .collect();
    let channels: Vec<String> = channel_cols.iter().map(|&c| columns[c].clone()).collect();
    let taken: HashSet<&str> = columns.iter().map(String::as_str).collect();
    for ch in &channels {
        for suffix in ["_zscore", "_zscore_flag"] {
            let name = format!("{ch}{suffix}");
            if taken.contains(name.as_str()) {
                return Err(InputError::Header(format!(
                    "column `{name}` would collide with the score column tswatch adds"
                ))
                .into());
            }
        }
    }
    if let Some(name) = SCORE_COLUMNS.iter().find(|n| taken.contains(*n)) {
        return Err(InputError::Header(format!(
            "column `{name}` would collide with the score column tswatch adds"
        ))
        .into());
    }
    let binding = engine
        .try_bind(&channels)
        .map_err(|e| InputError::Header(e.to_string()))?;
    let forest_threshold = engine.config().forest_threshold;

    let mut header_out = csv::WriterBuilder::new().from_writer(output);
    let mut out_header: Vec<String> = columns.iter().map(|c| safety.guard_str(c, false)).collect();
    for ch in &channels {
        out_header.push(safety.guard_str(&format!("{ch}_zscore"), true));
        out_header.push(safety.guard_str(&format!("{ch}_zscore_flag"), true));
    }
    out_header.extend(SCORE_COLUMNS.map(String::from));
    header_out
        .write_record(&out_header)
        .map_err(|e| ScoreError::Output(std::io::Error::other(e.to_string())))?;
    let mut out = header_out.into_inner().map_err(|e| {
        ScoreError::Output(std::io::Error::new(e.error().kind(), e.error().to_string()))
    })?;

    // Channel index of each column, if it is one.
    let mut channel_of = vec![None; columns.len()];
    for (k, &c) in channel_cols.iter().enumerate() {
        channel_of[c] = Some(k);
    }
    let mut report = FileReport {
        channels: channels.clone(),
        ..Default::default()
    };
    // Scoring (this thread) and writing (a second thread) overlap: batches
    // of scored rows cross a small bounded channel, each with the forest it
    // was scored under, and emptied batches come back to be reused.
    let inline = engine.forest_inline();
    let (to_writer, from_scorer) = mpsc::sync_channel::<(Batch, Option<ForestView>)>(4);
    let (to_scorer, recycled) = mpsc::channel::<Batch>();
    let (columns_ref, channel_of_ref, channels_ref) = (&columns, &channel_of, &channels);
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<FileReport, ScoreError> {
            let mut ctx = Writing {
                columns: columns_ref,
                channel_of: channel_of_ref,
                channels: channels_ref,
                forest_threshold,
                line: CsvLine::default(),
                in_event: false,
                safety,
                kept_bytes: 0,
                ts_col,
                tail: crate::state::recent::TailRing::default(),
            };
            let mut written = FileReport::default();
            for (mut batch, view) in from_scorer {
                ctx.flush(&mut batch, view.as_ref(), &mut out, &mut written)?;
                // The scorer may be gone already; then the batch is just freed.
                let _ = to_scorer.send(batch);
            }
            ctx.write_out(&mut out)?;
            written.tail = std::mem::take(&mut ctx.tail).into_rows();
            out.flush().map_err(ScoreError::Output)?;
            Ok(written)
        });

        let width = channel_cols.len();
        let mut batch = Batch::new(width);
        let mut view = if inline {
            None
        } else {
            engine.forest_view(&binding)
        };
        let mut view_version = engine.forest_version();
        // Hands the batch to the writer (and takes an emptied one back, if
        // one is there); false if the writer has stopped.
        let ship = |batch: &mut Batch, view: &Option<ForestView>| -> bool {
            if batch.is_empty() {
                return true;
            }
            let next = match recycled.try_recv() {
                Ok(mut back) => {
                    back.clear();
                    back
                }
                Err(_) => Batch::new(width),
            };
            to_writer
                .send((std::mem::replace(batch, next), view.clone()))
                .is_ok()
        };
        let mut values: Vec<Option<f64>> = Vec::with_capacity(width);
        let mut score = RowScore::default();

        // Scores the batch's last row (its fields just read, from `line`);
        // false if the writer has stopped.
        let mut process =
            |batch: &mut Batch, line: u64, report: &mut FileReport| -> Result<bool, InputError> {
                let Some(rec) = batch.rows.last() else {
                    return Ok(true);
                };
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
                if rec.len() == 1 && rec.get(0).is_some_and(<[u8]>::is_empty) && columns.len() > 1 {
                    batch.rows.pop(); // an empty record, as a line `""`
                    return Ok(true);
                }
                values.clear();
                for &c in &channel_cols {
                    let v = rec.get(c).and_then(parse_cell);
                    report.missing_cells += u64::from(v.is_none());
                    values.push(v);
                }
                let ts = ts_col
                    .and_then(|c| rec.get(c))
                    .and_then(crate::csv::timestamp::parse);
                engine.score_into(&binding, ts, &values, &mut score);
                engine.update(&binding, ts, &values, &score);
                batch.push(&values, &score, inline);
                report.total_rows += 1;
                if !inline && engine.forest_version() != view_version {
                    // A new forest from now on: the rows so far were scored
                    // under the old one.
                    if !ship(batch, &view) {
                        return Ok(false);
                    }
                    view = engine.forest_view(&binding);
                    view_version = engine.forest_version();
                }
                Ok(
                    (batch.len() < BATCH_ROWS && batch.rows.byte_len() < BATCH_BYTES)
                        || ship(batch, &view),
                )
            };

        let mut scored = || -> Result<(), ScoreError> {
            for (r, line) in sniffed_lines.iter().enumerate() {
                batch.rows.push_row(sniffed.row(r));
                if !process(&mut batch, *line, &mut report)? {
                    return Ok(());
                }
            }
            while let Some(line) = records.read(&mut batch.rows)? {
                if !process(&mut batch, line, &mut report)? {
                    return Ok(());
                }
            }
            Ok(())
        };
        let scored = scored();
        if scored.is_ok() {
            ship(&mut batch, &view);
        }
        drop(to_writer);
        // A panic of the writer is a bug that this input will trigger
        // again: not a storage failure to retry forever.
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(InputError::Csv("the output writer failed".into()).into()));
        // The input's own fault (or a failure reading it) explains a
        // writer that stopped early.
        scored.and(written)
    })?;
    report.anomaly_count = written.anomaly_count;
    report.event_count = written.event_count;
    report.anomalies = written.anomalies;
    report.channel_flags = written.channel_flags;
    report.tail = written.tail;
    Ok(report)
}

/// Formatted output is written in pieces at least this large: as large as
/// the pipeline's output buffer, which then hands them straight through.
pub const WRITE_CHUNK: usize = 256 * 1024;

/// Rows scored per forest batch (and so held before writing): large enough
/// that handing batches over (and waking the other thread) costs little.
const BATCH_ROWS: usize = 1024;
/// A batch is also handed over once its rows hold this many bytes, so wide
/// rows cannot make batches (of which a few are in flight) huge.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Scored rows on their way to the writer, stored flat: a few contiguous
/// arrays rather than a dozen small allocations per row, so that handing a
/// batch to the other core moves few cache lines, in order.
#[derive(Default)]
struct Batch {
    /// Channels per row.
    width: usize,
    /// Every row's fields, read straight into the batch. It may hold one
    /// row more than the scores: the row being scored.
    rows: Rows,
    /// Channel values, `width` per row.
    values: Vec<Option<f64>>,
    /// z-scores and flags, `width` per row.
    z: Vec<Option<f64>>,
    z_flag: Vec<Option<bool>>,
    /// Per row: whether it is anomalous, and its score.
    anomaly: Vec<bool>,
    anomaly_score: Vec<f64>,
    /// The forest's verdict per row, when the scorer has it (inline);
    /// otherwise the writer works verdicts out in its own memory.
    forest: Vec<Option<ForestVerdict>>,
    /// The full score of each anomalous row, for its reason and JSON copy.
    flagged: Vec<(usize, RowScore)>,
}

impl Batch {
    fn new(width: usize) -> Self {
        Self {
            width,
            ..Default::default()
        }
    }

    fn len(&self) -> usize {
        self.anomaly.len()
    }

    fn is_empty(&self) -> bool {
        self.anomaly.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    fn clear(&mut self) {
        self.rows.clear();
        self.values.clear();
        self.z.clear();
        self.z_flag.clear();
        self.anomaly.clear();
        self.anomaly_score.clear();
        self.forest.clear();
        self.flagged.clear();
    }

    /// Adds the scores of the last row read into `rows`.
    fn push(&mut self, values: &[Option<f64>], score: &RowScore, inline: bool) {
        self.values.extend_from_slice(values);
        self.z.extend_from_slice(score.z());
        self.z_flag.extend_from_slice(score.z_flag());
        if score.anomaly() {
            self.flagged.push((self.len(), score.clone()));
        }
        self.anomaly.push(score.anomaly());
        self.anomaly_score.push(score.anomaly_score());
        if inline {
            self.forest.push(score.forest().cloned());
        }
    }

    /// Row `r`'s fields.
    fn fields(&self, r: usize) -> impl Iterator<Item = &[u8]> {
        self.rows.row(r).fields()
    }

    /// Row `r`'s channel values.
    fn values(&self, r: usize) -> &[Option<f64>] {
        &self.values[r * self.width..(r + 1) * self.width]
    }
}

/// What writing rows needs, borrowed from `score_csv`.
struct Writing<'a> {
    columns: &'a [String],
    channel_of: &'a [Option<usize>],
    channels: &'a [String],
    forest_threshold: f64,
    line: CsvLine,
    /// Whether the last row written was anomalous (a run of anomalous rows
    /// is one event).
    in_event: bool,
    /// Which cells are made spreadsheet-safe.
    safety: CellSafety,
    /// JSON bytes of the anomalous rows kept so far.
    kept_bytes: usize,
    /// The timestamp column, if any.
    ts_col: Option<usize>,
    /// The last rows written.
    tail: crate::state::recent::TailRing,
}

impl Writing<'_> {
    /// Adds the forest's verdicts (if it is scored here) and writes the rows.
    fn flush<W: Write>(
        &mut self,
        batch: &mut Batch,
        view: Option<&ForestView>,
        out: &mut W,
        report: &mut FileReport,
    ) -> Result<(), ScoreError> {
        // Verdicts in this thread's own memory: a batch comes back to the
        // scorer with nothing the writer allocated.
        let computed;
        let forest = match view {
            Some(v) => {
                computed = v.verdicts((0..batch.len()).map(|r| batch.values(r)));
                for (r, score) in &mut batch.flagged {
                    score.set_forest(computed[*r].clone());
                }
                &computed
            }
            None => &batch.forest,
        };
        let mut flagged = batch.flagged.iter().peekable();
        for r in 0..batch.len() {
            let full = flagged.next_if(|(at, _)| *at == r).map(|(_, s)| s);
            let verdict = forest.get(r).and_then(Option::as_ref);
            self.write_row(batch, r, verdict, full, report);
        }
        if self.line.buf.len() >= WRITE_CHUNK {
            self.write_out(out)?;
        }
        Ok(())
    }

    /// Writes out the rows formatted so far.
    fn write_out<W: Write>(&mut self, out: &mut W) -> Result<(), ScoreError> {
        out.write_all(&self.line.buf).map_err(ScoreError::Output)?;
        self.line.buf.clear();
        Ok(())
    }

    /// Writes row `r` with the forest's `verdict`; `full` is its complete
    /// score if it is anomalous.
    fn write_row(
        &mut self,
        batch: &Batch,
        r: usize,
        verdict: Option<&ForestVerdict>,
        full: Option<&RowScore>,
        report: &mut FileReport,
    ) {
        if batch.anomaly[r] && !self.in_event {
            report.event_count += 1;
        }
        let t = self
            .ts_col
            .and_then(|c| batch.fields(r).nth(c))
            .unwrap_or(b"");
        self.tail
            .push(t, batch.values(r), batch.anomaly[r], batch.anomaly_score[r]);
        self.in_event = batch.anomaly[r];
        let line = &mut self.line;
        let mut fields = batch.fields(r);
        for _ in 0..self.columns.len() {
            let cell = fields.next().unwrap_or(b"");
            if self.safety == CellSafety::All {
                line.text(&self.safety.guard(cell, false));
            } else {
                line.text(cell);
            }
        }
        let w = batch.width;
        if report.channel_flags.len() < w {
            report.channel_flags.resize(w, 0);
        }
        for ((z, f), n) in batch.z[r * w..(r + 1) * w]
            .iter()
            .zip(&batch.z_flag[r * w..(r + 1) * w])
            .zip(report.channel_flags.iter_mut())
        {
            match z {
                Some(z) => line.fixed4(*z),
                None => line.raw(b""),
            }
            line.raw(bool_cell(*f));
            *n += u64::from(*f == Some(true));
        }
        let indistinct;
        let f = match verdict {
            Some(f) => f,
            None => {
                indistinct = ForestVerdict::indistinct();
                &indistinct
            }
        };
        let label = f.if_label();
        line.raw(if label < 0 { b"-1" } else { b"1" });
        line.fixed4(f.if_score(self.forest_threshold));
        line.raw(bool_cell(Some(label < 0)));
        line.raw(bool_cell(Some(batch.anomaly[r])));
        line.full(batch.anomaly_score[r]);
        let Some(score) = full else {
            line.raw(b"");
            line.end();
            return;
        };
        let reason = score.reason(self.channels);
        line.text(&self.safety.guard(reason.as_bytes(), true));
        line.end();
        report.anomaly_count += 1;
        if report.anomalies.len() < MAX_KEPT_ANOMALIES && self.kept_bytes < MAX_KEPT_BYTES {
            let rec: Vec<&[u8]> = batch.fields(r).collect();
            let row = row_json(
                self.columns,
                self.channel_of,
                &rec,
                batch.values(r),
                self.channels,
                score,
                self.forest_threshold,
                reason,
            );
            let size = serde_json::to_string(&row).map_or(usize::MAX, |t| t.len());
            if self.kept_bytes.saturating_add(size) <= MAX_KEPT_BYTES {
                self.kept_bytes += size;
                report.anomalies.push(row);
            } else {
                // Nothing more is kept from this file.
                self.kept_bytes = MAX_KEPT_BYTES;
            }
        }
    }
}

/// Output rows as CSV bytes, quoted exactly as the csv crate quotes by
/// default: a field is quoted only if it holds a comma, a quote, CR or LF,
/// with quotes doubled. Numbers and flags are written without a scan, and
/// a row costs no per-field call into a CSV writer.
#[derive(Default)]
pub struct CsvLine {
    /// The rows written so far; the caller drains it.
    pub buf: Vec<u8>,
    /// Whether the row so far has a field (so the next needs a comma).
    open: bool,
}

impl CsvLine {
    fn sep(&mut self) {
        if self.open {
            self.buf.push(b',');
        }
        self.open = true;
    }

    /// A field known to need no quotes.
    pub fn raw(&mut self, field: &[u8]) {
        self.sep();
        self.buf.extend_from_slice(field);
    }

    /// Any field: quoted if it must be.
    pub fn text(&mut self, field: &[u8]) {
        self.sep();
        if !field
            .iter()
            .any(|&b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
        {
            self.buf.extend_from_slice(field);
            return;
        }
        self.buf.push(b'"');
        for &b in field {
            if b == b'"' {
                self.buf.push(b'"');
            }
            self.buf.push(b);
        }
        self.buf.push(b'"');
    }

    /// Exactly four decimals, e.g. `-1.2346`. Integer arithmetic (10x
    /// faster than `{:.4}`), falling back to `format!` for huge values.
    fn fixed4(&mut self, x: f64) {
        self.sep();
        let scaled = x * 1e4;
        if scaled.is_nan() || scaled.abs() >= 9e15 {
            let _ = write!(self.buf, "{x:.4}");
            return;
        }
        let n = round_half_away(scaled);
        let negative = n < 0;
        let n = n.unsigned_abs();
        let (int, f) = (n / 10_000, (n % 10_000) as usize);
        let (hi, lo) = (2 * (f / 100), 2 * (f % 100));
        let fraction = [b'.', PAIRS[hi], PAIRS[hi + 1], PAIRS[lo], PAIRS[lo + 1]];
        if int < 10 {
            // The usual z-score: one 8-byte store, then the length set,
            // with no branch on the sign (a coin toss for z-scores) and no
            // call to copy a short slice.
            let cell = u64::from_le_bytes([
                b'0' + int as u8,
                fraction[0],
                fraction[1],
                fraction[2],
                fraction[3],
                fraction[4],
                0,
                0,
            ]);
            let cell = if negative {
                (cell << 8) | u64::from(b'-')
            } else {
                cell
            };
            let len = self.buf.len() + 6 + usize::from(negative);
            self.buf.extend_from_slice(&cell.to_le_bytes());
            self.buf.truncate(len);
            return;
        }
        if negative {
            self.buf.push(b'-');
        }
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(int).as_bytes());
        self.buf.extend_from_slice(&fraction);
    }

    /// Shortest representation that round-trips (full precision), never in
    /// exponent form: as `{x}` writes it, except that an exact tie between
    /// two shortest candidates goes to the even one, as Python's `repr`
    /// (the seed) does, where `{x}` rounds up. Ryu finds the digits several
    /// times faster; it spells integers `1.0` and uses exponents where `{x}`
    /// does not, so exponent forms go to `{x}`.
    fn full(&mut self, x: f64) {
        self.sep();
        let mut b = ryu::Buffer::new();
        let s = b.format(x).as_bytes();
        if s.contains(&b'e') || !x.is_finite() {
            let _ = write!(self.buf, "{x}");
        } else {
            self.buf
                .extend_from_slice(s.strip_suffix(b".0").unwrap_or(s));
        }
    }

    /// Ends the row.
    pub fn end(&mut self) {
        self.buf.push(b'\n');
        self.open = false;
    }
}

/// `x.round() as i64` for `|x| < 2^53`, without the library call `round`
/// is on baseline x86-64. Exact: the truncation is exact, and so is the
/// difference (`x` and its truncation are within a factor of two, or the
/// truncation is zero).
fn round_half_away(x: f64) -> i64 {
    let t = x as i64;
    let rest = x - t as f64;
    // Without branches: which way a value rounds is a coin toss.
    t + i64::from(rest >= 0.5) - i64::from(rest <= -0.5)
}

/// `00`, `01`, ... `99`: two decimal digits at a time.
const PAIRS: [u8; 200] = {
    let mut t = [0; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

fn header_names(header: Row<'_>) -> Result<Vec<String>, InputError> {
    if header.len() > MAX_COLUMNS {
        return Err(InputError::Header(format!(
            "{} columns; at most {MAX_COLUMNS} are accepted",
            header.len()
        )));
    }
    let mut names = Vec::with_capacity(header.len());
    let mut seen = HashSet::with_capacity(header.len());
    for (i, raw) in header.fields().enumerate() {
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
        // A channel's name is kept in its stream's state for good.
        if name.len() > MAX_COLUMN_NAME {
            return Err(InputError::Header(format!(
                "column {} name is {} bytes long; at most {MAX_COLUMN_NAME}",
                i + 1,
                name.len()
            )));
        }
        if !seen.insert(name.clone()) {
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
fn looks_numeric(rows: &Rows, col: usize) -> bool {
    let (mut filled, mut numeric) = (0, 0);
    for r in 0..rows.len() {
        if let Some(cell) = rows
            .row(r)
            .get(col)
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
        {
            filled += 1;
            numeric += usize::from(parse_number(cell).is_some());
        }
    }
    filled == 0 || numeric * 5 >= filled * 4
}

fn parse_number(cell: &[u8]) -> Option<f64> {
    plain_decimal(cell).or_else(|| std::str::from_utf8(cell).ok()?.parse::<f64>().ok())
}

/// Exact powers of ten (every one up to 1e22 is a double).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The common cell, `[+-]digits[.digits]` with at most 15 digits, parsed
/// without the general algorithm; `None` for anything else, which the
/// standard parser then handles. The result is the standard parser's, bit
/// for bit: the digits form an integer below 2^53 and the divisor a power
/// of ten up to 1e22, both exact, so the one division rounds correctly
/// (Clinger's fast path).
fn plain_decimal(cell: &[u8]) -> Option<f64> {
    let (negative, body) = match cell.first()? {
        b'-' => (true, &cell[1..]),
        b'+' => (false, &cell[1..]),
        _ => (false, cell),
    };
    // At most 15 digits and a dot: the mantissa cannot overflow below.
    if body.len() > 16 {
        return None;
    }
    let (mut mantissa, mut dot) = (0u64, None);
    for (i, &b) in body.iter().enumerate() {
        let d = b.wrapping_sub(b'0');
        if d < 10 {
            mantissa = mantissa * 10 + u64::from(d);
        } else if b == b'.' && dot.is_none() {
            dot = Some(i);
        } else {
            return None;
        }
    }
    let digits = body.len() - usize::from(dot.is_some());
    if digits == 0 || digits > 15 {
        return None;
    }
    let decimals = dot.map_or(0, |at| body.len() - at - 1);
    let v = mantissa as f64 / POW10[decimals];
    Some(if negative { -v } else { v })
}

/// A usable channel value: a finite number.
pub fn parse_cell(cell: &[u8]) -> Option<f64> {
    parse_number(cell.trim_ascii()).filter(|v| v.is_finite())
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
    channel_of: &[Option<usize>],
    rec: &[&[u8]],
    values: &[Option<f64>],
    channels: &[String],
    score: &RowScore,
    forest_threshold: f64,
    reason: String,
) -> Map<String, Value> {
    let mut m = Map::new();
    for (c, name) in columns.iter().enumerate() {
        let v = match channel_of[c] {
            Some(k) => values[k].map_or(Value::Null, Value::from),
            None => Value::from(kept_cell(rec.get(c).copied().unwrap_or(b""))),
        };
        m.insert(kept_cell(name.as_bytes()), v);
    }
    for (k, ch) in channels.iter().enumerate() {
        let z = score.z()[k].map(|z| (z * 1e4).round() / 1e4);
        m.insert(format!("{ch}_zscore"), z.map_or(Value::Null, Value::from));
        m.insert(
            format!("{ch}_zscore_flag"),
            score.z_flag()[k].map_or(Value::Null, Value::from),
        );
    }
    let label = score.if_label();
    m.insert("if_label".into(), Value::from(label));
    m.insert(
        "if_score".into(),
        Value::from((score.if_score(forest_threshold) * 1e4).round() / 1e4),
    );
    m.insert("if_flag".into(), Value::from(label < 0));
    m.insert("anomaly".into(), Value::from(score.anomaly()));
    m.insert("anomaly_score".into(), Value::from(score.anomaly_score()));
    m.insert("reason".into(), Value::from(kept_cell(reason.as_bytes())));
    m
}

/// A text cell as kept for `/anomalies/recent`: at most [`MAX_KEPT_CELL`]
/// bytes (cut at a character boundary), then how many bytes were cut.
fn kept_cell(cell: &[u8]) -> String {
    if cell.len() <= MAX_KEPT_CELL {
        return String::from_utf8_lossy(cell).into_owned();
    }
    let mut end = MAX_KEPT_CELL;
    // Back off to a UTF-8 boundary (at most 3 bytes).
    while end > 0 && (cell[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    let mut s = String::from_utf8_lossy(&cell[..end]).into_owned();
    s.push_str(&format!("…[{} more bytes cut]", cell.len() - end));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tswatch_core::EngineConfig;

    fn run(input: &str) -> Result<(String, FileReport), ScoreError> {
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        let mut out = Vec::new();
        let r = score_csv(input.as_bytes(), &mut out, &mut e)?;
        Ok((String::from_utf8(out).unwrap(), r))
    }

    proptest::proptest! {
        #[test]
        fn full_precision_is_written_as_display_writes_it(
            bits in proptest::num::u64::ANY,
            unit in 0.0f64..1.0,
            int in -1.0e17f64..1.0e17,
        ) {
            for x in [f64::from_bits(bits), unit, int, int.trunc(), unit * 1e-6] {
                let mut n = CsvLine::default();
                n.full(x);
                let ours = String::from_utf8(n.buf).unwrap();
                let display = format!("{x}");
                if ours != display {
                    // Only a tie may differ: the same shortest length, and
                    // both read back as `x`.
                    proptest::prop_assert_eq!(ours.len(), display.len(), "{} vs {}", ours, display);
                    proptest::prop_assert_eq!(ours.parse::<f64>().unwrap().to_bits(), x.to_bits());
                    proptest::prop_assert_eq!(display.parse::<f64>().unwrap().to_bits(), x.to_bits());
                }
            }
        }
    }

    #[test]
    fn full_precision_edges() {
        for x in [
            0.0,
            -0.0,
            1.0,
            0.5,
            1e-7,
            1e16,
            1e300,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            0.1 + 0.2,
        ] {
            let mut n = CsvLine::default();
            n.full(x);
            assert_eq!(String::from_utf8(n.buf).unwrap(), format!("{x}"));
        }
        // A tie: the exact value is ...806.625; Python's repr writes .62.
        let mut n = CsvLine::default();
        n.full(-99_894_996_760_806.5 - 0.125);
        assert_eq!(n.buf, b"-99894996760806.62");
    }

    proptest::proptest! {
        #[test]
        fn four_decimals_are_the_rounded_value(small in -20.0f64..20.0, big in -1.0e11f64..1.0e11) {
            for x in [small, big, small * 1e-4, small.trunc() + 0.00005] {
                let n = (x * 1e4).round() as i64;
                let sign = if n < 0 { "-" } else { "" };
                let (int, f) = (n.unsigned_abs() / 10_000, n.unsigned_abs() % 10_000);
                let mut line = CsvLine::default();
                line.fixed4(x);
                proptest::prop_assert_eq!(
                    String::from_utf8(line.buf).unwrap(),
                    format!("{sign}{int}.{f:04}")
                );
            }
        }

        #[test]
        fn rounding_matches_the_library(x in -9.0e15f64..9.0e15, small in -1.0e6f64..1.0e6) {
            for v in [x, small, small.fract(), small.trunc() + 0.5, small.trunc() - 0.5] {
                proptest::prop_assert_eq!(round_half_away(v), v.round() as i64, "{}", v);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_decimals_parse_as_the_standard_parser_does(
            cell in "[+-]?[0-9]{0,18}(\\.[0-9]{0,18})?([eE][+-]?[0-9]{1,3})?|[ +-.0-9a-zA-Z]{0,12}"
        ) {
            let std = cell.parse::<f64>().ok();
            let ours = parse_number(cell.as_bytes());
            proptest::prop_assert_eq!(ours.map(f64::to_bits), std.map(f64::to_bits), "{}", cell);
        }
    }

    #[test]
    fn plain_decimal_edges() {
        for cell in [
            "0",
            "-0",
            "+0.0",
            "1.",
            ".5",
            "-.5",
            "999999999999999",
            "0.000000000000001",
            "123456789012345.",
            "1234567890123456",
            "9007199254740993",
            ".",
            "-",
            "+",
            "",
            "1.2.3",
            "0.1",
            "22.42",
            "1013.28",
            "-7.74",
        ] {
            let std = cell.parse::<f64>().ok();
            assert_eq!(
                parse_number(cell.as_bytes()).map(f64::to_bits),
                std.map(f64::to_bits),
                "{cell}"
            );
        }
    }

    #[test]
    fn forest_columns_are_the_same_scored_in_batches_or_row_by_row() {
        // 3,000 rows: the forest is trained and retrained mid-file.
        let mut text = String::from("timestamp,a,b\n");
        let mut rng = tswatch_core::SplitMix64::new(3);
        for i in 0..3000 {
            text.push_str(&format!(
                "{i},{},{}\n",
                rng.next_f64(),
                rng.next_f64() * 10.0
            ));
        }
        let run = |inline: bool| {
            let cfg = EngineConfig {
                forest_alarm: inline,
                forest_threshold: 0.99, // no forest alarm, so both runs judge alike
                forest_retrain_every: 700,
                ..Default::default()
            };
            let mut e = Engine::new(cfg).unwrap();
            let mut out = Vec::new();
            score_csv(text.as_bytes(), &mut out, &mut e).unwrap();
            String::from_utf8(out).unwrap()
        };
        let (inline, batched) = (run(true), run(false));
        assert!(
            inline
                .lines()
                .nth(2999)
                .unwrap()
                .split(',')
                .nth(7)
                .is_some_and(|s| !s.is_empty())
        );
        assert_eq!(inline, batched);
    }

    #[test]
    fn fixed4_matches_format() {
        for x in [
            0.0, -0.00004, 1.23456, -1.23456, 12345.6789, 0.5, 99.99995, -7.0, 1e11,
        ] {
            let want = format!("{x:.4}");
            let mut n = CsvLine::default();
            n.fixed4(x);
            let got = String::from_utf8(n.buf).unwrap();
            // `{:.4}` rounds half to even on the decimal string; both are within 1e-4.
            let (a, b): (f64, f64) = (want.parse().unwrap(), got.parse().unwrap());
            assert!((a - b).abs() <= 1.0001e-4, "{x}: {want} vs {got}");
            assert_eq!(got.split('.').nth(1).map(str::len), Some(4), "{got}");
        }
    }

    proptest::proptest! {
        /// Rows are written byte for byte as the csv crate writes them.
        #[test]
        fn rows_are_quoted_as_the_csv_crate_quotes(
            fields in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(
                    b"a1 ,\"\r\n;'\t".to_vec()), 0..6),
                1..5,
            ),
        ) {
            let mut mine = CsvLine::default();
            for f in &fields {
                mine.text(f);
            }
            mine.raw(b"1.5");
            mine.end();
            let mut theirs = csv::Writer::from_writer(Vec::new());
            for f in &fields {
                theirs.write_field(f).unwrap();
            }
            theirs.write_field(b"1.5").unwrap();
            theirs.write_record(None::<&[u8]>).unwrap();
            proptest::prop_assert_eq!(mine.buf, theirs.into_inner().unwrap());
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
            // The forest columns hold an indistinct point's values until a
            // forest is trained.
            "2026-01-01T00:00:00,1,2,,,,,1,0.2000,False,False,0,"
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
        assert_eq!(r.missing_cells, 4);
        assert_eq!(r.total_rows, 44);
        assert!(out.contains("t40,north,abc,,,"));
    }

    #[test]
    fn header_problems_are_specific() {
        assert!(matches!(run(""), Err(ScoreError::Input(InputError::Empty))));
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
    fn errors_name_the_physical_line() {
        // CRLF, blank lines and a quoted field spanning lines before the bad row.
        for (input, line) in [
            ("timestamp,a\n1,2\n2,3,4\n", 3),
            ("timestamp,a\r\n1,2\r\n2,3,4\r\n", 3),
            ("timestamp,a\r\n1,2\r\n\r\n\r\n2,3,4\r\n", 5),
            ("timestamp,a\n\n1,2\n\n2,3,4\n", 5),
            ("timestamp,a\n\"x\ny\nz\",2\n2,3,4\n", 5),
            ("timestamp,a\r\n\"x\r\ny\",2\r\n\r\n2,3,4", 5),
            ("\n\ntimestamp,a\n1,2\n2,3,4\n", 5),
        ] {
            let e = run(input).unwrap_err();
            assert_eq!(e.line(), Some(line), "{input:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
    }

    /// Counts the bytes read through it.
    struct Counted<R> {
        inner: R,
        n: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let k = self.inner.read(buf)?;
            self.n.set(self.n.get() + k as u64);
            Ok(k)
        }
    }

    #[test]
    fn an_endless_record_is_refused_without_reading_it_all() {
        for tail in [&b"x"[..], b"\"never closed\n"] {
            let n = std::rc::Rc::new(std::cell::Cell::new(0));
            let body = std::io::repeat(tail[0])
                .take(1)
                .chain(std::io::repeat(*tail.last().unwrap()).take(64 << 20));
            let input = Counted {
                inner: (&b"timestamp,a\n1,2\n3,"[..]).chain(body),
                n: n.clone(),
            };
            let mut e = Engine::new(EngineConfig::default()).unwrap();
            let err = score_csv(input, std::io::sink(), &mut e).unwrap_err();
            assert_eq!(err.line(), Some(3), "{err}");
            assert!(err.to_string().contains("longer than 1 MiB"), "{err}");
            assert!(
                n.get() < crate::csv::records::MAX_RECORD_BYTES + (1 << 20),
                "read {} bytes",
                n.get()
            );
        }
    }

    #[test]
    fn wide_headers_and_score_column_names_are_refused() {
        let wide = (0..=MAX_COLUMNS)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let e = run(&format!("{wide}\n")).unwrap_err();
        assert!(e.to_string().contains("at most 1024"), "{e}");
        let ok = (0..MAX_COLUMNS)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(run(&format!("{ok}\n")).is_ok());
        for name in SCORE_COLUMNS {
            let e = run(&format!("timestamp,{name},v\n1,2,3\n")).unwrap_err();
            assert!(
                e.to_string().contains(&format!("`{name}` would collide")),
                "{e}"
            );
        }
        let e = run("timestamp,v,v_zscore_flag\n1,2,3\n").unwrap_err();
        assert!(
            e.to_string().contains("`v_zscore_flag` would collide"),
            "{e}"
        );
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
    fn a_run_of_anomalous_rows_is_one_event() {
        let mut s = String::from("timestamp,a,b,c\n");
        let normal = |i: usize| 20.0 + (i % 5) as f64 * 0.1;
        for i in 0..50 {
            let x = normal(i);
            s.push_str(&format!("{i},{x},{x},{x}\n"));
        }
        // Rows 50 and 51 are one incident (a, then b); row 53 another (c).
        let spikes = [(50, 0), (51, 1), (53, 2)];
        for i in 50..56 {
            let mut v = [normal(i); 3];
            if let Some(&(_, ch)) = spikes.iter().find(|(at, _)| *at == i) {
                v[ch] = 40.0;
            }
            s.push_str(&format!("{i},{},{},{}\n", v[0], v[1], v[2]));
        }
        let (out, r) = run(&s).unwrap();
        let flagged: Vec<bool> = out.lines().skip(1).map(|l| l.contains(",True,")).collect();
        let want: Vec<usize> = spikes.iter().map(|s| s.0).collect();
        let got: Vec<usize> = (0..flagged.len()).filter(|&i| flagged[i]).collect();
        assert_eq!(got, want);
        assert_eq!((r.anomaly_count, r.event_count), (3, 2));
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
                "t above the highest seen (20.4; z={:.2})",
                r.anomalies[0]["t_zscore"].as_f64().unwrap()
            )),
            "{last}"
        );
        assert_eq!(r.anomalies[0]["t"], 40.0);
        assert_eq!(r.anomalies[0]["anomaly"], true);
    }

    /// A disk that fills up after `room` bytes.
    struct FullDisk {
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.room < b.len() {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            self.room -= b.len();
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_is_an_output_failure_not_the_inputs_fault() {
        let mut s = String::from("timestamp,a\n");
        for i in 0..20_000 {
            s.push_str(&format!("{i},{}\n", i % 7));
        }
        for room in [0, 10, 300_000] {
            let mut e = Engine::new(tswatch_core::EngineConfig::default()).unwrap();
            match score_csv(s.as_bytes(), FullDisk { room }, &mut e) {
                Err(ScoreError::Output(io)) => {
                    assert_eq!(io.kind(), std::io::ErrorKind::StorageFull, "{room}");
                }
                other => panic!("room {room}: {other:?}"),
            }
        }
    }

    /// A download or disk that fails after `good` bytes of the input.
    struct BrokenRead<'a> {
        data: &'a [u8],
        good: usize,
    }

    impl Read for BrokenRead<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.good == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
            }
            let n = buf.len().min(self.good).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            (self.data, self.good) = (&self.data[n..], self.good - n);
            Ok(n)
        }
    }

    #[test]
    fn a_failed_read_is_a_read_failure_not_the_inputs_fault() {
        let mut s = String::from("timestamp,a\n");
        for i in 0..20_000 {
            s.push_str(&format!("{i},{}\n", i % 7));
        }
        // Before the header, in the rows sniffed, and mid-file.
        for good in [0, 5, 300, 100_000] {
            let mut e = Engine::new(tswatch_core::EngineConfig::default()).unwrap();
            let input = BrokenRead {
                data: s.as_bytes(),
                good,
            };
            match score_csv(input, std::io::sink(), &mut e) {
                Err(ScoreError::Read(io)) => {
                    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset, "{good}");
                }
                other => panic!("{good} bytes read: {:?}", other.map(|r| r.total_rows)),
            }
        }
    }

    #[test]
    fn the_seed_forest_columns_are_filled_from_the_first_row() {
        let mut s = String::from("timestamp,a,b\n");
        for i in 0..100 {
            s.push_str(&format!(
                "{i},{},{}\n",
                20.0 + (i % 5) as f64,
                3.0 - (i % 3) as f64
            ));
        }
        s.push_str("100,90,-40\n");
        let (out, r) = run(&s).unwrap();
        let header: Vec<&str> = out.lines().next().unwrap().split(',').collect();
        let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
        let (l, sc, f) = (col("if_label"), col("if_score"), col("if_flag"));
        let rows: Vec<Vec<&str>> = out
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        // Before any forest: an indistinct point (s = 0.5), not flagged.
        assert_eq!(
            (rows[0][l], rows[0][sc], rows[0][f]),
            ("1", "0.2000", "False")
        );
        for row in &rows {
            assert!(["1", "-1"].contains(&row[l]), "{row:?}");
            assert!(row[sc].parse::<f64>().is_ok(), "{row:?}");
            assert!(["True", "False"].contains(&row[f]), "{row:?}");
        }
        // A forest trained on the first rows (32 and 64 of them), not
        // after a whole window, decides the rest.
        assert!(rows[40..].iter().all(|r| r[sc] != "0.2000"), "{rows:?}");
        let a = &r.anomalies[0];
        assert!(a["if_label"].is_i64() && a["if_score"].is_f64() && a["if_flag"].is_boolean());
    }
}

/// Property tests: any bytes, and structured but hostile CSVs.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use tswatch_core::{EngineConfig, EngineState};

    /// A small engine, so the isolation forest trains within a few files.
    fn engine() -> Engine {
        Engine::new(EngineConfig {
            min_observations: 5,
            forest_trees: 8,
            forest_sample: 16,
            forest_window: 24,
            forest_retrain_every: 8,
            ..EngineConfig::default()
        })
        .unwrap()
    }

    /// The state is usable: valid, finite, and survives the JSON round
    /// trip that every commit makes (serde_json writes NaN/inf as null).
    fn assert_state_usable(e: &Engine) -> Result<(), TestCaseError> {
        let st = e.to_state();
        prop_assert!(st.validate().is_ok(), "{:?}", st.validate());
        for (name, w) in &st.channels {
            prop_assert!(w.is_valid() && w.stats.std().is_finite(), "{name}: {w:?}");
        }
        let json = serde_json::to_string(&st).unwrap();
        let back: EngineState = serde_json::from_str(&json)
            .map_err(|e| TestCaseError::fail(format!("state does not round-trip: {e}")))?;
        prop_assert_eq!(back, st);
        Ok(())
    }

    fn read_all(out: &[u8]) -> Result<Vec<csv::ByteRecord>, csv::Error> {
        // Not flexible: every output record must be as wide as the header.
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(out)
            .byte_records()
            .collect()
    }

    fn csvish_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Mostly bytes that matter to CSV and to number parsing, some that
        // break UTF-8 (a BOM's bytes, 0xFF, a lone continuation byte, NUL).
        let alphabet = b",,,\"\"\n\n\r a1.e-+9ItsfnNAxyz_\t\xEF\xBB\xBF\xFF\x00\x80\xc3".to_vec();
        prop_oneof![
            3 => prop::collection::vec(prop::sample::select(alphabet), 0..1500),
            1 => prop::collection::vec(any::<u8>(), 0..600),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes at all: a report or an `InputError`, never a panic; a
        /// report means a well-formed output with one row per data row, and
        /// the state stays usable either way.
        #[test]
        fn any_bytes_give_a_report_or_an_input_error(files in prop::collection::vec(csvish_bytes(), 1..4)) {
            let mut e = engine();
            for input in files {
                let before = e.to_state();
                let mut out = Vec::new();
                match score_csv(&input[..], &mut out, &mut e) {
                    Ok(r) => {
                        let recs = read_all(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(recs.len() as u64, r.total_rows + 1);
                        prop_assert!(r.anomaly_count <= r.total_rows);
                    }
                    Err(err) => {
                        // The caller discards the engine on error; the
                        // one kept here must still be usable.
                        let _ = (err.to_string(), err.line(), before);
                    }
                }
                assert_state_usable(&e)?;
            }
        }
    }

    /// One generated cell: its raw bytes.
    fn cell() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => (-50.0f64..50.0).prop_map(|v| format!("{v:.3}").into_bytes()),
            1 => prop::sample::select(vec![
                "inf", "-inf", "Infinity", "NaN", "nan", "-NaN", "1e400", "-1e400",
                "1e308", "-1e308", "1.7976931348623157e308", "-1.7976931348623157e308",
                "1e200", "-1e200", "5e-324", "0", "-0", "+3", " 7 ", "\t8", "0x10", "1_000",
                "1,5", "\"", "a\"b", "multi\nline", "two\n\nblank", "", "", "abc", "N/A",
                "null", "--", "１２", "é", "\u{feff}1",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::sample::select(vec![&b"\xff\xfe"[..], b"12\xff", b"\xc3\x28", b"\x00"])
                .prop_map(<[u8]>::to_vec),
        ]
    }

    fn header_name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => prop::sample::select(vec![
                "timestamp", "Time", "ts", "datetime", "temperature", "humidity", "a", "b",
                "c", "d", "site id", "x,y", "q\"uote", " padded ", "é", "multi\nline",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::sample::select(vec![
                "", "a", "anomaly", "reason", "if_score", "a_zscore", "b_zscore_flag",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            1 => Just(b"\xffbad".to_vec()),
        ]
    }

    /// Quotes a field when it needs it (or sometimes anyway).
    fn field(out: &mut Vec<u8>, f: &[u8], force: bool) {
        if force || f.iter().any(|b| b",\"\r\n".contains(b)) {
            out.push(b'"');
            for &b in f {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(f);
        }
    }

    #[derive(Debug, Clone)]
    struct Weird {
        header: Vec<Vec<u8>>,
        rows: Vec<Vec<Vec<u8>>>,
        crlf: bool,
        bom: bool,
        quote_all: bool,
    }

    impl Weird {
        fn bytes(&self) -> Vec<u8> {
            let eol: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
            let mut out = Vec::new();
            if self.bom {
                out.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for (i, r) in std::iter::once(&self.header).chain(&self.rows).enumerate() {
                for (k, f) in r.iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    // A lone empty field is written as an empty line (a
                    // skipped blank line), except in the header.
                    let lone_empty = r.len() == 1 && f.is_empty();
                    let force = if i == 0 {
                        lone_empty
                    } else {
                        self.quote_all && !lone_empty
                    };
                    field(&mut out, f, force);
                }
                out.extend_from_slice(eol);
            }
            out
        }

        /// Rows the reader sees (an empty line is no row).
        fn data_rows(&self) -> Vec<&Vec<Vec<u8>>> {
            self.rows
                .iter()
                .filter(|r| !(r.len() == 1 && r[0].is_empty()))
                .collect()
        }

        /// Line of each generated row (1-based; the header is line 1).
        fn lines(&self) -> Vec<u64> {
            let mut line = 1 + self
                .header
                .iter()
                .flatten()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            self.rows
                .iter()
                .map(|r| {
                    line += 1;
                    let here = line;
                    line += r.iter().flatten().filter(|&&b| b == b'\n').count() as u64;
                    here
                })
                .collect()
        }

        fn names(&self) -> Option<Vec<String>> {
            let mut names = Vec::new();
            for n in &self.header {
                let n = std::str::from_utf8(n).ok()?.trim().to_string();
                if n.is_empty() || names.contains(&n) {
                    return None;
                }
                names.push(n);
            }
            Some(names)
        }
    }

    fn weird_csv() -> impl Strategy<Value = Weird> {
        prop::collection::vec(header_name(), 1..7)
            .prop_flat_map(|header| {
                let n = header.len();
                let row = prop_oneof![
                    12 => prop::collection::vec(cell(), n..=n),
                    2 => prop::collection::vec(cell(), 1..=n),
                    1 => prop::collection::vec(cell(), n + 1..n + 3),
                ];
                (
                    Just(header),
                    prop::collection::vec(row, 0..60),
                    any::<bool>(),
                    any::<bool>(),
                    prop::bool::weighted(0.2),
                )
            })
            .prop_map(|(header, rows, crlf, bom, quote_all)| Weird {
                header,
                rows,
                crlf,
                bom,
                quote_all,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        /// Structured but hostile CSVs, several through one engine: a clean
        /// header without over-long rows always gives a report with one
        /// output row per data row, input cells passed through byte for byte
        /// and every unusable channel cell counted; an over-long row is
        /// refused naming its line; the state stays usable throughout.
        #[test]
        fn weird_csvs_are_scored_or_refused_precisely(files in prop::collection::vec(weird_csv(), 1..4)) {
            let mut e = engine();
            for w in &files {
                let input = w.bytes();
                let mut out = Vec::new();
                let result = score_csv(&input[..], &mut out, &mut e);
                let data = w.data_rows();
                let ncols = w.header.len();
                let first_long = w.rows.iter().zip(w.lines()).find(|(r, _)| r.len() > ncols).map(|(_, l)| l);
                match (&w.names(), result) {
                    (None, r) => prop_assert!(matches!(r, Err(ScoreError::Input(InputError::Header(_)))), "{r:?}"),
                    (Some(_), Err(ScoreError::Input(InputError::Header(msg)))) => {
                        prop_assert!(msg.contains("would collide"), "{msg}");
                    }
                    (Some(_), Err(err)) => {
                        prop_assert_eq!(err.line(), first_long, "{}", err);
                        prop_assert!(err.to_string().contains("fields, but the header has"), "{}", err);
                    }
                    (Some(names), Ok(r)) => {
                        prop_assert_eq!(first_long, None, "an over-long row was accepted");
                        prop_assert_eq!(r.total_rows, data.len() as u64);
                        let recs = read_all(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(recs.len(), data.len() + 1);
                        let header: Vec<&[u8]> = recs[0].iter().collect();
                        prop_assert_eq!(header.len(), ncols + 2 * r.channels.len() + 6);
                        for (k, n) in names.iter().enumerate() {
                            prop_assert_eq!(header[k], n.as_bytes());
                        }
                        let chan_cols: Vec<usize> = r
                            .channels
                            .iter()
                            .map(|c| names.iter().position(|n| n == c).unwrap())
                            .collect();
                        let mut missing = 0;
                        for (row, rec) in data.iter().zip(&recs[1..]) {
                            for k in 0..ncols {
                                let want = row.get(k).map_or(&b""[..], |c| &c[..]);
                                prop_assert_eq!(rec.get(k).unwrap(), want);
                            }
                            for &c in &chan_cols {
                                let usable = row
                                    .get(c)
                                    .and_then(|v| std::str::from_utf8(v).ok())
                                    .and_then(|v| v.trim_matches(|ch: char| ch.is_ascii_whitespace()).parse::<f64>().ok())
                                    .is_some_and(f64::is_finite);
                                missing += u64::from(!usable);
                            }
                            let flag = rec.get(ncols + 2 * chan_cols.len() + 3).unwrap();
                            prop_assert!(flag == b"True" || flag == b"False");
                        }
                        prop_assert_eq!(r.missing_cells, missing);
                        prop_assert_eq!(
                            r.anomaly_count as usize,
                            recs[1..].iter().filter(|x| x.get(ncols + 2 * chan_cols.len() + 3) == Some(b"True")).count()
                        );
                    }
                }
                assert_state_usable(&e)?;
            }
        }
    }

    #[test]
    fn formula_cells_are_made_safe_as_asked() {
        let g = |safety: CellSafety, cell: &str, generated: bool| {
            String::from_utf8(safety.guard(cell.as_bytes(), generated).into_owned()).unwrap()
        };
        for bad in [
            "=HYPERLINK(\"http://x\")",
            "+1+cmd",
            "-x",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(g(CellSafety::Generated, bad, true), format!("'{bad}"));
            assert_eq!(
                g(CellSafety::Generated, bad, false),
                bad,
                "input cells as they are"
            );
            assert_eq!(g(CellSafety::All, bad, false), format!("'{bad}"));
            assert_eq!(g(CellSafety::Off, bad, true), bad);
        }
        // Numbers are never changed, nor cells that start harmlessly.
        for fine in ["-1.5", "+3", "-1e-9", " =x", "x=1", "", "'=x"] {
            assert_eq!(g(CellSafety::All, fine, false), fine);
        }
    }

    #[test]
    fn the_scored_copy_is_spreadsheet_safe() {
        let mut input = String::from("timestamp,=cmd,note\n");
        for i in 0..60 {
            input.push_str(&format!("{i},{},=1+1\n", 10 + i % 3));
        }
        input.push_str("60,500,-2\n");
        let score = |safety| {
            let mut e = Engine::new(EngineConfig::default()).unwrap();
            let mut out = Vec::new();
            score_csv_with(input.as_bytes(), &mut out, &mut e, safety).unwrap();
            csv::Reader::from_reader(&out[..])
                .into_records()
                .map(|r| r.unwrap().iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        let header = |safety| {
            let mut e = Engine::new(EngineConfig::default()).unwrap();
            let mut out = Vec::new();
            score_csv_with(input.as_bytes(), &mut out, &mut e, safety).unwrap();
            let text = String::from_utf8(out).unwrap();
            text.lines().next().unwrap().to_string()
        };
        let generated = score(CellSafety::Generated);
        let last = generated.last().unwrap();
        // The reason names the channel `=cmd`: it starts with a quote.
        let reason = last.last().unwrap();
        assert!(reason.starts_with("'=cmd"), "{reason}");
        assert_eq!(generated[0][2], "=1+1", "input cells are copied");
        assert!(header(CellSafety::Generated).starts_with("timestamp,=cmd,note,'=cmd_zscore,"));
        let all = score(CellSafety::All);
        assert_eq!(all[0][2], "'=1+1");
        assert_eq!(all.last().unwrap()[2], "-2", "numbers are kept");
        assert!(header(CellSafety::All).starts_with("timestamp,'=cmd,note,'=cmd_zscore,"));
        let off = score(CellSafety::Off);
        assert!(off.last().unwrap().last().unwrap().starts_with("=cmd"));
    }

    #[test]
    fn kept_cells_are_cut_at_a_character_boundary() {
        assert_eq!(kept_cell(b"short"), "short");
        let exact = "a".repeat(MAX_KEPT_CELL);
        assert_eq!(kept_cell(exact.as_bytes()), exact);
        // A 3-byte character straddling the cut is left out whole.
        let s = format!("{}€tail", "a".repeat(MAX_KEPT_CELL - 1));
        let k = kept_cell(s.as_bytes());
        assert_eq!(
            k,
            format!(
                "{}…[{} more bytes cut]",
                "a".repeat(MAX_KEPT_CELL - 1),
                s.len() - (MAX_KEPT_CELL - 1)
            )
        );
        let big = "y".repeat(65_536);
        assert_eq!(
            kept_cell(big.as_bytes()),
            format!("{}…[65280 more bytes cut]", "y".repeat(256))
        );
    }

    #[test]
    fn kept_rows_stop_at_the_byte_budget() {
        // 80 channels, each row an anomaly on one of them, with 4 KiB notes:
        // each kept row is about 6 KB of JSON, so the budget keeps ~80.
        const C: usize = 80;
        let mut input = format!(
            "timestamp,{},note\n",
            (0..C)
                .map(|c| format!("c{c}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let row = |i: usize, spike: Option<usize>, note: &str| {
            let vals: Vec<String> = (0..C)
                .map(|c| {
                    if spike == Some(c) {
                        "900".to_string()
                    } else {
                        format!("{}", 10.0 + ((i + c) % 7) as f64 * 0.1)
                    }
                })
                .collect();
            format!("{i},{},{note}\n", vals.join(","))
        };
        for i in 0..300 {
            input.push_str(&row(i, None, "ok"));
        }
        let note = "n".repeat(4096);
        for k in 0..400 {
            input.push_str(&row(300 + 2 * k, None, "ok"));
            input.push_str(&row(301 + 2 * k, Some(k % C), &note));
        }
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        let report = score_csv(input.as_bytes(), std::io::sink(), &mut e).unwrap();
        assert!(report.anomaly_count >= 100, "{}", report.anomaly_count);
        let bytes: usize = report
            .anomalies
            .iter()
            .map(|r| serde_json::to_string(r).unwrap().len())
            .sum();
        assert!(bytes <= MAX_KEPT_BYTES, "{bytes}");
        assert!(
            bytes > MAX_KEPT_BYTES - 20_000,
            "{bytes}: the budget is used"
        );
        assert!((report.anomalies.len() as u64) < report.anomaly_count);
    }

    #[test]
    fn column_names_are_bounded() {
        let ok = format!("timestamp,{}\n1,2\n", "c".repeat(MAX_COLUMN_NAME));
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        score_csv(ok.as_bytes(), std::io::sink(), &mut e).unwrap();
        let long = format!("timestamp,{}\n1,2\n", "c".repeat(MAX_COLUMN_NAME + 1));
        let err = score_csv(long.as_bytes(), std::io::sink(), &mut e).unwrap_err();
        assert!(
            err.to_string()
                .contains("column 2 name is 257 bytes long; at most 256"),
            "{err}"
        );
    }
}
