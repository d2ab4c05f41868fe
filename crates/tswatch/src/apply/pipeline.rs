//! Streams one object through [`crate::csv::scorer::score_csv`] (or, for the
//! benchmark's floor, any other transform: [`stream_object`]). On S3 the
//! object's byte stream feeds a blocking scoring thread through a small
//! bounded channel, and the scored bytes flow back out to a multipart
//! upload; on the local backend the scoring thread reads the opened file and
//! writes the staged file itself. At no point is the file held in memory: a
//! few 256 KiB buffers are in flight.

use crate::csv::records::{InputError, READ_BUFFER};
use crate::csv::scorer::{CellSafety, ScoreError, score_csv_with};
use crate::state::scored::FileReport;
use crate::storage::{Storage, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{GetOptions, GetResultPayload, ObjectStore, path::Path};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tswatch_core::Engine;

/// Why a file could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The content is unusable; the file is rejected.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Storage failed; the attempt may be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object was replaced while it was being read.
    #[error("the object changed while it was being processed")]
    Changed,
}

/// Scores `raw` (at exactly version `etag`) into `staged`, returning the
/// advanced engine, the report and the staged object's size in bytes.
/// Errors are classified by where they came from, never by their text: the
/// input's own content is [`PipelineError::Input`] (the file is rejected);
/// failing to read the input from storage or to write the scored copy is
/// [`PipelineError::Store`] (retried, never an `_error.json`). On error the
/// staged object is absent or partial, never a completed upload.
pub(crate) async fn score_object(
    storage: &Storage,
    raw: &Path,
    etag: &str,
    staged: &Path,
    mut engine: Engine,
    safety: CellSafety,
) -> Result<(Engine, FileReport, u64), PipelineError> {
    let streamed = stream_object(storage, raw, etag, staged, move |input, output| {
        score_csv_with(input, output, &mut engine, safety).map(|report| (engine, report))
    })
    .await?;
    match streamed.value {
        Ok((engine, report)) => Ok((engine, report, streamed.upload?)),
        // An input error explains a cut-short upload, so it wins.
        Err(ScoreError::Input(e)) => Err(e.into()),
        // The file could not be read (a disk error, a download cut short;
        // on S3 the object store's own error has won already): storage's
        // failure, retried.
        Err(ScoreError::Read(source)) => Err(StoreError::Io {
            path: raw.to_string(),
            source,
        }
        .into()),
        // Failing to write the output is storage's failure, never the
        // input's: retried, never an `_error.json`. The upload's own error
        // says why, where there is one.
        Err(ScoreError::Output(source)) => Err(match streamed.upload {
            Err(e) => e,
            Ok(_) => StoreError::Io {
                path: staged.to_string(),
                source,
            },
        }
        .into()),
    }
}

/// What [`stream_object`] gives back.
#[derive(Debug)]
pub struct Streamed<T, E> {
    /// What the transform returned.
    pub value: Result<T, E>,
    /// Whether writing the output failed; if not, the bytes written. The
    /// output is finished only when `value` is `Ok` as well; otherwise it
    /// was abandoned (see [`stream_object`]).
    pub upload: Result<u64, StoreError>,
}

/// Streams `raw` (at exactly version `etag`; any version if empty) through
/// `transform`, which runs on a blocking thread with a reader of the
/// object's bytes and a writer of `output`'s. On S3 both are channels to
/// the GET stream and a multipart upload; on the local backend they are
/// the files themselves (the object store would hand a file over in 8 KiB
/// chunks, each a blocking task of its own; the open handle pins the
/// version the ETag matched). A storage failure while reading wins over
/// whatever the transform made of it.
///
/// The output is finished only if the transform returns `Ok` and nothing
/// failed: the upload is completed, or the local file flushed and synced
/// to disk (so that a write error the disk reports late is seen here, not
/// after a commit names the file). Otherwise an upload is aborted, so a
/// part-written copy never becomes an object, and a local file may be
/// left partial for the caller to delete.
pub async fn stream_object<T, E, F>(
    storage: &Storage,
    raw: &Path,
    etag: &str,
    output: &Path,
    transform: F,
) -> Result<Streamed<T, E>, PipelineError>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(Box<dyn Read + Send>, &mut (dyn Write + Send)) -> Result<T, E> + Send + 'static,
{
    let store = storage.store();
    let opts = GetOptions {
        if_match: (!etag.is_empty()).then(|| etag.to_string()),
        ..Default::default()
    };
    let got = match store.get_opts(raw, opts).await {
        Ok(g) => g,
        Err(object_store::Error::Precondition { .. }) => return Err(PipelineError::Changed),
        Err(e) => return Err(StoreError::from(e).into()),
    };
    let read_error = Arc::new(Mutex::new(None));
    let (input, pump): (Box<dyn Read + Send>, _) = match got.payload {
        GetResultPayload::File(file, _) => (
            Box::new(std::io::BufReader::with_capacity(READ_BUFFER, file)),
            None,
        ),
        GetResultPayload::Stream(mut stream) => {
            let (in_tx, in_rx) = mpsc::channel::<Result<Bytes, object_store::Error>>(8);
            let pump = tokio::spawn(async move {
                while let Some(chunk) = stream.next().await {
                    let stop = chunk.is_err();
                    if in_tx.send(chunk).await.is_err() || stop {
                        break;
                    }
                }
            });
            let reader = ObjectReader {
                rx: in_rx,
                current: Bytes::new(),
                error: read_error.clone(),
            };
            (Box::new(reader), Some(pump))
        }
    };
    let (sink, upload) = match storage.local_path(output.as_ref())? {
        Some(file) => (Sink::Local(local_sink(file)?), None),
        None => {
            let (out_tx, out_rx) = mpsc::channel::<Bytes>(8);
            let (finish, finished) = oneshot::channel();
            let upload = tokio::spawn(upload(store, output.clone(), out_rx, finished));
            let writer = UploadWriter {
                tx: out_tx,
                buf: Vec::with_capacity(CHUNK),
            };
            (Sink::Upload(writer), Some((upload, finish)))
        }
    };
    let done = tokio::task::spawn_blocking(move || {
        let mut sink = Counted {
            inner: sink,
            bytes: 0,
        };
        let value = transform(input, &mut sink);
        // Only a whole copy is finished; a part-written one is abandoned.
        let finished = match &value {
            Ok(_) => sink.inner.finish().map(|()| sink.bytes),
            Err(_) => Ok(sink.bytes),
        };
        (value, finished)
    })
    .await;
    if let Some(p) = pump {
        p.abort();
    }
    let read_failed = read_error.lock().ok().and_then(|mut g| g.take());
    let (value, finished) = match done {
        Ok(d) => d,
        Err(e) => {
            // The transform panicked; the sink (and so the upload's feed)
            // is gone with it, and the upload aborts on its own.
            return Err(StoreError::Io {
                path: raw.to_string(),
                source: std::io::Error::other(e.to_string()),
            }
            .into());
        }
    };
    let complete = value.is_ok() && finished.is_ok() && read_failed.is_none();
    let written = match upload {
        Some((u, finish)) => {
            // If the upload has failed already, it is not waiting for this.
            let _ = finish.send(complete);
            u.await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        }
        None => Ok(()),
    };
    if let Some(e) = read_failed {
        return Err(StoreError::from(e).into());
    }
    let upload = finished
        .and_then(|bytes| written.map(|()| bytes))
        .map_err(|e| upload_error(output, e));
    Ok(Streamed { value, upload })
}

/// Feeds the chunks from `rx` to a multipart upload to `to`, and completes
/// it only if `finished` says the copy is whole; otherwise (or if a part
/// fails) the upload is aborted, leaving no object behind. `Err` only for
/// a failure of the upload itself.
async fn upload(
    store: Arc<dyn ObjectStore>,
    to: Path,
    mut rx: mpsc::Receiver<Bytes>,
    finished: oneshot::Receiver<bool>,
) -> std::io::Result<()> {
    let mut w = crate::storage::upload_writer(store, to.clone());
    while let Some(b) = rx.recv().await {
        if let Err(e) = w.write_all(&b).await {
            crate::storage::abort(w, &to).await;
            return Err(e);
        }
    }
    if finished.await == Ok(true) {
        // Completing aborts the upload itself if a part failed.
        w.shutdown().await
    } else {
        crate::storage::abort(w, &to).await;
        Ok(())
    }
}

/// A failure writing `output` as the storage error it is: the object
/// store's own error where the upload had one (an S3 failure is not a
/// local one), else a file-system error on `output`.
fn upload_error(output: &Path, e: std::io::Error) -> StoreError {
    let io = |source| StoreError::Io {
        path: output.to_string(),
        source,
    };
    if e.get_ref().is_none() {
        return io(e); // an OS error, as it is
    }
    let kind = e.kind();
    match e
        .into_inner()
        .map(|inner| inner.downcast::<object_store::Error>())
    {
        Some(Ok(store_error)) => StoreError::from(*store_error),
        Some(Err(inner)) => io(std::io::Error::new(kind, inner)),
        None => io(std::io::Error::from(kind)),
    }
}

/// The scorer writes pieces of this size, so the local sink's buffer of the
/// same size passes them straight through, and uploads ship them as they are.
const CHUNK: usize = crate::csv::scorer::WRITE_CHUNK;

/// Where the scoring thread writes the output.
enum Sink {
    /// The staged file itself.
    Local(std::io::BufWriter<std::fs::File>),
    /// The feed of a multipart upload.
    Upload(UploadWriter),
}

impl Sink {
    /// Finishes a whole copy: writes out what is buffered and, locally,
    /// makes the file durable, so that a late write error (one the disk
    /// reports only when the data is written back) is reported now.
    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Local(w) => {
                w.flush()?;
                w.get_ref().sync_data()
            }
            Sink::Upload(w) => w.flush(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Local(w) => w.write(data),
            Sink::Upload(w) => w.write(data),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Local(w) => w.write_all(data),
            Sink::Upload(w) => w.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Local(w) => w.flush(),
            Sink::Upload(w) => w.flush(),
        }
    }
}

/// A buffered local file that the scoring thread writes directly.
fn local_sink(path: std::path::PathBuf) -> Result<std::io::BufWriter<std::fs::File>, StoreError> {
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::File::create(&path).map_err(io)?;
    Ok(std::io::BufWriter::with_capacity(CHUNK, file))
}

/// A writer that counts the bytes it passed on.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(data)?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `Read` over an object's bytes, arriving in chunks on a channel (for a
/// blocking thread; see [`stream_object`]).
struct ObjectReader {
    rx: mpsc::Receiver<Result<Bytes, object_store::Error>>,
    current: Bytes,
    error: Arc<Mutex<Option<object_store::Error>>>,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    let msg = e.to_string();
                    if let Ok(mut g) = self.error.lock() {
                        *g = Some(e);
                    }
                    return Err(std::io::Error::other(msg));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// `Write` that ships 256 KiB chunks to a multipart upload (for a blocking
/// thread; see [`stream_object`]). What is left when it is dropped is not
/// shipped: only [`Sink::finish`] ships the end of a whole copy.
struct UploadWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl UploadWriter {
    fn ship(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the upload of the scored file stopped"))
    }
}

impl Write for UploadWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.ship()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.ship()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    /// S3 semantics in memory, with `raw/in.csv` in it.
    async fn s3_like() -> (Arc<InMemory>, Storage) {
        let mem = Arc::new(InMemory::new());
        mem.put(&Path::from("raw/in.csv"), PutPayload::from_static(b"x\n"))
            .await
            .unwrap();
        let s = Storage::from_store(mem.clone(), Location::S3 { bucket: "b".into() });
        (mem, s)
    }

    /// A copy the transform gives up on part-way is abandoned, never
    /// completed into an object (under one part: never put; over two: the
    /// multipart upload aborted); a whole one is completed.
    #[tokio::test]
    async fn only_a_whole_copy_becomes_an_object() {
        for size in [1000, 13 << 20] {
            for whole in [false, true] {
                let (mem, s) = s3_like().await;
                let out = Path::from("state/staging/out.csv");
                let streamed =
                    stream_object(&s, &Path::from("raw/in.csv"), "", &out, move |_, w| {
                        w.write_all(&vec![b'y'; size]).map_err(|e| e.to_string())?;
                        if whole {
                            Ok(())
                        } else {
                            Err("the input went bad part-way".to_string())
                        }
                    })
                    .await
                    .unwrap();
                assert_eq!(streamed.value.is_ok(), whole);
                assert_eq!(streamed.upload.unwrap(), size as u64, "{size}");
                let stored = mem.head(&out).await.map(|m| m.size).ok();
                assert_eq!(
                    stored,
                    whole.then_some(size as u64),
                    "{size} bytes, whole: {whole}"
                );
            }
        }
    }
}
