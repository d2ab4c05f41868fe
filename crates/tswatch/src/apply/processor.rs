//! Applies one raw batch exactly once: score → stage the output → commit the
//! state by compare-and-swap → publish the outputs.
//!
//! Crash safety: until the commit, nothing outside `state/staging/` has been
//! written, so a crash just means the file is processed again. After the
//! commit, the ledger in `state/engine.json` names the staged output, so
//! whoever next looks at the file (a retry, a duplicate notification, the
//! reconciler) finishes publishing it instead of applying it twice. The
//! summary is written last: it is the "done" marker, so everything it
//! vouches for (the scored copy, the baseline projection) exists first. An
//! entry leaves the bounded ledger only once its outputs are published.
//!
//! A failed compare-and-swap usually means another worker committed first;
//! but a conditional write whose response was lost is retried by the client
//! and then fails its own precondition, and a write that timed out may have
//! landed. So a failed commit never discards its staged output until the
//! reloaded ledger shows the commit is not there.

use crate::apply::alerts::AlertSink;
use crate::apply::pipeline::{PipelineError, score_object};
use crate::csv::records::InputError;
use crate::csv::scorer::CellSafety;
use crate::state::documents::{
    self, Applied, BASELINE_KEY, LEDGER_LEN, StateDoc, Summary, Totals, now_iso,
};
use crate::state::keys::{self, RawKey};
use crate::state::stream::Stream;
use crate::storage::cas::{Decision, Retry, Swap, compare_and_swap};
use crate::storage::{Storage, StoreError, Version};
use crate::telemetry;
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};
use tswatch_core::{Engine, EngineConfig};

/// What happened to a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Scored and committed now.
    Applied(Summary),
    /// This exact version was already applied (possibly finished publishing now).
    AlreadyApplied,
    /// Rejected as unusable; `processed/<name>_error.json` says why.
    Rejected(String),
    /// The object no longer exists.
    Missing,
}

/// Failures worth retrying later (storage, contention).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state document is unusable.
    #[error("state/engine.json is unusable: {0}")]
    State(String),
    /// Too many lost compare-and-swaps in a row.
    #[error("gave up after {0} conflicting commits")]
    Contention(u32),
    /// Storage did not answer in time.
    #[error("storage did not answer within {0:?}")]
    Timeout(Duration),
}

/// The committed state as the read endpoints see it.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// The state document.
    pub(crate) doc: Arc<StateDoc>,
    /// Set when storage could not be read just now: the document is the
    /// last one read, this long ago.
    pub(crate) stale_for: Option<Duration>,
}

/// Shared processing service.
#[derive(Debug)]
pub struct Processor {
    storage: Storage,
    config: EngineConfig,
    /// Which cells of the scored copies are made spreadsheet-safe.
    safety: CellSafety,
    /// Last state seen per stream, for the read endpoints: (document, when read).
    cache: RwLock<HashMap<Stream, (Arc<StateDoc>, Instant)>>,
    /// Streams known to exist, and when `state/` was last listed for them.
    streams: RwLock<(BTreeSet<Stream>, Option<Instant>)>,
    /// One refresh of the cache at a time; other readers use the copy in hand.
    refresh: Arc<Mutex<()>>,
    /// Whether the last refresh reached storage.
    storage_ok: AtomicBool,
    /// Per stream, the engine this process last committed and the state
    /// version it committed: when the next file finds that version, the
    /// engine is used as it is instead of being rebuilt from the document
    /// (saving the forest's training on every small file). Restoring from
    /// the document gives the same engine; this only skips the work. At
    /// most [`KEPT_ENGINES`], the most recently committed, with the time
    /// of their commit.
    engines: std::sync::Mutex<HashMap<Stream, (Version, Engine, Instant)>>,
    /// Raw keys committed by this process whose outputs could not be
    /// published yet (retried until they are).
    unpublished: std::sync::Mutex<HashSet<String>>,
    /// Where alerts for files committed with anomalies go (`--alert-webhook`).
    alerts: Option<AlertSink>,
    /// The last files this instance refused, newest last (for the
    /// dashboard; bounded by [`RECENT_ERRORS`]).
    recent_errors: std::sync::Mutex<VecDeque<Value>>,
}

/// How many streams' engines are kept between files. Each holds a trained
/// forest and its training window (measured: about 0.37 MB for two channels
/// with the default settings; 200 streams took 126 MB resident unbounded,
/// 57 MB with this bound), so keeping every stream's would let the number
/// of streams in a bucket decide this process's memory. A stream whose
/// engine was dropped has it rebuilt from its state when its next file
/// comes.
const KEPT_ENGINES: usize = 16;

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

const MAX_CONFLICTS: u32 = 50;
/// Refused files the dashboard lists.
pub(crate) const RECENT_ERRORS: usize = 50;
/// How stale the read endpoints' view of the state may be.
const CACHE_TTL: Duration = Duration::from_millis(500);
/// How long a read endpoint waits for storage before answering from the
/// last state it has (the object store client itself retries for minutes).
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `state/` is listed to find new streams.
const STREAMS_TTL: Duration = Duration::from_secs(5);
/// How long a background probe of unreachable storage may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Staged outputs older than this and not named by the ledger are debris of
/// crashed attempts. Generous: a huge file's multipart upload is dated from
/// its start, and must survive until its commit.
pub(crate) const STAGING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl Processor {
    /// A processor over `storage` with the given engine settings.
    pub fn new(storage: Storage, config: EngineConfig) -> Self {
        Self {
            storage,
            config,
            safety: CellSafety::default(),
            cache: RwLock::new(HashMap::new()),
            streams: RwLock::new((BTreeSet::from([Stream::DEFAULT]), None)),
            refresh: Arc::new(Mutex::new(())),
            storage_ok: AtomicBool::new(true),
            engines: std::sync::Mutex::new(HashMap::new()),
            unpublished: std::sync::Mutex::new(HashSet::new()),
            alerts: None,
            recent_errors: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// The same processor, offering an alert to `sink` for every file it
    /// commits with anomalies: only the caller whose commit won offers it,
    /// so a file is alerted once however often it is notified and however
    /// many instances race for it.
    pub(crate) fn with_alerts(mut self, sink: AlertSink) -> Self {
        self.alerts = Some(sink);
        self
    }

    /// What follows a commit this call won (the exactly-once point), before
    /// publishing, which a later call may finish instead: the file's metrics
    /// (`flagged`: rows per channel) and its alert (offered, never waited on).
    fn committed(&self, stream: &Stream, entry: &Applied, flagged: &[(String, u64)]) {
        telemetry::file_applied(stream, &entry.summary, flagged);
        if let Some(sink) = &self.alerts {
            sink.offer(entry);
        }
    }

    /// The engine settings.
    pub(crate) fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The last files this instance refused (`source_key`, `stream`,
    /// `error`, `line`, `failed_at`), newest first.
    pub(crate) fn recent_errors(&self) -> Vec<Value> {
        self.recent_errors
            .lock()
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// The same processor, making the cells of scored copies safe as
    /// `safety` says.
    pub(crate) fn with_cell_safety(mut self, safety: CellSafety) -> Self {
        self.safety = safety;
        self
    }

    /// Whether `source_key` was committed here but its outputs are not out
    /// yet (its `output_key` does not exist; a retry is on its way).
    pub(crate) fn is_unpublished(&self, source_key: &str) -> bool {
        self.unpublished
            .lock()
            .is_ok_and(|s| s.contains(source_key))
    }

    /// Forgets that `source_key`'s outputs were late; whether they were.
    fn mark_published(&self, source_key: &str) -> bool {
        self.unpublished
            .lock()
            .is_ok_and(|mut late| late.remove(source_key))
    }

    /// The engine for a stream's state at `version`: the one kept from this
    /// process's last commit if it is that version, else rebuilt from `doc`.
    fn engine_at(
        &self,
        stream: &Stream,
        version: &str,
        doc: &StateDoc,
    ) -> Result<Engine, ProcessError> {
        let kept = self
            .engines
            .lock()
            .ok()
            .and_then(|mut m| m.remove(stream))
            .filter(|(v, _, _)| v == version);
        match kept {
            Some((_, engine, _)) => Ok(engine),
            None => Engine::from_state(self.config, doc.engine.clone())
                .map_err(|e| ProcessError::State(e.to_string())),
        }
    }

    /// Keeps the engine just committed as `version` of a stream's state,
    /// dropping the least recently committed one if [`KEPT_ENGINES`] are
    /// kept already.
    fn keep_engine(&self, stream: &Stream, version: Version, engine: Engine) {
        if let Ok(mut m) = self.engines.lock() {
            if m.len() >= KEPT_ENGINES && !m.contains_key(stream) {
                let oldest = m
                    .iter()
                    .min_by_key(|(_, (_, _, at))| *at)
                    .map(|(s, _)| s.clone());
                if let Some(s) = oldest {
                    m.remove(&s);
                }
            }
            m.insert(stream.clone(), (version, engine, Instant::now()));
        }
    }

    /// The storage in use.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Loads a stream's state document, creating
    /// it on first use (adopting a seed `baseline.json` and the totals of
    /// existing summaries).
    pub async fn load(&self, stream: &Stream) -> Result<(StateDoc, Version), ProcessError> {
        let key = stream.engine_key();
        loop {
            let swap = compare_and_swap(
                &self.storage,
                &key,
                Retry::Forever,
                || self.stored(&key),
                |current, _| async move {
                    Ok(match current {
                        Some((bytes, v)) => Decision::Stop((parse_doc(&bytes)?, v)),
                        None => Decision::Write {
                            body: to_bytes(&self.bootstrap(stream).await?),
                            then: (),
                        },
                    })
                },
                |_| {},
            )
            .await?;
            match swap {
                Swap::Stopped(found) => return Ok(found),
                // Created (by this call, or by another first): read back as stored.
                Swap::Written(..) | Swap::GaveUp(..) => continue,
            }
        }
    }

    /// A document as stored, with its version, for [`compare_and_swap`].
    async fn stored(&self, key: &str) -> Result<Option<(Bytes, Version)>, ProcessError> {
        Ok(self.storage.get_versioned(key).await?)
    }

    /// A stream's state as [`Processor::load`] gives it, for [`compare_and_swap`].
    async fn loaded(&self, stream: &Stream) -> Result<Option<(StateDoc, Version)>, ProcessError> {
        Ok(Some(self.load(stream).await?))
    }

    /// The state of `stream` as it is, writing nothing: what a first
    /// [`Processor::load`] would store, if nothing is stored yet.
    pub(crate) async fn peek(&self, stream: &Stream) -> Result<StateDoc, ProcessError> {
        match self.storage.get_versioned(&stream.engine_key()).await? {
            Some((bytes, _)) => parse_doc(&bytes),
            None => self.bootstrap(stream).await,
        }
    }

    /// The first state: a seed baseline if one exists, and the totals of any
    /// summaries already in `processed/`.
    async fn bootstrap(&self, stream: &Stream) -> Result<StateDoc, ProcessError> {
        let seed_baseline = if stream.is_default() {
            self.storage.get(BASELINE_KEY).await?
        } else {
            None
        };
        let engine = match seed_baseline {
            Some(b) => {
                let v: Value = serde_json::from_slice(&b)
                    .map_err(|e| ProcessError::State(format!("state/baseline.json: {e}")))?;
                let st = documents::adopt_seed_baseline(&v)
                    .map_err(|e| ProcessError::State(e.to_string()))?;
                tracing::info!(
                    channels = st.channels.len(),
                    "adopted existing state/baseline.json"
                );
                st
            }
            None => Default::default(),
        };
        let mut doc = StateDoc::new(engine);
        let mut recent: Vec<Summary> = Vec::new();
        for (key, _) in self.storage.list("processed/").await? {
            if !key.ends_with("_summary.json") {
                continue;
            }
            let Some(b) = self.storage.get(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<Summary>(&b) {
                Ok(s)
                    if RawKey::parse(&s.source_key)
                        .map_or(stream.is_default(), |k| k.stream() == *stream) =>
                {
                    doc.totals.files_processed += 1;
                    doc.totals.total_rows_scored += s.total_rows;
                    doc.totals.total_anomalies += s.anomaly_count;
                    doc.totals.total_events += s.event_count;
                    recent.push(s);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%key, error = %e, "skipping unreadable summary"),
            }
        }
        recent.sort_by(|a, b| a.processed_at.cmp(&b.processed_at));
        let totals = doc.totals.clone();
        for s in recent.into_iter().rev().take(documents::RECENT_FILES).rev() {
            doc.applied.push_back(Applied {
                source_key: s.source_key.clone(),
                source_etag: s.source_etag.clone().unwrap_or_default(),
                staged_key: String::new(),
                staged_bytes: None,
                summary: s,
                anomalies: Vec::new(),
            });
        }
        doc.totals = totals;
        if doc.totals.files_processed > 0 {
            tracing::info!(
                files = doc.totals.files_processed,
                "counted existing processed summaries"
            );
        }
        Ok(doc)
    }

    /// The state for read endpoints, at most [`CACHE_TTL`] old while
    /// storage answers. Unless it has never been read, this never waits more
    /// than [`READ_TIMEOUT`] for storage: when storage is unreachable the last
    /// state read is returned at once (the view says how old it is) while a
    /// background probe looks for storage to come back.
    pub(crate) async fn view(self: &Arc<Self>, stream: &Stream) -> Result<View, ProcessError> {
        let cached = self.cache.read().await.get(stream).cloned();
        let Some((doc, at)) = cached else {
            let _guard = self.refresh.lock().await;
            return self.reload(stream, READ_TIMEOUT).await;
        };
        if at.elapsed() < CACHE_TTL {
            return Ok(self.view_of(doc, at));
        }
        let Ok(guard) = self.refresh.clone().try_lock_owned() else {
            // Someone is refreshing: answer from the copy in hand.
            return Ok(self.view_of(doc, at));
        };
        if !self.storage_ok.load(Ordering::Relaxed) {
            let me = self.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let _ = me.reload(&stream, PROBE_TIMEOUT).await;
            });
            return Ok(self.view_of(doc, at));
        }
        match self.reload(stream, READ_TIMEOUT).await {
            Ok(v) => Ok(v),
            Err(_) => Ok(self.view_of(doc, at)),
        }
    }

    /// Reads the state into the cache, waiting at most `timeout`; records
    /// whether storage answered. The caller holds the refresh lock.
    async fn reload(&self, stream: &Stream, timeout: Duration) -> Result<View, ProcessError> {
        let loaded = match tokio::time::timeout(timeout, self.load(stream)).await {
            Ok(r) => r,
            Err(_) => Err(ProcessError::Timeout(timeout)),
        };
        match loaded {
            Ok((doc, _)) => {
                let doc = Arc::new(doc);
                if !self.storage_ok.swap(true, Ordering::Relaxed) {
                    tracing::info!("state readable again");
                }
                self.remember(stream, doc.clone()).await;
                Ok(View {
                    doc,
                    stale_for: None,
                })
            }
            Err(e) => {
                if self.storage_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read the state; serving the last one read");
                }
                Err(e)
            }
        }
    }

    fn view_of(&self, doc: Arc<StateDoc>, at: Instant) -> View {
        let ok = self.storage_ok.load(Ordering::Relaxed);
        View {
            doc,
            stale_for: (!ok).then(|| at.elapsed()),
        }
    }

    /// The views of every stream (the default one first), for endpoints
    /// that report over all of them. Streams are found by listing `state/`
    /// at most every few seconds.
    pub(crate) async fn views(self: &Arc<Self>) -> Result<Vec<(Stream, View)>, ProcessError> {
        let mut out = Vec::new();
        for s in self.known_streams().await {
            out.push((s.clone(), self.view(&s).await?));
        }
        Ok(out)
    }

    /// Every stream with state, from a listing of `state/` no older than
    /// [`STREAMS_TTL`] (or the last known set if storage does not answer).
    pub(crate) async fn known_streams(&self) -> Vec<Stream> {
        let fresh = self
            .streams
            .read()
            .await
            .1
            .is_some_and(|t| t.elapsed() < STREAMS_TTL);
        if !fresh {
            let listed = tokio::time::timeout(READ_TIMEOUT, self.storage.list("state/")).await;
            let mut s = self.streams.write().await;
            if let Ok(Ok(keys)) = listed {
                for (k, _) in keys {
                    // Not a stream: a deeper key, or tswatch's own (staging).
                    if let Some(stream) = k
                        .strip_prefix("state/")
                        .and_then(|r| r.strip_suffix("/engine.json"))
                        .and_then(|n| Stream::named(n).ok())
                    {
                        s.0.insert(stream);
                    }
                }
            }
            s.1 = Some(Instant::now());
        }
        self.streams.read().await.0.iter().cloned().collect()
    }

    async fn remember(&self, stream: &Stream, doc: Arc<StateDoc>) {
        self.cache
            .write()
            .await
            .insert(stream.clone(), (doc, Instant::now()));
        let known = self.streams.read().await.0.contains(stream);
        if !known {
            self.streams.write().await.0.insert(stream.clone());
        }
    }

    /// Reads a stream's state (retrying as long as the storage client does)
    /// and caches it for the read endpoints.
    pub(crate) async fn refresh(&self, stream: &Stream) -> Result<Arc<StateDoc>, ProcessError> {
        let (doc, _) = self.load(stream).await?;
        let doc = Arc::new(doc);
        self.remember(stream, doc.clone()).await;
        Ok(doc)
    }

    /// Whether `key` still needs work: it has neither a summary nor an error
    /// record for its current version.
    pub(crate) async fn is_done(&self, key: &RawKey, etag: &str) -> Result<bool, ProcessError> {
        for marker in [key.summary(), key.error()] {
            if let Some(b) = self.storage.get(&marker).await? {
                let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                match v.get("source_etag").and_then(Value::as_str) {
                    // Written by the seed (no ETag recorded): done.
                    None => return Ok(true),
                    Some(e) if e == etag => return Ok(true),
                    Some(_) => {}
                }
            }
        }
        Ok(false)
    }

    /// Processes one raw batch (see the module docs for the protocol).
    pub async fn process(&self, key: &RawKey) -> Result<Outcome, ProcessError> {
        let started = Instant::now();
        if let Some(why) = self.storage.local_unreadable(key.as_str()) {
            // Never readable, however often it is tried: rejected once
            // (with no ETag: asking for one opens the file, and opening a
            // FIFO waits for a writer).
            return self.reject(key, "", &InputError::Unreadable(why)).await;
        }
        let Some(etag) = self.storage.etag(key.as_str()).await? else {
            return Ok(Outcome::Missing);
        };
        if self.is_done(key, &etag).await? {
            // Published, maybe by another instance or an earlier delivery.
            self.mark_published(key.as_str());
            return Ok(Outcome::AlreadyApplied);
        }
        tracing::debug!(%key, %etag, "processing");
        let raw_path = &keys::validate(key.as_str())?;
        let etag = &etag;
        let stream = &key.stream();
        let swap = compare_and_swap(
            &self.storage,
            &stream.engine_key(),
            Retry::UpTo(MAX_CONFLICTS),
            || self.loaded(stream),
            // `refused`: the commit the last attempt made, if the state
            // changed underneath it. Usually another worker committed
            // first; possibly that very write landed and its retry failed.
            // The reloaded ledger tells which.
            move |current, refused: Option<Commit>| async move {
                let (mut doc, version) = current.ok_or_else(no_state)?;
                // The staged output of a commit whose fate is not known yet
                // (and the channels' flag counts, for the metrics if it landed).
                let unsure = refused.map(|c| (c.entry.staged_key, c.flagged));
                if let Some(entry) = doc.find(key.as_str(), etag).cloned() {
                    // Our own commit landed although the write reported failure.
                    if let Some((_, flagged)) =
                        unsure.as_ref().filter(|(s, _)| *s == entry.staged_key)
                    {
                        self.committed(stream, &entry, flagged);
                        self.publish(&entry, &doc).await?;
                        return Ok(Decision::Stop(Outcome::Applied(entry.summary)));
                    }
                    self.publish(&entry, &doc).await?;
                    if let Some((s, _)) = unsure {
                        self.storage.delete(&s).await.ok();
                    }
                    return Ok(Decision::Stop(Outcome::AlreadyApplied));
                }
                // Not in the ledger: the failed commit really did not happen.
                if let Some((s, _)) = unsure {
                    self.storage.delete(&s).await.ok();
                }
                let engine = self.engine_at(stream, &version, &doc)?;
                let staged_key = new_staged_key();
                let staged = keys::validate(&staged_key)?;
                let result =
                    score_object(&self.storage, raw_path, etag, &staged, engine, self.safety).await;
                let (engine, mut report, staged_bytes) = match result {
                    Ok(r) => r,
                    Err(e) => {
                        self.storage.delete(&staged_key).await.ok();
                        return match e {
                            PipelineError::Input(ie) => self.reject(key, etag, &ie).await,
                            PipelineError::Changed => Box::pin(self.process(key)).await,
                            PipelineError::Store(se) => Err(se.into()),
                        }
                        .map(Decision::Stop);
                    }
                };
                doc.seq += 1;
                doc.last_updated = now_iso();
                doc.recent
                    .extend(&report.channels, std::mem::take(&mut report.tail));
                doc.engine = engine.to_state();
                let summary = Summary::of_report(
                    key.as_str().to_string(),
                    key.processed(),
                    doc.last_updated.clone(),
                    &report,
                    doc.engine.observation_counts(),
                    Some(etag.clone()),
                    doc.seq,
                    started.elapsed().as_secs_f64() * 1e3,
                );
                let flagged: Vec<(String, u64)> = report
                    .channels
                    .iter()
                    .cloned()
                    .zip(report.channel_flags.iter().copied())
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let output_key = key.processed();
                let anomalies = report
                    .anomalies
                    .into_iter()
                    .map(|mut row| {
                        row.insert("source_file".into(), Value::from(output_key.clone()));
                        row
                    })
                    .collect();
                let entry = Applied {
                    source_key: key.as_str().to_string(),
                    source_etag: etag.clone(),
                    staged_key,
                    staged_bytes: Some(staged_bytes),
                    summary,
                    anomalies,
                };
                self.publish_evicted(&doc).await?;
                doc.record(entry.clone());
                Ok(Decision::Write {
                    body: to_bytes(&doc),
                    then: Commit {
                        doc,
                        engine,
                        entry,
                        flagged,
                    },
                })
            },
            |conflicts| {
                telemetry::commit_conflict();
                if conflicts < MAX_CONFLICTS {
                    tracing::debug!(%key, conflicts, "state changed underneath; redoing");
                }
            },
        )
        .await;
        match swap {
            Ok(Swap::Stopped(outcome)) => Ok(outcome),
            Ok(Swap::Written(committed, c)) => {
                self.keep_engine(stream, committed, c.engine);
                let doc = Arc::new(c.doc);
                self.remember(stream, doc.clone()).await;
                self.storage_ok.store(true, Ordering::Relaxed);
                self.committed(stream, &c.entry, &c.flagged);
                self.publish(&c.entry, &doc).await?;
                Ok(Outcome::Applied(c.entry.summary))
            }
            // The last refused commit's staged output stays: the staging
            // sweep removes it unless the ledger names it.
            Ok(Swap::GaveUp(conflicts, _)) => Err(ProcessError::Contention(conflicts)),
            // A failed commit may have landed: its staged output stays for
            // whoever finds the commit in the ledger (a retry, the
            // reconciler). If it did not land, the staging sweep removes it.
            Err(e) => Err(e),
        }
    }

    /// Publishes the ledger entries the next commit will push out of the
    /// bounded ledger, if their outputs are not out yet: once an entry is
    /// gone, nothing would stop its file from being applied a second time.
    async fn publish_evicted(&self, doc: &StateDoc) -> Result<(), ProcessError> {
        let leaving = (doc.applied.len() + 1).saturating_sub(LEDGER_LEN);
        for entry in doc.applied.iter().take(leaving) {
            if !self.is_published(entry).await? {
                tracing::info!(key = %entry.source_key, "publishing a committed file before it leaves the ledger");
                self.publish(entry, doc).await?;
            }
        }
        Ok(())
    }

    /// Whether `entry`'s summary (or a later commit's, for the same key) is out.
    async fn is_published(&self, entry: &Applied) -> Result<bool, ProcessError> {
        let key = RawKey::parse(&entry.source_key)?;
        let Some(b) = self.storage.get(&key.summary()).await? else {
            return Ok(false);
        };
        Ok(match serde_json::from_slice::<Summary>(&b) {
            Ok(s) => {
                s.source_etag.unwrap_or_default() == entry.source_etag
                    || s.state_seq >= entry.summary.state_seq
            }
            Err(_) => false,
        })
    }

    /// Makes a committed file's outputs visible. Idempotent: safe to repeat
    /// after a crash at any point. The summary goes last, as the marker that
    /// the rest is done.
    async fn publish(&self, entry: &Applied, doc: &StateDoc) -> Result<(), ProcessError> {
        let result = self.publish_outputs(entry, doc).await;
        match &result {
            Ok(()) => {
                if self.mark_published(&entry.source_key) {
                    tracing::info!(
                        key = %entry.source_key,
                        "published the outputs of a file committed earlier (publishing had failed)"
                    );
                }
            }
            Err(e) => {
                let newly = self
                    .unpublished
                    .lock()
                    .is_ok_and(|mut late| late.insert(entry.source_key.clone()));
                if newly {
                    tracing::warn!(
                        key = %entry.source_key, error = %e,
                        "committed, but the outputs could not be published yet; will retry"
                    );
                }
            }
        }
        result
    }

    async fn publish_outputs(&self, entry: &Applied, doc: &StateDoc) -> Result<(), ProcessError> {
        let key = RawKey::parse(&entry.source_key)?;
        if !entry.staged_key.is_empty() {
            match self
                .storage
                .rename(&entry.staged_key, &key.processed(), entry.staged_bytes)
                .await
            {
                Ok(()) => {}
                // Already moved by an earlier attempt.
                Err(StoreError::NotFound(_)) => {
                    if self.storage.etag(&key.processed()).await?.is_none() {
                        tracing::error!(
                            key = %entry.source_key, staged = %entry.staged_key,
                            "the scored copy of a committed file is missing"
                        );
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.project_baseline(doc, &key.stream()).await?;
        self.storage.delete(&key.error()).await?;
        let body = serde_json::to_vec_pretty(&entry.summary).unwrap_or_default();
        self.storage.put(&key.summary(), body).await?;
        Ok(())
    }

    /// Deletes staged outputs older than `older_than` that the ledger does
    /// not name: debris of attempts that crashed before their commit, or
    /// whose commit failed (and, locally, copies of state documents whose
    /// writer died before renaming them). Returns how many were removed.
    pub async fn sweep_staging(&self, older_than: Duration) -> Result<usize, ProcessError> {
        let mut keep = std::collections::HashSet::new();
        for stream in self.known_streams().await {
            let (doc, _) = self.load(&stream).await?;
            keep.extend(doc.applied.iter().map(|a| a.staged_key.clone()));
        }
        // A commit made after this load names an object completed moments
        // before it, which is younger than `older_than` (unless scoring it
        // took longer than that, hence the generous default).
        Ok(self
            .storage
            .sweep("state/staging/", older_than, keep)
            .await?)
    }

    /// Deletes, locally, the partial files (`<key>#<n>`) under `processed/`
    /// older than `older_than` that writes killed before their rename
    /// left. Returns how many were removed.
    pub async fn sweep_partials(&self, older_than: Duration) -> Result<usize, ProcessError> {
        Ok(self
            .storage
            .sweep_partials("processed/", older_than)
            .await?)
    }

    /// Writes `state/baseline.json` for `doc` unless a newer one is there.
    async fn project_baseline(&self, doc: &StateDoc, stream: &Stream) -> Result<(), ProcessError> {
        let body = Bytes::from(serde_json::to_vec_pretty(&doc.baseline_json()).unwrap_or_default());
        let key = stream.baseline_key();
        let swap = compare_and_swap(
            &self.storage,
            &key,
            Retry::UpTo(MAX_CONFLICTS),
            || self.stored(&key),
            |current, _| {
                let newer = current.is_some_and(|(b, _)| {
                    let seen: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                    let seen_seq = documents::projection_seq(&seen);
                    seen_seq >= doc.seq && seen_seq > 0
                });
                let body = body.clone();
                async move {
                    Ok(match newer {
                        true => Decision::Stop(()),
                        false => Decision::Write { body, then: () },
                    })
                }
            },
            |_| {},
        )
        .await?;
        match swap {
            Swap::Written(..) | Swap::Stopped(()) => Ok(()),
            Swap::GaveUp(conflicts, ()) => Err(ProcessError::Contention(conflicts)),
        }
    }

    /// Records why a file was refused, next to where its outputs would be.
    async fn reject(
        &self,
        key: &RawKey,
        etag: &str,
        err: &InputError,
    ) -> Result<Outcome, ProcessError> {
        let msg = err.to_string();
        tracing::warn!(key = ?key.as_str(), error = %msg, "rejected input file");
        let body = json!({
            "source_key": key.as_str(),
            "source_etag": etag,
            "error": msg,
            "line": err.line(),
            "failed_at": now_iso(),
        });
        self.storage
            .put(
                &key.error(),
                serde_json::to_vec_pretty(&body).unwrap_or_default(),
            )
            .await?;
        // Counted once recorded: a failed record is retried, not refused twice.
        telemetry::file_rejected(err.kind());
        if let Ok(mut recent) = self.recent_errors.lock() {
            let mut shown = body;
            shown["stream"] = Value::from(key.stream().to_string());
            recent.push_back(shown);
            while recent.len() > RECENT_ERRORS {
                recent.pop_front();
            }
        }
        Ok(Outcome::Rejected(msg))
    }

    /// Forgets the learned baseline and model (totals and ledger are kept, so
    /// already-processed files still count once). Compare-and-swap too.
    pub(crate) async fn reset(&self, stream: &Stream) -> Result<(), ProcessError> {
        let swap = compare_and_swap(
            &self.storage,
            &stream.engine_key(),
            Retry::UpTo(MAX_CONFLICTS),
            || self.loaded(stream),
            |current, _| async move {
                let (mut doc, _) = current.ok_or_else(no_state)?;
                doc.seq += 1;
                doc.last_updated = now_iso();
                doc.engine = Default::default();
                Ok::<_, ProcessError>(Decision::<_, ()>::Write {
                    body: to_bytes(&doc),
                    then: doc,
                })
            },
            |_| {},
        )
        .await?;
        match swap {
            Swap::Written(_, doc) => {
                self.cache.write().await.remove(stream);
                self.project_baseline(&doc, stream).await
            }
            Swap::Stopped(()) => Ok(()),
            Swap::GaveUp(conflicts, _) => Err(ProcessError::Contention(conflicts)),
        }
    }

    /// Totals of a stream, for tests and the CLI.
    pub async fn totals(&self, stream: &Stream) -> Result<Totals, ProcessError> {
        Ok(self.load(stream).await?.0.totals)
    }
}

/// A commit on its way: what follows it if it lands, and what tells
/// whether it landed if its write reports failure.
struct Commit {
    /// The state written.
    doc: StateDoc,
    /// The engine that state holds, kept for the stream's next file.
    engine: Engine,
    /// The file's ledger entry (its staged output names the attempt).
    entry: Applied,
    /// Rows flagged per channel, for the metrics.
    flagged: Vec<(String, u64)>,
}

/// A state read that found no document: [`Processor::loaded`] never gives
/// none (it creates the document), so this is an error, not a panic.
fn no_state() -> ProcessError {
    ProcessError::State("no state document where one was just read".into())
}

/// A staging name no other attempt, here or on another machine, can pick.
fn new_staged_key() -> String {
    let mut r = [0u8; 8];
    // Without randomness the pid, clock and counter still separate attempts.
    let _ = aws_lc_rs::rand::fill(&mut r);
    format!(
        "state/staging/{}-{}-{}-{:016x}.csv",
        std::process::id(),
        chrono::Utc::now().timestamp_micros(),
        STAGING_COUNTER.fetch_add(1, Ordering::Relaxed),
        u64::from_le_bytes(r)
    )
}

fn to_bytes(doc: &StateDoc) -> Bytes {
    // Serialising plain data cannot fail; an empty body would fail loudly on read.
    Bytes::from(serde_json::to_vec(doc).unwrap_or_default())
}

impl From<crate::state::keys::KeyError> for ProcessError {
    fn from(e: crate::state::keys::KeyError) -> Self {
        ProcessError::Store(StoreError::Key(e))
    }
}

/// A stored state document, checked.
fn parse_doc(bytes: &[u8]) -> Result<StateDoc, ProcessError> {
    let doc: StateDoc =
        serde_json::from_slice(bytes).map_err(|e| ProcessError::State(e.to_string()))?;
    doc.engine
        .validate()
        .map_err(|e| ProcessError::State(e.to_string()))?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 40-row file of two channels; `shift` moves the second file's level.
    fn csv(start: usize, shift: f64) -> String {
        let mut s = String::from("timestamp,temperature,humidity\n");
        for i in start..start + 40 {
            let wave = (i as f64 * 0.7).sin();
            s += &format!(
                "2026-01-01T00:{:02}:{:02}Z,{:.3},{:.3}\n",
                i / 60,
                i % 60,
                20.0 + wave + shift,
                50.0 - 2.0 * wave
            );
        }
        s
    }

    async fn process(p: &Processor, key: &str, body: String) -> Bytes {
        p.storage().put(key, body).await.unwrap();
        let key = RawKey::parse(key).unwrap();
        let outcome = p.process(&key).await.unwrap();
        assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
        p.storage().get(&key.processed()).await.unwrap().unwrap()
    }

    fn named(name: &str) -> Stream {
        Stream::named(name).unwrap()
    }

    #[tokio::test]
    async fn the_sweep_takes_partial_outputs_of_killed_writes_locally() {
        let dir = tempfile::tempdir().unwrap();
        let p = Processor::new(Storage::local(dir.path()).unwrap(), EngineConfig::default());
        process(&p, "raw/a.csv", csv(0, 0.0)).await;
        // What a SIGKILL while the summary was written leaves.
        let partial = dir.path().join("processed/a_summary.json#1");
        std::fs::write(&partial, "{").unwrap();
        assert_eq!(p.sweep_partials(STAGING_MAX_AGE).await.unwrap(), 0);
        assert!(partial.exists(), "young: maybe another process's write");
        assert_eq!(p.sweep_staging(Duration::ZERO).await.unwrap(), 0);
        assert!(partial.exists(), "not staging's to sweep");
        assert_eq!(p.sweep_partials(Duration::ZERO).await.unwrap(), 1);
        assert!(!partial.exists());
        assert!(dir.path().join("processed/a_summary.json").exists());
    }

    #[tokio::test]
    async fn engines_kept_are_bounded_and_a_dropped_one_is_rebuilt_alike() {
        let many = tempfile::tempdir().unwrap();
        let p = Processor::new(
            Storage::local(many.path()).unwrap(),
            EngineConfig::default(),
        );
        for s in 0..KEPT_ENGINES + 2 {
            process(&p, &format!("raw/s{s}/a.csv"), csv(0, 0.0)).await;
        }
        {
            let kept = p.engines.lock().unwrap();
            assert_eq!(kept.len(), KEPT_ENGINES);
            // The two committed first made way for the last two.
            assert!(!kept.contains_key(&named("s0")) && !kept.contains_key(&named("s1")));
            assert!(kept.contains_key(&named(&format!("s{}", KEPT_ENGINES + 1))));
        }
        // s0's second file is scored by an engine rebuilt from its state;
        // on a processor with only s0, by the kept one. Same bytes.
        let rebuilt = process(&p, "raw/s0/b.csv", csv(40, 3.0)).await;
        let one = tempfile::tempdir().unwrap();
        let q = Processor::new(Storage::local(one.path()).unwrap(), EngineConfig::default());
        process(&q, "raw/s0/a.csv", csv(0, 0.0)).await;
        assert!(q.engines.lock().unwrap().contains_key(&named("s0")));
        let kept = process(&q, "raw/s0/b.csv", csv(40, 3.0)).await;
        assert_eq!(rebuilt, kept);
        assert!(p.engines.lock().unwrap().contains_key(&named("s0")));
        assert_eq!(p.engines.lock().unwrap().len(), KEPT_ENGINES);
    }
}
