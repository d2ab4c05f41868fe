//! The HTTP server loop. `axum::serve` offers neither a header-read timeout
//! nor a connection cap, so connections are served here with hyper's HTTP/1
//! builder:
//!
//! - a connection that does not send a complete request head within the
//!   header timeout (from when it opens, or from its previous response) is
//!   closed, which also closes idle keep-alive connections;
//! - at most `max_connections` are open at once. Every connection is
//!   accepted at once (a full listen queue would make the kernel drop new
//!   ones, a health check's included); at the cap, the oldest connection
//!   with no request in hand is closed to make room (gracefully: what is
//!   still being written gets a quarter of a second; it stops counting
//!   toward the cap at once, so a flood of idle connections never stalls
//!   the accepting of new ones). When every connection has a request
//!   in hand, the one whose request started first is cut if it started
//!   more than [`BUSY_GRACE`] ago (slow bodies cannot hold every slot);
//!   only when all are younger does a new connection wait.

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest wait for a complete request head.
    pub(crate) header_timeout: Duration,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
}

/// How long shutdown waits for open connections to finish their request.
const DRAIN: Duration = Duration::from_secs(30);
/// At the cap with every connection busy, a request older than this may be
/// cut to make room.
pub(crate) const BUSY_GRACE: Duration = Duration::from_secs(2);
/// How long an evicted connection may take to finish what it is writing.
/// It no longer counts toward the cap meanwhile.
const EVICT_GRACE: Duration = Duration::from_millis(250);

/// The default connection cap: 256, and at most half the process's
/// open-file limit (the rest is for storage, the watcher and the logs).
pub fn default_max_connections() -> usize {
    open_file_limit().map_or(256, |n| (n / 2).clamp(8, 256))
}

/// The soft open-file limit (Linux: `/proc/self/limits`).
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One open connection, as the accept loop sees it.
#[derive(Debug, Default)]
struct Conn {
    /// Requests being answered (their response bodies included).
    busy: AtomicUsize,
    /// When its current request started (ms since the server started).
    busy_since: AtomicU64,
    /// Told when the connection is to close, to make room (gracefully).
    evict: Notify,
    /// Told when it is to close now, request or not.
    kill: Notify,
    /// Whether it was told already.
    told: std::sync::atomic::AtomicBool,
}

/// The open connections, oldest first.
#[derive(Debug, Default)]
struct Open {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    /// Signalled whenever a connection closes.
    closed: Notify,
}

impl Open {
    fn len(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.len())
    }

    /// Connections not asked to close: those that count toward the cap.
    fn staying(&self) -> usize {
        self.conns.lock().map_or(0, |c| {
            c.values()
                .filter(|c| !c.told.load(Ordering::Acquire))
                .count()
        })
    }

    fn add(&self, id: u64) -> Arc<Conn> {
        let conn = Arc::new(Conn::default());
        if let Ok(mut c) = self.conns.lock() {
            c.insert(id, conn.clone());
        }
        conn
    }

    fn remove(&self, id: u64) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(&id);
        }
        self.closed.notify_waiters();
    }

    /// Makes room: closes the oldest connection with no request in hand,
    /// else cuts the one whose request started first if that was at least
    /// [`BUSY_GRACE`] ago (`now_ms` is the time since the server started).
    /// False if there is none to close (each told only once).
    fn make_room(&self, now_ms: u64) -> bool {
        let Ok(c) = self.conns.lock() else {
            return false;
        };
        let untold = || c.values().filter(|c| !c.told.load(Ordering::Acquire));
        if let Some(idle) = untold().find(|c| c.busy.load(Ordering::Acquire) == 0) {
            idle.told.store(true, Ordering::Release);
            idle.evict.notify_one();
            return true;
        }
        let grace = BUSY_GRACE.as_millis() as u64;
        match untold().min_by_key(|c| c.busy_since.load(Ordering::Acquire)) {
            Some(old) if now_ms.saturating_sub(old.busy_since.load(Ordering::Acquire)) >= grace => {
                old.told.store(true, Ordering::Release);
                old.kill.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Waits (briefly) for a connection to close.
    async fn wait_closed(&self) {
        let _ = tokio::time::timeout(Duration::from_millis(50), self.closed.notified()).await;
    }
}

/// Marks a connection busy for as long as it lives.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: &Arc<Conn>, now_ms: u64) -> Self {
        if conn.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            conn.busy_since.store(now_ms, Ordering::Release);
        }
        Self(conn.clone())
    }
}

/// Takes a connection off the open list when its task ends, however it
/// ends (a panic included).
struct Registered {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.remove(self.id);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Milliseconds since `start`.
fn ms_since(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets each open connection finish the request in hand (for
/// at most 30 s) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let max = limits.max_connections.max(1);
    let open = Arc::new(Open::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let started = std::time::Instant::now();
    let mut next_id = 0u64;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: not a reason to stop serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Make room (see the module docs); watch for shutdown meanwhile.
        let mut stopping = false;
        while open.staying() >= max {
            // A connection asked to close stops counting at once.
            if open.make_room(ms_since(started)) {
                continue;
            }
            tracing::debug!("every connection is busy; a new one waits");
            tokio::select! {
                () = open.wait_closed() => {}
                () = &mut shutdown => {
                    stopping = true;
                    break;
                }
            }
        }
        if stopping {
            break;
        }
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let conn_state = open.add(id);
        let svc_state = conn_state.clone();
        let router = router.clone();
        let service = hyper::service::service_fn(move |req| {
            let busy = Busy::new(&svc_state, ms_since(started));
            let inner = TowerToHyperService::new(router.clone());
            async move {
                let res = hyper::service::Service::call(&inner, req).await?;
                // Busy until the body is sent, not only until it is ready.
                Ok::<_, std::convert::Infallible>(res.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &busy;
                        frame
                    }))
                }))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let mut stop = stop_rx.clone();
        let registered = Registered {
            open: open.clone(),
            id,
        };
        tokio::spawn(async move {
            let _registered = registered;
            tokio::pin!(conn);
            tokio::select! {
                // A timeout or a client gone mid-request ends only this connection.
                _ = conn.as_mut() => {}
                // Room is needed: finish what is being written, then close.
                () = conn_state.evict.notified() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(EVICT_GRACE, conn).await;
                }
                // A request held too long while every slot is taken.
                () = conn_state.kill.notified() => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        while open.len() > 0 {
            open.wait_closed().await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some connections were still open after 30 s; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_descriptors_free() {
        let n = default_max_connections();
        assert!((8..=256).contains(&n), "{n}");
        if let Some(limit) = open_file_limit() {
            assert!(n <= limit.max(16) / 2, "{n} of {limit}");
        }
    }

    #[test]
    fn idle_connections_make_room_first_then_old_requests() {
        let open = Open::default();
        let (a, b, c) = (open.add(1), open.add(2), open.add(3));
        let _busy_a = Busy::new(&a, 1_000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let told = |n: &Notify| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(5), n.notified())
                    .await
                    .is_ok()
            })
        };
        // The oldest idle one is b: it is asked to close, gracefully.
        assert!(open.make_room(1_500));
        assert!(told(&b.evict));
        assert!(!told(&a.evict) && !told(&a.kill) && !told(&c.evict));
        // Asked once only: next time it is c's turn.
        assert!(open.make_room(1_500));
        assert!(told(&c.evict));
        open.remove(2);
        open.remove(3);
        // Only a is left, busy since 1,000 ms: not cut before 2 s of it...
        assert!(!open.make_room(2_999));
        assert!(!told(&a.kill));
        // ...then cut.
        assert!(open.make_room(3_000));
        assert!(told(&a.kill));
        assert!(!open.make_room(10_000), "told already");
        assert_eq!(open.len(), 1);
    }

    #[tokio::test]
    async fn an_entry_leaves_the_open_list_even_if_its_task_panics() {
        let open = Arc::new(Open::default());
        open.add(7);
        let registered = Registered {
            open: open.clone(),
            id: 7,
        };
        let task = tokio::spawn(async move {
            let _registered = registered;
            panic!("a handler bug");
        });
        assert!(task.await.is_err());
        assert_eq!(open.len(), 0);
    }
}
