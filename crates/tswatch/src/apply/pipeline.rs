//! Streams one object through [`crate::csv::scorer::score_csv`] (or, for the
//! benchmark's floor, any other transform: [`stream_object`]). On S3 the
//! object's byte stream feeds a blocking scoring thread through a small
//! bounded channel, and the scored bytes flow back out to a multipart
//! upload; on the local backend the scoring thread reads the opened file and
//! writes the staged file itself. At no point is the file held in memory: a
//! few 256 KiB buffers are in flight.

use crate::csv::records::{InputError, READ_BUFFER};
use crate::csv::scorer::{CellSafety, FileReport, ScoreError, score_csv_with};
use crate::storage::{Storage, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{GetOptions, GetResultPayload, ObjectStore, path::Path};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
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
/// advanced engine, the report and the staged object's size in bytes. On
/// error the staged object may be partial.
pub(crate) async fn score_object(
    storage: &Storage,
    raw: &Path,
    etag: &str,
    staged: &Path,
    mut engine: Engine,
    safety: CellSafety,
) -> Result<(Engine, FileReport, u64), PipelineError> {
    let streamed = stream_object(storage, raw, etag, staged, move |input, output| {
        let r = score_csv_with(input, output, &mut engine, safety);
        (engine, r)
    })
    .await?;
    let (engine, result) = streamed.value;
    match result {
        Ok(report) => Ok((engine, report, streamed.upload?)),
        // An input error explains a cut-short upload, so it wins.
        Err(ScoreError::Input(e)) => Err(e.into()),
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
pub struct Streamed<T> {
    /// What the transform returned.
    pub value: T,
    /// Whether the output was written in full, and then its size in bytes.
    pub upload: Result<u64, StoreError>,
}

/// Streams `raw` (at exactly version `etag`; any version if empty) through
/// `transform`, which runs on a blocking thread with a reader of the
/// object's bytes and a writer of `output`'s. On S3 both are channels to
/// the GET stream and a multipart upload; on the local backend they are
/// the files themselves (the object store would hand a file over in 8 KiB
/// chunks, each a blocking task of its own; the open handle pins the
/// version the ETag matched). A storage failure while reading wins over
/// whatever the transform made of it. On error the output may be partial.
pub async fn stream_object<T, F>(
    storage: &Storage,
    raw: &Path,
    etag: &str,
    output: &Path,
    transform: F,
) -> Result<Streamed<T>, PipelineError>
where
    T: Send + 'static,
    F: FnOnce(Box<dyn Read + Send>, &mut (dyn Write + Send)) -> T + Send + 'static,
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
    let (sink, upload): (Box<dyn Write + Send>, _) = match storage.local_path(output.as_ref())? {
        Some(file) => (Box::new(local_sink(file)?), None),
        None => {
            let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(8);
            let out_path = output.clone();
            let upload = tokio::spawn(async move {
                let mut w = crate::storage::upload_writer(store, out_path);
                while let Some(b) = out_rx.recv().await {
                    w.write_all(&b).await?;
                }
                w.shutdown().await
            });
            let writer = UploadWriter {
                tx: out_tx,
                buf: Vec::with_capacity(CHUNK),
            };
            (Box::new(writer), Some(upload))
        }
    };
    let done = tokio::task::spawn_blocking(move || {
        let mut sink = Counted {
            inner: sink,
            bytes: 0,
        };
        let value = transform(input, &mut sink);
        let flushed = sink.flush().map(|()| sink.bytes);
        (value, flushed)
    })
    .await;
    if let Some(p) = pump {
        p.abort();
    }
    let (value, flushed) = done.map_err(|e| StoreError::Io {
        path: raw.to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let written = match upload {
        Some(u) => u
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
        None => Ok(()),
    };
    if let Some(e) = read_error.lock().ok().and_then(|mut g| g.take()) {
        return Err(StoreError::from(e).into());
    }
    let upload = flushed
        .and_then(|bytes| written.map(|()| bytes))
        .map_err(|source| StoreError::Io {
            path: output.to_string(),
            source,
        });
    Ok(Streamed { value, upload })
}

/// The scorer writes pieces of this size, so the local sink's buffer of the
/// same size passes them straight through, and uploads ship them as they are.
const CHUNK: usize = crate::csv::scorer::WRITE_CHUNK;

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
/// thread; see [`stream_object`]). Dropping it ships what is left.
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

impl Drop for UploadWriter {
    fn drop(&mut self) {
        let _ = self.ship();
    }
}
