//! Wires the service together: `run` receives everything it needs, so tests
//! can start it on any listener and storage.

use crate::apply::alerts::{AlertSettings, Alerts};
use crate::apply::lease::Leases;
use crate::apply::processor::Processor;
use crate::csv::scorer::CellSafety;
use crate::http::api::{self, AppState};
use crate::ingest::queue::{self, Queue};
use crate::ingest::sns::{HttpsCertSource, Verifier};
use crate::ingest::sqs::SqsClient;
use crate::ingest::sqs_worker::{self, SqsSettings};
use crate::state::stream::Stream;
use crate::storage::{Location, Storage};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tswatch_core::EngineConfig;

/// Service settings, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Detection settings.
    pub engine: EngineConfig,
    /// Time between reconciliation passes.
    pub reconcile_every: Duration,
    /// On shutdown, how long the file in hand may take before it is abandoned.
    pub shutdown_grace: Duration,
    /// Skip SNS signature checks (emulators only).
    pub insecure_skip_sns_verify: bool,
    /// Accepted SNS topics (empty: any).
    pub sns_topics: Vec<String>,
    /// Where to fetch SNS signing certificates instead of the SNS host
    /// (emulators only).
    pub sns_cert_endpoint: Option<String>,
    /// Longest time a request may take.
    pub request_timeout: Duration,
    /// Longest wait for a request's head (from the connection's start or its
    /// previous response): slow or idle connections are closed after it.
    pub http_header_timeout: Duration,
    /// Most connections served at once (more wait in the listen queue).
    pub max_connections: usize,
    /// Which cells of scored copies are made spreadsheet-safe.
    pub spreadsheet_safe: CellSafety,
    /// Capacity of the work queue per core: keys from notifications, the
    /// folder watcher and reconciliation waiting at once (SQS messages are
    /// bounded by those kept in hand).
    pub queue_capacity: usize,
    /// Consume S3 events from this SQS queue as well (`--sqs-queue-url`).
    pub sqs: Option<SqsSettings>,
    /// Alert webhooks (`--alert-webhook`; none: no alerts).
    pub alerts: AlertSettings,
}

/// Runs until `shutdown` resolves: API, worker, reconciler, (locally) the
/// folder watcher and (with webhooks) the alert sender. On shutdown, stops
/// taking requests, gives the worker `shutdown_grace` to finish the file in
/// hand (then abandons it, which the commit protocol makes safe), gives
/// alerts still being sent [`crate::apply::alerts::SHUTDOWN_GRACE`], and returns.
pub async fn run(
    listener: TcpListener,
    storage: Storage,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    check_insecure_bind(settings.insecure_skip_sns_verify, addr)?;
    // Before anything runs, so nothing it records is lost.
    let metrics = crate::telemetry::install()?;
    let alerts = if settings.alerts.webhooks.is_empty() {
        None
    } else {
        let base = match &settings.alerts.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{addr}"),
        };
        Some(Alerts::start(&settings.alerts, format!("{base}/"))?)
    };
    let mut processor = Processor::new(storage.clone(), settings.engine)
        .with_cell_safety(settings.spreadsheet_safe);
    if let Some(a) = &alerts {
        processor = processor.with_alerts(a.sink());
    }
    let processor = Arc::new(processor);
    // Fail fast on unusable state rather than serving errors.
    processor.refresh(&Stream::DEFAULT).await?;
    // One worker per core; a stream's files are taken one at a time, in
    // order, while independent streams run in parallel.
    let lanes = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(1);
    // Per core: more workers drain more at once.
    let capacity = settings.queue_capacity.saturating_mul(lanes);
    let queue = match &settings.sqs {
        // Instances sharing an SQS queue take each stream in turn.
        Some(_) => Queue::with_leases(
            capacity,
            Arc::new(Leases::new(storage.clone(), Duration::from_secs(30))),
        ),
        None => Queue::new(capacity),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    crate::telemetry::spawn_upkeep(metrics.clone(), stop_rx.clone());

    let _watcher = match storage.location() {
        Location::Local(root) => Some(queue::watch_local(root, queue.clone())?),
        Location::S3 { .. } => None,
    };
    let workers: Vec<_> = (0..lanes)
        .map(|_| {
            tokio::spawn(queue::run_worker(
                processor.clone(),
                queue.clone(),
                stop_rx.clone(),
                settings.shutdown_grace,
            ))
        })
        .collect();
    let sqs = match &settings.sqs {
        Some(sqs) => {
            let bucket = match storage.location() {
                Location::S3 { bucket } => bucket.clone(),
                Location::Local(_) => anyhow::bail!(
                    "--sqs-queue-url needs an S3 bucket (--bucket / BUCKET_NAME): the queue carries S3 events"
                ),
            };
            // The storage's credential chain, not a second one.
            let aws = storage.aws().await;
            let client = SqsClient::new(&sqs.queue_url, Some(&aws.region), aws.credentials)?;
            let source = sqs_worker::Source {
                client,
                settings: sqs.clone(),
                bucket: Some(bucket),
                topics: settings.sns_topics.clone(),
            };
            Some(tokio::spawn(sqs_worker::run(
                source,
                queue.clone(),
                lanes,
                stop_rx.clone(),
                settings.shutdown_grace,
            )))
        }
        None => None,
    };
    // With a queue, files young enough for their event to be still on the
    // queue are left to it.
    let min_age = settings.sqs.as_ref().map_or(Duration::ZERO, |q| {
        Duration::from_secs(u64::from(q.reconcile_after_secs))
    });
    let reconciler = tokio::spawn(queue::run_reconciler(
        processor.clone(),
        queue.clone(),
        settings.reconcile_every,
        min_age,
        stop_rx.clone(),
    ));

    if settings.insecure_skip_sns_verify {
        tracing::warn!(
            "SNS signature verification is OFF (--insecure-skip-sns-verify): anyone who can reach /notify can queue work and make this service fetch URLs. Use only with local emulators."
        );
    }
    let certs = match &settings.sns_cert_endpoint {
        Some(ep) => {
            anyhow::ensure!(
                ep.starts_with("http://") || ep.starts_with("https://"),
                "--sns-cert-endpoint must be an http(s) URL, got {ep:?}"
            );
            tracing::warn!(
                endpoint = %ep,
                "SNS signing certificates are fetched from --sns-cert-endpoint, not from AWS. Use only with emulators."
            );
            HttpsCertSource::with_endpoint(ep, Some(storage.aws().await.credentials))?
        }
        None => HttpsCertSource::new()?,
    };
    let verifier = Arc::new(Verifier::new(Arc::new(certs), settings.sns_topics.clone()));
    let state = AppState {
        processor,
        queue: queue.clone(),
        verifier,
        skip_sns_verify: settings.insecure_skip_sns_verify,
        http: api::confirm_client()?,
        min_observations: settings.engine.min_observations,
        request_timeout: settings.request_timeout,
        metrics: Some(metrics),
    };
    if settings.sns_topics.is_empty()
        && !settings.insecure_skip_sns_verify
        && matches!(storage.location(), Location::S3 { .. })
    {
        tracing::warn!(
            "no --sns-topic-arn: POST /notify refuses every SNS message (any AWS account can make SNS sign one). Set it to the topic your bucket notifies."
        );
    }
    let limits = crate::http::server::Limits {
        header_timeout: settings.http_header_timeout,
        max_connections: settings.max_connections,
    };
    tracing::info!(%addr, storage = %storage.label(), lanes, max_connections = limits.max_connections, "tswatch listening");
    crate::http::server::serve(
        listener,
        api::router(state, crate::http::routes()),
        limits,
        async move {
            shutdown.await;
            tracing::info!("shutting down: finishing work in hand");
        },
    )
    .await?;
    let _ = stop_tx.send(true);
    // Waiting SQS messages go back to SQS at once; waiting keys are found
    // again by the next start's reconciliation.
    queue.close().await;
    for w in workers {
        let _ = w.await;
    }
    if let Some(sqs) = sqs {
        let _ = sqs.await;
    }
    queue.release_leases().await;
    reconciler.abort();
    if let Some(a) = alerts {
        // The workers are done: no alert comes after this.
        a.shutdown(crate::apply::alerts::SHUTDOWN_GRACE).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Refuses `--insecure-skip-sns-verify` off loopback: without signature
/// checks, anyone who reaches `/notify` can queue work and make the service
/// fetch any URL.
pub(crate) fn check_insecure_bind(
    insecure: bool,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !insecure || addr.ip().is_loopback(),
        "--insecure-skip-sns-verify is refused on {addr}: it is for local emulators, on a loopback address only (e.g. --bind 127.0.0.1:8000)"
    );
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
