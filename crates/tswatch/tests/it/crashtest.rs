//! Crash at every write: an exhaustive, in-process check of the
//! exactly-once protocol in [`tswatch::apply::processor`], and of what the worker
//! does with a file during a long storage outage.
//!
//! An in-memory object store (S3 semantics: conditional puts, rename as copy
//! then delete) is wrapped so that its `k`-th mutation either never happens
//! or happens without the caller learning it did (a lost response); from then
//! on every call fails, as if the process had died. A fresh processor then
//! "restarts" on the same store, reconciles and finishes. For every `k` and
//! both kinds, the final state must equal an uninterrupted run's, byte for
//! byte where it is deterministic.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tswatch::apply::processor::Processor;
use tswatch::eval::scenario::Scenario;
use tswatch::ingest::queue::{self, Queue};
use tswatch::state::documents::{BASELINE_KEY, ENGINE_KEY, LEDGER_LEN, StateDoc};
use tswatch::state::keys::RawKey;
use tswatch::state::stream::Stream;
use tswatch::storage::{Location, Storage};
use tswatch_core::EngineConfig;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The mutation is not applied.
    Before,
    /// The mutation is applied, but the caller gets an error.
    After,
    /// The mutation is applied, the response is lost and the client sends
    /// it again (what object_store does when a connection closes before
    /// the response); the process lives on.
    Retried,
}

#[derive(Debug, Default)]
struct Plan {
    mutations: usize,
    crash_at: Option<(usize, Fault)>,
    dead: bool,
    log: Vec<String>,
    /// Unreachable for now: every call fails, nothing is applied.
    down: bool,
    /// `head` calls refused while down (one per processing attempt).
    refused_heads: usize,
    /// Multipart parts still to refuse: an upload that dies mid-file.
    failing_parts: usize,
}

/// An object store that dies at a chosen mutation.
#[derive(Debug)]
struct Crashy {
    inner: Arc<InMemory>,
    plan: Arc<Mutex<Plan>>,
    /// Holds conditional commits of `state/engine.json` until as many
    /// writers as the barrier counts have reached theirs (for the first
    /// `gated` commits): writers that loaded the same version then race
    /// for it, whatever the scheduler does.
    gate: Option<Arc<Gate>>,
}

/// A rendezvous for the first commits of racing writers.
#[derive(Debug)]
struct Gate {
    barrier: tokio::sync::Barrier,
    gated: std::sync::atomic::AtomicUsize,
    /// Commits refused because another writer's landed first.
    refused: std::sync::atomic::AtomicUsize,
}

impl Gate {
    fn new(writers: usize) -> Arc<Self> {
        Arc::new(Self {
            barrier: tokio::sync::Barrier::new(writers),
            gated: std::sync::atomic::AtomicUsize::new(writers),
            refused: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

enum Step {
    Go,
    Fail(Fault),
}

fn died() -> object_store::Error {
    object_store::Error::Generic {
        store: "crashy",
        source: "the process died".into(),
    }
}

impl Crashy {
    fn new(inner: Arc<InMemory>, crash_at: Option<(usize, Fault)>) -> Self {
        Self {
            inner,
            plan: Arc::new(Mutex::new(Plan {
                crash_at,
                ..Default::default()
            })),
            gate: None,
        }
    }

    fn gated(mut self, gate: Arc<Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn alive(&self) -> object_store::Result<()> {
        let p = self.plan.lock().unwrap();
        if p.dead || p.down {
            Err(died())
        } else {
            Ok(())
        }
    }

    fn mutation(plan: &Mutex<Plan>, what: String) -> object_store::Result<Step> {
        let mut p = plan.lock().unwrap();
        if p.dead || p.down {
            return Err(died());
        }
        let n = p.mutations;
        p.mutations += 1;
        p.log.push(what);
        match p.crash_at {
            Some((k, f)) if k == n => {
                p.dead = f != Fault::Retried;
                Ok(Step::Fail(f))
            }
            _ => Ok(Step::Go),
        }
    }

    /// Runs a mutation under the plan.
    async fn mutate<T, F, Fut>(plan: &Mutex<Plan>, what: String, op: F) -> object_store::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        match Self::mutation(plan, what)? {
            Step::Go => op().await,
            Step::Fail(Fault::Before) => Err(died()),
            Step::Fail(Fault::After) => {
                op().await?;
                Err(died())
            }
            Step::Fail(Fault::Retried) => {
                op().await?;
                op().await
            }
        }
    }
}

impl std::fmt::Display for Crashy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crashy({})", self.inner)
    }
}

#[derive(Debug)]
struct CrashyUpload {
    inner: Box<dyn MultipartUpload>,
    plan: Arc<Mutex<Plan>>,
    path: Path,
}

#[async_trait]
impl MultipartUpload for CrashyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let mut p = self.plan.lock().unwrap();
        if p.dead {
            return Box::pin(async { Err(died()) });
        }
        if p.failing_parts > 0 {
            p.failing_parts -= 1;
            return Box::pin(async {
                Err(object_store::Error::Generic {
                    store: "crashy",
                    source: "connection reset while uploading a part".into(),
                })
            });
        }
        drop(p);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let what = format!("complete {}", self.path);
        match Crashy::mutation(&self.plan, what)? {
            Step::Go => self.inner.complete().await,
            Step::Fail(Fault::Before) => Err(died()),
            // A repeated CompleteMultipartUpload finds no upload.
            Step::Fail(Fault::After | Fault::Retried) => {
                self.inner.complete().await?;
                Err(died())
            }
        }
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Crashy {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        use std::sync::atomic::Ordering::SeqCst;
        let commit = location.as_ref() == ENGINE_KEY
            && matches!(opts.mode, object_store::PutMode::Update(_));
        if let Some(g) = self.gate.as_ref().filter(|_| commit) {
            let left = g.gated.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
            if left.is_ok() {
                g.barrier.wait().await;
            }
        }
        let what = format!("put {location}");
        let r = Self::mutate(&self.plan, what, || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await;
        if let (Some(g), true, Err(object_store::Error::Precondition { .. })) =
            (&self.gate, commit, &r)
        {
            g.refused.fetch_add(1, SeqCst);
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.alive()?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CrashyUpload {
            inner,
            plan: self.plan.clone(),
            path: location.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        {
            let mut p = self.plan.lock().unwrap();
            if p.down && options.head {
                p.refused_heads += 1;
            }
        }
        self.alive()?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (inner, plan) = (self.inner.clone(), self.plan.clone());
        locations
            .then(move |p| {
                let (inner, plan) = (inner.clone(), plan.clone());
                async move {
                    let p = p?;
                    let what = format!("delete {p}");
                    Crashy::mutate(&plan, what, || inner.delete(&p)).await?;
                    Ok(p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if self.alive().is_err() {
            return futures::stream::once(async { Err(died()) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.alive()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let what = format!("copy {from} -> {to}");
        Self::mutate(&self.plan, what, || {
            self.inner.copy_opts(from, to, options.clone())
        })
        .await
    }
}

fn storage(store: Arc<dyn ObjectStore>) -> Storage {
    Storage::from_store(
        store,
        Location::S3 {
            bucket: "crashtest".into(),
        },
    )
}

/// Producer batches, in order (their names sort chronologically).
fn batches(n: usize, rows: usize) -> Vec<(String, String)> {
    let mut sc = Scenario::new("seed", 7, 1_770_000_000.0).unwrap();
    (0..n)
        .map(|_| {
            let (csv, _, first) = sc.batch(rows);
            (tswatch::eval::scenario::batch_key("sensors", first), csv)
        })
        .collect()
}

async fn seed(mem: &InMemory, files: &[(String, String)]) {
    for (k, body) in files {
        mem.put(&Path::from(k.as_str()), PutPayload::from(body.clone()))
            .await
            .unwrap();
    }
}

/// What a finished store looks like, minus what legitimately differs
/// between runs (times, durations, the staging names).
#[derive(Debug, PartialEq)]
struct Outcome {
    engine_state: Value,
    seq: u64,
    totals: tswatch::state::documents::Totals,
    baseline: Value,
    /// `processed/` objects: CSVs as text, summaries without times.
    processed: BTreeMap<String, String>,
}

/// Which parts of `got` differ from `want`.
fn differences(got: &Outcome, want: &Outcome) -> Vec<String> {
    let mut d = Vec::new();
    if got.engine_state != want.engine_state {
        d.push("engine state".to_string());
    }
    if got.seq != want.seq {
        d.push(format!("seq {} != {}", got.seq, want.seq));
    }
    if got.totals != want.totals {
        d.push(format!("totals {:?} != {:?}", got.totals, want.totals));
    }
    if got.baseline != want.baseline {
        d.push("baseline.json".to_string());
    }
    for (k, v) in &want.processed {
        match got.processed.get(k) {
            None => d.push(format!("{k} missing")),
            Some(g) if g != v => d.push(format!("{k} differs")),
            Some(_) => {}
        }
    }
    for k in got.processed.keys() {
        if !want.processed.contains_key(k) {
            d.push(format!("extra {k}"));
        }
    }
    d
}

fn strip(mut v: Value, fields: &[&str]) -> Value {
    if let Some(o) = v.as_object_mut() {
        for f in fields {
            o.remove(*f);
        }
    }
    v
}

async fn outcome(mem: &InMemory) -> (Outcome, Vec<String>) {
    let get = |k: String| async move {
        mem.get(&Path::from(k.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    let doc: StateDoc = serde_json::from_slice(&get(ENGINE_KEY.into()).await).unwrap();
    let baseline: Value = serde_json::from_slice(&get(BASELINE_KEY.into()).await).unwrap();
    let mut processed = BTreeMap::new();
    let mut junk = Vec::new();
    let keys: Vec<String> = mem
        .list(None)
        .map(|m| m.unwrap().location.to_string())
        .collect()
        .await;
    for k in keys {
        if k.starts_with("processed/") {
            let b = get(k.clone()).await;
            let text = if k.ends_with(".json") {
                let v: Value = serde_json::from_slice(&b).unwrap();
                strip(v, &["processed_at", "duration_ms"]).to_string()
            } else {
                String::from_utf8(b.to_vec()).unwrap()
            };
            processed.insert(k, text);
        } else if !(k.starts_with("raw/") || k == ENGINE_KEY || k == BASELINE_KEY) {
            junk.push(k);
        }
    }
    let out = Outcome {
        engine_state: serde_json::to_value(&doc.engine).unwrap(),
        seq: doc.seq,
        totals: doc.totals,
        baseline: strip(baseline, &["last_updated"]),
        processed,
    };
    (out, junk)
}

/// Processes every file that reconciliation finds, the way the worker does.
async fn reconcile_and_drain(p: &Processor) -> Result<(), tswatch::apply::processor::ProcessError> {
    let queue = Queue::new(10_000);
    queue::reconcile(p, &queue).await.unwrap();
    for k in queue.close().await {
        p.process(&k).await?;
    }
    Ok(())
}

/// One run: process every file in order until the store "dies", then
/// restart on the same store and finish. Returns the final store, the
/// mutations the first run made, and what it did.
async fn run(
    files: &[(String, String)],
    crash_at: Option<(usize, Fault)>,
) -> (Arc<InMemory>, usize, Vec<String>, usize) {
    let mem = Arc::new(InMemory::new());
    seed(&mem, files).await;
    let crashy = Arc::new(Crashy::new(mem.clone(), crash_at));
    let plan = crashy.plan.clone();
    let first = Processor::new(storage(crashy), EngineConfig::default());
    'files: for (k, _) in files {
        // Retried as the worker would, while the process lives.
        for _ in 0..3 {
            if first.process(&RawKey::parse(k).unwrap()).await.is_ok() {
                continue 'files;
            }
            if plan.lock().unwrap().dead {
                break 'files;
            }
        }
    }
    let restarted = Processor::new(
        storage(Arc::new(Crashy::new(mem.clone(), None))),
        EngineConfig::default(),
    );
    reconcile_and_drain(&restarted).await.unwrap();
    let swept = restarted.sweep_staging(Duration::ZERO).await.unwrap();
    let p = plan.lock().unwrap();
    (mem, p.mutations, p.log.clone(), swept)
}

#[tokio::test]
async fn a_crash_at_any_write_changes_nothing() {
    let files = batches(3, 100);
    let (clean_mem, mutations, log, _) = run(&files, None).await;
    let (clean, junk) = outcome(&clean_mem).await;
    assert!(
        junk.is_empty(),
        "a clean run leaves nothing behind: {junk:?}"
    );
    assert_eq!(clean.totals.files_processed, 3);
    assert_eq!(clean.totals.total_rows_scored, 300);
    assert!(mutations >= 3 * 5, "{log:?}");
    let (mut trials, mut swept) = (0, 0);
    let mut failures = Vec::new();
    for (k, op) in log.iter().enumerate() {
        for fault in [Fault::Before, Fault::After, Fault::Retried] {
            let (mem, _, _, n) = run(&files, Some((k, fault))).await;
            swept += n;
            let (got, junk) = outcome(&mem).await;
            let mut wrong = differences(&got, &clean);
            if !junk.is_empty() {
                wrong.push(format!("left {junk:?}"));
            }
            if !wrong.is_empty() {
                failures.push(format!("{fault:?} {k} ({op}): {}", wrong.join(", ")));
            }
            trials += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {trials} crash points changed the outcome:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(swept > 0, "some crash points leave staged debris to sweep");
    eprintln!(
        "{trials} crash points checked over {mutations} mutations; {swept} staged leftovers swept"
    );
}

/// A file committed but not published before a crash must still count once
/// when many other files are committed before anyone revisits it (the ledger
/// that remembers it is bounded).
#[tokio::test]
async fn an_unpublished_commit_survives_ledger_eviction() {
    let files = batches(LEDGER_LEN + 2, 2);
    let mem = Arc::new(InMemory::new());
    seed(&mem, &files).await;
    // Let the first file commit, then die before its outputs are published:
    // the mutations are the bootstrap, the staged output, then the commit.
    let crashy = Arc::new(Crashy::new(mem.clone(), Some((3, Fault::Before))));
    let plan = crashy.plan.clone();
    let first = Processor::new(storage(crashy), EngineConfig::default());
    let first_key = RawKey::parse(&files[0].0).unwrap();
    assert!(first.process(&first_key).await.is_err());
    assert!(
        plan.lock().unwrap().log[2].starts_with("put state/engine.json"),
        "{:?}",
        plan.lock().unwrap().log
    );
    // Everything else is processed first (e.g. by another instance), then
    // the first file is revisited.
    let other = Processor::new(
        storage(Arc::new(Crashy::new(mem.clone(), None))),
        EngineConfig::default(),
    );
    for (k, _) in &files[1..] {
        other.process(&RawKey::parse(k).unwrap()).await.unwrap();
    }
    other.process(&first_key).await.unwrap();
    let t = other.totals(&Stream::DEFAULT).await.unwrap();
    assert_eq!(t.files_processed, files.len() as u64);
    assert_eq!(t.total_rows_scored, 2 * files.len() as u64);
    let (got, _) = outcome(&mem).await;
    assert!(
        got.processed.contains_key(&first_key.processed()),
        "the scored copy of the first file is published"
    );
}

/// An upload of the scored copy that dies mid-file (an output over one
/// part) is storage's failure: the attempt fails and is retried; the file is
/// never rejected, and the next attempt, with storage back, applies it.
#[tokio::test]
async fn an_upload_that_dies_mid_file_is_retried_not_rejected() {
    // About 21 MB of scored output, 6 MiB parts, two in flight: the failed
    // first part is seen while the file is still being written.
    let files = batches(1, 160_000);
    let mem = Arc::new(InMemory::new());
    seed(&mem, &files).await;
    let crashy = Arc::new(Crashy::new(mem.clone(), None));
    crashy.plan.lock().unwrap().failing_parts = 1;
    let p = Processor::new(storage(crashy.clone()), EngineConfig::default());
    let key = RawKey::parse(&files[0].0).unwrap();
    let err = p.process(&key).await.expect_err("the upload failed");
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(crashy.plan.lock().unwrap().failing_parts, 0);
    let exists = |k: String| {
        let mem = mem.clone();
        async move { mem.head(&Path::from(k.as_str())).await.is_ok() }
    };
    assert!(!exists(key.error()).await, "rejected for a storage failure");
    assert!(!exists(key.summary()).await);
    // Storage is back: the same processor, no restart.
    match p.process(&key).await.unwrap() {
        tswatch::apply::processor::Outcome::Applied(s) => assert_eq!(s.total_rows, 160_000),
        other => panic!("{other:?}"),
    }
    assert!(exists(key.processed()).await && exists(key.summary()).await);
    assert!(!exists(key.error()).await);
}

/// During a long outage the worker gives each file its bounded number of
/// attempts and moves on; reconciliation finishes the files once storage is
/// back. Virtual time: the real backoff adds up to minutes.
#[tokio::test(start_paused = true)]
async fn files_given_up_during_an_outage_are_finished_by_reconciliation() {
    let files = batches(2, 50);
    let mem = Arc::new(InMemory::new());
    seed(&mem, &files).await;
    let store = Arc::new(Crashy::new(mem.clone(), None));
    let plan = store.plan.clone();
    let p = Arc::new(Processor::new(storage(store), EngineConfig::default()));
    p.load(&Stream::DEFAULT).await.unwrap();
    plan.lock().unwrap().down = true;
    let queue = Queue::new(16);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(queue::run_worker(
        p.clone(),
        queue.clone(),
        stop_rx.clone(),
        Duration::ZERO,
    ));
    let reconciler = tokio::spawn(queue::run_reconciler(
        p.clone(),
        queue.clone(),
        Duration::from_secs(60),
        Duration::ZERO,
        stop_rx,
    ));
    for (k, _) in &files {
        queue.push(RawKey::parse(k).unwrap());
    }
    // Ten minutes down: each file gets exactly its attempts, then is left.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        plan.lock().unwrap().refused_heads,
        files.len() * queue::ATTEMPTS as usize
    );
    plan.lock().unwrap().down = false;
    // The next reconciliation pass (within a minute) queues them again.
    tokio::time::sleep(Duration::from_secs(61)).await;
    for _ in 0..200 {
        if p.totals(&Stream::DEFAULT).await.unwrap().files_processed == files.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.totals(&Stream::DEFAULT).await.unwrap().files_processed, 2);
    let _ = stop_tx.send(true);
    worker.await.unwrap();
    reconciler.await.unwrap();
    let (got, junk) = outcome(&mem).await;
    assert!(junk.is_empty(), "{junk:?}");
    assert_eq!(got.processed.len(), 4);
}

/// One in-memory store holding `files`, and two writers on it whose
/// commits meet at `gate` (both commit against the same version).
async fn racing_writers(
    files: &[(String, String)],
) -> (Arc<InMemory>, Arc<Gate>, Processor, Processor) {
    let mem = Arc::new(InMemory::new());
    seed(&mem, files).await;
    let gate = Gate::new(2);
    let writer = || {
        let store = Crashy::new(mem.clone(), None).gated(gate.clone());
        Processor::new(storage(Arc::new(store)), EngineConfig::default())
    };
    let (a, b) = (writer(), writer());
    (mem, gate, a, b)
}

/// The race's precondition: both writers reached the commit with the same
/// version, and exactly one of them was refused.
fn assert_both_committed_one_refused(gate: &Gate) {
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(gate.gated.load(SeqCst), 0, "both writers reached a commit");
    assert_eq!(gate.refused.load(SeqCst), 1, "exactly one commit refused");
}

/// Two in-process writers on one in-memory store (conditional puts, as S3
/// has) race for the same file: both load the same state and score it,
/// both try to commit against that version, exactly one commit lands. The
/// loser finds the winner's entry in the ledger: the file counts once,
/// nothing of the loser's attempt is left, and the store is what one
/// writer alone leaves.
#[tokio::test]
async fn two_writers_racing_for_one_file_commit_it_once() {
    let files = batches(1, 100);
    let (alone, _, _, _) = run(&files, None).await;
    let (want, _) = outcome(&alone).await;

    let (mem, gate, a, b) = racing_writers(&files).await;
    let key = RawKey::parse(&files[0].0).unwrap();
    let (ra, rb) = tokio::join!(a.process(&key), b.process(&key));
    let outcomes = [ra.unwrap(), rb.unwrap()];
    assert_both_committed_one_refused(&gate);
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, tswatch::apply::processor::Outcome::Applied(_)))
        .count();
    let lost = outcomes
        .iter()
        .filter(|o| matches!(o, tswatch::apply::processor::Outcome::AlreadyApplied))
        .count();
    assert_eq!((won, lost), (1, 1), "{outcomes:?}");
    let (got, junk) = outcome(&mem).await;
    assert!(junk.is_empty(), "the loser left {junk:?}");
    assert_eq!(differences(&got, &want), Vec::<String>::new());
    assert_eq!((got.seq, got.totals.files_processed), (1, 1));
    assert_eq!(got.totals.total_rows_scored, 100);
}

/// Two in-process writers race with two different files of one stream:
/// both score against the same state, one commit lands, the other is
/// refused and redone on top of it. Nothing is lost or doubled: the store
/// is exactly what one writer leaves applying the two files in the
/// winner's order.
#[tokio::test]
async fn two_writers_racing_with_two_files_lose_nothing() {
    let files = batches(2, 100);
    let (mem, gate, a, b) = racing_writers(&files).await;
    let (ka, kb) = (
        RawKey::parse(&files[0].0).unwrap(),
        RawKey::parse(&files[1].0).unwrap(),
    );
    let (ra, rb) = tokio::join!(a.process(&ka), b.process(&kb));
    assert_both_committed_one_refused(&gate);
    let seq = |o: tswatch::apply::processor::Outcome| match o {
        tswatch::apply::processor::Outcome::Applied(s) => s.state_seq,
        other => panic!("{other:?}"),
    };
    let (sa, sb) = (seq(ra.unwrap()), seq(rb.unwrap()));
    assert_eq!(
        BTreeMap::from([(sa, 0), (sb, 1)])
            .into_keys()
            .collect::<Vec<_>>(),
        [1, 2],
        "one commit each, in turn"
    );
    let order = if sa == 1 {
        vec![files[0].clone(), files[1].clone()]
    } else {
        vec![files[1].clone(), files[0].clone()]
    };
    // The same two files, applied one after the other by one writer.
    let alone = Arc::new(InMemory::new());
    seed(&alone, &files).await;
    let p = Processor::new(
        storage(Arc::new(Crashy::new(alone.clone(), None))),
        EngineConfig::default(),
    );
    for (k, _) in &order {
        p.process(&RawKey::parse(k).unwrap()).await.unwrap();
    }
    let (want, _) = outcome(&alone).await;
    let (got, junk) = outcome(&mem).await;
    assert!(junk.is_empty(), "{junk:?}");
    assert_eq!(differences(&got, &want), Vec::<String>::new());
    assert_eq!((got.seq, got.totals.files_processed), (2, 2));
    assert_eq!(got.totals.total_rows_scored, 200);
}
