//! Real components for the integration tests: a moto server, the real
//! `tswatch` binary, and plain HTTP. Everything binds 127.0.0.1 and every
//! process is killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed on drop.
pub(crate) struct Proc {
    child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stderr to `log` and stdout discarded.
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> Proc {
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        Proc {
            child: cmd.spawn().expect("spawn"),
            log: log.to_path_buf(),
        }
    }

    /// Whether the process has exited.
    pub(crate) fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// How the process ended, if it has.
    pub(crate) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            // Generous: it first finishes the file in hand, which on a
            // loaded 2-core machine (a debug build) can take a while.
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "process ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A moto server on a free loopback port.
pub(crate) struct Moto {
    _proc: Proc,
    pub(crate) endpoint: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub(crate) async fn start() -> Moto {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("moto.err")).unwrap()))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto_server ({e}): install it with `pip install \"moto[server]\"` \
                     (scripts/test does this)"
                )
            });
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let c = client.clone();
        let ep = endpoint.clone();
        wait_for("moto to start", Duration::from_secs(30), || {
            let c = c.clone();
            let ep = ep.clone();
            async move {
                c.get(format!("{ep}/moto-api/"))
                    .send()
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        Moto {
            _proc: Proc { child, log },
            endpoint,
            client,
            _dir: dir,
        }
    }

    /// A request routed to `service` (moto routes by the credential scope;
    /// it does not check signatures).
    pub(crate) fn req(
        &self,
        service: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.endpoint))
            .header("Authorization", moto_auth(service))
    }

    pub(crate) async fn create_bucket(&self, bucket: &str) {
        let r = self
            .req("s3", reqwest::Method::PUT, &format!("/{bucket}"))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create bucket: {}",
            r.text().await.unwrap()
        );
    }

    pub(crate) async fn put_object(&self, bucket: &str, key: &str, body: impl Into<reqwest::Body>) {
        let path = format!("/{bucket}/{}", encode_key(key));
        let r = self
            .req("s3", reqwest::Method::PUT, &path)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "put {key}: {}",
            r.text().await.unwrap()
        );
    }

    /// The object's bytes, or `None` if it does not exist.
    pub(crate) async fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let path = format!("/{bucket}/{}", encode_key(key));
        let r = self
            .req("s3", reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap();
        r.status().is_success().then_some(())?;
        Some(r.bytes().await.unwrap().to_vec())
    }

    /// The body of an S3 `GET path` (a listing's XML, say).
    pub(crate) async fn s3_text(&self, path: &str) -> String {
        self.req("s3", reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub(crate) async fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = self
            .s3_text(&format!(
                "/{bucket}?list-type=2&prefix={prefix}&max-keys=1000"
            ))
            .await;
        xml.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect()
    }

    /// Calls an SNS query-API action; returns the response XML.
    pub(crate) async fn sns(&self, params: &[(&str, &str)]) -> String {
        self.query("sns", params).await
    }

    /// Calls a query-API action of `service` (SNS, IAM, ...); returns the
    /// response XML, failing the test on an error status.
    pub(crate) async fn query(&self, service: &str, params: &[(&str, &str)]) -> String {
        let r = self
            .req(service, reqwest::Method::POST, "/")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                params
                    .iter()
                    .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            )
            .send()
            .await
            .unwrap();
        let ok = r.status().is_success();
        let text = r.text().await.unwrap();
        assert!(ok, "{service} {params:?}: {text}");
        text
    }

    /// Subscribes `endpoint` to `topic` over `protocol` (`http`, `sqs`).
    pub(crate) async fn subscribe(&self, topic: &str, protocol: &str, endpoint: &str) {
        self.sns(&[
            ("Action", "Subscribe"),
            ("TopicArn", topic),
            ("Protocol", protocol),
            ("Endpoint", endpoint),
        ])
        .await;
    }

    pub(crate) async fn create_topic(&self, name: &str) -> String {
        let xml = self.sns(&[("Action", "CreateTopic"), ("Name", name)]).await;
        between(&xml, "<TopicArn>", "</TopicArn>").to_string()
    }

    /// Sends S3 "object created" events for `raw/` to the topic.
    pub(crate) async fn notify_bucket_to_topic(&self, bucket: &str, topic_arn: &str) {
        self.notify_bucket(bucket, "Topic", topic_arn).await;
    }

    /// Sets the bucket's notification of "object created" events under
    /// `raw/` to one target: `kind` is `Topic` or `Queue`.
    pub(crate) async fn notify_bucket(&self, bucket: &str, kind: &str, arn: &str) {
        let xml = format!(
            "<NotificationConfiguration><{kind}Configuration><Id>tswatch</Id><{kind}>{arn}</{kind}>\
             <Event>s3:ObjectCreated:*</Event><Filter><S3Key><FilterRule><Name>prefix</Name>\
             <Value>raw/</Value></FilterRule></S3Key></Filter></{kind}Configuration></NotificationConfiguration>"
        );
        let r = self
            .req(
                "s3",
                reqwest::Method::PUT,
                &format!("/{bucket}?notification"),
            )
            .body(xml)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "notification config: {}",
            r.text().await.unwrap()
        );
    }
}

/// An `Authorization` header that makes moto route a request to `service`.
pub(crate) fn moto_auth(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
    )
}

pub(crate) fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    s.split(a)
        .nth(1)
        .and_then(|x| x.split(b).next())
        .unwrap_or_else(|| panic!("{a} not in {s}"))
}

/// Percent-encodes each segment of a key for a URL path.
pub(crate) fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The real binary.
pub(crate) fn tswatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tswatch"));
    // Never let the developer's environment leak into a test.
    for v in [
        "BUCKET_NAME",
        "TSWATCH_DATA_DIR",
        "TSWATCH_BIND",
        "TSWATCH_CONFIG",
        "AWS_ENDPOINT_URL",
        "AWS_PROFILE",
    ] {
        c.env_remove(v);
    }
    c
}

/// The environment that points tswatch at a moto bucket.
pub(crate) fn s3_env(cmd: &mut Command, moto: &Moto, bucket: &str) {
    cmd.env("BUCKET_NAME", bucket)
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// A running `tswatch serve`.
pub(crate) struct Service {
    pub(crate) proc: Proc,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl Service {
    /// The real service on the local data directory `data` and nothing
    /// else set, logging into `log_dir`.
    pub(crate) async fn local(data: &Path, log_dir: &Path) -> Service {
        Service::start(tswatch(), &["--data-dir", data.to_str().unwrap()], log_dir).await
    }

    /// Sends a `POST /notify` that promises a 1,000-byte body, sends only
    /// part of it and stalls; returns the raw HTTP answer (head and body),
    /// which only the request timeout can give.
    pub(crate) async fn stalled_notify(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.strip_prefix("http://").unwrap();
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(
            b"POST /notify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n{\"Type\": ",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        // Not a timing assertion: a generous bound so a broken build fails
        // instead of hanging.
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            let mut chunk = [0u8; 1024];
            loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
                    break;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "no answer to a stalled request");
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Starts `cmd serve --bind 127.0.0.1:<port> <extra>` and waits for /health.
    pub(crate) async fn start(cmd: Command, extra: &[&str], log_dir: &Path) -> Service {
        let svc = Service::spawn(cmd, extra, log_dir);
        svc.wait_up().await;
        svc
    }

    /// Starts `cmd serve --bind 127.0.0.1:<port> <extra>` without waiting
    /// for it (a test that may kill it while it starts).
    pub(crate) fn spawn(mut cmd: Command, extra: &[&str], log_dir: &Path) -> Service {
        let port = free_port();
        let log = log_dir.join(format!("tswatch-{port}.log"));
        cmd.arg("serve")
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("TSWATCH_LOG", "info,tswatch=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("spawn tswatch");
        let proc = Proc { child, log };
        let base = format!("http://127.0.0.1:{port}");
        // Idle connections are dropped before the service's own idle limit
        // (--http-header-timeout, 10 s) closes them: a request sent on a
        // connection the server is closing fails with IncompleteMessage.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Service { proc, base, http }
    }

    /// Waits for /health to answer.
    pub(crate) async fn wait_up(&self) {
        let started = Instant::now();
        loop {
            if self
                .http
                .get(format!("{}/health", self.base))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tswatch did not come up:\n{}",
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "text/plain; charset=UTF-8")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// An S3 event notification for `keys` in `bucket`, as S3 sends it (keys
/// form-encoded).
pub(crate) fn s3_event(bucket: &str, keys: &[&str]) -> String {
    let records: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": form_encode(k)}}
            })
        })
        .collect();
    serde_json::json!({ "Records": records }).to_string()
}

/// An SNS Notification envelope around an S3 event for `keys` (unsigned:
/// for services running with --insecure-skip-sns-verify).
pub(crate) fn sns_s3_event(bucket: &str, keys: &[&str]) -> String {
    let message = s3_event(bucket, keys);
    serde_json::json!({
        "Type": "Notification",
        "MessageId": format!("m-{}", keys.join(",")),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:tswatch",
        "Message": message,
        "Timestamp": "2026-11-25T00:00:00.000Z",
        "SignatureVersion": "2",
        "Signature": "",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
    })
    .to_string()
}

/// Form encoding as S3 uses in events (`quote_plus`).
pub(crate) fn form_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The file's bytes once it exists and is not empty.
pub(crate) async fn wait_file(path: &Path) -> Vec<u8> {
    wait_for(
        &path.display().to_string(),
        Duration::from_secs(60),
        || async { std::fs::read(path).ok().filter(|b| !b.is_empty()) },
    )
    .await
}

/// Copies a file into `raw/` the way a careful producer does: write, then
/// rename (`name` may contain `/`).
pub(crate) fn drop_in(data: &Path, name: &str, body: &[u8]) {
    let dest = data.join("raw").join(name);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let tmp = data.join(format!(".{}.part", name.replace('/', "_")));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// Every file under `dir` (relative paths, sorted).
pub(crate) fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Parses CSV text into rows of fields.
pub(crate) fn csv_rows(text: &[u8]) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text)
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// 300 quiet rows of `temp` and `load`, then `temp` far above anything seen.
pub(crate) fn with_a_spike() -> String {
    let mut s = String::from("timestamp,temp,load\n");
    for i in 0..300 {
        let x = f64::from(i);
        s.push_str(&format!(
            "2026-01-01T{:02}:{:02}:00Z,{:.3},{:.3}\n",
            i / 60,
            i % 60,
            20.0 + (x * 0.7).sin(),
            5.0 + (x * 1.3).cos()
        ));
    }
    s.push_str("2026-01-01T05:00:00Z,500.0,5.0\n");
    s
}
