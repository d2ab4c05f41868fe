//! Tools for the fault-injection tests: deterministic producer files, an
//! exactly-once checker over a bucket or data directory, a barrier that
//! waits for a service's queue to drain, and a TCP proxy that can take the
//! object store away or lose chosen responses.

use crate::harness::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// `n` producer batches of `rows` rows, in chronological (= name) order.
pub(crate) fn producer_files(n: usize, rows: usize, seed: u64) -> Vec<(String, String)> {
    let mut sc = tswatch::eval::scenario::Scenario::new("seed", seed, 1_770_000_000.0).unwrap();
    (0..n)
        .map(|_| {
            let (csv, _, first) = sc.batch(rows);
            (tswatch::eval::scenario::batch_key("sensors", first), csv)
        })
        .collect()
}

/// A last file, named to sort after every producer file.
pub(crate) fn sentinel(seed: u64) -> (String, String) {
    let (_, csv) = producer_files(1, 10, seed).remove(0);
    ("raw/zz_sentinel.csv".to_string(), csv)
}

/// A positive number from the environment, or `default`.
pub(crate) fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// Where a service keeps its data, read directly (not through tswatch).
pub(crate) enum Data<'a> {
    S3(&'a Moto, &'a str),
    Local(&'a Path),
}

/// An S3 request to moto, resent (a few times, briefly) if the connection
/// fails: a moto starved of CPU by parallel tests sometimes drops one.
async fn moto_send(
    moto: &Moto,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> reqwest::Response {
    let mut last = None;
    for _ in 0..5 {
        let mut r = moto.req("s3", method.clone(), path);
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        match r.send().await {
            Ok(resp) => return resp,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("moto {method} {path}: {last:?}")
}

impl Data<'_> {
    pub(crate) async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Data::S3(m, b) => {
                let path = format!("/{b}/{}", encode_key(key));
                let r = moto_send(m, reqwest::Method::GET, &path, None).await;
                if !r.status().is_success() {
                    return None;
                }
                Some(r.bytes().await.unwrap().to_vec())
            }
            Data::Local(d) => std::fs::read(d.join(key)).ok(),
        }
    }

    pub(crate) async fn put(&self, key: &str, body: &str) {
        match self {
            Data::S3(m, b) => {
                let path = format!("/{b}/{}", encode_key(key));
                let r = moto_send(m, reqwest::Method::PUT, &path, Some(body)).await;
                assert!(r.status().is_success(), "put {key}: {}", r.status());
            }
            Data::Local(d) => {
                // Write, then rename in: what a careful producer does.
                let dest = d.join(key);
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                let tmp = d.join(format!(".{}.part", key.replace('/', "_")));
                std::fs::write(&tmp, body).unwrap();
                std::fs::rename(&tmp, dest).unwrap();
            }
        }
    }

    /// Removes `key` (as an operator, or a lifecycle rule, might).
    pub(crate) async fn delete(&self, key: &str) {
        match self {
            Data::S3(m, b) => {
                let path = format!("/{b}/{}", encode_key(key));
                let r = moto_send(m, reqwest::Method::DELETE, &path, None).await;
                assert!(r.status().is_success(), "delete {key}: {}", r.status());
            }
            Data::Local(d) => std::fs::remove_file(d.join(key)).unwrap(),
        }
    }

    /// Every key, sorted.
    pub(crate) async fn keys(&self) -> Vec<String> {
        let mut out = match self {
            Data::S3(m, b) => {
                let mut v = Vec::new();
                for p in ["raw/", "processed/", "state/"] {
                    let path = format!("/{b}?list-type=2&prefix={p}&max-keys=1000");
                    let xml = moto_send(m, reqwest::Method::GET, &path, None)
                        .await
                        .text()
                        .await
                        .unwrap();
                    assert!(!xml.contains("<IsTruncated>true"), "more than 1000 keys");
                    v.extend(
                        xml.split("<Key>")
                            .skip(1)
                            .map(|s| s.split("</Key>").next().unwrap().to_string()),
                    );
                }
                v
            }
            Data::Local(d) => {
                let mut v = Vec::new();
                walk(d, d, &mut v);
                v
            }
        };
        out.sort();
        out
    }

    pub(crate) async fn json(&self, key: &str) -> Option<Value> {
        let b = self.get(key).await?;
        Some(
            serde_json::from_slice(&b).unwrap_or_else(|e| {
                panic!("{key} is not JSON ({e}): {}", String::from_utf8_lossy(&b))
            }),
        )
    }

    /// Summaries present now.
    pub(crate) async fn summaries(&self) -> Vec<String> {
        self.keys()
            .await
            .into_iter()
            .filter(|k| k.starts_with("processed/") && k.ends_with("_summary.json"))
            .collect()
    }

    pub(crate) async fn wait_summaries(&self, n: usize, timeout: Duration) {
        wait_for(&format!("{n} summaries"), timeout, || async {
            (self.summaries().await.len() >= n).then_some(())
        })
        .await;
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push(rel.replace(std::path::MAIN_SEPARATOR, "/"));
        }
    }
}

/// `raw/<name>.csv` → `<name>`.
pub(crate) fn stem(key: &str) -> &str {
    key.strip_prefix("raw/")
        .and_then(|k| k.strip_suffix(".csv"))
        .unwrap()
}

/// Totals over a set of files as they must come out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Expected {
    pub(crate) files: u64,
    pub(crate) rows: u64,
    pub(crate) anomalies: u64,
}

/// Every completed output that is visible is whole: each summary parses and
/// its scored copy has the header and all its rows.
pub(crate) async fn assert_visible_outputs_whole(data: &Data<'_>) {
    for s in data.summaries().await {
        let summary = data.json(&s).await.unwrap();
        let out = summary["output_key"].as_str().unwrap();
        let csv = data
            .get(out)
            .await
            .unwrap_or_else(|| panic!("{s} is out but {out} is not"));
        let rows = csv_rows(&csv);
        assert_eq!(
            rows.len() as u64,
            summary["total_rows"].as_u64().unwrap() + 1,
            "{out} is incomplete"
        );
    }
}

/// Checks that every file in `files` was applied exactly once and that
/// nothing else was: each has a whole scored copy and a summary that agree,
/// the engine committed exactly one sequence number per file, the totals
/// add up, and every channel's observation count in `state/baseline.json`
/// is the number of rows not flagged (producer files have no missing
/// cells, and flagged rows are never absorbed). Returns the totals and any
/// leftover objects under `state/` other than the two state documents.
pub(crate) async fn assert_exactly_once(
    data: &Data<'_>,
    files: &[(String, String)],
) -> (Expected, Vec<String>) {
    let mut exp = Expected {
        files: files.len() as u64,
        rows: 0,
        anomalies: 0,
    };
    let mut expected_keys = BTreeSet::new();
    for (key, body) in files {
        let name = stem(key);
        let (sk, ok) = (
            format!("processed/{name}_summary.json"),
            format!("processed/{name}.csv"),
        );
        let rows = body.lines().count() as u64 - 1;
        let summary = data
            .json(&sk)
            .await
            .unwrap_or_else(|| panic!("{key} was never processed"));
        assert_eq!(summary["source_key"], key.as_str());
        assert_eq!(summary["total_rows"], rows, "{sk}");
        let csv = data
            .get(&ok)
            .await
            .unwrap_or_else(|| panic!("{sk} is out but {ok} is not"));
        let parsed = csv_rows(&csv);
        assert_eq!(parsed.len() as u64, rows + 1, "{ok} is incomplete");
        let header: Vec<&str> = body.lines().next().unwrap().split(',').collect();
        assert_eq!(parsed[0][..header.len()], header[..], "{ok} header");
        let col = parsed[0].iter().position(|c| c == "anomaly").unwrap();
        let flagged = parsed[1..].iter().filter(|r| r[col] == "True").count() as u64;
        assert_eq!(summary["anomaly_count"], flagged, "{sk} vs {ok}");
        exp.rows += rows;
        exp.anomalies += flagged;
        expected_keys.extend([key.clone(), sk, ok]);
    }
    let engine = data.json("state/engine.json").await.unwrap();
    assert_eq!(
        engine["seq"], exp.files,
        "one commit per file, no more, no fewer"
    );
    let t = &engine["totals"];
    assert_eq!(
        (
            &t["files_processed"],
            &t["total_rows_scored"],
            &t["total_anomalies"]
        ),
        (
            &Value::from(exp.files),
            &Value::from(exp.rows),
            &Value::from(exp.anomalies)
        ),
        "engine totals"
    );
    let baseline = data.json("state/baseline.json").await.unwrap();
    let channels = baseline.as_object().unwrap();
    assert_eq!(channels.len(), 5, "4 channels and last_updated: {baseline}");
    for (ch, v) in channels {
        if ch == "last_updated" {
            continue;
        }
        assert_eq!(
            v["count"],
            exp.rows - exp.anomalies,
            "{ch}: observations = rows not flagged"
        );
        assert_eq!(v["tswatch_seq"], exp.files, "{ch}: projection is current");
    }
    let mut leftovers = Vec::new();
    for k in data.keys().await {
        if expected_keys.contains(&k) || k == "state/engine.json" || k == "state/baseline.json" {
            continue;
        }
        assert!(k.starts_with("state/"), "unexpected object {k}");
        leftovers.push(k);
    }
    (exp, leftovers)
}

/// Waits until the service's API reports exactly `exp`.
pub(crate) async fn assert_api_totals(svc: &Service, exp: Expected) {
    wait_for("API totals", Duration::from_secs(10), || async {
        let (st, s) = svc.get_json("/anomalies/summary").await;
        (st == 200
            && s["files_processed"] == exp.files
            && s["total_rows_scored"] == exp.rows
            && s["total_anomalies"] == exp.anomalies)
            .then_some(())
    })
    .await;
}

/// Waits until `svc` has taken `key` from its queue `times` times and
/// finished it: it logs the outcome of every file it takes, and the queue is
/// first in, first out, so whatever was queued before is done too.
pub(crate) async fn wait_done(svc: &Service, key: &str, times: usize) {
    let needle = format!("key={key}");
    wait_for(
        &format!("{} to finish {key} {times} time(s)", svc.base),
        Duration::from_secs(120),
        || async {
            let n = strip_ansi(&svc.proc.log_text())
                .lines()
                .filter(|l| {
                    l.contains(&needle)
                        && (l.contains("processed") || l.contains("rejected input file"))
                })
                .count();
            (n >= times).then_some(())
        },
    )
    .await;
}

/// The text without terminal colour escapes.
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A TCP proxy between tswatch and the object store that can refuse all
/// connections ("down"), let a chosen request through and lose its
/// response, as a network failure after the server acted would, cut
/// every connection that carries a chosen request before it reaches the
/// store (one kind of request dying while the rest go through), or kill
/// the service just before its N-th mutating request reaches the store.
pub(crate) struct Proxy {
    pub(crate) endpoint: String,
    down: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    lose: Arc<Mutex<(Vec<u8>, usize)>>,
    lost: Arc<AtomicUsize>,
    cut: Cut,
    crash: Crash,
    accept: tokio::task::JoinHandle<()>,
}

/// The crash at a chosen write: mutating requests (PUT, POST, DELETE; a
/// copy is a PUT) are counted as their heads reach the proxy, and the
/// `at`-th is never forwarded: the store is frozen (every connection
/// closed, none accepted) and the `victim` process is sent SIGKILL, as if
/// it had died just before that write.
#[derive(Clone, Default)]
struct Crash {
    /// Counting is on (requests are framed) only once armed.
    at: Arc<Mutex<Option<usize>>>,
    victim: Arc<Mutex<Option<u32>>>,
    mutations: Arc<AtomicUsize>,
    fired: Arc<AtomicBool>,
}

/// Splits what a client sends into HTTP/1.1 requests (heads and
/// `Content-Length` bodies) to count the mutating ones.
#[derive(Default)]
struct Framer {
    head: Vec<u8>,
    body_left: usize,
}

impl Framer {
    /// Feeds bytes on their way to the store; returns how many mutating
    /// requests' heads they complete.
    fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let mut heads = 0;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(bytes.len());
                self.body_left -= k;
                bytes = &bytes[k..];
                continue;
            }
            self.head.push(bytes[0]);
            bytes = &bytes[1..];
            if !self.head.ends_with(b"\r\n\r\n") {
                continue;
            }
            let head = String::from_utf8_lossy(&self.head).to_ascii_lowercase();
            assert!(
                !head.contains("transfer-encoding: chunked"),
                "a chunked request body cannot be framed: {head}"
            );
            self.body_left = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse().unwrap());
            let method = head.split(' ').next().unwrap_or_default();
            heads += usize::from(matches!(method, "put" | "post" | "delete"));
            self.head.clear();
        }
        heads
    }
}

/// Requests whose bytes contain the pattern (when there is one) have their
/// connection closed before the match reaches the store, or with
/// `response_bytes`, after that many bytes of the store's response;
/// `count` counts them.
#[derive(Clone, Default)]
struct Cut {
    armed: Arc<Mutex<Option<CutRule>>>,
    count: Arc<AtomicUsize>,
}

/// What [`Cut`] cuts: requests containing `pattern`, at once or after
/// `response_bytes` of the response.
#[derive(Clone)]
struct CutRule {
    pattern: Vec<u8>,
    response_bytes: Option<usize>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Proxy {
    /// Listens on a free loopback port and relays to `upstream` (`http://host:port`).
    pub(crate) async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let down = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let lose = Arc::new(Mutex::new((Vec::new(), 0)));
        let lost = Arc::new(AtomicUsize::new(0));
        let cut = Cut::default();
        let crash = Crash::default();
        let (d, g, l, n, c, k) = (
            down.clone(),
            generation.clone(),
            lose.clone(),
            lost.clone(),
            cut.clone(),
            crash.clone(),
        );
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    drop(client); // refused: closed before a byte is read
                    continue;
                }
                let up = upstream.clone();
                let (gen_rx, l, n, c) = (g.subscribe(), l.clone(), n.clone(), c.clone());
                let freeze = Freeze {
                    crash: k.clone(),
                    down: d.clone(),
                    generation: g.clone(),
                };
                tokio::spawn(relay(client, up, gen_rx, l, n, c, freeze));
            }
        });
        Proxy {
            endpoint,
            down,
            generation,
            lose,
            lost,
            cut,
            crash,
            accept,
        }
    }

    /// Kills `victim` (see [`Proxy::set_victim`]) just before its `n`-th
    /// mutating request (from 1) reaches the store; from then on the
    /// store is away. Arm it before the victim starts.
    pub(crate) fn crash_at(&self, n: usize) {
        *self.crash.at.lock().unwrap() = Some(n);
    }

    /// The process [`Proxy::crash_at`] kills.
    pub(crate) fn set_victim(&self, pid: u32) {
        *self.crash.victim.lock().unwrap() = Some(pid);
    }

    /// Mutating requests seen since [`Proxy::crash_at`] armed the count.
    pub(crate) fn mutations(&self) -> usize {
        self.crash.mutations.load(Ordering::SeqCst)
    }

    /// Whether the crash happened.
    pub(crate) fn crashed(&self) -> bool {
        self.crash.fired.load(Ordering::SeqCst)
    }

    /// From now on (until [`Proxy::stop_cutting`]), closes every
    /// connection on which a request containing `pattern` is sent, before
    /// the match reaches the store, as a network that drops it would.
    pub(crate) fn cut_requests(&self, pattern: &str) {
        *self.cut.armed.lock().unwrap() = Some(CutRule {
            pattern: pattern.as_bytes().to_vec(),
            response_bytes: None,
        });
    }

    /// From now on (until [`Proxy::stop_cutting`]), lets requests
    /// containing `pattern` reach the store but closes their connection
    /// after `bytes` bytes of the response: a download cut mid-body.
    pub(crate) fn cut_responses(&self, pattern: &str, bytes: usize) {
        *self.cut.armed.lock().unwrap() = Some(CutRule {
            pattern: pattern.as_bytes().to_vec(),
            response_bytes: Some(bytes),
        });
    }

    /// Lets every request through again.
    pub(crate) fn stop_cutting(&self) {
        *self.cut.armed.lock().unwrap() = None;
    }

    /// Connections cut by [`Proxy::cut_requests`] so far.
    pub(crate) fn cuts(&self) -> usize {
        self.cut.count.load(Ordering::SeqCst)
    }

    /// Takes the store away (closing every open connection) or brings it back.
    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Lets the next `times` requests whose bytes contain `pattern` reach
    /// the store, then drops the connection before any of the response.
    pub(crate) fn lose_responses(&self, pattern: &str, times: usize) {
        *self.lose.lock().unwrap() = (pattern.as_bytes().to_vec(), times);
    }

    /// Responses lost so far.
    pub(crate) fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

/// What a relay needs to carry out a [`Crash`]: the store is frozen
/// before the victim dies.
struct Freeze {
    crash: Crash,
    down: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Freeze {
    /// Counts the mutating requests whose heads `bytes` complete; true if
    /// one of them is the chosen one, which has then been carried out:
    /// the store frozen, the victim killed.
    fn at_crash(&self, framer: &mut Framer, bytes: &[u8]) -> bool {
        let Some(at) = *self.crash.at.lock().unwrap() else {
            return false;
        };
        let heads = framer.feed(bytes);
        if heads == 0 {
            return false;
        }
        let n = self.crash.mutations.fetch_add(heads, Ordering::SeqCst) + heads;
        if n < at || self.crash.fired.swap(true, Ordering::SeqCst) {
            return n >= at;
        }
        self.down.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
        // The victim is named right after it is spawned, before it can
        // send anything; wait for that if this is its very first request.
        let start = std::time::Instant::now();
        let pid = loop {
            if let Some(pid) = *self.crash.victim.lock().unwrap() {
                break pid;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no victim named");
            std::thread::sleep(Duration::from_millis(1));
        };
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -KILL {pid}");
        true
    }
}

async fn relay(
    client: TcpStream,
    upstream: String,
    mut generation: watch::Receiver<u64>,
    lose: Arc<Mutex<(Vec<u8>, usize)>>,
    lost: Arc<AtomicUsize>,
    cut: Cut,
    freeze: Freeze,
) {
    let Ok(up) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let drop_next = AtomicBool::new(false);
    // Bytes of the next response to pass before the connection is cut.
    let cut_after = Mutex::new(None::<usize>);
    let to_store = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        let mut cut_tail: Vec<u8> = Vec::new();
        let mut framer = Framer::default();
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Without pipelining, a request's head starts a read of its
            // own: withholding this read withholds the whole request.
            if freeze.at_crash(&mut framer, &buf[..n]) {
                return;
            }
            let rule = cut.armed.lock().unwrap().clone();
            if let Some(CutRule {
                pattern: p,
                response_bytes,
            }) = rule
            {
                // Match across reads, as for lost responses below.
                cut_tail.extend_from_slice(&buf[..n]);
                if cut_tail.windows(p.len()).any(|w| w == p.as_slice()) {
                    cut.count.fetch_add(1, Ordering::SeqCst);
                    cut_tail.clear();
                    match response_bytes {
                        // Both halves close: the request dies here.
                        None => return,
                        Some(b) => *cut_after.lock().unwrap() = Some(b),
                    }
                } else {
                    let keep = cut_tail.len().saturating_sub(p.len());
                    cut_tail.drain(..keep);
                }
            }
            {
                let mut l = lose.lock().unwrap();
                if l.1 > 0 {
                    // Match across reads: keep the end of the previous one.
                    tail.extend_from_slice(&buf[..n]);
                    if tail.windows(l.0.len()).any(|w| w == l.0.as_slice()) {
                        l.1 -= 1;
                        drop_next.store(true, Ordering::SeqCst);
                        tail.clear();
                    } else {
                        let keep = tail.len().saturating_sub(l.0.len());
                        tail.drain(..keep);
                    }
                }
            }
            if uw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let to_client = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // HTTP/1.1 without pipelining: these bytes answer the request
            // just matched. The store has acted on it; the client never knows.
            if drop_next.swap(false, Ordering::SeqCst) {
                lost.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let left = *cut_after.lock().unwrap();
            if let Some(left) = left {
                // The response to a request being cut: pass `left` more
                // bytes of it, then close.
                let pass = n.min(left);
                if pass > 0 && cw.write_all(&buf[..pass]).await.is_err() {
                    return;
                }
                if pass == left {
                    return;
                }
                *cut_after.lock().unwrap() = Some(left - pass);
                continue;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = to_store => {}
        _ = to_client => {}
        _ = generation.changed() => {}
    }
}

/// Starts `tswatch serve` on `bucket` through `endpoint` (moto or a proxy).
pub(crate) async fn serve_s3(
    moto: &Moto,
    endpoint: &str,
    bucket: &str,
    extra: &[&str],
    log_dir: &Path,
) -> Service {
    let mut cmd = tswatch();
    s3_env(&mut cmd, moto, bucket);
    cmd.env("AWS_ENDPOINT_URL", endpoint);
    let mut args = vec!["--insecure-skip-sns-verify"];
    args.extend_from_slice(extra);
    Service::start(cmd, &args, log_dir).await
}

/// Starts `tswatch serve --data-dir data`.
pub(crate) async fn serve_local(data: &Path, extra: &[&str], log_dir: &Path) -> Service {
    let mut args = vec!["--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    Service::start(tswatch(), &args, log_dir).await
}

/// Posts an S3 event for `key`; the status, or `None` if the service is gone.
pub(crate) async fn notify(
    http: &reqwest::Client,
    base: &str,
    bucket: &str,
    key: &str,
) -> Option<u16> {
    http.post(format!("{base}/notify"))
        .header("content-type", "text/plain; charset=UTF-8")
        .body(sns_s3_event(bucket, &[key]))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// A small deterministic generator for random delays (seed printed by the
/// tests so a failing sequence can be replayed).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// The seed for random choices: `TSWATCH_FAULT_SEED`, or the clock.
pub(crate) fn fault_seed() -> u64 {
    std::env::var("TSWATCH_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// A temporary directory for logs and data.
pub(crate) fn tmp() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_path_buf();
    (t, p)
}

/// What a run wrote for `key`: the scored copy and the summary, without the
/// fields that differ between runs (times, and the local ETag, which holds
/// the inode and modification time).
pub(crate) async fn outputs(data: &Data<'_>, key: &str) -> (Vec<u8>, Value) {
    let name = stem(key);
    let csv = data.get(&format!("processed/{name}.csv")).await.unwrap();
    let mut summary = data
        .json(&format!("processed/{name}_summary.json"))
        .await
        .unwrap();
    for volatile in ["processed_at", "duration_ms", "source_etag"] {
        summary.as_object_mut().unwrap().remove(volatile);
    }
    (csv, summary)
}
