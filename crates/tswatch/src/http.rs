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
//!   with no request in hand is closed to make room. Only when every
//!   connection is busy does a new one wait.

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a complete request head.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// How long shutdown waits for open connections to finish their request.
const DRAIN: Duration = Duration::from_secs(30);

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
    /// Told when the connection is to close now, to make room.
    evict: Notify,
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

    /// Closes the oldest connection with no request in hand; false if
    /// every one is busy.
    fn evict_oldest_idle(&self) -> bool {
        let Ok(c) = self.conns.lock() else {
            return false;
        };
        match c.values().find(|c| c.busy.load(Ordering::Acquire) == 0) {
            Some(idle) => {
                idle.evict.notify_one();
                true
            }
            None => false,
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
    fn new(conn: &Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Self(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets each open connection finish the request in hand (for
/// at most 30 s) and returns.
pub async fn serve(
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
        // Make room: close idle connections, oldest first; if all are busy,
        // wait for one to finish.
        while open.len() >= max {
            if !open.evict_oldest_idle() {
                tracing::debug!("every connection is busy; a new one waits");
            }
            open.wait_closed().await;
        }
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let conn_state = open.add(id);
        let svc_state = conn_state.clone();
        let router = router.clone();
        let service = hyper::service::service_fn(move |req| {
            let busy = Busy::new(&svc_state);
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
        let open = open.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                // A timeout or a client gone mid-request ends only this connection.
                _ = conn.as_mut() => {}
                // Idle (no request in hand): dropping it closes the socket.
                () = conn_state.evict.notified() => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            open.remove(id);
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
    fn only_idle_connections_are_evicted_oldest_first() {
        let open = Open::default();
        let (a, b, c) = (open.add(1), open.add(2), open.add(3));
        let _busy = Busy::new(&a);
        assert!(open.evict_oldest_idle());
        // The oldest idle one is b: it was told, a and c were not.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let told = |c: &Arc<Conn>| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(5), c.evict.notified())
                    .await
                    .is_ok()
            })
        };
        assert!(told(&b));
        assert!(!told(&a));
        assert!(!told(&c));
        open.remove(2);
        open.remove(3);
        assert!(!open.evict_oldest_idle(), "the only one left is busy");
        assert_eq!(open.len(), 1);
    }
}
