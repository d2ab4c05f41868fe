//! The one work queue, the one worker loop that drains it, and the feeders
//! other than SQS: notifications (`POST /notify`), the local folder watcher
//! and the periodic reconciliation of `raw/` against what was processed.
//! The SQS consumer (`sqs_worker`) feeds the same queue.
//!
//! Work waits per stream: a stream's items are taken one at a time in the
//! order they came, so a stream is processed in order, while the workers
//! (one per core) take different streams at once, in turn. A key already
//! waiting is not queued twice.
//!
//! What differs by source is the item's `Delivery`, which says how a
//! failure is retried and what is done once the item is finished:
//!
//! - `Delivery::Direct` (notification, folder, reconciliation): storage
//!   failures are retried here with exponential backoff; a file that still
//!   fails is left for the next reconciliation pass, never dropped.
//! - `Delivery::Sqs`: one attempt per receive. The message is deleted
//!   once every file it names is done, handed back to SQS with a growing
//!   delay when one failed, and dead-lettered after `--sqs-max-receives`
//!   receives (see `sqs_worker`). With several instances sharing the SQS
//!   queue, such an item is worked on only while this instance holds its
//!   stream's lease (`apply::lease`).

use crate::apply::lease::{Claim, Leases};
use crate::apply::processor::{Outcome, ProcessError, Processor, STAGING_MAX_AGE};
use crate::ingest::sqs_worker::InHand;
use crate::state::keys::RawKey;
use crate::state::stream::Stream;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How an item came, and so how its failures are retried and how it is
/// settled once finished: the one thing that varies by source.
pub(crate) enum Delivery {
    /// A notification, the folder watcher or reconciliation: retried here,
    /// nothing to settle.
    Direct,
    /// An SQS message in hand: settled with SQS (deleted, handed back, or
    /// dead-lettered). Boxed: a message is large, and items move around.
    Sqs(Box<InHand>),
}

impl Delivery {
    /// The wait before trying `key` again after its `attempt`-th failure
    /// `e` here, or `None` to stop (the failure is then settled); logs it.
    fn failed(&self, key: &RawKey, attempt: u32, e: &ProcessError) -> Option<Duration> {
        match self {
            Delivery::Direct if attempt < ATTEMPTS => {
                tracing::warn!(%key, attempt, error = %e, "processing failed; will retry");
                crate::telemetry::retry("file");
                Some(backoff(attempt))
            }
            Delivery::Direct => {
                tracing::error!(%key, error = %e, "giving up for now; the next reconciliation will retry");
                None
            }
            Delivery::Sqs(m) => {
                m.failed(key, e);
                None
            }
        }
    }

    /// Settles a finished item, given the files that still failed.
    async fn settle(self, processor: &Processor, failed: Vec<(RawKey, ProcessError)>) {
        match self {
            // Failures are left to reconciliation (logged as they happened).
            Delivery::Direct => {}
            Delivery::Sqs(m) => m.settle(processor, failed).await,
        }
    }

    /// Gives back an item that was not started (shutdown, or its stream
    /// busy elsewhere for too long).
    async fn not_started(self) {
        match self {
            // A file not started is found again by reconciliation.
            Delivery::Direct => {}
            Delivery::Sqs(m) => m.hand_back().await,
        }
    }

    /// Whether the item is worked on only on its stream's lease: an SQS
    /// message, which other instances may hold events of the stream too.
    fn wants_lease(&self) -> bool {
        matches!(self, Delivery::Sqs(_))
    }

    /// The source, as the `processed` log line names it (direct: none).
    fn via(&self) -> Option<&'static str> {
        match self {
            Delivery::Direct => None,
            Delivery::Sqs(_) => Some("sqs"),
        }
    }
}

/// A unit of work: the files of one notification, and how it came.
pub(crate) struct Item {
    /// Processed in this order; the first one's stream is the item's.
    keys: Vec<RawKey>,
    delivery: Delivery,
    /// Its place in the order of arrival (for [`Queue::close`]).
    seq: u64,
    /// Failed attempts to read its stream's lease (storage failing).
    lease_failures: u32,
}

impl Item {
    /// An SQS message naming `keys` (at least one).
    pub(crate) fn sqs(keys: Vec<RawKey>, message: InHand) -> Self {
        Self {
            keys,
            delivery: Delivery::Sqs(Box::new(message)),
            seq: 0,
            lease_failures: 0,
        }
    }

    /// Gives the item back as not started (the queue was shut down).
    pub(crate) async fn not_started(self) {
        self.delivery.not_started().await;
    }

    fn stream(&self) -> Stream {
        self.keys.first().map_or(Stream::DEFAULT, RawKey::stream)
    }
}

/// The work queue: items waiting, per stream. Cloning shares it.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("waiting", &self.len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes a worker when a stream becomes ready.
    wake: Notify,
    /// Most direct keys waiting at once (SQS items are bounded by the
    /// messages the consumer keeps in hand).
    capacity: usize,
    /// Per-stream leases, when instances share an SQS queue.
    leases: Option<Arc<Leases>>,
}

#[derive(Default)]
struct State {
    /// Streams with work waiting or in hand; a stream no worker has and
    /// with nothing waiting has no entry.
    streams: HashMap<Stream, Lane>,
    /// Streams with work waiting that no worker has, in turn.
    ready: VecDeque<Stream>,
    /// Direct keys waiting (a key waiting is not queued twice).
    pending: HashSet<RawKey>,
    /// Items waiting, of any delivery.
    waiting: usize,
    /// Arrivals so far (the next item's `seq`).
    arrived: u64,
    /// Streams whose lease this instance has claimed and not given up.
    leased: HashSet<Stream>,
    /// Shut down: nothing more is queued.
    closed: bool,
}

/// One stream's items.
#[derive(Default)]
struct Lane {
    items: VecDeque<Item>,
    /// A worker has the stream (working on it, waiting for its lease, or
    /// giving the lease up): no other worker takes it meanwhile.
    busy: bool,
}

/// Why a key was not queued.
#[derive(Debug, PartialEq)]
pub enum Enqueue {
    /// Newly queued.
    Queued,
    /// Already waiting.
    AlreadyQueued,
    /// The queue is full, or shutting down (callers should ask the sender
    /// to retry).
    Full,
}

/// Longest an SQS item waits for its stream's lease (held by another
/// instance) before it is handed back to SQS.
const LEASE_WAIT: Duration = Duration::from_secs(120);
/// How long a stream lingers with nothing to do before its lease is given up.
const STREAM_IDLE: Duration = Duration::from_millis(100);
/// How often the lease of a stream being worked on is renewed.
const LEASE_RENEW: Duration = Duration::from_secs(5);

impl Queue {
    /// A queue holding at most `capacity` keys from direct sources.
    pub fn new(capacity: usize) -> Self {
        Self::build(capacity, None)
    }

    /// As [`Queue::new`], working SQS items on their stream's lease.
    pub(crate) fn with_leases(capacity: usize, leases: Arc<Leases>) -> Self {
        Self::build(capacity, Some(leases))
    }

    fn build(capacity: usize, leases: Option<Arc<Leases>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                wake: Notify::new(),
                capacity: capacity.max(1),
                leases,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is as good.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `key` unless it is already waiting.
    pub fn push(&self, key: RawKey) -> Enqueue {
        let mut st = self.state();
        if st.pending.contains(&key) {
            return Enqueue::AlreadyQueued;
        }
        if st.closed || st.pending.len() >= self.shared.capacity {
            return Enqueue::Full;
        }
        st.pending.insert(key.clone());
        let item = Item {
            keys: vec![key],
            delivery: Delivery::Direct,
            seq: 0,
            lease_failures: 0,
        };
        self.enqueue(&mut st, item);
        Enqueue::Queued
    }

    /// Queues an item of the SQS consumer; gives it back if the queue is
    /// shut down.
    pub(crate) fn push_item(&self, item: Item) -> Result<(), Item> {
        let mut st = self.state();
        if st.closed {
            return Err(item);
        }
        self.enqueue(&mut st, item);
        Ok(())
    }

    fn enqueue(&self, st: &mut State, mut item: Item) {
        item.seq = st.arrived;
        st.arrived += 1;
        st.waiting += 1;
        let stream = item.stream();
        let lane = st.streams.entry(stream.clone()).or_default();
        lane.items.push_back(item);
        // A stream already ready, or in a worker's hands, needs no mention.
        if !lane.busy && lane.items.len() == 1 {
            st.ready.push_back(stream);
            self.shared.wake.notify_one();
        }
    }

    /// Takes the first item of the next ready stream, which is then this
    /// worker's until [`Queue::finish`] or [`Queue::park`].
    async fn next(&self) -> (Stream, Item) {
        loop {
            {
                let mut st = self.state();
                while let Some(stream) = st.ready.pop_front() {
                    let Some(lane) = st.streams.get_mut(&stream) else {
                        continue;
                    };
                    let Some(item) = lane.items.pop_front() else {
                        continue;
                    };
                    lane.busy = true;
                    st.waiting -= 1;
                    // Off the waiting set before work starts, so a new
                    // version uploaded meanwhile is queued again, not lost.
                    if matches!(item.delivery, Delivery::Direct) {
                        for k in &item.keys {
                            st.pending.remove(k);
                        }
                    }
                    if !st.ready.is_empty() {
                        // More work: pass the wake-up on to another worker.
                        self.shared.wake.notify_one();
                    }
                    return (stream, item);
                }
            }
            self.shared.wake.notified().await;
        }
    }

    /// The worker is done with `stream` for now: it is ready again if it
    /// has more waiting; otherwise its lease is given up if it stays idle.
    fn finish(&self, stream: &Stream) {
        let mut st = self.state();
        let Some(lane) = st.streams.get_mut(stream) else {
            return;
        };
        lane.busy = false;
        if lane.items.is_empty() {
            st.streams.remove(stream);
            if st.leased.contains(stream) {
                self.release_when_idle(stream.clone());
            }
        } else {
            st.ready.push_back(stream.clone());
            self.shared.wake.notify_one();
        }
    }

    /// Puts `item` back at the head of its stream, which no worker takes
    /// for `pause` (its lease is elsewhere, or could not be read).
    /// Gives the item back if the queue is shut down meanwhile.
    fn park(&self, stream: Stream, item: Item, pause: Duration) -> Result<(), Item> {
        {
            let mut st = self.state();
            if st.closed {
                return Err(item);
            }
            st.waiting += 1;
            st.streams
                .entry(stream.clone())
                .or_default()
                .items
                .push_front(item);
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            queue.finish(&stream);
        });
        Ok(())
    }

    /// Gives `stream`'s lease up after [`STREAM_IDLE`] unless work of the
    /// stream came meanwhile. The stream counts as busy while the lease is
    /// given up, so no worker can be holding it when the release lands.
    fn release_when_idle(&self, stream: Stream) {
        let Some(leases) = self.shared.leases.clone() else {
            return;
        };
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STREAM_IDLE).await;
            {
                let mut st = queue.state();
                if st.streams.contains_key(&stream) || !st.leased.remove(&stream) {
                    return;
                }
                st.streams.insert(
                    stream.clone(),
                    Lane {
                        items: VecDeque::new(),
                        busy: true,
                    },
                );
            }
            leases.release(&stream).await;
            queue.finish(&stream);
        });
    }

    /// This instance's id, as its stream leases name it (with leases).
    pub(crate) fn instance(&self) -> Option<&str> {
        self.shared.leases.as_deref().map(Leases::owner)
    }

    /// Items waiting now (direct keys and SQS messages).
    pub(crate) fn len(&self) -> usize {
        self.state().waiting
    }

    /// Shuts the queue: nothing more is queued, SQS messages waiting are
    /// handed back to SQS at once, and the direct keys that were waiting
    /// are returned in the order they came (left to the next start's
    /// reconciliation, or to a caller that processes them itself).
    pub async fn close(&self) -> Vec<RawKey> {
        let mut items: Vec<Item> = {
            let mut st = self.state();
            st.closed = true;
            st.ready.clear();
            st.pending.clear();
            st.waiting = 0;
            let mut items = Vec::new();
            st.streams.retain(|_, lane| {
                items.extend(lane.items.drain(..));
                lane.busy
            });
            items
        };
        items.sort_by_key(|i| i.seq);
        let mut direct = Vec::new();
        for item in items {
            match item.delivery {
                Delivery::Direct => direct.extend(item.keys),
                other => other.not_started().await,
            }
        }
        direct
    }

    /// Gives up every stream lease this instance holds (on shutdown, once
    /// the workers are done), so other instances take the streams at once.
    pub(crate) async fn release_leases(&self) {
        let Some(leases) = &self.shared.leases else {
            return;
        };
        let held: Vec<Stream> = self.state().leased.drain().collect();
        for stream in held {
            leases.release(&stream).await;
        }
    }
}

/// What became of an item a worker took.
enum Step {
    /// Finished (or given back): the stream is free.
    Done,
    /// Its stream's lease is not to be had yet: back to the queue's head,
    /// for this long.
    Park(Item, Duration),
}

/// Drains the queue until `shutdown` flips. The item in hand then gets
/// `grace` to finish; after that it is abandoned, which is safe: nothing is
/// visible before its commit, and a commit is finished by whoever next
/// looks at the file (an SQS message abandoned so is handed back to SQS by
/// its consumer).
pub async fn run_worker(
    processor: Arc<Processor>,
    queue: Queue,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    loop {
        let (stream, item) = tokio::select! {
            taken = queue.next() => taken,
            _ = stopped(shutdown.clone()) => return,
        };
        if *shutdown.borrow() {
            item.delivery.not_started().await;
            queue.finish(&stream);
            return;
        }
        let key = item
            .keys
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let sqs = item.delivery.via().is_some();
        let work = work(&processor, &queue, &stream, item, shutdown.clone());
        tokio::pin!(work);
        let step = tokio::select! {
            step = &mut work => step,
            _ = stopped(shutdown.clone()) => {
                match tokio::time::timeout(grace, &mut work).await {
                    Ok(Step::Park(item, _)) => item.delivery.not_started().await,
                    Ok(Step::Done) => {}
                    Err(_) if sqs => tracing::warn!(%key, ?grace, "shutdown grace period over: abandoning the message in hand; it will be received again"),
                    Err(_) => tracing::warn!(%key, ?grace, "shutdown grace period over: abandoning the file in hand; it will be processed on the next start"),
                }
                return;
            }
        };
        match step {
            Step::Done => queue.finish(&stream),
            Step::Park(item, pause) => {
                if let Err(item) = queue.park(stream.clone(), item, pause) {
                    item.delivery.not_started().await;
                    queue.finish(&stream);
                }
            }
        }
    }
}

/// Works on one item: on its stream's lease when it wants one, every file
/// in turn, then settles it.
async fn work(
    processor: &Processor,
    queue: &Queue,
    stream: &Stream,
    mut item: Item,
    shutdown: watch::Receiver<bool>,
) -> Step {
    let leases = match &queue.shared.leases {
        Some(leases) if item.delivery.wants_lease() => Some(leases),
        _ => None,
    };
    let mut leased = false;
    if let Some(leases) = leases {
        match leases.claim(stream).await {
            Ok(Claim::Held) => {
                queue.state().leased.insert(stream.clone());
                leased = true;
            }
            Ok(Claim::Elsewhere { left, .. }) => {
                if let Delivery::Sqs(m) = &item.delivery
                    && m.received().elapsed() > LEASE_WAIT
                {
                    tracing::debug!(%stream, "stream busy on another instance; message handed back");
                    item.delivery.not_started().await;
                    return Step::Done;
                }
                return Step::Park(item, left.min(Duration::from_millis(100)));
            }
            Err(e) => {
                // Leases steer work, they do not guard it: with storage
                // failing, the commit will say what it can do.
                item.lease_failures += 1;
                if item.lease_failures < 3 {
                    return Step::Park(item, Duration::from_millis(200));
                }
                tracing::debug!(%stream, error = %e, "stream lease unavailable; working without it");
            }
        }
    }
    // A long file keeps its stream's lease (this never ends by itself: the
    // item's handling ends the select).
    let renew = async {
        match leases {
            Some(leases) if leased => loop {
                tokio::time::sleep(LEASE_RENEW).await;
                let _ = leases.claim(stream).await;
            },
            _ => std::future::pending().await,
        }
    };
    let Item { keys, delivery, .. } = item;
    let files = async {
        if let Delivery::Sqs(m) = &delivery {
            m.starting(keys.len());
        }
        let mut failed = Vec::new();
        for key in keys {
            match process(processor, &key, &delivery, shutdown.clone()).await {
                Ok(()) => {}
                Err(Some(e)) => failed.push((key, e)),
                // Shutdown cut the retries short: the file is left as if
                // not started (it is not done, and nothing says it failed).
                Err(None) => return,
            }
        }
        delivery.settle(processor, failed).await;
    };
    tokio::select! {
        () = files => {}
        () = renew => {}
    }
    Step::Done
}

/// Processes `key`, retrying as its delivery says. `Err(Some)`: the last
/// failure; `Err(None)`: shutdown came during a wait between attempts.
async fn process(
    processor: &Processor,
    key: &RawKey,
    delivery: &Delivery,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Option<ProcessError>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        tracing::debug!(%key, attempt, "processing");
        match processor.process(key).await {
            Ok(Outcome::Applied(s)) => {
                tracing::info!(
                    %key, rows = s.total_rows, anomalies = s.anomaly_count,
                    ms = format!("{:.1}", s.duration_ms), via = delivery.via(), "processed"
                );
                return Ok(());
            }
            Ok(Outcome::AlreadyApplied) => {
                tracing::debug!(%key, "already processed; skipped");
                return Ok(());
            }
            Ok(Outcome::Rejected(_)) | Ok(Outcome::Missing) => return Ok(()),
            Err(e) => match delivery.failed(key, attempt, &e) {
                Some(wait) => tokio::select! {
                    () = until_retry(processor, wait) => {}
                    _ = stopped(shutdown.clone()) => return Err(None),
                },
                None => return Err(Some(e)),
            },
        }
    }
}

/// How often storage is probed while a file waits to be tried again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Waits `wait` before a file's next attempt, or less: storage is probed
/// every [`PROBE_EVERY`], and once it has been seen down and then back, the
/// file is tried at once (an outage that ends need not be waited out to the
/// end of a long backoff). A failure the probe does not show, such as a
/// full disk, waits it all.
async fn until_retry(processor: &Processor, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut down = false;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(PROBE_EVERY)).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        // A probe that hangs (an S3 client retrying) counts as down.
        match tokio::time::timeout(left.min(PROBE_EVERY), processor.storage().probe()).await {
            Ok(Ok(())) if down => {
                tracing::debug!("storage is back; retrying now");
                return;
            }
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => down = true,
        }
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
pub(crate) async fn stopped(mut shutdown: watch::Receiver<bool>) {
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

/// Attempts per file (from a direct source) before it is left to reconciliation.
pub const ATTEMPTS: u32 = 10;

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

    fn key(k: &str) -> RawKey {
        RawKey::parse(k).unwrap()
    }

    async fn take(q: &Queue) -> (String, String) {
        let (stream, item) = tokio::time::timeout(Duration::from_secs(5), q.next())
            .await
            .expect("an item is ready");
        (stream.to_string(), item.keys[0].as_str().to_string())
    }

    #[tokio::test]
    async fn a_retry_waits_its_backoff_unless_storage_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let p = Processor::new(
            crate::storage::Storage::local(&data).unwrap(),
            tswatch_core::EngineConfig::default(),
        );
        // Storage up all along (a failure it does not show): the whole wait.
        let start = std::time::Instant::now();
        until_retry(&p, Duration::from_millis(2500)).await;
        assert!(start.elapsed() >= Duration::from_millis(2500));
        // Storage away, then back after a moment: tried again long before
        // the backoff ends.
        let away = dir.path().join("away");
        std::fs::rename(&data, &away).unwrap();
        let back = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            std::fs::rename(&away, &data).unwrap();
        });
        let start = std::time::Instant::now();
        until_retry(&p, Duration::from_secs(600)).await;
        back.await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_stream_is_taken_in_order_and_by_one_worker_at_a_time() {
        let q = Queue::new(10);
        for k in ["raw/a/1.csv", "raw/a/2.csv", "raw/b/1.csv", "raw/3.csv"] {
            assert_eq!(q.push(key(k)), Enqueue::Queued);
        }
        assert_eq!(q.push(key("raw/a/2.csv")), Enqueue::AlreadyQueued);
        assert_eq!(q.len(), 4);
        // Stream a is in hand: its second file waits; the others do not.
        assert_eq!(take(&q).await, ("a".into(), "raw/a/1.csv".into()));
        assert_eq!(take(&q).await, ("b".into(), "raw/b/1.csv".into()));
        assert_eq!(take(&q).await, ("".into(), "raw/3.csv".into()));
        // Nothing of the default stream waits now; a new file of it still
        // waits for the one in hand.
        assert_eq!(q.push(key("raw/4.csv")), Enqueue::Queued);
        let nothing = tokio::time::timeout(Duration::from_millis(50), q.next()).await;
        assert!(nothing.is_err(), "a stream in hand was taken again");
        // Taken off the waiting set: a new version may be queued again.
        assert_eq!(q.push(key("raw/a/1.csv")), Enqueue::Queued);
        q.finish(&Stream::named("a").unwrap());
        assert_eq!(take(&q).await, ("a".into(), "raw/a/2.csv".into()));
        q.finish(&Stream::named("a").unwrap());
        assert_eq!(take(&q).await, ("a".into(), "raw/a/1.csv".into()));
        q.finish(&Stream::DEFAULT);
        assert_eq!(take(&q).await, ("".into(), "raw/4.csv".into()));
        assert_eq!(q.len(), 0);
    }

    /// An item whose lease is elsewhere goes back to the head of its
    /// stream, which no worker takes for the pause; other streams go on.
    #[tokio::test(start_paused = true)]
    async fn a_parked_item_keeps_its_place_and_its_stream_waits() {
        let q = Queue::new(10);
        for k in ["raw/a/1.csv", "raw/a/2.csv"] {
            q.push(key(k));
        }
        let (stream, item) = q.next().await;
        assert!(q.park(stream, item, Duration::from_secs(1)).is_ok());
        q.push(key("raw/b/1.csv"));
        assert_eq!(take(&q).await, ("b".into(), "raw/b/1.csv".into()));
        let early = tokio::time::timeout(Duration::from_millis(900), q.next()).await;
        assert!(
            early.is_err(),
            "a parked stream was taken before its pause ended"
        );
        assert_eq!(take(&q).await, ("a".into(), "raw/a/1.csv".into()));
        q.finish(&Stream::named("a").unwrap());
        assert_eq!(take(&q).await, ("a".into(), "raw/a/2.csv".into()));
    }

    #[tokio::test]
    async fn full_and_closed_queues_refuse_and_close_returns_the_waiting_keys() {
        let q = Queue::new(2);
        assert_eq!(q.push(key("raw/b/1.csv")), Enqueue::Queued);
        assert_eq!(q.push(key("raw/a/1.csv")), Enqueue::Queued);
        assert_eq!(q.push(key("raw/a/2.csv")), Enqueue::Full);
        // In the order they came, whatever their streams.
        let left: Vec<String> = q
            .close()
            .await
            .iter()
            .map(|k| k.as_str().to_string())
            .collect();
        assert_eq!(left, ["raw/b/1.csv", "raw/a/1.csv"]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.push(key("raw/c/1.csv")), Enqueue::Full);
    }

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
