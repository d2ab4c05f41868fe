//! Progress of the long commands (`score`, `eval`; the lab's `bench`), drawn on
//! stderr only when stderr is a terminal. Anywhere else (CI logs, pipes,
//! files) nothing is drawn and the calls cost one branch.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use std::borrow::Cow;
use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

/// How often the readers of [`ProgressRead`] hand their count to the bar.
const UPDATE_EVERY: Duration = Duration::from_millis(100);

/// A progress bar or spinner on stderr, or nothing (when stderr is not a
/// terminal). Clones show the same bar; it is cleared when the last goes.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Nothing is drawn.
    pub(crate) fn hidden() -> Self {
        Self { bar: None }
    }

    /// Whether progress is drawn here: stderr is a terminal.
    pub(crate) fn wanted() -> bool {
        std::io::stderr().is_terminal()
    }

    fn draw(bar: ProgressBar, template: &str) -> Self {
        if !Self::wanted() {
            return Self::hidden();
        }
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rows_per_sec",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} rows/s", s.per_sec());
                },
            )
            .progress_chars("=> ");
        let bar = bar.with_style(style).with_finish(ProgressFinish::AndClear);
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        bar.enable_steady_tick(UPDATE_EVERY);
        Self { bar: Some(bar) }
    }

    /// Bytes of an input of `total` bytes read so far, with the rate and
    /// the time left.
    pub(crate) fn bytes(what: &str, total: u64) -> Self {
        Self::draw(
            ProgressBar::new(total),
            &format!(
                "{{spinner}} {what} [{{wide_bar}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
            ),
        )
    }

    /// A count of rows of an input of unknown length, with the rate.
    pub(crate) fn rows(what: &str) -> Self {
        Self::draw(
            ProgressBar::no_length(),
            &format!("{{spinner}} {what} {{human_pos}} rows, {{rows_per_sec}}, {{elapsed}}"),
        )
    }

    /// `total` steps (scenarios, series, phases), the current one named by
    /// [`Progress::set_message`].
    pub fn steps(what: &str, total: u64) -> Self {
        Self::draw(
            ProgressBar::new(total),
            &format!("{{spinner}} {what} [{{bar:25}}] {{pos}}/{{len}} {{elapsed}} {{wide_msg}}"),
        )
    }

    /// Whether anything is drawn.
    pub(crate) fn is_visible(&self) -> bool {
        self.bar.is_some()
    }

    /// Sets the number of steps.
    pub(crate) fn set_length(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_length(n);
        }
    }

    /// Adds `n` steps, bytes or rows.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Names what is being done now.
    pub fn set_message(&self, m: impl Into<Cow<'static, str>>) {
        if let Some(b) = &self.bar {
            b.set_message(m);
        }
    }

    /// Writes a line to stderr, above the bar if one is drawn.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// What a [`ProgressRead`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// Bytes read.
    Bytes,
    /// Lines read (rows, but for line breaks inside quoted cells).
    Lines,
}

/// A reader that reports what passes through it to a [`Progress`], at most
/// every [`UPDATE_EVERY`]; when nothing is drawn it only passes reads on.
#[derive(Debug)]
pub(crate) struct ProgressRead<R> {
    inner: R,
    progress: Progress,
    count: Count,
    pending: u64,
    last: Instant,
}

impl<R: Read> ProgressRead<R> {
    /// Reads `inner`, counting into `progress`.
    pub(crate) fn new(inner: R, progress: Progress, count: Count) -> Self {
        Self {
            inner,
            progress,
            count,
            pending: 0,
            last: Instant::now(),
        }
    }
}

impl<R: Read> Read for ProgressRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.progress.is_visible() {
            self.pending += match self.count {
                Count::Bytes => n as u64,
                Count::Lines => memchr::memchr_iter(b'\n', &buf[..n]).count() as u64,
            };
            if n == 0 || self.last.elapsed() >= UPDATE_EVERY {
                self.progress.inc(std::mem::take(&mut self.pending));
                self.last = Instant::now();
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_reader_passes_everything_on() {
        let data = b"timestamp,v\n1,2\n3,4\n".repeat(1000);
        let mut r = ProgressRead::new(&data[..], Progress::hidden(), Count::Lines);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
