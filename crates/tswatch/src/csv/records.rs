//! CSV records read from a byte stream and stored flat.
//!
//! The records are exactly the csv crate's (`csv_core`: RFC 4180 quotes,
//! `\r`, `\n` or `\r\n` ending a record, blank lines skipped, a UTF-8 BOM
//! dropped at the start). A line without quotes, nearly every line in
//! practice, is split where it lies in the read buffer; the rest go through
//! `csv_core`. Lines are physical lines (counted `\n`s), and a record longer
//! than [`MAX_RECORD_BYTES`] is refused as soon as it is seen to be.

use std::io::{ErrorKind, Read};

/// Longest record accepted, in bytes.
pub(crate) const MAX_RECORD_BYTES: u64 = 1024 * 1024;
/// Bytes the CSV parser reads at a time.
pub(crate) const READ_BUFFER: usize = 256 * 1024;

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
    /// The CSV is unusable as a whole (a failure scoring it that this
    /// content would trigger again).
    #[error("{0}")]
    Csv(String),
    /// The object is not a file tswatch reads (a symbolic link, a FIFO).
    #[error("{0}")]
    Unreadable(String),
}

impl InputError {
    /// A short, fixed name for the kind of problem (a metrics label).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Header(_) => "header",
            Self::Row { .. } => "row",
            Self::Csv(_) => "csv",
            Self::Unreadable(_) => "unreadable",
        }
    }
}

/// Why reading records stopped: the input's own content, or the reading
/// itself (a disk error, a download cut short: the storage's failure, never
/// the input's fault).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The content is unusable.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Read(#[source] std::io::Error),
}

/// Rows of fields, back to back in one buffer: each field is followed by
/// one separator byte, so a field starts one byte after the previous ends.
#[derive(Debug, Default, Clone)]
pub struct Rows {
    bytes: Vec<u8>,
    /// End of each field in `bytes`.
    ends: Vec<usize>,
    /// Where each row's first field is in `ends`, plus one entry past the
    /// last row (empty until the first row).
    starts: Vec<usize>,
}

impl Rows {
    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Bytes held, separators included.
    pub(crate) fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Empties the rows, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.starts.clear();
    }

    /// Row `r` (`r < len()`).
    pub fn row(&self, r: usize) -> Row<'_> {
        Row {
            rows: self,
            first: self.starts[r],
            end: self.starts[r + 1],
        }
    }

    /// The last row, if any.
    pub(crate) fn last(&self) -> Option<Row<'_>> {
        self.len().checked_sub(1).map(|r| self.row(r))
    }

    /// Drops the last row.
    pub(crate) fn pop(&mut self) {
        if self.len() == 0 {
            return;
        }
        self.starts.pop();
        let first = self.starts.last().copied().unwrap_or(0);
        self.ends.truncate(first);
        self.bytes.truncate(self.ends.last().map_or(0, |e| e + 1));
        if self.starts.len() == 1 {
            self.starts.clear();
        }
    }

    /// Appends a copy of `row`.
    pub(crate) fn push_row(&mut self, row: Row<'_>) {
        for field in row.fields() {
            self.bytes.extend_from_slice(field);
            self.ends.push(self.bytes.len());
            self.bytes.push(b',');
        }
        self.close_row();
    }

    /// Appends a quote-free line as one row: its commas are the separators.
    fn push_line(&mut self, line: &[u8]) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(line);
        self.bytes.push(b',');
        // A plain loop: on lines this short it beats a vectorised search.
        for (i, &b) in line.iter().enumerate() {
            if b == b',' {
                self.ends.push(base + i);
            }
        }
        self.ends.push(base + line.len());
        self.close_row();
    }

    /// Appends the fields of a record `csv_core` wrote: `ends` index `out`.
    fn push_decoded(&mut self, out: &[u8], ends: &[usize]) {
        let mut start = 0;
        for &end in ends {
            self.bytes.extend_from_slice(&out[start..end]);
            self.ends.push(self.bytes.len());
            self.bytes.push(b',');
            start = end;
        }
        self.close_row();
    }

    fn close_row(&mut self) {
        if self.starts.is_empty() {
            self.starts.push(0);
        }
        self.starts.push(self.ends.len());
    }
}

/// One row of [`Rows`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    rows: &'a Rows,
    /// Its fields are `rows.ends[first..end]`.
    first: usize,
    end: usize,
}

impl<'a> Row<'a> {
    /// Number of fields.
    pub(crate) fn len(&self) -> usize {
        self.end - self.first
    }

    /// Field `i`, if the row has it.
    pub(crate) fn get(&self, i: usize) -> Option<&'a [u8]> {
        let at = self.first + i;
        if at >= self.end {
            return None;
        }
        let start = at.checked_sub(1).map_or(0, |p| self.rows.ends[p] + 1);
        Some(&self.rows.bytes[start..self.rows.ends[at]])
    }

    /// The fields in order.
    pub fn fields(self) -> impl Iterator<Item = &'a [u8]> {
        (0..self.len()).filter_map(move |i| self.get(i))
    }
}

/// Reads records from `inner` into [`Rows`].
pub struct Records<R> {
    inner: R,
    /// Read buffer: `buf[pos..len]` is read but not yet parsed. Twice the
    /// read size, so that after keeping a partial line a full read still
    /// fits (a buffered reader below then hands its reads straight through).
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    /// `\n`s before `buf[pos]`.
    lines: u64,
    /// Parser for the records the fast path does not take.
    core: csv_core::Reader,
    /// Whether the start of the input (and a BOM there) has been seen to.
    started: bool,
    /// `csv_core`'s output for the record it is parsing.
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl<R: Read> Records<R> {
    /// A reader of `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; 2 * READ_BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            lines: 0,
            core: csv_core::Reader::new(),
            started: false,
            out: vec![0; 1024],
            ends: vec![0; 64],
        }
    }

    /// Appends the next record to `rows` and returns its 1-based line, or
    /// `None` at the end of the input.
    pub fn read(&mut self, rows: &mut Rows) -> Result<Option<u64>, RecordError> {
        if !self.started {
            self.started = true;
            self.skip_bom()?;
        }
        // Line ends before a record are skipped (blank lines), as `csv_core`
        // skips them.
        loop {
            if self.pos == self.len && !self.fill()? {
                return Ok(None);
            }
            match self.buf[self.pos] {
                b'\n' => self.lines += 1,
                b'\r' => {}
                _ => break,
            }
            self.pos += 1;
        }
        let line = self.lines + 1;
        if self.quote_free_line(rows)? || self.parse_record(rows, line)? {
            Ok(Some(line))
        } else {
            Ok(None)
        }
    }

    /// Drops a UTF-8 BOM at the start of the input, as `csv_core` does
    /// (before blank lines are skipped), and tells `csv_core` it is past
    /// the start, so that it drops none later.
    fn skip_bom(&mut self) -> Result<(), RecordError> {
        while self.len - self.pos < 3 && self.fill()? {}
        if self.buf[self.pos..self.len].starts_with(b"\xEF\xBB\xBF") {
            self.pos += 3;
        }
        // With no room to write, this takes no input but marks the parser
        // as having read.
        let primed = self.core.read_record(b"x", &mut [], &mut [0]);
        debug_assert_eq!(primed.1, 0);
        Ok(())
    }

    /// Takes the record at `pos` if it is one line without a quote, all in
    /// the buffer; false (nothing taken) otherwise.
    fn quote_free_line(&mut self, rows: &mut Rows) -> Result<bool, RecordError> {
        // Bytes after `pos` already searched (a line arriving in pieces is
        // not searched again from its start after every read).
        let mut searched = 0;
        loop {
            let rest = &self.buf[self.pos..self.len];
            match memchr::memchr3(b'\n', b'\r', b'"', &rest[searched..]).map(|i| searched + i) {
                Some(i) if rest[i] == b'"' => return Ok(false),
                Some(i) => {
                    rows.push_line(&rest[..i]);
                    self.lines += u64::from(rest[i] == b'\n');
                    self.pos += i + 1;
                    return Ok(true);
                }
                None if self.eof => {
                    rows.push_line(rest);
                    self.pos = self.len;
                    return Ok(true);
                }
                // A line longer than the buffer: the parser streams it.
                None if self.pos == 0 && self.len == self.buf.len() => return Ok(false),
                None => {
                    searched = rest.len();
                    self.fill()?;
                }
            }
        }
    }

    /// Parses the record at `pos` with `csv_core`; false if there was none
    /// (not reached: the record starts at a byte that is not a line end).
    fn parse_record(&mut self, rows: &mut Rows, line: u64) -> Result<bool, RecordError> {
        use csv_core::ReadRecordResult as R;
        let (mut nout, mut nend, mut taken) = (0, 0, 0u64);
        loop {
            if self.pos == self.len && !self.eof {
                self.fill()?;
            }
            // An empty input tells the parser the data has ended.
            let input = &self.buf[self.pos..self.len];
            let (res, nin, o, e) =
                self.core
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nend..]);
            self.lines += memchr::memchr_iter(b'\n', &input[..nin]).count() as u64;
            self.pos += nin;
            (nout, nend) = (nout + o, nend + e);
            taken += nin as u64;
            // Checked before a record is taken too: the limit holds whatever
            // the read sizes (the count includes the record's line end).
            if taken > MAX_RECORD_BYTES {
                return Err(InputError::Row {
                    line,
                    message: format!(
                        "a record longer than {} MiB (a missing line end or an unclosed quote?)",
                        MAX_RECORD_BYTES / (1024 * 1024)
                    ),
                }
                .into());
            }
            match res {
                R::Record => {
                    rows.push_decoded(&self.out[..nout], &self.ends[..nend]);
                    return Ok(true);
                }
                R::End => return Ok(false),
                R::OutputFull => self.out.resize(2 * self.out.len(), 0),
                R::OutputEndsFull => self.ends.resize(2 * self.ends.len(), 0),
                R::InputEmpty => {}
            }
        }
    }

    /// Moves the unparsed bytes to the front and reads more after them;
    /// false at the end of the input. A failed read is
    /// [`RecordError::Read`]: the storage's failure, not the content's.
    fn fill(&mut self) -> Result<bool, RecordError> {
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        if self.eof || self.len == self.buf.len() {
            return Ok(!self.eof);
        }
        loop {
            match self.inner.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.len += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The storage under the input failed, not its content.
                Err(e) => return Err(RecordError::Read(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Hands out its bytes in reads of the given sizes (then all at once).
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
    }

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let want = if self.sizes.is_empty() {
                usize::MAX
            } else {
                self.sizes.remove(0).max(1)
            };
            let n = want.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn ours(data: &[u8], sizes: Vec<usize>) -> Vec<(Vec<Vec<u8>>, u64)> {
        let mut r = Records::new(Chunked {
            data: data.to_vec(),
            at: 0,
            sizes,
        });
        let mut rows = Rows::default();
        let mut got = Vec::new();
        while let Some(line) = r.read(&mut rows).unwrap() {
            let row = rows.last().unwrap();
            got.push((row.fields().map(<[u8]>::to_vec).collect(), line));
        }
        assert_eq!(rows.len(), got.len());
        got
    }

    /// The csv crate's records, and the physical line each starts on.
    fn theirs(data: &[u8]) -> Vec<(Vec<Vec<u8>>, u64)> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(data);
        let mut got = Vec::new();
        let mut rec = csv::ByteRecord::new();
        let mut from = 0;
        while rdr.read_byte_record(&mut rec).unwrap() {
            // The record's first byte that is not a line end (or BOM).
            let mut at = rec.position().unwrap().byte() as usize;
            at = at.max(from);
            if at == 0 && data.starts_with(b"\xEF\xBB\xBF") {
                at = 3;
            }
            while at < data.len() && matches!(data[at], b'\r' | b'\n') {
                at += 1;
            }
            let line = 1 + data[..at].iter().filter(|&&b| b == b'\n').count() as u64;
            from = rdr.position().byte() as usize;
            got.push((rec.iter().map(<[u8]>::to_vec).collect(), line));
        }
        got
    }

    fn csvish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b",".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"\"\"".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just(b" ".to_vec()),
            "[a-z0-9.]{1,6}".prop_map(String::into_bytes),
        ];
        prop::collection::vec(piece, 0..60).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn records_and_lines_are_the_csv_crates(
            data in csvish(),
            sizes in prop::collection::vec(1usize..20, 0..20),
        ) {
            prop_assert_eq!(ours(&data, sizes), theirs(&data));
        }
    }

    #[test]
    fn edges() {
        for data in [
            &b""[..],
            b"\n\r\n",
            b"a",
            b"a,",
            b",",
            b"a\r",
            b"a\rb\n",
            b"\xEF\xBB\xBFa,b\n1,2",
            b"\xEF\xBB\xBF\"a\",b\n\xEF\xBB\xBF1,2",
            b"h\n\"x\ny\",2\n3,4\r\n\r\n5",
            b"h\n\"unclosed\n1,2\n",
        ] {
            assert_eq!(ours(data, vec![]), theirs(data), "{data:?}");
            assert_eq!(ours(data, vec![1; 64]), theirs(data), "{data:?}");
        }
    }

    #[test]
    fn lines_longer_than_the_buffer() {
        let long = "x".repeat(3 * READ_BUFFER);
        let data = format!("h,i\n{long},1\n2,{long}\n\"{long}\",3\n");
        let got = ours(data.as_bytes(), vec![]);
        assert_eq!(got, theirs(data.as_bytes()));
        assert_eq!(got.len(), 4);
        assert_eq!(got[3].1, 4);
    }

    #[test]
    fn a_record_over_the_limit_is_refused_even_if_it_ends_in_the_same_read() {
        // A first long record grows the parser's output buffer, so that the
        // second (escaped quotes: half as many bytes out as in) never fills
        // it, and the read that ends it is the one that passes the limit.
        let fits = "y".repeat(700 * 1024);
        let over = "\"\"".repeat(MAX_RECORD_BYTES as usize / 2 + 1000);
        let data = format!("h\n\"{fits}\"\n\"{over}\"\n1\n");
        let mut r = Records::new(data.as_bytes());
        let mut rows = Rows::default();
        assert_eq!(r.read(&mut rows).unwrap(), Some(1));
        assert_eq!(r.read(&mut rows).unwrap(), Some(2));
        let e = r.read(&mut rows).unwrap_err();
        assert!(
            matches!(e, RecordError::Input(InputError::Row { line: 3, .. })),
            "{e}"
        );
    }

    #[test]
    fn rows_copy_and_pop() {
        let mut rows = Rows::default();
        rows.push_line(b"a,,b");
        rows.push_decoded(b"xy", &[1, 1, 2]);
        let mut copy = Rows::default();
        copy.push_row(rows.row(1));
        copy.push_row(rows.row(0));
        let fields = |r: Row<'_>| r.fields().map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(fields(copy.row(0)), [&b"x"[..], b"", b"y"]);
        assert_eq!(fields(copy.row(1)), [&b"a"[..], b"", b"b"]);
        assert_eq!(copy.row(0).get(3), None);
        copy.pop();
        assert_eq!(copy.len(), 1);
        assert_eq!(fields(copy.last().unwrap()), [&b"x"[..], b"", b"y"]);
        copy.push_line(b"");
        assert_eq!(fields(copy.row(1)), [&b""[..]]);
        copy.pop();
        copy.pop();
        assert_eq!(copy.len(), 0);
        assert_eq!(copy.byte_len(), 0);
        copy.push_line(b"q");
        assert_eq!(fields(copy.row(0)), [&b"q"[..]]);
    }
}
