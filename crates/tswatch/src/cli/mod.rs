//! The command line: every command and its flags (clap), each flag with
//! its environment variable. How a flag, its environment variable, the
//! configuration file and the default make one setting: [`config`].

pub mod config;
pub(crate) mod exit;
pub(crate) mod offline;
mod run;

pub use run::main;

use crate::csv::scorer::CellSafety;
use crate::state::stream::Stream;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// tswatch: scores CSV batches of time series for anomalies as they land in
/// an S3 bucket or a local folder, and serves the results over HTTP.
///
/// With no configuration it uses ./data (created) and listens on
/// 127.0.0.1:8000. Set BUCKET_NAME (or --bucket) to use S3; AWS_ENDPOINT_URL,
/// AWS_REGION and the standard AWS credential chain are honoured.
#[derive(Debug, Parser)]
#[command(name = "tswatch", version, propagate_version = true, after_help = format!("{CONFIG_HELP}\n\n{}", crate::cli::exit::HELP))]
pub(crate) struct Cli {
    /// TOML configuration file (its keys: `tswatch --help`).
    #[arg(long, global = true, env = "TSWATCH_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What `tswatch --help` adds after the commands: the file's keys (once,
/// not under every subcommand) and the settings that are not flags; then
/// come the exit codes ([`crate::cli::exit::HELP`]).
const CONFIG_HELP: &str = "\
Configuration file (--config FILE, TSWATCH_CONFIG), TOML; a flag or its
environment variable wins over the file:
  data_dir, bucket, s3_max_copy_bytes, bind, reconcile_interval_secs,
  request_timeout_secs, http_header_timeout_secs, max_connections,
  shutdown_grace_secs, insecure_skip_sns_verify, sns_topic_arn (a list),
  sns_cert_endpoint, spreadsheet_safe (generated | all | off),
  log_format (text | json),
  sqs_queue_url, sqs_wait_time_secs, sqs_max_messages,
  sqs_visibility_timeout_secs, sqs_max_receives, sqs_reconcile_after_secs,
  alert_webhook (a list), alert_max_per_minute, public_url
  [engine] (detection; unknown keys are refused):
    false_alarm_rate = 0.001    share of normal rows flagged
    min_observations = 30       values before a channel is scored
    memory_rows = 2000          memory of the joint model's baselines
    seasonality = true          time-of-day profile per channel
    level_shift_rows = 16       rows beyond the tail test that are a level shift (0: never)
    joint = true                Mahalanobis test over the channels
    joint_max_channels = 16
    max_channels = 1024         channels a stream may have (more: the file is refused)
    forest_trees = 50           isolation forest (the seed's if_* columns)
    forest_sample = 256
    forest_window = 512
    forest_retrain_every = 8192
    forest_threshold = 0.7
    forest_alarm = false        whether if_flag alone makes a row anomalous

Environment only:
  TSWATCH_LOG                 log filter, e.g. debug or tswatch=debug (default info)
  BUCKET_NAME                 as --bucket
  AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL and the AWS credential chain
                              (environment, ~/.aws files, SSO, credential_process,
                              web identity, container and instance roles)";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the service: watch for batches, score them, serve the API.
    Serve(Box<ServeArgs>),
    /// Score one CSV file offline with the same engine.
    Score(ScoreArgs),
    /// Upload synthetic sensor batches, like the seed's test producer.
    Produce(ProduceArgs),
    /// Measure detection quality on labelled synthetic scenarios.
    Eval(EvalArgs),
    /// Inspect or clear the learned baseline.
    Baseline {
        /// What to do.
        #[command(subcommand)]
        action: BaselineAction,
    },
}

/// `baseline` actions.
#[derive(Debug, Subcommand)]
pub(crate) enum BaselineAction {
    /// Print the current baseline (the seed's baseline.json shape).
    Show(BaselineArgs),
    /// Forget the learned baseline and model (processed files stay counted).
    Reset(BaselineArgs),
}

/// `baseline` options.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct BaselineArgs {
    /// Where the data is.
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
    /// The stream (files under `raw/<stream>/`); default: the default stream
    /// (`raw/<name>.csv`, state in `state/baseline.json`).
    #[arg(long, value_name = "NAME", default_value = "", value_parser = Stream::parse)]
    pub(crate) stream: Stream,
    /// JSON on stdout: `show` always prints the baseline as JSON (accepted
    /// for uniformity); `reset` prints `{"stream": ..., "reset": true}`
    /// instead of a line on stderr.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where the data lives.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct StorageArgs {
    /// Local data directory (used when no bucket is set) [default: ./data]
    #[arg(long, env = "TSWATCH_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// S3 bucket; overrides --data-dir. The seed sets BUCKET_NAME in /etc/environment.
    #[arg(long, env = "BUCKET_NAME", value_name = "NAME")]
    pub(crate) bucket: Option<String>,
    /// Largest object the bucket copies in one request (publishing a scored
    /// file moves it); larger ones are streamed through tswatch instead.
    /// S3's limit is 5 GiB; some S3-compatible stores allow less [default: 5368709120]
    #[arg(long, env = "TSWATCH_S3_MAX_COPY_BYTES", value_name = "BYTES")]
    pub(crate) s3_max_copy_bytes: Option<u64>,
}

/// `serve` options.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where the data is.
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
    /// Address to listen on; loopback unless you say otherwise [default: 127.0.0.1:8000]
    #[arg(long, env = "TSWATCH_BIND", value_name = "ADDR")]
    pub(crate) bind: Option<SocketAddr>,
    /// Seconds between scans of raw/ for files whose notification was lost [default: 60]
    #[arg(long, env = "TSWATCH_RECONCILE_INTERVAL", value_name = "SECS")]
    pub(crate) reconcile_interval: Option<u64>,
    /// On SIGTERM, seconds to let the file in hand finish before abandoning
    /// it (safely: it is processed again on the next start) [default: 15]
    #[arg(long, env = "TSWATCH_SHUTDOWN_GRACE", value_name = "SECS")]
    pub(crate) shutdown_grace: Option<u64>,
    /// Accept SNS messages without checking their signature, and confirm any
    /// SubscribeURL. Only for local emulators (moto, LocalStack): never in production.
    #[arg(
        long,
        env = "TSWATCH_INSECURE_SKIP_SNS_VERIFY",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) insecure_skip_sns_verify: bool,
    /// Accept SNS messages only from these topic ARNs (comma-separated);
    /// with none, /notify refuses every SNS message [default: none]
    #[arg(
        long,
        env = "TSWATCH_SNS_TOPIC_ARN",
        value_name = "ARN[,ARN]",
        value_delimiter = ','
    )]
    pub(crate) sns_topic_arn: Vec<String>,
    /// Fetch SNS signing certificates from this base URL instead of the AWS
    /// SNS host a message names (an emulator or a mirror); signatures are
    /// still checked. Not for production.
    #[arg(long, env = "TSWATCH_SNS_CERT_ENDPOINT", value_name = "URL")]
    pub(crate) sns_cert_endpoint: Option<String>,
    /// Seconds a request may take, body included, before it is answered with
    /// 408 (so a slow client cannot hold a handler) [default: 15]
    #[arg(long, env = "TSWATCH_REQUEST_TIMEOUT", value_name = "SECS")]
    pub(crate) request_timeout: Option<u64>,
    /// Which text cells of scored copies get a leading `'` when they start
    /// with `=`, `+`, `-`, `@`, tab or CR (spreadsheet formula injection):
    /// generated (tswatch's own columns), all (input cells too), off [default: generated]
    #[arg(
        long,
        env = "TSWATCH_SPREADSHEET_SAFE",
        value_enum,
        value_name = "WHICH"
    )]
    pub(crate) spreadsheet_safe: Option<CellSafety>,
    /// Seconds a connection may take to send a request's head, from when it
    /// opens or its previous response ends; an idle keep-alive connection is
    /// closed after it too [default: 10]
    #[arg(long, env = "TSWATCH_HTTP_HEADER_TIMEOUT", value_name = "SECS")]
    pub(crate) http_header_timeout: Option<u64>,
    /// Most HTTP connections open at once; at the cap the oldest idle one is
    /// closed to make room [default: 256, and at most half the open-file limit]
    #[arg(long, env = "TSWATCH_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Log format [default: text]
    #[arg(long, env = "TSWATCH_LOG_FORMAT", value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// Consume S3 event notifications (direct or SNS-wrapped) from this SQS
    /// queue, as well as HTTP push; needs a bucket. Several instances may
    /// share one queue.
    #[arg(long, env = "TSWATCH_SQS_QUEUE_URL", value_name = "URL")]
    pub(crate) sqs_queue_url: Option<String>,
    /// SQS long-poll wait, seconds, 0-20 [default: 20]
    #[arg(long, env = "TSWATCH_SQS_WAIT_TIME", value_name = "SECS", value_parser = clap::value_parser!(u32).range(0..=20))]
    pub(crate) sqs_wait_time: Option<u32>,
    /// SQS messages taken per receive, 1-10 [default: 10]
    #[arg(long, env = "TSWATCH_SQS_MAX_MESSAGES", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10))]
    pub(crate) sqs_max_messages: Option<u32>,
    /// Seconds a received SQS message stays hidden from other instances;
    /// extended every third of it while its file is processed [default: 60]
    #[arg(long, env = "TSWATCH_SQS_VISIBILITY_TIMEOUT", value_name = "SECS", value_parser = clap::value_parser!(u32).range(3..=43_200))]
    pub(crate) sqs_visibility_timeout: Option<u32>,
    /// Deliveries after which a message whose file still fails is dead-lettered:
    /// processed/<name>_error.json is written and the message deleted [default: 5]
    #[arg(long, env = "TSWATCH_SQS_MAX_RECEIVES", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) sqs_max_receives: Option<u32>,
    /// With a queue, reconciliation takes only files older than this many
    /// seconds (a younger file's event may still be on the queue) [default: 900]
    #[arg(long, env = "TSWATCH_SQS_RECONCILE_AFTER", value_name = "SECS")]
    pub(crate) sqs_reconcile_after: Option<u32>,
    /// POST a JSON alert (with a Slack-compatible `text`) to this http(s)
    /// URL for every file processed with anomalies; repeat the flag (or
    /// separate with commas) for several [default: none]
    #[arg(
        long,
        env = "TSWATCH_ALERT_WEBHOOK",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub(crate) alert_webhook: Vec<String>,
    /// Alerts per minute per webhook (bursts of this many, refilled at this
    /// rate); beyond it alerts are dropped and counted [default: 30]
    #[arg(long, env = "TSWATCH_ALERT_MAX_PER_MINUTE", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) alert_max_per_minute: Option<u32>,
    /// The service's base URL as its users reach it, for links in alerts
    /// [default: http://<bind address>]
    #[arg(long, env = "TSWATCH_PUBLIC_URL", value_name = "URL")]
    pub(crate) public_url: Option<String>,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `score` options.
#[derive(Debug, Args)]
pub(crate) struct ScoreArgs {
    /// CSV to score (header `timestamp,<channel>,...`); `-` reads standard
    /// input (`./-` is a file named `-`).
    #[arg(long, value_name = "IN.csv")]
    pub(crate) input: PathBuf,
    /// Where to write the scored copy; `-` writes it to standard output
    /// (the summary then goes to stderr).
    #[arg(long, value_name = "OUT.csv")]
    pub(crate) output: PathBuf,
    /// Directory that keeps the baseline between runs (engine.json and a
    /// seed-shaped baseline.json); without it each run starts fresh.
    #[arg(long, value_name = "DIR")]
    pub(crate) state: Option<PathBuf>,
    /// Which text cells get a leading `'` when they start with `=`, `+`,
    /// `-`, `@`, tab or CR, so a spreadsheet shows them instead of running
    /// them: generated (tswatch's own columns), all, off
    #[arg(long, value_enum, default_value_t = CellSafety::Generated, value_name = "WHICH")]
    pub(crate) spreadsheet_safe: CellSafety,
    /// Print the summary as JSON (the fields of `processed/<name>_summary.json`)
    /// instead of text; not with `--output -`.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `produce` options.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// Where to upload.
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
    /// Files to send; 0 sends until interrupted.
    #[arg(long, default_value_t = 0)]
    pub(crate) count: u64,
    /// Seconds between files.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) interval: f64,
    /// Rows per file.
    #[arg(long, default_value_t = 100)]
    pub(crate) rows: usize,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// What to generate: seed (the original producer), clean, drift,
    /// level_shift, variance, daily, heavy_tail, joint, gaps.
    #[arg(long, default_value = "seed", value_name = "NAME")]
    pub(crate) scenario: String,
    /// Time of the first row, e.g. 2026-02-01T00:00:00Z (default: now).
    #[arg(long, value_name = "TIME")]
    pub(crate) start: Option<chrono::DateTime<chrono::Utc>>,
    /// Also write the ground truth next to each batch, as
    /// `raw/<name>.labels.json` (`{"anomalous_rows": [row indices]}`).
    #[arg(long)]
    pub(crate) labels: bool,
}

/// `eval` options.
#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// Scenario(s) to run (seed, clean, drift, level_shift, variance, daily,
    /// heavy_tail, joint, gaps); repeat the flag for several.
    #[arg(long = "scenario", value_name = "NAME")]
    pub(crate) scenarios: Vec<String>,
    /// Run every scenario and check the detection targets.
    #[arg(long)]
    pub(crate) all: bool,
    /// Rows per scenario.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) rows: usize,
    /// Rows per file (state is saved and restored between files).
    #[arg(long, default_value_t = 100)]
    pub(crate) file_rows: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Evaluate on a NAB-layout directory (`DIR/data/<category>/<series>.csv`,
    /// `DIR/labels/combined_windows.json`) instead of the synthetic scenarios.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["scenarios", "all"])]
    pub(crate) nab: Option<PathBuf>,
    /// With `--nab`: write one result CSV per series to
    /// `RESULTS_DIR/<category>/<series>.csv` (the layout nab_score.py reads).
    #[arg(long, value_name = "RESULTS_DIR", requires = "nab")]
    pub(crate) out: Option<PathBuf>,
    /// With `--nab`: only series whose relative path contains SUBSTR
    /// (repeatable).
    #[arg(long = "only", value_name = "SUBSTR", requires = "nab")]
    pub(crate) only: Vec<String>,
    /// With `--nab`: fail when the own-flag standard-profile NAB score is
    /// below X.
    #[arg(
        long,
        value_name = "X",
        requires = "nab",
        allow_negative_numbers = true
    )]
    pub(crate) min_flag_score: Option<f64>,
}
