//! The work queue and its feeders: notifications, the local folder watcher
//! and the periodic reconciliation of `raw/` against what was processed.
//!
//! One worker drains the queue in order; a key already waiting is not queued
//! twice. Storage failures are retried with exponential backoff; a file that
//! still fails is left for the next reconciliation pass, never dropped.

use crate::keys::RawKey;
use crate::processor::{Outcome, Processor};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Keys waiting to be processed, without duplicates.
#[derive(Debug, Clone)]
pub struct Queue {
    tx: mpsc::Sender<RawKey>,
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
    /// A queue holding at most `capacity` keys, and its receiving end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<RawKey>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                tx,
                pending: Default::default(),
            },
            rx,
        )
    }

    /// Queues `key` unless it is already waiting.
    pub fn push(&self, key: RawKey) -> Enqueue {
        let Ok(mut p) = self.pending.lock() else {
            return Enqueue::Full;
        };
        if p.contains(&key) {
            return Enqueue::AlreadyQueued;
        }
        match self.tx.try_send(key.clone()) {
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
    pub fn len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drains the queue until `shutdown` flips; finishes the file in hand first.
pub async fn run_worker(
    processor: Arc<Processor>,
    queue: Queue,
    mut rx: mpsc::Receiver<RawKey>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let key = tokio::select! {
            k = rx.recv() => match k { Some(k) => k, None => return },
            _ = shutdown.changed() => return,
        };
        // Taken off the waiting set before work starts, so a new version
        // uploaded meanwhile is queued again rather than lost.
        queue.done(&key);
        process_with_retry(&processor, &key, &mut shutdown).await;
        if *shutdown.borrow() {
            return;
        }
    }
}

async fn process_with_retry(
    processor: &Processor,
    key: &RawKey,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=8 {
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
            Err(e) => {
                tracing::warn!(%key, attempt, error = %e, "processing failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    tracing::error!(%key, "giving up for now; the next reconciliation will retry");
}

/// Queues every `raw/*.csv` that has neither a summary nor an error record.
/// Returns how many were queued.
pub async fn reconcile(processor: &Processor, queue: &Queue) -> anyhow::Result<usize> {
    let storage = processor.storage();
    let processed: HashSet<String> = storage
        .list("processed/")
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut queued = 0;
    for (k, _) in storage.list("raw/").await? {
        let Ok(key) = RawKey::parse(&k) else { continue };
        if processed.contains(&key.summary()) || processed.contains(&key.error()) {
            continue;
        }
        if queue.push(key) == Enqueue::Queued {
            queued += 1;
        }
    }
    Ok(queued)
}

/// Runs [`reconcile`] now and then every `every`, until shutdown.
pub async fn run_reconciler(
    processor: Arc<Processor>,
    queue: Queue,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match reconcile(&processor, &queue).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "reconciliation queued unprocessed files"),
            Err(e) => tracing::warn!(error = %e, "reconciliation failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Watches `<root>/raw` for finished files (closed after writing, or moved
/// in) and queues them. The watcher lives as long as the returned handle.
pub fn watch_local(
    root: &std::path::Path,
    queue: Queue,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let raw = root.join("raw");
    std::fs::create_dir_all(&raw)?;
    let root = root.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let finished = matches!(
            ev.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        );
        if !finished {
            return;
        }
        for p in ev.paths {
            let Ok(rel) = p.strip_prefix(&root) else {
                continue;
            };
            let Some(rel) = rel.to_str() else { continue };
            let key = rel.replace(std::path::MAIN_SEPARATOR, "/");
            if let Ok(k) = RawKey::parse(&key)
                && queue.push(k) == Enqueue::Full
            {
                tracing::warn!(%key, "queue full; reconciliation will pick it up");
            }
        }
    })?;
    watcher.watch(&raw, RecursiveMode::Recursive)?;
    Ok(watcher)
}
