//! The one compare-and-swap loop over a shared document (a stream's state,
//! its baseline projection, its lease): read the document with its version,
//! decide, and write only if it is still that version. When someone else
//! wrote first (a [`StoreError::Conflict`]), read again and decide again,
//! until the write lands, a decision stops, or the caller's limit of refused
//! writes is reached.
//!
//! Every read-decide-write of the service goes through
//! [`compare_and_swap`] (a lease given up, one write at a version already
//! known, needs no loop), so what counts as a conflict and when to give up
//! are decided here once; each caller says only how to read, how to decide,
//! and what a refused write means to it. Any other storage failure ends the
//! loop at once with that error: the write may or may not have landed, and
//! only the caller knows how to find out.

use crate::storage::{Storage, StoreError, Version};
use bytes::Bytes;
use std::future::Future;

/// What to do with the document as it was just read.
#[derive(Debug)]
pub(crate) enum Decision<P, T> {
    /// Write `body` in its place, only if it is still the version read (if
    /// none was read, only if there still is none).
    Write {
        /// The new document.
        body: Bytes,
        /// What the caller needs once the write's fate is known: handed
        /// back with [`Swap::Written`] if it lands, to the next decision if
        /// it was refused, with [`Swap::GaveUp`] if it was the last refusal.
        then: P,
    },
    /// Stop without writing, with this result.
    Stop(T),
}

/// How a compare-and-swap ended.
#[derive(Debug)]
pub(crate) enum Swap<P, T> {
    /// The write landed: the document's new version, and the decision's `then`.
    Written(Version, P),
    /// A decision stopped without writing.
    Stopped(T),
    /// This many writes in a row were refused, the limit; the last refused
    /// decision's `then`.
    GaveUp(u32, P),
}

/// How many refused writes in a row a caller tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Any number: read and decide again until a write lands or a decision stops.
    Forever,
    /// Give up at the `n`th refused write in a row.
    UpTo(u32),
}

/// Runs the loop on `key`: `read` gives the document as it is now (with its
/// version; `None` if there is none), `decide` says what to do with it
/// (given, after a refused write, that write's `then`), and `on_conflict`
/// hears of every refused write, with the count so far, before the loop
/// reads again or gives up.
pub(crate) async fn compare_and_swap<D, P, T, E, R, RF, F, FF>(
    storage: &Storage,
    key: &str,
    retry: Retry,
    mut read: R,
    mut decide: F,
    mut on_conflict: impl FnMut(u32),
) -> Result<Swap<P, T>, E>
where
    E: From<StoreError>,
    R: FnMut() -> RF,
    RF: Future<Output = Result<Option<(D, Version)>, E>>,
    F: FnMut(Option<(D, Version)>, Option<P>) -> FF,
    FF: Future<Output = Result<Decision<P, T>, E>>,
{
    let mut conflicts = 0;
    let mut refused = None;
    loop {
        let current = read().await?;
        let expected = current.as_ref().map(|(_, v)| v.clone());
        let (body, then) = match decide(current, refused.take()).await? {
            Decision::Stop(result) => return Ok(Swap::Stopped(result)),
            Decision::Write { body, then } => (body, then),
        };
        match storage.put_if(key, body, expected.as_deref()).await {
            Ok(version) => return Ok(Swap::Written(version, then)),
            Err(StoreError::Conflict(_)) => {
                conflicts += 1;
                on_conflict(conflicts);
                if matches!(retry, Retry::UpTo(limit) if conflicts >= limit) {
                    return Ok(Swap::GaveUp(conflicts, then));
                }
                refused = Some(then);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `key` as a counter (absent: 0).
    async fn counter(storage: &Storage, key: &str) -> Result<Option<(u64, Version)>, StoreError> {
        Ok(storage.get_versioned(key).await?.map(|(b, v)| {
            let n = std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok());
            (n.unwrap_or(0), v)
        }))
    }

    #[tokio::test]
    async fn concurrent_increments_are_none_lost() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let workers = (0..4).map(|_| async {
            for _ in 0..25 {
                let swap = compare_and_swap(
                    &storage,
                    "state/n",
                    Retry::Forever,
                    || counter(&storage, "state/n"),
                    |current, _| async move {
                        let n = current.map_or(0, |(n, _)| n);
                        Ok::<_, StoreError>(Decision::<(), ()>::Write {
                            body: Bytes::from((n + 1).to_string()),
                            then: (),
                        })
                    },
                    |_| {},
                )
                .await
                .unwrap();
                assert!(matches!(swap, Swap::Written(..)), "{swap:?}");
            }
        });
        futures::future::join_all(workers).await;
        let (n, _) = counter(&storage, "state/n").await.unwrap().unwrap();
        assert_eq!(n, 100);
    }

    #[tokio::test]
    async fn refused_writes_come_back_and_the_limit_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        storage
            .put_if("state/n", Bytes::from("0"), None)
            .await
            .unwrap();
        // Every read is followed by another writer's write: each
        // conditional write is refused.
        let read = || async {
            let seen = counter(&storage, "state/n").await;
            let (n, _) = seen.as_ref().unwrap().clone().unwrap();
            storage
                .put_if(
                    "state/n",
                    Bytes::from((n + 10).to_string()),
                    seen.as_ref().unwrap().as_ref().map(|(_, v)| v.as_str()),
                )
                .await
                .unwrap();
            seen
        };
        let mut handed_back = Vec::new();
        let mut heard = Vec::new();
        let mut attempt = 0;
        let swap = compare_and_swap(
            &storage,
            "state/n",
            Retry::UpTo(3),
            read,
            |_, refused: Option<u32>| {
                handed_back.push(refused);
                attempt += 1;
                let then = attempt;
                async move {
                    Ok::<_, StoreError>(Decision::<u32, ()>::Write {
                        body: Bytes::from("1"),
                        then,
                    })
                }
            },
            |n| heard.push(n),
        )
        .await
        .unwrap();
        assert!(matches!(swap, Swap::GaveUp(3, 3)), "{swap:?}");
        assert_eq!(handed_back, [None, Some(1), Some(2)]);
        assert_eq!(heard, [1, 2, 3]);
        // None of the refused writes landed.
        let (n, _) = counter(&storage, "state/n").await.unwrap().unwrap();
        assert_eq!(n, 30);

        // A decision that stops writes nothing.
        let swap = compare_and_swap(
            &storage,
            "state/n",
            Retry::UpTo(3),
            || counter(&storage, "state/n"),
            |current, _: Option<()>| async move { Ok::<_, StoreError>(Decision::Stop(current)) },
            |_| {},
        )
        .await
        .unwrap();
        assert!(matches!(swap, Swap::Stopped(Some((30, _)))), "{swap:?}");
    }
}
