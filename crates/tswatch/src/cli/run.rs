//! What the `tswatch` binary runs: parse the flags, set up logging and the
//! runtime, wire the command's parts; the work is in the modules.

use crate::apply::processor::Processor;
use crate::cli::config::{Layer, Serve, Sources, StorageChoice};
use crate::cli::exit::{self, ExitCode};
use crate::cli::{BaselineAction, Cli, Command};
use crate::service;
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
    let path = cli.config.as_deref();
    let file = Layer::from_file(path).map_err(exit::Classified::Usage)?;
    let config = Sources::new(Layer::of_command(&cli.command), file, path);
    init_logging(config.log_json());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(dispatch(cli.command, config));
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
async fn open(config: &Sources, access: Access) -> anyhow::Result<Storage> {
    Ok(match config.storage() {
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

async fn dispatch(cmd: Command, config: Sources) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(_) => {
            // Every setting is checked before anything is opened; a value
            // refused here is a usage error, like one clap refuses.
            let Serve { bind, settings } = config.serve().map_err(exit::Classified::Usage)?;
            let storage = open(&config, Access::ReadWrite).await?;
            service::check_insecure_bind(settings.insecure_skip_sns_verify, bind)?;
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("cannot listen on {bind}"))?;
            service::run(listener, storage, settings, service::shutdown_signal()).await
        }
        Command::Score(a) => crate::cli::offline::score_file(&a, &config.engine()),
        Command::Eval(a) => crate::cli::offline::eval(&a, &config.engine()),
        Command::Produce(a) => {
            let storage = open(&config, Access::ReadWrite).await?;
            crate::cli::offline::produce(&storage, &a).await
        }
        Command::Baseline { action } => match action {
            BaselineAction::Show(a) => {
                // Read-only: nothing is written, nor created.
                let storage = open(&config, Access::Read).await?;
                let doc = Processor::new(storage, config.engine())
                    .peek(&a.stream)
                    .await?;
                let text = serde_json::to_string_pretty(&doc.baseline_json())?;
                crate::cli::offline::print_stdout(&text)
            }
            BaselineAction::Reset(a) => {
                let storage = open(&config, Access::ReadWrite).await?;
                Arc::new(Processor::new(storage, config.engine()))
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
