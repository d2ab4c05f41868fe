//! One store under test per backend, and the means to disturb it, for the
//! conformance suite (`conformance.rs`): a [`Store`] is a fresh data
//! directory or a fresh bucket in moto; an [`Instance`] is the real binary
//! running on it with a fault injector in front of its storage, fault-free
//! unless told otherwise.
//!
//! | fault | S3 (moto) | local data directory |
//! |---|---|---|
//! | storage away | [`Proxy::set_down`]: connections refused | `faultfs.c`: every open, opendir, rename, link, unlink, mkdir under the directory fails with EIO |
//! | lost commit response | [`Proxy::lose_responses`] on `PUT state/engine.json` | `faultfs.c`: the rename onto `state/engine.json` is made, then reports EIO |
//! | crash at write N | [`Proxy::crash_at`]: SIGKILL before the N-th PUT/POST/DELETE reaches the store | `faultfs.c`: SIGKILL before the N-th mutating call (open to write, rename, link, unlink, mkdir) |

use crate::faultkit::*;
use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Where the data lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Backend {
    /// A local data directory (`--data-dir`).
    Local,
    /// A bucket in a moto server (`BUCKET_NAME`).
    S3,
}

/// A fresh data directory or bucket, and where its instances log.
pub(crate) struct Store {
    pub(crate) backend: Backend,
    dir: PathBuf,
    moto: Option<Arc<Moto>>,
    /// The bucket (S3), or a label the service ignores (local).
    bucket: String,
    /// The data directory, canonical (local).
    root: PathBuf,
    /// While this file exists, the local directory is away (`faultfs.c`).
    down_flag: PathBuf,
}

/// Faults an [`Instance`] starts with (storage going away is switched at
/// run time: [`Instance::set_down`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Faults {
    /// The first this many state commits are made, and their callers
    /// never learn it.
    pub(crate) lose_commits: usize,
    /// The process dies (SIGKILL) just before its N-th write.
    pub(crate) crash_at: Option<usize>,
}

/// Unique names for logs, traces and flags.
static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Store {
    /// A fresh store of `backend` (S3: a new moto server) logging into `dir`.
    pub(crate) async fn new(backend: Backend, dir: &Path, name: &str) -> Store {
        let moto = match backend {
            Backend::S3 => Some(Arc::new(Moto::start().await)),
            Backend::Local => None,
        };
        Store::create(backend, dir, moto, name).await
    }

    /// Another fresh store of the same backend (S3: in the same moto).
    pub(crate) async fn sibling(&self, name: &str) -> Store {
        Store::create(self.backend, &self.dir, self.moto.clone(), name).await
    }

    async fn create(backend: Backend, dir: &Path, moto: Option<Arc<Moto>>, name: &str) -> Store {
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        let root = dir.join(format!("data-{name}-{id}"));
        std::fs::create_dir_all(&root).unwrap();
        let root = root.canonicalize().unwrap();
        let bucket = format!("{name}-{id}");
        if let Some(m) = &moto {
            m.create_bucket(&bucket).await;
        }
        Store {
            backend,
            dir: dir.to_path_buf(),
            moto,
            bucket,
            root,
            down_flag: dir.join(format!("down-{id}")),
        }
    }

    /// The data, read and written directly (not through tswatch or a fault).
    pub(crate) fn data(&self) -> Data<'_> {
        match &self.moto {
            Some(m) => Data::S3(m, &self.bucket),
            None => Data::Local(&self.root),
        }
    }

    /// Starts `tswatch serve` on this store with `faults`, more flags and
    /// environment. Waits until it answers, unless it is to crash (it may
    /// die while starting: see [`Instance::up_or_dead`]).
    pub(crate) async fn start(
        &self,
        faults: Faults,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Instance {
        let mut cmd = tswatch();
        // The tests' notifications are unsigned SNS envelopes.
        let mut all = vec!["--insecure-skip-sns-verify"];
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        let trace = self.dir.join(format!("faultfs-{id}.trace"));
        let root = self.root.to_str().unwrap();
        let proxy = match &self.moto {
            Some(moto) => {
                let proxy = Proxy::start(&moto.endpoint).await;
                if faults.lose_commits > 0 {
                    let commit = format!("PUT /{}/state/engine.json ", self.bucket);
                    proxy.lose_responses(&commit, faults.lose_commits);
                }
                // Armed always: it counts the writes.
                proxy.crash_at(faults.crash_at.unwrap_or(usize::MAX));
                s3_env(&mut cmd, moto, &self.bucket);
                cmd.env("AWS_ENDPOINT_URL", &proxy.endpoint);
                Some(proxy)
            }
            None => {
                cmd.env("LD_PRELOAD", faultfs_library())
                    .env("TSWATCH_FAULTFS_DIR", root)
                    .env("TSWATCH_FAULTFS_DOWN", &self.down_flag)
                    .env("TSWATCH_FAULTFS_TRACE", &trace);
                if faults.lose_commits > 0 {
                    // From the second: the first is the bootstrap at
                    // startup, where a storage error stops the service
                    // (fail fast, by design), where the S3 client's resend
                    // and its 412 happen to hide the loss.
                    let spec = format!("/state/engine.json:2:{}", faults.lose_commits);
                    cmd.env("TSWATCH_FAULTFS_LOSE", spec);
                }
                if let Some(n) = faults.crash_at {
                    cmd.env("TSWATCH_FAULTFS_CRASH_AT", n.to_string());
                }
                all.extend(["--data-dir", root]);
                None
            }
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        all.extend_from_slice(args);
        let svc = Service::spawn(cmd, &all, &self.dir);
        if let Some(p) = &proxy {
            p.set_victim(svc.proc.pid());
        }
        let inst = Instance {
            svc,
            proxy,
            trace,
            down_flag: self.down_flag.clone(),
        };
        if faults.crash_at.is_none() {
            inst.svc.wait_up().await;
        }
        inst
    }

    /// Starts an instance with no fault and `args`.
    pub(crate) async fn serve(&self, args: &[&str]) -> Instance {
        self.start(Faults::default(), args, &[]).await
    }

    /// Delivers the notification for `key` to `svc` (an S3 event through
    /// `POST /notify`, which the local backend takes too; it has its
    /// folder watcher besides); the status, or `None` if it is gone.
    pub(crate) async fn notify(&self, svc: &Service, key: &str) -> Option<u16> {
        self.notify_at(&svc.http, &svc.base, key).await
    }

    /// As [`Store::notify`], to the service at `base`.
    pub(crate) async fn notify_at(
        &self,
        http: &reqwest::Client,
        base: &str,
        key: &str,
    ) -> Option<u16> {
        notify(http, base, &self.bucket, key).await
    }

    /// Puts a file with no notification of any kind: on S3 none is
    /// configured; locally the file is hard-linked into `raw/`, which the
    /// folder watcher does not take for a finished file (it waits for a
    /// close after writing or a rename), as when its events are lost.
    pub(crate) async fn put_quietly(&self, key: &str, body: &str) {
        match self.backend {
            Backend::S3 => self.data().put(key, body).await,
            Backend::Local => {
                let dest = self.root.join(key);
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                let part = self.root.join(format!(".{}.quiet", key.replace('/', "_")));
                std::fs::write(&part, body).unwrap();
                std::fs::hard_link(&part, &dest).unwrap();
                std::fs::remove_file(&part).unwrap();
            }
        }
    }

    /// Removes and returns the partial files of local writes a SIGKILL
    /// interrupted (`<key>#<n>`: object_store writes a whole object there
    /// and renames it into place). The service never lists them, and its
    /// periodic sweep removes them after 24 h. On S3 the equivalent is an
    /// unfinished multipart upload, invisible and removed by the bucket's
    /// lifecycle rule: none is ever listed.
    pub(crate) fn take_partials(&self) -> Vec<String> {
        if self.backend == Backend::S3 {
            return Vec::new();
        }
        let partials: Vec<String> = files_under(&self.root)
            .into_iter()
            .filter(|k| {
                k.rsplit_once('#')
                    .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        for k in &partials {
            std::fs::remove_file(self.root.join(k)).unwrap();
        }
        partials
    }

    /// `leftovers` (from [`assert_exactly_once`]) without what the
    /// backend keeps by design: the local compare-and-swap's lock files.
    pub(crate) fn debris(&self, leftovers: Vec<String>) -> Vec<String> {
        leftovers
            .into_iter()
            .filter(|k| {
                !(self.backend == Backend::Local
                    && matches!(k.as_str(), "state/engine.lock" | "state/baseline.lock"))
            })
            .collect()
    }
}

/// A running `tswatch serve` on a [`Store`], with its fault injector.
pub(crate) struct Instance {
    pub(crate) svc: Service,
    proxy: Option<Proxy>,
    trace: PathBuf,
    down_flag: PathBuf,
}

impl std::ops::Deref for Instance {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.svc
    }
}

impl Instance {
    /// Takes storage away from this instance, or gives it back.
    pub(crate) fn set_down(&self, down: bool) {
        match &self.proxy {
            Some(p) => p.set_down(down),
            None if down => std::fs::write(&self.down_flag, "").unwrap(),
            None => std::fs::remove_file(&self.down_flag).unwrap(),
        }
    }

    fn traced(&self, what: &str) -> usize {
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(what))
            .count()
    }

    /// Commit responses lost so far.
    pub(crate) fn lost(&self) -> usize {
        match &self.proxy {
            Some(p) => p.lost(),
            None => self.traced("lost"),
        }
    }

    /// Writes made (or, for the crash, attempted) so far.
    pub(crate) fn writes(&self) -> usize {
        match &self.proxy {
            Some(p) => p.mutations(),
            None => {
                let all = std::fs::read_to_string(&self.trace).unwrap_or_default();
                all.lines()
                    .filter(|l| !matches!(l.split(' ').nth(1), Some("lost" | "crash")))
                    .count()
            }
        }
    }

    /// Sends SIGTERM and waits for the exit without blocking the runtime
    /// (the S3 proxy runs on it: the service finishing its file needs it).
    pub(crate) async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.svc.proc.pid().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        // Generous: it first finishes the file in hand (a debug build, on
        // a loaded machine).
        wait_for("the exit after SIGTERM", Duration::from_secs(120), || {
            let status = self.svc.proc.exit_status();
            async move { status }
        })
        .await
    }

    /// Whether the process is gone, killed by the injected crash (it
    /// must not have died any other way).
    pub(crate) fn crashed(&mut self) -> bool {
        let Some(status) = self.svc.proc.exit_status() else {
            return false;
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "died, not of the injected crash: {status:?}\n{}",
            self.svc.proc.log_text()
        );
        let fired = match &self.proxy {
            Some(p) => p.crashed(),
            None => self.traced("crash") == 1,
        };
        assert!(fired, "SIGKILLed, but not by the fault injector");
        true
    }

    /// Waits until it answers (true) or has crashed (false).
    pub(crate) async fn up_or_dead(&mut self) -> bool {
        let url = format!("{}/health", self.svc.base);
        wait_for("up or crashed", Duration::from_secs(30), || {
            let crashed = self.crashed();
            let get = self.svc.http.get(&url).send();
            async move {
                if crashed {
                    return Some(false);
                }
                get.await.is_ok().then_some(true)
            }
        })
        .await
    }

    /// Waits until it has finished `key` once (true) or has crashed (false).
    pub(crate) async fn done_or_dead(&mut self, key: &str) -> bool {
        let needle = format!("key={key}");
        wait_for(
            &format!("{key} done or a crash"),
            Duration::from_secs(120),
            || {
                let crashed = self.crashed();
                let done = strip_ansi(&self.svc.proc.log_text()).lines().any(|l| {
                    l.contains(&needle)
                        && (l.contains("processed") || l.contains("rejected input file"))
                });
                async move {
                    if done {
                        Some(true)
                    } else if crashed {
                        Some(false)
                    } else {
                        None
                    }
                }
            },
        )
        .await
    }
}

/// `faultfs.c`, built once per test run into cargo's temporary directory.
pub(crate) fn faultfs_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/faultfs.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let lib = dir.join("libfaultfs.so");
        let part = dir.join(format!("libfaultfs.so.{}", std::process::id()));
        let out = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
            .arg(&part)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("a C compiler (cc) is needed, as for building aws-lc-rs");
        assert!(
            out.status.success(),
            "cc {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&part, &lib).unwrap();
        lib
    })
}

/// What a run published, as far as it is the same from run to run: each
/// file's scored copy (bytes) and summary (without its times and the
/// input's ETag, which names the copy in that store), and the baseline
/// (without its time).
#[derive(Debug, PartialEq)]
pub(crate) struct Published {
    files: Vec<(String, Vec<u8>, Value)>,
    baseline: Value,
}

impl Published {
    /// Reads it from `data` for `files`.
    pub(crate) async fn read(data: &Data<'_>, files: &[(String, String)]) -> Published {
        let mut out = Vec::new();
        for (key, _) in files {
            let (csv, summary) = outputs(data, key).await;
            out.push((key.clone(), csv, summary));
        }
        let mut baseline = data.json("state/baseline.json").await.unwrap();
        baseline.as_object_mut().unwrap().remove("last_updated");
        Published {
            files: out,
            baseline,
        }
    }

    /// Asserts `self` (a disturbed run) equals `undisturbed`, naming the
    /// first difference (scored copies are too large to print).
    pub(crate) fn assert_same(&self, undisturbed: &Published, what: &str) {
        assert_eq!(self.files.len(), undisturbed.files.len());
        for ((key, csv, summary), (_, csv0, summary0)) in self.files.iter().zip(&undisturbed.files)
        {
            assert!(
                csv == csv0,
                "{what}: the scored copy of {key} differs from an undisturbed run's"
            );
            assert_eq!(summary, summary0, "{what}: the summary of {key}");
        }
        assert_eq!(self.baseline, undisturbed.baseline, "{what}: the baseline");
    }
}

/// Applies `files` one after the other on a fresh sibling of `store` with
/// no fault, each notified once: the run a disturbed one must match.
/// Returns what it published and how many writes it made.
pub(crate) async fn undisturbed(store: &Store, files: &[(String, String)]) -> (Published, usize) {
    let clean = store.sibling("undisturbed").await;
    let inst = clean.serve(&[]).await;
    for (key, body) in files {
        clean.data().put(key, body).await;
        assert_eq!(clean.notify(&inst, key).await, Some(200));
        wait_done(&inst, key, 1).await;
    }
    let writes = inst.writes();
    (Published::read(&clean.data(), files).await, writes)
}
