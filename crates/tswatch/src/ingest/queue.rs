//! The work queue and its feeders: notifications, the local folder watcher
//! and the periodic reconciliation of `raw/` against what was processed.
//!
//! One worker per lane drains the queue; every file of a stream goes to the
//! same lane, so a stream is processed in order and different streams in
//! parallel. A key already waiting is not queued twice. Storage failures are retried with exponential backoff; a file that
//! still fails is left for the next reconciliation pass, never dropped.

use crate::apply::processor::{Outcome, Processor, STAGING_MAX_AGE};
use crate::state::keys::RawKey;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Keys waiting to be processed, without duplicates, in lanes: every key
/// of a stream goes to the same lane (one worker each), so a stream's files
/// are processed in order while different streams proceed in parallel.
#[derive(Debug, Clone)]
pub struct Queue {
    lanes: Vec<mpsc::Sender<RawKey>>,
    pending: Arc<Mutex<HashSet<RawKey>>>,
}

/// Why a key was not queued.
#[derive(Debug, PartialEq)]
pub enum Enqueue {
    /// Newly queued.
    Queued,
    /// Already waiting.
    AlreadyQueued,
    /// The queue is full (callers should ask the sender to retry).
    Full,
}

impl Queue {
    /// A single-lane queue holding at most `capacity` keys, and its receiving end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<RawKey>) {
        let (q, mut rx) = Self::with_lanes(capacity, 1);
        (q, rx.remove(0))
    }

    /// A queue of `lanes` lanes of at most `capacity` keys each, and their
    /// receiving ends.
    pub(crate) fn with_lanes(capacity: usize, lanes: usize) -> (Self, Vec<mpsc::Receiver<RawKey>>) {
        let (txs, rxs) = (0..lanes.max(1))
            .map(|_| mpsc::channel(capacity.max(1)))
            .unzip();
        (
            Self {
                lanes: txs,
                pending: Default::default(),
            },
            rxs,
        )
    }

    fn lane(&self, key: &RawKey) -> &mpsc::Sender<RawKey> {
        // FNV-1a of the stream name: stable, so a stream keeps its lane.
        let name = key.stream().to_string();
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.lanes[(h % self.lanes.len() as u64) as usize]
    }

    /// Queues `key` unless it is already waiting.
    pub fn push(&self, key: RawKey) -> Enqueue {
        let Ok(mut p) = self.pending.lock() else {
            return Enqueue::Full;
        };
        if p.contains(&key) {
            return Enqueue::AlreadyQueued;
        }
        match self.lane(&key).try_send(key.clone()) {
            Ok(()) => {
                p.insert(key);
                Enqueue::Queued
            }
            Err(_) => Enqueue::Full,
        }
    }

    fn done(&self, key: &RawKey) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(key);
        }
    }

    /// Keys waiting now.
    pub(crate) fn len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }
}

/// Drains the queue until `shutdown` flips. The file in hand then gets
/// `grace` to finish; after that it is abandoned, which is safe: nothing is
/// visible before its commit, and a commit is finished by whoever next
/// looks at the file.
pub async fn run_worker(
    processor: Arc<Processor>,
    queue: Queue,
    mut rx: mpsc::Receiver<RawKey>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    loop {
        let key = tokio::select! {
            k = rx.recv() => match k { Some(k) => k, None => return },
            _ = shutdown.changed() => return,
        };
        // Taken off the waiting set before work starts, so a new version
        // uploaded meanwhile is queued again rather than lost.
        queue.done(&key);
        let work = process_with_retry(&processor, &key, shutdown.clone());
        tokio::pin!(work);
        tokio::select! {
            _ = &mut work => {}
            _ = stopped(shutdown.clone()) => {
                if tokio::time::timeout(grace, &mut work).await.is_err() {
                    tracing::warn!(%key, ?grace, "shutdown grace period over: abandoning the file in hand; it will be processed on the next start");
                }
                return;
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Backoff before the `attempt`-th retry (from 1): 0.2 s doubling, at most
/// 30 s: the waits between the [`ATTEMPTS`] attempts add up to about 80 s,
/// on top of the storage client's own retries inside each attempt, so an
/// outage of a minute costs no file a trip through reconciliation (which
/// still catches anything longer).
fn backoff(attempt: u32) -> Duration {
    crate::apply::retry_wait(Duration::from_millis(200), attempt)
}

/// Attempts per file before it is left to reconciliation.
pub const ATTEMPTS: u32 = 10;

async fn process_with_retry(processor: &Processor, key: &RawKey, shutdown: watch::Receiver<bool>) {
    for attempt in 1..=ATTEMPTS {
        tracing::debug!(%key, attempt, "processing");
        match processor.process(key).await {
            Ok(Outcome::Applied(s)) => {
                tracing::info!(
                    %key, rows = s.total_rows, anomalies = s.anomaly_count,
                    ms = format!("{:.1}", s.duration_ms), "processed"
                );
                return;
            }
            Ok(Outcome::AlreadyApplied) => {
                tracing::debug!(%key, "already processed; skipped");
                return;
            }
            Ok(Outcome::Rejected(_)) | Ok(Outcome::Missing) => return,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(%key, attempt, error = %e, "processing failed; will retry");
                crate::telemetry::retry("file");
                tokio::select! {
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                    _ = stopped(shutdown.clone()) => return,
                }
            }
            Err(e) => {
                tracing::error!(%key, error = %e, "giving up for now; the next reconciliation will retry");
            }
        }
    }
}

/// Queues every `raw/*.csv` that has neither a summary nor an error record
/// written after it (a file replaced after it was processed counts as new;
/// the processor then compares ETags). Returns how many were queued.
pub async fn reconcile(processor: &Processor, queue: &Queue) -> anyhow::Result<usize> {
    reconcile_older(processor, queue, Duration::ZERO).await
}

/// As [`reconcile`], taking only files last written more than `min_age`
/// ago. With a queue, a younger file's event may still be on its way: the
/// queue's consumer will take it, and reconciliation racing it would only
/// score it twice.
pub(crate) async fn reconcile_older(
    processor: &Processor,
    queue: &Queue,
    min_age: Duration,
) -> anyhow::Result<usize> {
    let storage = processor.storage();
    let newest = chrono::Utc::now()
        - chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::zero());
    let processed: HashMap<String, chrono::DateTime<chrono::Utc>> = storage
        .list_modified("processed/")
        .await?
        .into_iter()
        .collect();
    let mut queued = 0;
    for (k, modified) in storage.list_modified("raw/").await? {
        let key = match RawKey::parse(&k) {
            Ok(key) => key,
            Err(e) => {
                report_unusable(&k, &e);
                continue;
            }
        };
        if modified > newest {
            continue;
        }
        let covered = [key.summary(), key.error()]
            .iter()
            .any(|m| processed.get(m).is_some_and(|&done| done >= modified));
        if covered {
            continue;
        }
        if queue.push(key) == Enqueue::Queued {
            queued += 1;
        }
    }
    crate::telemetry::reconciled(queued);
    Ok(queued)
}

/// How often the reconciler looks for partial files of interrupted writes.
const PARTIALS_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Runs [`reconcile`] now and then every `every`, until shutdown.
pub async fn run_reconciler(
    processor: Arc<Processor>,
    queue: Queue,
    every: Duration,
    min_age: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_partials: Option<std::time::Instant> = None;
    loop {
        match reconcile_older(&processor, &queue, min_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "reconciliation queued unprocessed files"),
            Err(e) => {
                crate::telemetry::retry("reconciliation");
                tracing::warn!(error = %e, "reconciliation failed; will retry");
            }
        }
        match processor.sweep_staging(STAGING_MAX_AGE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(objects = n, "removed staged outputs of abandoned attempts"),
            Err(e) => tracing::warn!(error = %e, "staging sweep failed; will retry"),
        }
        // A walk of all of processed/: hourly is often enough for debris
        // that is only removed once a day old.
        if last_partials.is_none_or(|t| t.elapsed() >= PARTIALS_SWEEP_EVERY) {
            last_partials = Some(std::time::Instant::now());
            match processor.sweep_partials(STAGING_MAX_AGE).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "removed partial files of interrupted writes"),
                Err(e) => tracing::warn!(error = %e, "partial-file sweep failed; will retry"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Watches `<root>/raw` for finished files (closed after writing, or moved
/// in) and queues them. The watcher lives as long as the returned handle.
///
/// A directory created or moved in is scanned: files that land in it before
/// the watch on it is in place raise no event of their own. The watcher adds
/// that watch only after handing out the event, so the directory is scanned
/// again shortly after (reconciliation remains the backstop).
pub(crate) fn watch_local(
    root: &std::path::Path,
    queue: Queue,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let raw = root.join("raw");
    std::fs::create_dir_all(&raw)?;
    let root = root.to_path_buf();
    let rescans = tokio::runtime::Handle::try_current().ok();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let finished = matches!(
            ev.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        );
        let new_dir = matches!(ev.kind, EventKind::Create(CreateKind::Folder));
        if !(finished || new_dir) {
            return;
        }
        for p in ev.paths {
            if p.is_dir() {
                for_each_file(&p, &mut |f| queue_path(&root, f, &queue));
                if let Some(rt) = &rescans {
                    let (root, queue) = (root.clone(), queue.clone());
                    rt.spawn(async move {
                        for wait in [RESCAN_SOON, RESCAN_LATER] {
                            tokio::time::sleep(wait).await;
                            for_each_file(&p, &mut |f| queue_path(&root, f, &queue));
                        }
                    });
                }
            } else if finished {
                queue_path(&root, &p, &queue);
            }
        }
    })?;
    watcher.watch(&raw, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// When a new directory is scanned again (see [`watch_local`]).
const RESCAN_SOON: Duration = Duration::from_millis(250);
const RESCAN_LATER: Duration = Duration::from_secs(2);

/// Queues the file at `path` if it is a raw batch under `root`.
fn queue_path(root: &std::path::Path, path: &std::path::Path, queue: &Queue) {
    let Ok(rel) = path.strip_prefix(root) else {
        return;
    };
    let Some(rel) = rel.to_str() else { return };
    let key = rel.replace(std::path::MAIN_SEPARATOR, "/");
    match RawKey::parse(&key) {
        Ok(k) => {
            if queue.push(k) == Enqueue::Full {
                tracing::warn!(?key, "queue full; reconciliation will pick it up");
            }
        }
        Err(e) => report_unusable(&key, &e),
    }
}

/// Logs, once per key and process, a batch under `raw/` that can never be
/// processed (its outputs could not be stored, or its stream name is
/// reserved); other keys (not `.csv`) are not batches and pass silently.
fn report_unusable(key: &str, e: &crate::state::keys::KeyError) {
    static SEEN: std::sync::LazyLock<crate::report::OnceSet> =
        std::sync::LazyLock::new(crate::report::OnceSet::default);
    if matches!(e, crate::state::keys::KeyError::Unusable { .. }) && SEEN.first(key) {
        tracing::warn!(error = %e, "refused for good (reported once)");
    }
}

/// Calls `f` on every file under `dir` (symbolic links are not followed).
fn for_each_file(dir: &std::path::Path, f: &mut dyn FnMut(&std::path::Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => for_each_file(&e.path(), f),
            Ok(t) if t.is_file() => f(&e.path()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_outlast_a_thirty_second_outage() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(8), Duration::from_millis(25_600));
        assert_eq!(backoff(9), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
        let waited: Duration = (1..ATTEMPTS).map(backoff).sum();
        // Waits between the attempts alone, not counting the attempts.
        assert!(waited > Duration::from_secs(60), "{waited:?}");
    }
}
