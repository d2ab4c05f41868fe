//! The last rows of a stream, kept in its state for the dashboard: a
//! bounded series, so what the page reads stays the same size however many
//! files have been processed.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Rows a stream keeps (and the most one file contributes).
pub const RECENT_ROWS: usize = 500;
/// Channels a stream's series keeps: when a file brings new ones and the
/// series is full, those whose latest value is oldest make room.
pub(crate) const RECENT_CHANNELS: usize = 32;
/// Longest timestamp cell kept (a longer one is cut on a character
/// boundary): the series stays small whatever the input holds.
pub(crate) const MAX_TIME_BYTES: usize = 64;

/// One scored row, as the dashboard draws it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct RecentRow {
    /// The timestamp cell as written (empty without a timestamp column).
    pub(crate) t: String,
    /// The channels' values, in the order of `channels` (in
    /// a file's tail: of the file's channels)
    /// (`None`: missing in this row).
    pub(crate) v: Vec<Option<f64>>,
    /// Whether the row was anomalous.
    pub(crate) anomaly: bool,
    /// Its `anomaly_score`.
    pub(crate) score: f64,
}

/// The last 500 (`RECENT_ROWS`) rows of a stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct RecentSeries {
    /// The channels the rows' values belong to.
    pub(crate) channels: Vec<String>,
    /// Oldest first.
    #[schema(value_type = Vec<RecentRow>)]
    pub(crate) rows: VecDeque<RecentRow>,
}

impl RecentSeries {
    /// Appends a file's last rows (`channels` are the file's, in the order
    /// of each row's values), dropping the oldest beyond [`RECENT_ROWS`].
    /// The series keeps every channel it has seen (up to
    /// [`RECENT_CHANNELS`]); a file without one leaves it empty in its rows.
    pub(crate) fn extend(&mut self, channels: &[String], rows: Vec<RecentRow>) {
        if rows.is_empty() {
            return;
        }
        let new: Vec<&String> = channels
            .iter()
            .filter(|c| !self.channels.contains(c))
            .take(RECENT_CHANNELS)
            .collect();
        let room = RECENT_CHANNELS - self.channels.len().min(RECENT_CHANNELS);
        if new.len() > room {
            self.evict(new.len() - room, channels);
        }
        for c in new {
            if self.channels.len() >= RECENT_CHANNELS {
                break;
            }
            self.channels.push(c.clone());
        }
        let width = self.channels.len();
        for row in &mut self.rows {
            row.v.resize(width, None);
        }
        let place: Vec<Option<usize>> = channels
            .iter()
            .map(|c| self.channels.iter().position(|s| s == c))
            .collect();
        for row in rows {
            let mut v = vec![None; width];
            for (x, at) in row.v.iter().zip(&place) {
                if let Some(at) = at {
                    v[*at] = *x;
                }
            }
            self.rows.push_back(RecentRow { v, ..row });
        }
        while self.rows.len() > RECENT_ROWS {
            self.rows.pop_front();
        }
    }

    /// Drops up to `n` channels the file (`keep`) does not have, those
    /// whose latest value is oldest first.
    fn evict(&mut self, n: usize, keep: &[String]) {
        let last_seen = |i: usize| {
            self.rows
                .iter()
                .rposition(|r| r.v.get(i).copied().flatten().is_some())
        };
        let mut candidates: Vec<(Option<usize>, usize)> = (0..self.channels.len())
            .filter(|&i| !keep.contains(&self.channels[i]))
            .map(|i| (last_seen(i), i))
            .collect();
        candidates.sort();
        let mut gone = vec![false; self.channels.len()];
        for (_, i) in candidates.into_iter().take(n) {
            gone[i] = true;
        }
        let mut i = 0;
        self.channels.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
        for row in &mut self.rows {
            let mut i = 0;
            row.v.retain(|_| {
                i += 1;
                !gone.get(i - 1).copied().unwrap_or(true)
            });
        }
    }
}

/// The last rows of one file, captured while it is written, reusing each
/// slot's buffers (no allocation per row once the ring is full).
#[derive(Debug, Default)]
pub(crate) struct TailRing {
    slots: Vec<RecentRow>,
    next: usize,
}

impl TailRing {
    /// Records one row: its timestamp cell, values, flag and score.
    pub(crate) fn push(&mut self, t: &[u8], values: &[Option<f64>], anomaly: bool, score: f64) {
        if self.slots.len() < RECENT_ROWS {
            self.slots.push(RecentRow::default());
        }
        let i = self.next % self.slots.len();
        let slot = &mut self.slots[i];
        slot.t.clear();
        let mut end = t.len().min(MAX_TIME_BYTES);
        // A cut inside a UTF-8 sequence would only be replaced by U+FFFD,
        // but a whole character is nicer: back up to a boundary.
        while end < t.len() && end > 0 && (t[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        slot.t.push_str(&String::from_utf8_lossy(&t[..end]));
        slot.v.clear();
        // Every value: the series picks its channels by name.
        slot.v.extend_from_slice(values);
        slot.anomaly = anomaly;
        slot.score = score;
        self.next = (i + 1) % RECENT_ROWS;
    }

    /// The rows captured, oldest first.
    pub(crate) fn into_rows(mut self) -> Vec<RecentRow> {
        if self.slots.len() == RECENT_ROWS {
            self.slots.rotate_left(self.next);
        }
        self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: usize) -> RecentRow {
        RecentRow {
            t: i.to_string(),
            v: vec![Some(i as f64)],
            anomaly: false,
            score: 0.0,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_rows_in_order() {
        let mut r = TailRing::default();
        for i in 0..RECENT_ROWS + 7 {
            r.push(i.to_string().as_bytes(), &[Some(i as f64)], i % 2 == 0, 0.1);
        }
        let rows = r.into_rows();
        assert_eq!(rows.len(), RECENT_ROWS);
        assert_eq!(rows[0].t, "7");
        let mut long = TailRing::default();
        long.push("é".repeat(100).as_bytes(), &[None], false, 0.0);
        let t = &long.into_rows()[0].t;
        assert_eq!((t.len(), t.chars().count()), (64, 32));
        assert_eq!(rows[RECENT_ROWS - 1].t, (RECENT_ROWS + 6).to_string());
        let mut short = TailRing::default();
        short.push(b"a", &[None], true, 0.9);
        short.push(b"b", &[Some(1.0)], false, 0.1);
        let rows = short.into_rows();
        assert_eq!((rows[0].t.as_str(), rows[1].t.as_str()), ("a", "b"));
    }

    #[test]
    fn the_series_is_bounded_and_keeps_every_channel() {
        let mut s = RecentSeries::default();
        s.extend(&["a".into()], (0..400).map(row).collect());
        s.extend(&["a".into()], (400..700).map(row).collect());
        assert_eq!(s.rows.len(), RECENT_ROWS);
        assert_eq!(s.rows[0].t, "200");
        // A file with a new channel first and without "a"'s rows: "a" keeps
        // its place and history; the new channel is added after it.
        s.extend(
            &["b".into()],
            vec![RecentRow {
                t: "x".into(),
                v: vec![Some(1.0)],
                ..Default::default()
            }],
        );
        assert_eq!(s.channels, ["a", "b"]);
        assert_eq!(s.rows[0].v, vec![Some(201.0), None]);
        assert_eq!(
            s.rows.back().map(|r| r.v.clone()),
            Some(vec![None, Some(1.0)])
        );
        // A file with no rows changes nothing.
        let before = s.clone();
        s.extend(&["c".into()], Vec::new());
        assert_eq!(s, before);
    }

    #[test]
    fn channels_are_chosen_by_name_and_unused_ones_make_room() {
        let mut s = RecentSeries::default();
        let names = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<String>>();
        // 10 a-channels and 22 b-channels fill the series.
        let first: Vec<String> = names("a", 10).into_iter().chain(names("b", 22)).collect();
        let row = |n: usize| RecentRow {
            v: (0..n).map(|i| Some(i as f64)).collect(),
            ..Default::default()
        };
        s.extend(&first, vec![row(32)]);
        assert_eq!(s.channels, first);
        // A file with 40 b-channels first, then the a-channels: the
        // a-channels still get their values (by name, not position).
        let second: Vec<String> = names("b", 40).into_iter().chain(names("a", 10)).collect();
        s.extend(&second, vec![row(50)]);
        assert_eq!(s.rows[1].v[0], Some(40.0), "a0 is the 41st column");
        assert_eq!(s.channels.len(), RECENT_CHANNELS);
        // A new channel takes the place of one this file does not have.
        s.extend(&["c0".to_string()], vec![row(1)]);
        assert_eq!(s.channels.len(), RECENT_CHANNELS);
        assert!(s.channels.contains(&"c0".to_string()));
        assert_eq!(
            s.rows.back().map(|r| r.v[RECENT_CHANNELS - 1]),
            Some(Some(0.0))
        );
    }
}
