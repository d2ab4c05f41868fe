//! Consumes S3 event notifications from an SQS queue (`--sqs-queue-url`).
//!
//! Delivery is at least once; the effect is exactly once because
//! [`Processor::process`] commits each file by compare-and-swap and skips a
//! version already in its ledger. So any number of instances may share one
//! queue. The protocol per message:
//!
//! 1. Long-poll (`WaitTimeSeconds`) for up to 10 messages, each invisible to
//!    other consumers for `visibility` seconds.
//! 2. While messages are in hand, a heartbeat extends their visibility
//!    every third of that, so a slow file is not handed to another instance.
//! 3. Process every `raw/*.csv` the message names: messages of different
//!    streams at once (one lane per core), those of one stream in receive
//!    order, as a stream's commits are serial anyway. Delete the message only
//!    once every file returned `Ok` (applied, already applied, rejected as bad
//!    input, or gone). On a failure, leave it: it comes back after the
//!    visibility timeout, doubled for each earlier receive ([`retry_delay`]).
//! 4. Dead letter: when the message has been received `max_receives` times
//!    and a file still fails, write `processed/<name>_error.json` saying so,
//!    log an error, and delete the message.
//!
//! On shutdown: stop receiving, finish the files in hand (within the grace
//! period), and make the messages not yet started visible again at once.

use crate::apply::lease::{Claim, Leases};
use crate::apply::processor::{Outcome, ProcessError, Processor};
use crate::ingest::sqs::{Message, SqsClient};
use crate::state::keys::RawKey;
use crate::state::stream::Stream;
use crate::storage::Location;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, mpsc, watch};

/// How the consumer behaves.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    /// The queue.
    pub queue_url: String,
    /// Long-poll wait, seconds (0..=20).
    pub wait_secs: u32,
    /// Messages per receive (1..=10).
    pub max_messages: u32,
    /// Seconds a message in hand stays invisible; extended while it is worked on.
    pub visibility_secs: u32,
    /// Receives after which a message whose file still fails is dead-lettered.
    pub max_receives: u32,
    /// Reconciliation takes only files older than this: a younger one's
    /// event may still be on its way through the queue.
    pub reconcile_after_secs: u32,
}

impl Default for SqsSettings {
    fn default() -> Self {
        Self {
            queue_url: String::new(),
            wait_secs: 20,
            max_messages: 10,
            visibility_secs: 60,
            max_receives: 5,
            reconcile_after_secs: 900,
        }
    }
}

pub(crate) use crate::ingest::s3_event::S3Event as Parsed;

/// Reads a message body: an S3 event, or an SNS `Notification` whose
/// `Message` is one. `bucket` (when on S3) filters records of other buckets;
/// `topics` (when not empty) the SNS topics accepted. `Err` says why the
/// body can never be acted upon.
pub(crate) fn parse_body(
    body: &str,
    bucket: Option<&str>,
    topics: &[String],
) -> Result<Parsed, String> {
    let v: Value = serde_json::from_str(body).map_err(|_| "body is not JSON".to_string())?;
    let event = if v.get("Type").and_then(Value::as_str) == Some("Notification") {
        let topic = v.get("TopicArn").and_then(Value::as_str).unwrap_or("");
        if !topics.is_empty() && !topics.iter().any(|t| t == topic) {
            return Err(format!("SNS topic {topic:?} is not an accepted topic"));
        }
        let msg = v
            .get("Message")
            .and_then(Value::as_str)
            .ok_or("SNS notification without a Message")?;
        serde_json::from_str(msg).map_err(|_| "SNS Message is not JSON".to_string())?
    } else {
        v
    };
    crate::ingest::s3_event::parse_s3_event(&event, bucket)
}

/// Delay before a failed message is seen again: the visibility timeout,
/// doubling with each receive, at most 15 minutes. With the defaults (60 s,
/// 5 receives) a file is dead-lettered only after about 15 minutes of
/// failures, so an ordinary storage outage does not send files there.
pub(crate) fn retry_delay(visibility_secs: u32, receive_count: u32) -> u32 {
    let factor = 1u32 << receive_count.saturating_sub(1).min(16);
    visibility_secs.saturating_mul(factor).min(900)
}

/// Longest a received message waits for its stream's lease (held by
/// another instance) before it is handed back to the queue.
const LEASE_WAIT: Duration = Duration::from_secs(120);
/// How long a stream's worker lingers with nothing to do before it gives
/// the stream's lease up.
const STREAM_IDLE: Duration = Duration::from_millis(100);

/// A task of the consumer.
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A received message on its way through this instance.
struct Job {
    /// When it was received: the lease wait counts from then.
    received: Instant,
    msg: Message,
    parsed: Result<Parsed, String>,
    /// Its place among the messages this instance holds.
    _slot: OwnedSemaphorePermit,
}

/// What the consumer's tasks share.
struct Consumer {
    client: SqsClient,
    processor: Arc<Processor>,
    leases: Arc<Leases>,
    settings: SqsSettings,
    /// Files worked on at once (one lane per core).
    lanes: Arc<Semaphore>,
    /// Receipt handles of the messages in hand (kept invisible).
    in_hand: Arc<Mutex<HashSet<String>>>,
    /// Per stream, the queue of its worker, while it has one.
    streams: Mutex<HashMap<Stream, mpsc::UnboundedSender<Job>>>,
    stopping: AtomicBool,
}

/// Runs the consumer until `shutdown` flips. Receives are pipelined: the
/// next one is made as soon as this instance has room for more messages
/// (`2 x lanes` in hand), not when the slowest file of the last batch is
/// done. Each stream's messages go to the stream's worker, in receive
/// order; a worker works on its stream only while it holds the stream's
/// lease ([`Leases`]), so across instances a stream is worked on by one at
/// a time and their commits do not collide. A message whose stream another
/// instance holds waits in hand (still invisible, so not received again)
/// until that instance lets the stream go.
pub(crate) async fn run(
    client: SqsClient,
    processor: Arc<Processor>,
    settings: SqsSettings,
    topics: Vec<String>,
    lanes: usize,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let bucket = match processor.storage().location() {
        Location::S3 { bucket } => Some(bucket.clone()),
        Location::Local(_) => None,
    };
    let leases = Arc::new(Leases::new(
        processor.storage().clone(),
        Duration::from_secs(30),
    ));
    tracing::info!(
        queue = %settings.queue_url, wait = settings.wait_secs,
        max_receives = settings.max_receives, instance = leases.owner(),
        "consuming S3 events from SQS"
    );
    let capacity = (2 * lanes).max(2);
    let slots = Arc::new(Semaphore::new(capacity));
    let me = Arc::new(Consumer {
        client: client.clone(),
        processor,
        leases,
        settings: settings.clone(),
        lanes: Arc::new(Semaphore::new(lanes.max(1))),
        in_hand: Arc::new(Mutex::new(HashSet::new())),
        streams: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
    });
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        me.in_hand.clone(),
        settings.visibility_secs,
    ));
    let mut workers = tokio::task::JoinSet::new();
    let mut failures = 0u32;
    loop {
        // Room for at least one more message, then for as many as are free.
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(shutdown.clone()) => break,
        };
        let mut room = vec![first];
        while room.len() < settings.max_messages as usize {
            match slots.clone().try_acquire_owned() {
                Ok(p) => room.push(p),
                Err(_) => break,
            }
        }
        let want = u32::try_from(room.len()).unwrap_or(1);
        let received = tokio::select! {
            r = client.receive(want, settings.wait_secs, settings.visibility_secs) => r,
            _ = stopped(shutdown.clone()) => break,
        };
        let messages = match received {
            Ok(m) => {
                failures = 0;
                crate::telemetry::sqs_received(m.len());
                m
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                crate::telemetry::retry("sqs_receive");
                // 1 s, doubling, at most 30 s.
                let wait = crate::apply::retry_wait(Duration::from_secs(1), failures);
                if e.is_auth() {
                    tracing::error!(error = %e, "SQS refused our credentials; retrying in {wait:?}");
                } else {
                    tracing::warn!(error = %e, "SQS receive failed; retrying in {wait:?}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        if !messages.is_empty() {
            tracing::debug!(count = messages.len(), "received SQS messages");
        }
        for (msg, slot) in messages.into_iter().zip(room) {
            if let Ok(mut h) = me.in_hand.lock() {
                h.insert(msg.receipt_handle.clone());
            }
            let parsed = parse_body(&msg.body, bucket.as_deref(), &topics);
            let job = Job {
                received: Instant::now(),
                msg,
                parsed,
                _slot: slot,
            };
            if let Some(w) = me.clone().dispatch(job) {
                workers.spawn(w);
            }
        }
        // Reap finished workers (their results are nothing).
        while workers.try_join_next().is_some() {}
    }
    me.stopping.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    heartbeat.abort();
    if drained.is_err() {
        tracing::warn!(
            "shutdown grace period over: abandoning the messages in hand; they will be received again"
        );
        workers.shutdown().await;
        // Those not started (queued behind a long file) go back at once;
        // the one abandoned mid-file too (processing is idempotent).
        for h in handles_in(&me.in_hand) {
            let _ = client.change_visibility(&h, 0).await;
        }
    }
}

impl Consumer {
    /// Hands `job` to its stream's worker; returns a new worker to run if
    /// the stream had none (a message naming no file gets one of its own).
    fn dispatch(self: Arc<Self>, job: Job) -> Option<Task> {
        let stream = match &job.parsed {
            Ok(Parsed::Records { keys, .. }) => keys.first().map(|k| k.stream()),
            _ => None,
        };
        let Some(stream) = stream else {
            return Some(Box::pin(async move { self.work(None, job).await }));
        };
        let mut streams = self.streams.lock().ok()?;
        let job = match streams.get(&stream) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return None,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        streams.insert(stream.clone(), tx);
        drop(streams);
        Some(Box::pin(self.clone().stream_worker(stream, rx)))
    }

    /// Works through one stream's messages, in order, while holding its
    /// lease; gives the lease up when idle.
    async fn stream_worker(self: Arc<Self>, stream: Stream, mut rx: mpsc::UnboundedReceiver<Job>) {
        loop {
            let job = match tokio::time::timeout(STREAM_IDLE, rx.recv()).await {
                Ok(Some(job)) => job,
                _ => {
                    // Idle: give the lease up first (so no new worker of
                    // this stream can be holding it when the release lands),
                    // then leave, unless a message came in meanwhile (the
                    // check and the leaving under the lock dispatch takes).
                    self.leases.release(&stream).await;
                    let late = match self.streams.lock() {
                        Ok(mut streams) => match rx.try_recv() {
                            Ok(job) => Some(job),
                            Err(_) => {
                                streams.remove(&stream);
                                None
                            }
                        },
                        Err(_) => None,
                    };
                    match late {
                        Some(job) => job,
                        None => return,
                    }
                }
            };
            self.work(Some(&stream), job).await;
        }
    }

    /// Handles one message (on `stream`'s lease, if it names files).
    async fn work(&self, stream: Option<&Stream>, job: Job) {
        let msg = &job.msg;
        match self.lane_and_lease(stream, job.received).await {
            Some(_lane) => {
                // A long file keeps its stream's lease (this never ends by
                // itself: the message's handling ends the select).
                let renew = async {
                    let Some(s) = stream else {
                        return std::future::pending().await;
                    };
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        let _ = self.leases.claim(s).await;
                    }
                };
                tokio::select! {
                    () = handle(&self.client, &self.processor, msg, job.parsed, &self.settings) => {}
                    () = renew => {}
                }
            }
            None => {
                // Not started: hand it to another consumer at once.
                if let Err(e) = self.client.change_visibility(&msg.receipt_handle, 0).await {
                    tracing::debug!(error = %e, "could not release an unstarted message");
                }
            }
        }
        if let Ok(mut h) = self.in_hand.lock() {
            h.remove(&msg.receipt_handle);
        }
    }

    /// Waits for a lane and, with it, `stream`'s lease: a lease is claimed
    /// only with a lane in hand, so an instance holds no more streams than
    /// it can work on (the others stay free for other instances). `None`
    /// if it gave up (shutdown, or [`LEASE_WAIT`] passed).
    async fn lane_and_lease(
        &self,
        stream: Option<&Stream>,
        received: Instant,
    ) -> Option<SemaphorePermit<'_>> {
        let mut storage_failures = 0u32;
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return None;
            }
            let lane = self.lanes.acquire().await.ok()?;
            // Shutdown may have begun while this waited for the lane.
            if self.stopping.load(Ordering::Relaxed) {
                return None;
            }
            let Some(stream) = stream else {
                return Some(lane);
            };
            let pause = match self.leases.claim(stream).await {
                Ok(Claim::Held) => return Some(lane),
                Ok(Claim::Elsewhere { left, .. }) => left.min(Duration::from_millis(100)),
                Err(e) => {
                    // Leases steer work, they do not guard it: with storage
                    // failing, the commit will say what it can do.
                    storage_failures += 1;
                    if storage_failures >= 3 {
                        tracing::debug!(%stream, error = %e, "stream lease unavailable; working without it");
                        return Some(lane);
                    }
                    Duration::from_millis(200)
                }
            };
            drop(lane);
            if received.elapsed() > LEASE_WAIT {
                tracing::debug!(%stream, "stream busy on another instance; message handed back");
                return None;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// The receipt handles in hand just now.
fn handles_in(in_hand: &Mutex<HashSet<String>>) -> Vec<String> {
    in_hand
        .lock()
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default()
}

/// Keeps the messages in hand invisible to other consumers.
async fn heartbeat(client: SqsClient, in_hand: Arc<Mutex<HashSet<String>>>, visibility: u32) {
    let every = Duration::from_secs(u64::from((visibility / 3).max(1)));
    loop {
        tokio::time::sleep(every).await;
        for h in handles_in(&in_hand) {
            if let Err(e) = client.change_visibility(&h, visibility).await {
                tracing::warn!(error = %e, "could not extend a message's visibility; another consumer may take it (harmless: processing is idempotent)");
            }
        }
    }
}

/// Acts on one message; deletes it when done (see the module docs).
async fn handle(
    client: &SqsClient,
    processor: &Processor,
    msg: &Message,
    parsed: Result<Parsed, String>,
    settings: &SqsSettings,
) {
    let id = msg.message_id.as_str();
    let keys = match parsed {
        Ok(Parsed::Test) => {
            tracing::info!(sqs_message = id, "S3 test event received; deleting it");
            delete(client, msg).await;
            return;
        }
        Ok(Parsed::Records { keys, ignored }) => {
            for (key, reason) in ignored {
                tracing::info!(sqs_message = id, %key, %reason, "event record ignored");
            }
            keys
        }
        Err(reason) => {
            tracing::warn!(sqs_message = id, %reason, body = %msg.body.chars().take(200).collect::<String>(), "unusable SQS message; deleting it");
            delete(client, msg).await;
            return;
        }
    };
    let count = msg.receive_count();
    tracing::debug!(
        sqs_message = id,
        receive = count,
        files = keys.len(),
        "handling SQS message"
    );
    let mut failed: Vec<(RawKey, ProcessError)> = Vec::new();
    for key in keys {
        match processor.process(&key).await {
            Ok(Outcome::Applied(s)) => tracing::info!(
                %key, rows = s.total_rows, anomalies = s.anomaly_count,
                ms = format!("{:.1}", s.duration_ms), via = "sqs", "processed"
            ),
            Ok(Outcome::AlreadyApplied) => {
                tracing::debug!(%key, "already processed; skipped")
            }
            Ok(Outcome::Rejected(_)) | Ok(Outcome::Missing) => {}
            Err(e) => {
                tracing::warn!(%key, receive = count, error = %e, "processing failed");
                failed.push((key, e));
            }
        }
    }
    if failed.is_empty() {
        delete(client, msg).await;
        return;
    }
    if count >= settings.max_receives {
        let mut recorded = true;
        for (key, e) in &failed {
            tracing::error!(
                %key, receives = count, error = %e,
                "DEAD LETTER: giving up on this file after {count} deliveries; see {}", key.error()
            );
            match dead_letter(processor, key, e, count).await {
                Ok(()) => crate::telemetry::sqs_dead_letter(),
                Err(we) => {
                    tracing::error!(%key, error = %we, "could not record the dead letter; the message stays on the queue");
                    recorded = false;
                }
            }
        }
        if recorded {
            delete(client, msg).await;
        }
        return;
    }
    let delay = retry_delay(settings.visibility_secs, count);
    if let Err(e) = client.change_visibility(&msg.receipt_handle, delay).await {
        tracing::debug!(error = %e, "could not set the retry delay");
    }
}

/// Writes `processed/<name>_error.json` for a file that kept failing. It
/// names the version that failed (`source_etag`), so that uploading the
/// file again is processed; without one (the version could not be read
/// either) the record stands for every version, as the seed's did.
async fn dead_letter(
    processor: &Processor,
    key: &RawKey,
    err: &ProcessError,
    receives: u32,
) -> Result<(), ProcessError> {
    let etag = processor.storage().etag(key.as_str()).await.ok().flatten();
    let body = json!({
        "source_key": key.as_str(),
        "source_etag": etag,
        "error": format!("processing kept failing: gave up after {receives} deliveries from the SQS queue"),
        "last_error": err.to_string(),
        "receive_count": receives,
        "dead_letter": true,
        "failed_at": crate::state::documents::now_iso(),
    });
    processor
        .storage()
        .put(
            &key.error(),
            serde_json::to_vec_pretty(&body).unwrap_or_default(),
        )
        .await?;
    Ok(())
}

async fn delete(client: &SqsClient, msg: &Message) {
    if let Err(e) = client.delete(&msg.receipt_handle).await {
        // The message comes back and is found already processed.
        tracing::warn!(sqs_message = %msg.message_id, error = %e, "could not delete the SQS message; it will be redelivered and skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(keys: &[&str]) -> String {
        let records: Vec<Value> = keys
            .iter()
            .map(|k| json!({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": k}}}))
            .collect();
        json!({ "Records": records }).to_string()
    }

    fn keys_of(p: Parsed) -> Vec<String> {
        match p {
            Parsed::Records { keys, .. } => keys.iter().map(|k| k.as_str().to_string()).collect(),
            Parsed::Test => vec!["<test>".into()],
        }
    }

    #[test]
    fn direct_and_sns_wrapped_events() {
        let direct = event(&["raw%2Fa+b.csv", "raw/c.csv", "raw/c.csv", "processed/x.csv"]);
        assert_eq!(
            keys_of(parse_body(&direct, Some("b"), &[]).unwrap()),
            ["raw/a b.csv", "raw/c.csv"]
        );
        let wrapped =
            json!({"Type": "Notification", "TopicArn": "arn:t", "Message": direct}).to_string();
        assert_eq!(
            keys_of(parse_body(&wrapped, Some("b"), &[]).unwrap()),
            ["raw/a b.csv", "raw/c.csv"]
        );
        assert!(parse_body(&wrapped, Some("b"), &["arn:other".into()]).is_err());
        assert_eq!(
            keys_of(parse_body(&direct, Some("other"), &[]).unwrap()),
            Vec::<String>::new()
        );
        let test = json!({"Service": "Amazon S3", "Event": "s3:TestEvent"}).to_string();
        assert_eq!(parse_body(&test, None, &[]).unwrap(), Parsed::Test);
        let wrapped_test = json!({"Type": "Notification", "Message": test}).to_string();
        assert_eq!(parse_body(&wrapped_test, None, &[]).unwrap(), Parsed::Test);
        assert!(parse_body("not json", None, &[]).is_err());
        assert!(parse_body("{}", None, &[]).is_err());
    }

    #[test]
    fn retry_delays_grow_and_stop_growing() {
        assert_eq!(retry_delay(60, 1), 60);
        assert_eq!(retry_delay(60, 2), 120);
        assert_eq!(retry_delay(60, 4), 480);
        assert_eq!(retry_delay(60, 5), 900);
        assert_eq!(retry_delay(3, 2), 6);
        assert_eq!(retry_delay(43_200, 1), 900);
        assert_eq!(retry_delay(60, u32::MAX), 900);
    }
}
