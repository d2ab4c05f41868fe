//! Consumes S3 event notifications from an SQS queue (`--sqs-queue-url`)
//! and feeds them to the work queue ([`crate::ingest::queue`]), which works
//! on them as on any other notification; what is particular to SQS is how
//! a message is settled ([`InHand`]).
//!
//! Delivery is at least once; the effect is exactly once because
//! [`Processor::process`] commits each file by compare-and-swap and skips a
//! version already in its ledger. So any number of instances may share one
//! queue. The protocol per message:
//!
//! 1. Long-poll (`WaitTimeSeconds`) for up to 10 messages, each invisible to
//!    other consumers for `visibility` seconds, and queue each as one item
//!    (an S3 test event, or a message that can never be acted upon, is
//!    deleted at once).
//! 2. While messages are in hand (queued or being worked on), a heartbeat
//!    extends their visibility every third of that, so a slow file is not
//!    handed to another instance.
//! 3. The work queue processes every `raw/*.csv` the message names:
//!    messages of different streams at once (one worker per core), those of
//!    one stream in receive order, on the stream's lease. Delete the message
//!    only once every file returned `Ok` (applied, already applied, rejected
//!    as bad input, or gone). On a failure, hand it back: it comes back
//!    after the visibility timeout, doubled for each earlier receive
//!    ([`retry_delay`]).
//! 4. Dead letter: when the message has been received `max_receives` times
//!    and a file still fails, write `processed/<name>_error.json` saying so,
//!    log an error, and delete the message.
//!
//! On shutdown: stop receiving, finish the files in hand (within the grace
//! period), and make the messages not started (or abandoned) visible again
//! at once.

use crate::apply::processor::{ProcessError, Processor};
use crate::ingest::queue::{Item, Queue, stopped};
use crate::ingest::sqs::{Message, SqsClient};
use crate::state::keys::RawKey;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

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

/// What the messages in hand share.
struct Consumer {
    client: SqsClient,
    settings: SqsSettings,
    /// Receipt handles of the messages in hand (kept invisible).
    in_hand: Mutex<HashSet<String>>,
}

impl Consumer {
    /// The receipt handles in hand just now.
    fn handles(&self) -> Vec<String> {
        self.in_hand
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn hold(&self, handle: &str) {
        if let Ok(mut h) = self.in_hand.lock() {
            h.insert(handle.to_string());
        }
    }

    fn let_go(&self, handle: &str) {
        if let Ok(mut h) = self.in_hand.lock() {
            h.remove(handle);
        }
    }
}

/// A received message, from its receive until it is settled: deleted,
/// handed back or dead-lettered. Kept invisible meanwhile (the heartbeat);
/// its place among the messages this instance holds is freed when it is
/// dropped. One dropped unsettled (abandoned on shutdown) stays among the
/// handles in hand, which the consumer hands back before it stops.
pub(crate) struct InHand {
    msg: Message,
    /// When it was received: the wait for its stream's lease counts from then.
    received: Instant,
    consumer: Arc<Consumer>,
    /// Its place among the messages this instance holds.
    _slot: OwnedSemaphorePermit,
}

impl InHand {
    /// When it was received.
    pub(crate) fn received(&self) -> Instant {
        self.received
    }

    /// Logs the start of the work on its `files` files.
    pub(crate) fn starting(&self, files: usize) {
        tracing::debug!(
            sqs_message = %self.msg.message_id,
            receive = self.msg.receive_count(),
            files,
            "handling SQS message"
        );
    }

    /// Logs a file's failure (it is not retried before the message is
    /// received again).
    pub(crate) fn failed(&self, key: &RawKey, e: &ProcessError) {
        let receive = self.msg.receive_count();
        tracing::warn!(%key, receive, error = %e, "processing failed");
    }

    /// Settles the message once its files are done, `failed` those that
    /// failed: deleted if none did; otherwise dead-lettered after
    /// `max_receives` receives, or handed back for [`retry_delay`].
    pub(crate) async fn settle(self, processor: &Processor, failed: Vec<(RawKey, ProcessError)>) {
        if failed.is_empty() {
            self.delete().await;
            return;
        }
        let count = self.msg.receive_count();
        let settings = &self.consumer.settings;
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
                self.delete().await;
            } else {
                self.consumer.let_go(&self.msg.receipt_handle);
            }
            return;
        }
        let delay = retry_delay(settings.visibility_secs, count);
        let handle = &self.msg.receipt_handle;
        if let Err(e) = self.consumer.client.change_visibility(handle, delay).await {
            tracing::debug!(error = %e, "could not set the retry delay");
        }
        self.consumer.let_go(handle);
    }

    /// Hands a message not started back to SQS at once, for another
    /// consumer (or this one, later).
    pub(crate) async fn hand_back(self) {
        let handle = &self.msg.receipt_handle;
        if let Err(e) = self.consumer.client.change_visibility(handle, 0).await {
            tracing::debug!(error = %e, "could not release an unstarted message");
        }
        self.consumer.let_go(handle);
    }

    async fn delete(self) {
        if let Err(e) = self.consumer.client.delete(&self.msg.receipt_handle).await {
            // The message comes back and is found already processed.
            tracing::warn!(sqs_message = %self.msg.message_id, error = %e, "could not delete the SQS message; it will be redelivered and skipped");
        }
        self.consumer.let_go(&self.msg.receipt_handle);
    }

    /// Queues the message as an item of the work queue, or settles it at
    /// once if it names no file.
    async fn feed(self, parsed: Result<Parsed, String>, queue: &Queue) {
        let id = self.msg.message_id.as_str();
        match parsed {
            Ok(Parsed::Test) => {
                tracing::info!(sqs_message = id, "S3 test event received; deleting it");
                self.delete().await;
            }
            Err(reason) => {
                tracing::warn!(sqs_message = id, %reason, body = %self.msg.body.chars().take(200).collect::<String>(), "unusable SQS message; deleting it");
                self.delete().await;
            }
            Ok(Parsed::Records { keys, ignored }) => {
                for (key, reason) in ignored {
                    tracing::info!(sqs_message = id, %key, %reason, "event record ignored");
                }
                if keys.is_empty() {
                    self.starting(0);
                    self.delete().await;
                } else if let Err(item) = queue.push_item(Item::sqs(keys, self)) {
                    // Shutting down: not started.
                    item.not_started().await;
                }
            }
        }
    }
}

/// The messages from SQS: where they come from and which are accepted.
pub(crate) struct Source {
    /// The queue's client.
    pub(crate) client: SqsClient,
    /// How the consumer behaves.
    pub(crate) settings: SqsSettings,
    /// On S3, the bucket whose records are accepted.
    pub(crate) bucket: Option<String>,
    /// Accepted SNS topics of SNS-wrapped events (empty: any).
    pub(crate) topics: Vec<String>,
}

/// Runs the consumer until `shutdown` flips, feeding `queue`. Receives are
/// pipelined: the next one is made as soon as this instance has room for
/// more messages (`2 x lanes` in hand), not when the slowest file of the
/// last batch is done. A message whose stream another instance holds waits
/// in the queue (in hand, so still invisible and not received again) until
/// that instance lets the stream go.
pub(crate) async fn run(
    source: Source,
    queue: Queue,
    lanes: usize,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let Source {
        client,
        settings,
        bucket,
        topics,
    } = source;
    tracing::info!(
        queue = %settings.queue_url, wait = settings.wait_secs,
        max_receives = settings.max_receives, instance = queue.instance(),
        "consuming S3 events from SQS"
    );
    let capacity = (2 * lanes).max(2);
    let slots = Arc::new(Semaphore::new(capacity));
    let consumer = Arc::new(Consumer {
        client: client.clone(),
        settings: settings.clone(),
        in_hand: Mutex::new(HashSet::new()),
    });
    let heartbeat = tokio::spawn(heartbeat(consumer.clone()));
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
                    _ = stopped(shutdown.clone()) => break,
                }
            }
        };
        if !messages.is_empty() {
            tracing::debug!(count = messages.len(), "received SQS messages");
        }
        for (msg, slot) in messages.into_iter().zip(room) {
            consumer.hold(&msg.receipt_handle);
            let parsed = parse_body(&msg.body, bucket.as_deref(), &topics);
            let message = InHand {
                msg,
                received: Instant::now(),
                consumer: consumer.clone(),
                _slot: slot,
            };
            message.feed(parsed, &queue).await;
        }
    }
    // The queue hands back the messages not started, and its workers
    // finish those in hand within the grace (or abandon them): each frees
    // its place. Then the ones left (abandoned) go back at once
    // (processing is idempotent).
    let all = u32::try_from(capacity).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace + Duration::from_secs(1), slots.acquire_many(all)).await;
    heartbeat.abort();
    for h in consumer.handles() {
        let _ = client.change_visibility(&h, 0).await;
    }
}

/// Keeps the messages in hand invisible to other consumers.
async fn heartbeat(consumer: Arc<Consumer>) {
    let visibility = consumer.settings.visibility_secs;
    let every = Duration::from_secs(u64::from((visibility / 3).max(1)));
    loop {
        tokio::time::sleep(every).await;
        for h in consumer.handles() {
            if let Err(e) = consumer.client.change_visibility(&h, visibility).await {
                tracing::warn!(error = %e, "could not extend a message's visibility; another consumer may take it (harmless: processing is idempotent)");
            }
        }
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
