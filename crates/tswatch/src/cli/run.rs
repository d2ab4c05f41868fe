//! What the `tswatch` binary runs: parse the flags, set up logging and the
//! runtime, wire the command's parts; the work is in the modules.

use crate::apply::processor::Processor;
use crate::cli::exit::{self, ExitCode};
use crate::cli::{BaselineAction, Cli, Command, FileConfig, LogFormat, StorageArgs, StorageChoice};
use crate::service::{self, Settings};
use crate::storage::Storage;
use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

/// The `tswatch` binary: runs the command line's command; a failure is
/// printed as the user reads it and becomes its exit code.
pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => ExitCode::Success.into(),
        Err(e) => {
            // A user error is a message, not a backtrace (even with
            // RUST_BACKTRACE set): the error, then each distinct cause.
            eprintln!("{}", crate::report::render(&e));
            // The code says what kind of failure (`tswatch --help`).
            ExitCode::of(&e).into()
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file = FileConfig::load(cli.config.as_deref()).map_err(exit::Classified::Usage)?;
    let log_json = match &cli.command {
        Command::Serve(a) => a.log_format.or(file.log_format),
        _ => file.log_format,
    } == Some(LogFormat::Json);
    init_logging(log_json);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(dispatch(cli.command, file));
    // An abandoned file's scoring thread must not hold up the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TSWATCH_LOG")
        // The AWS SDK logs each credential source it tried as a warning;
        // tswatch reports the outcome itself.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=error"));
    // Colours only for a terminal: not into journald or log files.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        // Field values (and messages) come partly from outside: their
        // control characters are escaped, one event is one line.
        use tracing_subscriber::field::MakeExt;
        let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
            // Where a `log` record came from: noise, as the default skips it.
            if field.name().starts_with("log.") {
                return Ok(());
            }
            let text = format!("{value:?}");
            let text = crate::report::escape_controls(&text);
            if field.name() == "message" {
                write!(w, "{text}")
            } else {
                write!(w, "{field}={text}")
            }
        })
        .delimited(" ");
        b.fmt_fields(fields).init();
    }
}

/// Opens the configured storage. A missing local data directory is created
/// unless the command only reads (`Access::Read`): then it is an error.
async fn open(args: &StorageArgs, file: &FileConfig, access: Access) -> anyhow::Result<Storage> {
    Ok(match args.resolve(file) {
        StorageChoice::Local(dir) => match access {
            Access::ReadWrite => Storage::local(&dir),
            Access::Read => Storage::local_existing(&dir),
        }
        .with_context(|| format!("opening data directory {}", dir.display()))?,
        StorageChoice::S3(b, max_copy) => Storage::s3(&b)
            .await
            .with_context(|| format!("opening bucket {b}"))?
            .with_max_copy(max_copy),
    })
}

/// What a command does with its storage.
#[derive(Clone, Copy)]
enum Access {
    Read,
    ReadWrite,
}

async fn dispatch(cmd: Command, file: FileConfig) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(a) => {
            let storage = open(&a.storage, &file, Access::ReadWrite).await?;
            let bind = a
                .bind
                .or(file.bind)
                .unwrap_or_else(|| ([127, 0, 0, 1], 8000).into());
            let settings = Settings {
                engine: file.engine,
                reconcile_every: Duration::from_secs(
                    a.reconcile_interval
                        .or(file.reconcile_interval_secs)
                        .unwrap_or(60)
                        .max(1),
                ),
                shutdown_grace: Duration::from_secs(
                    a.shutdown_grace.or(file.shutdown_grace_secs).unwrap_or(15),
                ),
                insecure_skip_sns_verify: a.insecure_skip_sns_verify
                    || file.insecure_skip_sns_verify.unwrap_or(false),
                sns_topics: if a.sns_topic_arn.is_empty() {
                    file.sns_topic_arn.clone().unwrap_or_default()
                } else {
                    a.sns_topic_arn.clone()
                },
                sns_cert_endpoint: a
                    .sns_cert_endpoint
                    .clone()
                    .or_else(|| file.sns_cert_endpoint.clone()),
                request_timeout: Duration::from_secs(
                    a.request_timeout
                        .or(file.request_timeout_secs)
                        .unwrap_or(15)
                        .max(1),
                ),
                http_header_timeout: Duration::from_secs(
                    a.http_header_timeout
                        .or(file.http_header_timeout_secs)
                        .unwrap_or(10)
                        .max(1),
                ),
                max_connections: a
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or_else(crate::http::server::default_max_connections)
                    .max(1),
                spreadsheet_safe: a
                    .spreadsheet_safe
                    .or(file.spreadsheet_safe)
                    .unwrap_or_default(),
                queue_capacity: 10_000,
                sqs: sqs_settings(&a, &file)?,
                alerts: alert_settings(&a, &file)?,
            };
            service::check_insecure_bind(settings.insecure_skip_sns_verify, bind)?;
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("cannot listen on {bind}"))?;
            service::run(listener, storage, settings, service::shutdown_signal()).await
        }
        Command::Score(a) => crate::cli::offline::score_file(&a, &file.engine),
        Command::Eval(a) => crate::cli::offline::eval(&a, &file.engine),
        Command::Produce(a) => {
            let storage = open(&a.storage, &file, Access::ReadWrite).await?;
            crate::cli::offline::produce(&storage, &a).await
        }
        Command::Baseline { action } => match action {
            BaselineAction::Show(a) => {
                // Read-only: nothing is written, nor created.
                let storage = open(&a.storage, &file, Access::Read).await?;
                let doc = Processor::new(storage, file.engine).peek(&a.stream).await?;
                let text = serde_json::to_string_pretty(&doc.baseline_json())?;
                crate::cli::offline::print_stdout(&text)
            }
            BaselineAction::Reset(a) => {
                let storage = open(&a.storage, &file, Access::ReadWrite).await?;
                Arc::new(Processor::new(storage, file.engine))
                    .reset(&a.stream)
                    .await?;
                if a.json {
                    let v = serde_json::json!({ "stream": a.stream.to_string(), "reset": true });
                    crate::cli::offline::print_stdout(&v.to_string())
                } else {
                    eprintln!("baseline cleared");
                    Ok(())
                }
            }
        },
    }
}

/// The alert webhooks' settings; URLs are checked here, so a bad one stops
/// the start with a clear message.
fn alert_settings(
    a: &crate::cli::ServeArgs,
    file: &FileConfig,
) -> anyhow::Result<crate::apply::alerts::AlertSettings> {
    use crate::apply::alerts::{self, Webhook};
    let urls = if a.alert_webhook.is_empty() {
        file.alert_webhook.clone().unwrap_or_default()
    } else {
        a.alert_webhook.clone()
    };
    let webhooks = urls
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| Webhook::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let max_per_minute = a
        .alert_max_per_minute
        .or(file.alert_max_per_minute)
        .unwrap_or(alerts::DEFAULT_MAX_PER_MINUTE);
    anyhow::ensure!(
        max_per_minute >= 1,
        "alert_max_per_minute must be at least 1"
    );
    let public_url = match a.public_url.clone().or_else(|| file.public_url.clone()) {
        Some(u) => Some(
            alerts::check_url("--public-url", &u)?
                .as_str()
                .trim_end_matches('/')
                .to_string(),
        ),
        None => None,
    };
    Ok(alerts::AlertSettings {
        webhooks,
        max_per_minute,
        public_url,
    })
}

/// The SQS consumer's settings, if a queue is configured.
fn sqs_settings(
    a: &crate::cli::ServeArgs,
    file: &FileConfig,
) -> anyhow::Result<Option<crate::ingest::sqs_worker::SqsSettings>> {
    let Some(url) = a
        .sqs_queue_url
        .clone()
        .or_else(|| file.sqs_queue_url.clone())
        .filter(|u| !u.is_empty())
    else {
        return Ok(None);
    };
    let d = crate::ingest::sqs_worker::SqsSettings::default();
    let s = crate::ingest::sqs_worker::SqsSettings {
        queue_url: url,
        wait_secs: a
            .sqs_wait_time
            .or(file.sqs_wait_time_secs)
            .unwrap_or(d.wait_secs),
        max_messages: a
            .sqs_max_messages
            .or(file.sqs_max_messages)
            .unwrap_or(d.max_messages),
        visibility_secs: a
            .sqs_visibility_timeout
            .or(file.sqs_visibility_timeout_secs)
            .unwrap_or(d.visibility_secs),
        max_receives: a
            .sqs_max_receives
            .or(file.sqs_max_receives)
            .unwrap_or(d.max_receives),
        reconcile_after_secs: a
            .sqs_reconcile_after
            .or(file.sqs_reconcile_after_secs)
            .unwrap_or(d.reconcile_after_secs),
    };
    anyhow::ensure!(s.wait_secs <= 20, "sqs_wait_time_secs must be 0 to 20");
    anyhow::ensure!(
        (1..=10).contains(&s.max_messages),
        "sqs_max_messages must be 1 to 10"
    );
    anyhow::ensure!(
        (3..=43_200).contains(&s.visibility_secs),
        "sqs_visibility_timeout_secs must be 3 to 43200"
    );
    anyhow::ensure!(s.max_receives >= 1, "sqs_max_receives must be at least 1");
    Ok(Some(s))
}
