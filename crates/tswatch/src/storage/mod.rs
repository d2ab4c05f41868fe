//! The storage edge: one interface over a local directory and S3.
//!
//! Plain objects go through `object_store`. State documents go through
//! [`Storage::get_versioned`] / [`Storage::put_if`], a compare-and-swap:
//! S3 conditional writes (If-Match / If-None-Match) on S3, and on the local
//! backend an exclusive `flock` on a sibling `.lock` file around
//! read-compare-write-rename, with a content hash as the version. Everything
//! that writes state goes through that one API, by way of the one
//! read-decide-write loop in [`cas`].

pub(crate) mod aws;
pub(crate) mod cas;
pub(crate) mod s3list;

use crate::state::keys;
use crate::storage::s3list::{Listed, Lister, Target};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, path::Path,
};
use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong talking to storage, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// A conditional write lost: the object changed since it was read.
    #[error("conflicting update of {0}")]
    Conflict(String),
    /// The key is unusable.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The backend failed (network, permissions, ...).
    #[error("storage error: {0}")]
    Backend(#[source] object_store::Error),
    /// Local file-system failure.
    #[error("local storage error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Whether `e` says the object is not there: not a missing bucket, which
/// S3 also answers with a 404 (a GET's body names it `NoSuchBucket`; a
/// HEAD's 404 has no body, so there the two cannot be told apart).
fn is_missing_object(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::NotFound { source, .. } => {
            !source.to_string().contains("NoSuchBucket")
        }
        _ => false,
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            // A missing bucket is no missing object: reads must not take
            // it for "not there yet", nor writes for a vanished key.
            object_store::Error::NotFound { .. } if !is_missing_object(&e) => {
                StoreError::Backend(e)
            }
            object_store::Error::NotFound { path, .. } => StoreError::NotFound(path),
            object_store::Error::Precondition { path, .. }
            | object_store::Error::AlreadyExists { path, .. } => StoreError::Conflict(path),
            other => StoreError::Backend(other),
        }
    }
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// A directory on this machine (the embedded default).
    Local(PathBuf),
    /// An S3 bucket (or S3-compatible server).
    S3 {
        /// Bucket name.
        bucket: String,
    },
}

/// Storage handle shared by every part of the service.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    location: Location,
    /// Largest object S3 copies in one request; larger ones are moved by
    /// streaming them through this process.
    max_copy: u64,
    /// The AWS region and credentials an S3 storage was opened with.
    aws: Option<crate::storage::aws::Aws>,
    /// Lists an S3 bucket past keys object_store cannot represent.
    lister: Option<Arc<Lister>>,
}

/// S3's limit for copying an object in one request (CopyObject): 5 GiB.
pub(crate) const S3_MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Opaque version of a state document (an ETag or a content hash).
pub(crate) type Version = String;

impl Storage {
    /// Opens a local data directory, creating it (and `raw/`) if needed.
    pub fn local(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir: PathBuf = dir.into();
        let io = |source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir.join("raw")).map_err(io)?;
        Self::local_existing(dir)
    }

    /// Opens an existing data directory, creating nothing (for read-only
    /// commands: a mistyped path is an error, not a new directory).
    pub(crate) fn local_existing(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir: PathBuf = dir.into();
        let io = |source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        };
        if !dir.is_dir() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such data directory",
            )));
        }
        let dir = dir.canonicalize().map_err(io)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            location: Location::Local(dir),
            max_copy: S3_MAX_COPY_BYTES,
            aws: None,
            lister: None,
        })
    }

    /// Opens an S3 bucket, honouring the `AWS_*` environment (endpoint,
    /// region) and the AWS credential chain ([`crate::storage::aws::Chain`]: shared
    /// files and profiles included). Nothing is requested yet.
    pub async fn s3(bucket: &str) -> Result<Self, StoreError> {
        let aws = crate::storage::aws::Aws::load().await;
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&aws.region)
            .with_credentials(aws.credentials.clone());
        if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"))
        {
            b = b
                .with_endpoint(&ep)
                .with_allow_http(ep.starts_with("http://"));
        }
        // The lister goes where object_store goes, as it was configured.
        use object_store::aws::AmazonS3ConfigKey as K;
        let flag = |k: &K| b.get_config_value(k).is_some_and(|v| v == "true");
        let target = Target {
            bucket: bucket.to_string(),
            region: aws.region.clone(),
            endpoint: b
                .get_config_value(&K::S3Endpoint)
                .or_else(|| b.get_config_value(&K::Endpoint)),
            virtual_hosted: flag(&K::VirtualHostedStyleRequest),
            allow_invalid_certificates: flag(&K::Client(
                object_store::ClientConfigKey::AllowInvalidCertificates,
            )),
            skip_signature: flag(&K::SkipSignature),
        };
        let lister = Lister::new(&target, aws.credentials.clone())?;
        let store = b.build()?;
        Ok(Self {
            store: Arc::new(store),
            location: Location::S3 {
                bucket: bucket.to_string(),
            },
            max_copy: S3_MAX_COPY_BYTES,
            aws: Some(aws),
            lister: Some(Arc::new(lister)),
        })
    }

    /// Sets the largest object copied in one request (S3 only; some
    /// S3-compatible stores allow less than S3's 5 GiB).
    pub(crate) fn with_max_copy(mut self, bytes: u64) -> Self {
        self.max_copy = bytes;
        self
    }

    /// A storage over any object store: tests inject faults this way
    /// (`location` only labels it; nothing is opened).
    pub fn from_store(store: Arc<dyn ObjectStore>, location: Location) -> Self {
        Self {
            store,
            location,
            max_copy: S3_MAX_COPY_BYTES,
            aws: None,
            lister: None,
        }
    }

    /// The AWS region and credentials of an S3 storage opened with
    /// [`Storage::s3`], else (locally, or a test's store) the environment's.
    pub(crate) async fn aws(&self) -> crate::storage::aws::Aws {
        match &self.aws {
            Some(a) => a.clone(),
            None => crate::storage::aws::Aws::load().await,
        }
    }

    /// What `/health` reports: the bucket name or the data directory.
    pub(crate) fn label(&self) -> String {
        match &self.location {
            Location::Local(d) => d.display().to_string(),
            Location::S3 { bucket } => bucket.clone(),
        }
    }

    /// The backend in use.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Where `key` lives on this machine, for the local backend only.
    pub(crate) fn local_path(&self, key: &str) -> Result<Option<PathBuf>, StoreError> {
        keys::validate(key)?;
        Ok(match &self.location {
            Location::Local(dir) => Some(dir.join(key)),
            Location::S3 { .. } => None,
        })
    }

    /// Locally, why `key` can never be read as a batch: a symbolic link
    /// on its way (which could lead out of the data directory), or not a
    /// regular file (a FIFO would block the reader, a directory fail it
    /// forever). `None` if it is readable, missing, or on S3. Checked just
    /// before reading: whoever can swap files inside the data directory
    /// between the check and the read can write the data anyway.
    pub(crate) fn local_unreadable(&self, key: &str) -> Option<String> {
        let Location::Local(root) = &self.location else {
            return None;
        };
        let mut path = root.clone();
        for seg in key.split('/') {
            path.push(seg);
            let meta = std::fs::symlink_metadata(&path).ok()?;
            if meta.file_type().is_symlink() {
                return Some(format!(
                    "{key:?} is or goes through a symbolic link ({}): only regular files inside the data directory are read",
                    path.display()
                ));
            }
        }
        let meta = std::fs::symlink_metadata(&path).ok()?;
        (!meta.is_file()).then(|| {
            format!("{key:?} is not a regular file (a FIFO, socket, device or directory): only regular files are read")
        })
    }

    /// The underlying object store (for streaming reads and writes).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Reads a whole object; `None` if it does not exist.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = keys::validate(key)?;
        match self.store.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(e) if is_missing_object(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's ETag, if it exists.
    pub(crate) async fn etag(&self, key: &str) -> Result<Option<String>, StoreError> {
        let path = keys::validate(key)?;
        match self.store.head(&path).await {
            Ok(m) => Ok(Some(m.e_tag.unwrap_or_default())),
            Err(e) if is_missing_object(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a whole object (atomically replacing any previous one).
    pub(crate) async fn put(&self, key: &str, body: impl Into<Bytes>) -> Result<(), StoreError> {
        let path = keys::validate(key)?;
        self.store.put(&path, PutPayload::from(body.into())).await?;
        Ok(())
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = keys::validate(key)?;
        match self.store.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) if is_missing_object(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether storage answers now: the data directory exists, or the
    /// bucket can be listed (one level under `state/`). For readiness.
    pub(crate) async fn probe(&self) -> Result<(), StoreError> {
        if let Location::Local(dir) = &self.location
            && !dir.is_dir()
        {
            return Err(StoreError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the data directory is gone",
                ),
            });
        }
        self.store
            .list_with_delimiter(Some(&Path::from("state")))
            .await
            .map(|_| ())
            .map_err(StoreError::Backend)
    }

    /// Moves an object (a rename locally, copy + delete on S3). S3 copies
    /// at most 5 GiB in one request, so a larger object is streamed through
    /// this process into a multipart upload instead; `size`, if known, saves
    /// asking S3 for it.
    pub(crate) async fn rename(
        &self,
        from: &str,
        to: &str,
        size: Option<u64>,
    ) -> Result<(), StoreError> {
        let (f, t) = (keys::validate(from)?, keys::validate(to)?);
        if let Location::S3 { .. } = self.location {
            let size = match size {
                Some(n) => n,
                None => self.store.head(&f).await?.size,
            };
            if size > self.max_copy {
                self.copy_streamed(&f, &t).await?;
                self.store.delete(&f).await?;
                return Ok(());
            }
        }
        self.store.rename(&f, &t).await?;
        Ok(())
    }

    /// Copies `from` to `to` through this process, with bounded memory: the
    /// GET stream feeds a multipart upload, two parts in flight at most.
    async fn copy_streamed(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt;
        let io = |source| StoreError::Io {
            path: to.to_string(),
            source,
        };
        let mut input = self.store.get(from).await?.into_stream();
        let mut w = upload_writer(self.store.clone(), to.clone());
        while let Some(chunk) = input.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    abort(w, to).await;
                    return Err(e.into());
                }
            };
            if let Err(e) = w.write_all(&chunk).await {
                abort(w, to).await;
                return Err(io(e));
            }
        }
        w.shutdown().await.map_err(io)
    }

    /// Every object under `prefix` (which should end in `/`). An entry
    /// that cannot be used (a key that is no valid path, a symlink loop, a
    /// file that vanished mid-listing) is skipped, not fatal: one bad
    /// object must not hide the others. S3 goes through [`Lister`], a local
    /// directory through [`local_list`]; object_store lists only the
    /// stores tests inject.
    async fn list_meta(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        if let Some(lister) = &self.lister {
            return lister.list(prefix).await;
        }
        if let Location::Local(root) = &self.location {
            let (root, prefix) = (root.clone(), prefix.to_string());
            return tokio::task::spawn_blocking(move || Ok(local_list(&root, &prefix)))
                .await
                .map_err(join_err)?;
        }
        let p = Path::from(prefix.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut s = self.store.list(Some(&p));
        while let Some(m) = s.next().await {
            match m {
                Ok(m) => out.push(Listed {
                    key: m.location.to_string(),
                    etag: m.e_tag.unwrap_or_default(),
                    modified: m.last_modified,
                }),
                // A directory that does not exist yet lists as empty.
                Err(object_store::Error::NotFound { .. }) if out.is_empty() => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Every key under `prefix` (which should end in `/`), with its ETag.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .list_meta(prefix)
            .await?
            .into_iter()
            .map(|m| (m.key, m.etag))
            .collect())
    }

    /// Every key under `prefix` with its last-modified time.
    pub async fn list_modified(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StoreError> {
        Ok(self
            .list_meta(prefix)
            .await?
            .into_iter()
            .map(|m| (m.key, m.modified))
            .collect())
    }

    /// Deletes the objects under `prefix` last modified more than
    /// `older_than` ago, except those in `keep`. Locally this includes the
    /// partial files an interrupted upload leaves (`<key>#<n>`), which
    /// listings do not show. Returns how many were deleted.
    pub(crate) async fn sweep(
        &self,
        prefix: &str,
        older_than: std::time::Duration,
        keep: std::collections::HashSet<String>,
    ) -> Result<usize, StoreError> {
        let prefix = prefix.trim_end_matches('/');
        keys::validate(prefix)?;
        match &self.location {
            Location::Local(root) => {
                let dir = root.join(prefix);
                let prefix = prefix.to_string();
                tokio::task::spawn_blocking(move || local_sweep(&dir, &prefix, older_than, &keep))
                    .await
                    .map_err(join_err)?
            }
            Location::S3 { .. } => {
                let now = chrono::Utc::now();
                let mut old = Vec::new();
                for m in self.list_meta(&format!("{prefix}/")).await? {
                    let age = (now - m.modified).to_std().unwrap_or_default();
                    if age >= older_than && !keep.contains(&m.key) {
                        old.push(m.key);
                    }
                }
                for k in &old {
                    self.delete(k).await?;
                }
                Ok(old.len())
            }
        }
    }

    /// Locally, deletes the partial files of writes that died before
    /// their rename (`<key>#<n>`: object_store writes a whole object there,
    /// then renames it into place; a SIGKILL between the two leaves it)
    /// anywhere under `prefix`, last modified more than `older_than` ago
    /// (a younger one may be another process's write in progress). On S3
    /// the equivalent, an unfinished upload, is never listed and the
    /// bucket's lifecycle rule removes it: nothing to do. Returns how many
    /// were deleted.
    pub(crate) async fn sweep_partials(
        &self,
        prefix: &str,
        older_than: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let prefix = prefix.trim_end_matches('/');
        keys::validate(prefix)?;
        let Location::Local(root) = &self.location else {
            return Ok(0);
        };
        let dir = root.join(prefix);
        tokio::task::spawn_blocking(move || local_sweep_partials(&dir, older_than))
            .await
            .map_err(join_err)?
    }

    /// Reads a state document with its version; `None` if absent.
    pub(crate) async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Bytes, Version)>, StoreError> {
        let path = keys::validate(key)?;
        match &self.location {
            Location::Local(root) => {
                let file = root.join(path.as_ref());
                tokio::task::spawn_blocking(move || local_cas::get(&file))
                    .await
                    .map_err(join_err)?
            }
            Location::S3 { .. } => match self.store.get(&path).await {
                Ok(r) => {
                    let etag = r.meta.e_tag.clone().unwrap_or_default();
                    Ok(Some((r.bytes().await?, etag)))
                }
                Err(e) if is_missing_object(&e) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Writes a state document only if it is still at `expected` (`None`:
    /// only if it does not exist). Returns the new version, or
    /// [`StoreError::Conflict`] if someone else wrote first.
    pub(crate) async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        expected: Option<&str>,
    ) -> Result<Version, StoreError> {
        let path = keys::validate(key)?;
        match &self.location {
            Location::Local(root) => {
                let file = root.join(path.as_ref());
                let root = root.clone();
                let expected = expected.map(str::to_string);
                let key = key.to_string();
                tokio::task::spawn_blocking(move || {
                    local_cas::put_if(&root, &file, &body, expected.as_deref(), &key)
                })
                .await
                .map_err(join_err)?
            }
            Location::S3 { .. } => {
                let mode = match expected {
                    Some(v) => PutMode::Update(UpdateVersion {
                        e_tag: Some(v.to_string()),
                        version: None,
                    }),
                    None => PutMode::Create,
                };
                let opts = PutOptions {
                    mode,
                    ..Default::default()
                };
                let r = self
                    .store
                    .put_opts(&path, PutPayload::from(body), opts)
                    .await?;
                Ok(r.e_tag.unwrap_or_default())
            }
        }
    }
}

/// Every entry under `root/prefix` that is not a directory, never going
/// through a symbolic link: a link is listed as what it is (so a batch
/// that is one is refused once), never followed (a link to `/` is not a
/// walk of the whole disk). Files being written (`<name>#<n>`), keys that
/// are not valid and entries that cannot be read are left out.
fn local_list(root: &std::path::Path, prefix: &str) -> Vec<Listed> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<Listed>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            // Of the entry itself: a symbolic link is not followed.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                walk(root, &path, out);
                continue;
            }
            let Some(key) = path
                .strip_prefix(root)
                .ok()
                .and_then(|r| r.to_str())
                .map(|r| r.replace(std::path::MAIN_SEPARATOR, "/"))
            else {
                continue;
            };
            if key.contains('#') || keys::validate(&key).is_err() {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            let micros = modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            out.push(Listed {
                key,
                // As object_store's local store makes them.
                etag: format!(
                    "\"{:x}-{micros:x}-{:x}\"",
                    std::os::unix::fs::MetadataExt::ino(&meta),
                    meta.len()
                ),
                modified: modified.into(),
            });
        }
    }
    let mut out = Vec::new();
    walk(root, &root.join(prefix.trim_end_matches('/')), &mut out);
    out
}

fn local_sweep(
    dir: &std::path::Path,
    prefix: &str,
    older_than: std::time::Duration,
    keep: &std::collections::HashSet<String>,
) -> Result<usize, StoreError> {
    remove_old_files(dir, older_than, false, &|name| {
        !keep.contains(&format!("{prefix}/{name}"))
    })
}

/// Whether `name` is the partial file of an unfinished local write: `#`
/// and digits at the end.
fn is_partial(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn local_sweep_partials(
    dir: &std::path::Path,
    older_than: std::time::Duration,
) -> Result<usize, StoreError> {
    remove_old_files(dir, older_than, true, &is_partial)
}

/// Removes the files in `dir` (with `deep`, in its subfolders too) that
/// `pick` names, once last modified more than `older_than` ago (a younger
/// one may be another process's write in progress; so is one whose age
/// cannot be read). A symbolic link is never followed. Returns how many
/// were removed.
fn remove_old_files(
    dir: &std::path::Path,
    older_than: std::time::Duration,
    deep: bool,
    pick: &dyn Fn(&str) -> bool,
) -> Result<usize, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.display().to_string(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io)?;
        // Of the entry itself: a symbolic link is never followed.
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() && deep {
            removed += remove_old_files(&entry.path(), older_than, deep, pick)?;
            continue;
        }
        if !kind.is_file() || !pick(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let age = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        if age < older_than {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(removed)
}

/// Multipart upload part size: near S3's 5 MiB minimum, since a part
/// being filled and two in flight are held in memory (1M rows on moto:
/// 58 -> 49 MiB peak with 8 -> 6 MiB parts). 10,000 parts of 6 MiB allow a
/// 58 GiB object: a scored output of an input about a third that size.
const PART: usize = 6 * 1024 * 1024;

/// A multipart upload to `to` in [`PART`]-sized parts, two in flight at
/// most: memory stays flat when the upload is slower than what feeds it.
pub(crate) fn upload_writer(
    store: Arc<dyn ObjectStore>,
    to: Path,
) -> object_store::buffered::BufWriter {
    object_store::buffered::BufWriter::with_capacity(store, to, PART).with_max_concurrency(2)
}

/// Aborts a multipart upload that will not be completed. If that fails too,
/// its parts stay until the bucket's lifecycle rule removes them.
pub(crate) async fn abort(mut w: object_store::buffered::BufWriter, to: &Path) {
    if let Err(e) = w.abort().await {
        tracing::warn!(key = %to, error = %e, "could not abort an unfinished multipart upload");
    }
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        path: "(worker thread)".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Compare-and-swap on a local file, for writers in any number of processes.
mod local_cas {
    use super::{StoreError, Version};
    use std::fs::{self, File, OpenOptions};
    use std::io::{ErrorKind, Write};
    use std::path::Path;

    fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// FNV-1a 64 of the content: stable across builds and platforms.
    fn version(bytes: &[u8]) -> Version {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}-{}", bytes.len())
    }

    fn read(file: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(file) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(file)(e)),
        }
    }

    pub(super) fn get(file: &Path) -> Result<Option<(bytes::Bytes, Version)>, StoreError> {
        // Writers replace the file by rename, so a plain read sees one whole version.
        Ok(read(file)?.map(|b| {
            let v = version(&b);
            (bytes::Bytes::from(b), v)
        }))
    }

    /// Where a writer's copy of a document waits for its rename:
    /// `state/staging/` (a folder no stream can be named), under a name of
    /// its own. Writers never share one, even where the lock does not hold
    /// (a volume shared between hosts), and a copy left by a writer killed
    /// before its rename is swept with the other staging debris.
    fn temp_path(root: &Path) -> std::path::PathBuf {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        // Random per process (a pid repeats across containers on one volume).
        static NONCE: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nonce = *NONCE.get_or_init(|| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        root.join("state/staging")
            .join(format!("cas-{nonce:016x}-{n}.tmp"))
    }

    pub(super) fn put_if(
        root: &Path,
        file: &Path,
        body: &[u8],
        expected: Option<&str>,
        key: &str,
    ) -> Result<Version, StoreError> {
        let dir = file
            .parent()
            .ok_or_else(|| StoreError::Conflict(key.into()))?;
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = file.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let current = read(file)?.map(|b| version(&b));
        if current.as_deref() != expected {
            return Err(StoreError::Conflict(key.into()));
        }
        let tmp = temp_path(root);
        if let Some(staging) = tmp.parent() {
            fs::create_dir_all(staging).map_err(io(staging))?;
        }
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(body).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, file).map_err(io(file))?;
        // Make the rename itself durable before anyone acts on it.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        drop(lock);
        Ok(version(body))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_listing_never_goes_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("raw/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("x.csv"), "x").unwrap();
        std::fs::write(root.join("raw/a.csv"), "a").unwrap();
        std::fs::write(root.join("raw/sub/b.csv"), "b").unwrap();
        std::fs::write(root.join("raw/c.csv#1"), "partial").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("raw/out")).unwrap();
        std::os::unix::fs::symlink("a.csv", root.join("raw/link.csv")).unwrap();
        std::os::unix::fs::symlink("loop.csv", root.join("raw/loop.csv")).unwrap();
        let mut keys: Vec<String> = local_list(&root, "raw/")
            .into_iter()
            .map(|l| l.key)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "raw/a.csv",
                "raw/link.csv",
                "raw/loop.csv",
                "raw/out",
                "raw/sub/b.csv"
            ]
        );
        assert!(local_list(&root, "missing/").is_empty());
    }

    use super::*;

    #[tokio::test]
    async fn local_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        assert!(s.get_versioned("state/x.json").await.unwrap().is_none());
        let v1 = s.put_if("state/x.json", "1".into(), None).await.unwrap();
        assert!(matches!(
            s.put_if("state/x.json", "2".into(), None).await,
            Err(StoreError::Conflict(_))
        ));
        let v2 = s
            .put_if("state/x.json", "2".into(), Some(&v1))
            .await
            .unwrap();
        assert!(matches!(
            s.put_if("state/x.json", "3".into(), Some(&v1)).await,
            Err(StoreError::Conflict(_))
        ));
        let (b, v) = s.get_versioned("state/x.json").await.unwrap().unwrap();
        assert_eq!((&b[..], v), (&b"2"[..], v2));
    }

    #[tokio::test]
    async fn a_writers_copy_waits_in_staging_and_a_dead_ones_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        s.put_if("state/x.json", "1".into(), None).await.unwrap();
        let (_, v) = s.get_versioned("state/x.json").await.unwrap().unwrap();
        s.put_if("state/x.json", "2".into(), Some(&v))
            .await
            .unwrap();
        let names = |d: &str| {
            let mut v: Vec<_> = std::fs::read_dir(dir.path().join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        // Nothing beside the document a stream could collide with.
        assert_eq!(names("state"), ["staging", "x.json", "x.lock"]);
        assert!(names("state/staging").is_empty());
        // What a writer killed between writing its copy and renaming it leaves.
        std::fs::write(dir.path().join("state/staging/cas-dead-0.tmp"), "half").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(
            s.sweep("state/staging/", hour, Default::default())
                .await
                .unwrap(),
            0
        );
        let zero = std::time::Duration::ZERO;
        assert_eq!(
            s.sweep("state/staging/", zero, Default::default())
                .await
                .unwrap(),
            1
        );
        assert!(names("state/staging").is_empty());
        let (b, _) = s.get_versioned("state/x.json").await.unwrap().unwrap();
        assert_eq!(&b[..], b"2");
    }

    #[tokio::test]
    async fn concurrent_increments_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    loop {
                        let cur = s.get_versioned("state/n").await.unwrap();
                        let (n, v) = match &cur {
                            Some((b, v)) => (
                                std::str::from_utf8(b).unwrap().parse::<u64>().unwrap(),
                                Some(v.as_str()),
                            ),
                            None => (0, None),
                        };
                        match s.put_if("state/n", (n + 1).to_string().into(), v).await {
                            Ok(_) => break,
                            Err(StoreError::Conflict(_)) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (b, _) = s.get_versioned("state/n").await.unwrap().unwrap();
        assert_eq!(&b[..], b"400");
    }

    #[tokio::test]
    async fn sweep_removes_old_debris_but_keeps_named_objects() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        s.put("state/staging/a.csv", "a").await.unwrap();
        s.put("state/staging/b.csv", "b").await.unwrap();
        // What an upload killed half-way leaves behind locally.
        std::fs::write(dir.path().join("state/staging/c.csv#1"), "c").unwrap();
        let keep = |k: &str| std::iter::once(k.to_string()).collect();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(s.sweep("state/staging/", hour, keep("x")).await.unwrap(), 0);
        let zero = std::time::Duration::ZERO;
        let n = s
            .sweep("state/staging/", zero, keep("state/staging/b.csv"))
            .await
            .unwrap();
        assert_eq!(n, 2);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("state/staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["b.csv"]);
        assert_eq!(s.sweep("nothing/here/", zero, keep("x")).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn partial_files_of_dead_writes_are_swept_once_old() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        s.put("processed/a_summary.json", "{}").await.unwrap();
        s.put("processed/s1/b.csv", "b").await.unwrap();
        // What writes SIGKILLed before their rename leave.
        std::fs::write(dir.path().join("processed/a_summary.json#1"), "{").unwrap();
        std::fs::write(dir.path().join("processed/s1/b_summary.json#12"), "").unwrap();
        // Not partial files: '#' without digits after it.
        std::fs::write(dir.path().join("processed/c#x.csv"), "c").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(s.sweep_partials("processed/", hour).await.unwrap(), 0);
        let zero = std::time::Duration::ZERO;
        assert_eq!(s.sweep_partials("processed/", zero).await.unwrap(), 2);
        let mut left = Vec::new();
        for d in ["processed", "processed/s1"] {
            for e in std::fs::read_dir(dir.path().join(d)).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    left.push(format!("{d}/{}", e.file_name().into_string().unwrap()));
                }
            }
        }
        left.sort();
        assert_eq!(
            left,
            [
                "processed/a_summary.json",
                "processed/c#x.csv",
                "processed/s1/b.csv"
            ]
        );
        assert_eq!(s.sweep_partials("nothing/", zero).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path().join("data")).unwrap();
        assert!(matches!(
            s.put("../evil", "x").await,
            Err(StoreError::Key(_))
        ));
        assert!(matches!(
            s.get("/etc/passwd").await,
            Err(StoreError::Key(_))
        ));
        assert!(!dir.path().join("evil").exists());
    }
}
