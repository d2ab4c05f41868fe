//! Per-stream leases, so that instances sharing a queue work each stream on
//! one instance at a time: a stream's files are applied one after another
//! anyway (each is a compare-and-swap of the stream's state), and two
//! instances on one stream only race for that write and score again.
//!
//! A lease is a small document next to the stream's state
//! (`state/<stream>/lease.json`, `state/lease.json` for the default stream)
//! written by compare-and-swap, the same conditional writes the commits
//! use: no coordinator, nothing but the bucket. It names its owner and
//! when it runs out; the owner renews it while it works on a file of the
//! stream and gives it up when it has none of the stream's work in hand. A lease that ran out (its
//! owner died, or went idle) is taken over by the next instance with work
//! for the stream. Leases only steer the work: correctness never depends
//! on them (commits are compare-and-swap whatever the lease says), so a
//! clock that is off, or a lease lost mid-file, costs a re-score at most.

use crate::state::stream::Stream;
use crate::storage::cas::{Decision, Retry, Swap, compare_and_swap};
use crate::storage::{Storage, StoreError, Version};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The lease document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LeaseDoc {
    /// Who holds it (an instance id).
    owner: String,
    /// When it runs out, in milliseconds since the Unix epoch.
    until_ms: u64,
}

/// Whether this instance may work on a stream now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// It holds the stream's lease.
    Held,
    /// Another instance does, until about this long from now.
    Elsewhere {
        /// The other instance.
        owner: String,
        /// How long its lease has left.
        left: Duration,
    },
}

/// This instance's leases.
#[derive(Debug)]
pub(crate) struct Leases {
    storage: Storage,
    owner: String,
    ttl: Duration,
    /// Per stream held: the lease's version and when it runs out.
    held: Mutex<HashMap<Stream, (Version, Instant)>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An id no other instance, here or elsewhere, picks.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

impl Leases {
    /// Leases of `ttl` over `storage`, under a fresh instance id.
    pub(crate) fn new(storage: Storage, ttl: Duration) -> Self {
        Self {
            storage,
            owner: instance_id(),
            ttl,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// This instance's id, as its leases name it.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// Takes, renews or confirms the lease of `stream`: `Held` if this
    /// instance may work on it for at least half the lease time from now.
    pub(crate) async fn claim(&self, stream: &Stream) -> Result<Claim, StoreError> {
        if let Some((_, until)) = self.held_lease(stream)
            && until.saturating_duration_since(Instant::now()) > self.ttl / 2
        {
            return Ok(Claim::Held);
        }
        let key = stream.lease_key();
        let swap = compare_and_swap(
            &self.storage,
            &key,
            // A refused write means someone else took or renewed it first.
            Retry::UpTo(1),
            || self.storage.get_versioned(&key),
            |current, _| {
                let now = now_ms();
                // An unreadable lease is anyone's to take.
                let theirs = current
                    .and_then(|(body, _)| serde_json::from_slice::<LeaseDoc>(&body).ok())
                    .filter(|doc| doc.owner != self.owner && doc.until_ms > now);
                let decision = match theirs {
                    Some(doc) => {
                        self.forget(stream);
                        Decision::Stop(Claim::Elsewhere {
                            owner: doc.owner,
                            left: Duration::from_millis(doc.until_ms - now),
                        })
                    }
                    None => {
                        let doc = LeaseDoc {
                            owner: self.owner.clone(),
                            until_ms: now + self.ttl.as_millis() as u64,
                        };
                        let body = serde_json::to_vec(&doc).unwrap_or_default();
                        Decision::Write {
                            body: body.into(),
                            then: Instant::now(),
                        }
                    }
                };
                std::future::ready(Ok(decision))
            },
            |_| {},
        )
        .await?;
        Ok(match swap {
            Swap::Stopped(claim) => claim,
            Swap::Written(version, started) => {
                if let Ok(mut h) = self.held.lock() {
                    h.insert(stream.clone(), (version, started + self.ttl));
                }
                Claim::Held
            }
            // Someone else took or renewed it first: theirs now.
            Swap::GaveUp(..) => {
                self.forget(stream);
                Claim::Elsewhere {
                    owner: "another instance".into(),
                    left: self.ttl,
                }
            }
        })
    }

    /// Gives `stream`'s lease up (it has no more work here), so another
    /// instance may take the stream at once.
    pub(crate) async fn release(&self, stream: &Stream) {
        let Some((version, _)) = self.held_lease(stream) else {
            return;
        };
        self.forget(stream);
        let doc = LeaseDoc {
            owner: String::new(),
            until_ms: 0,
        };
        let body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        // One conditional write, not read again: the version is the one this
        // instance wrote. Lost to a newer owner, or storage down: it runs
        // out by itself.
        let _ = self
            .storage
            .put_if(&stream.lease_key(), body, Some(&version))
            .await;
    }

    fn held_lease(&self, stream: &Stream) -> Option<(Version, Instant)> {
        self.held.lock().ok()?.get(stream).cloned()
    }

    fn forget(&self, stream: &Stream) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Stream {
        Stream::named(name).unwrap()
    }

    #[tokio::test]
    async fn one_instance_at_a_time_then_the_next() {
        let (s, t, default) = (named("s"), named("t"), Stream::DEFAULT);
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let a = Leases::new(storage.clone(), Duration::from_secs(30));
        let b = Leases {
            owner: "b".into(),
            ..Leases::new(storage.clone(), Duration::from_secs(30))
        };
        assert_eq!(a.claim(&s).await.unwrap(), Claim::Held);
        // Held and fresh: no storage round trip needed to confirm.
        assert_eq!(a.claim(&s).await.unwrap(), Claim::Held);
        match b.claim(&s).await.unwrap() {
            Claim::Elsewhere { owner, left } => {
                assert_eq!(owner, a.owner());
                assert!(left > Duration::from_secs(25), "{left:?}");
            }
            Claim::Held => panic!("two holders"),
        }
        // Other streams are independent; the default stream has its own.
        assert_eq!(b.claim(&t).await.unwrap(), Claim::Held);
        assert_eq!(b.claim(&default).await.unwrap(), Claim::Held);
        assert!(dir.path().join("state/lease.json").exists());
        // Released: the next instance takes it at once.
        a.release(&s).await;
        assert_eq!(b.claim(&s).await.unwrap(), Claim::Held);
        assert!(matches!(
            a.claim(&s).await.unwrap(),
            Claim::Elsewhere { .. }
        ));
    }

    #[tokio::test]
    async fn a_lease_that_ran_out_is_taken_over() {
        let (s, u) = (named("s"), named("u"));
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let a = Leases::new(storage.clone(), Duration::from_millis(200));
        let b = Leases {
            owner: "b".into(),
            ..Leases::new(storage.clone(), Duration::from_millis(200))
        };
        assert_eq!(a.claim(&s).await.unwrap(), Claim::Held);
        assert!(matches!(
            b.claim(&s).await.unwrap(),
            Claim::Elsewhere { .. }
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(b.claim(&s).await.unwrap(), Claim::Held);
        // a's renewal finds b's lease: a lost it.
        assert!(matches!(
            a.claim(&s).await.unwrap(),
            Claim::Elsewhere { .. }
        ));
        // A lease document that cannot be read is anyone's.
        storage
            .put("state/u/lease.json", b"not json".to_vec())
            .await
            .unwrap();
        assert_eq!(a.claim(&u).await.unwrap(), Claim::Held);
    }
}
