//! Every setting resolved in one place, with one precedence: the flag, else
//! its environment variable (clap merges those two: the `env = ...` of each
//! flag in [`crate::cli`]), else the TOML file (`--config FILE`), else the
//! default.
//!
//! Both sources are read into the same shape, a [`Layer`] of `Option`s: the
//! file by serde, the command's flags by `Layer::of_command`. `Sources`
//! holds the two and resolves each setting the same way (`Sources::get`);
//! a value that is checked after parsing (a URL, a range the file's type
//! cannot hold) is refused with the name of where it came from: the flag,
//! or the file and its key (`Origin`).

use crate::apply::alerts::{self, AlertSettings, Webhook};
use crate::cli::{BaselineAction, Command, LogFormat, ServeArgs, StorageArgs};
use crate::csv::scorer::CellSafety;
use crate::ingest::sqs_worker::SqsSettings;
use crate::service::Settings;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tswatch_core::EngineConfig;

/// The settings one source gives, each `None` where it says nothing: the
/// configuration file's keys (`tswatch --help` lists them), or the flags of
/// a command under the same names (`Layer::of_command`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// See `--data-dir`.
    pub(crate) data_dir: Option<PathBuf>,
    /// See `--bucket`.
    pub(crate) bucket: Option<String>,
    /// See `--s3-max-copy-bytes`.
    pub(crate) s3_max_copy_bytes: Option<u64>,
    /// See `--bind`.
    pub(crate) bind: Option<SocketAddr>,
    /// See `--reconcile-interval`.
    pub(crate) reconcile_interval_secs: Option<u64>,
    /// See `--shutdown-grace`.
    pub(crate) shutdown_grace_secs: Option<u64>,
    /// See `--insecure-skip-sns-verify`.
    pub(crate) insecure_skip_sns_verify: Option<bool>,
    /// See `--sns-topic-arn`.
    pub(crate) sns_topic_arn: Option<Vec<String>>,
    /// See `--sns-cert-endpoint`.
    pub(crate) sns_cert_endpoint: Option<String>,
    /// See `--request-timeout`.
    pub(crate) request_timeout_secs: Option<u64>,
    /// See `--log-format`.
    pub(crate) log_format: Option<LogFormat>,
    /// See `--spreadsheet-safe`.
    pub(crate) spreadsheet_safe: Option<CellSafety>,
    /// See `--http-header-timeout`.
    pub(crate) http_header_timeout_secs: Option<u64>,
    /// See `--max-connections`.
    pub(crate) max_connections: Option<usize>,
    /// See `--sqs-queue-url`.
    pub(crate) sqs_queue_url: Option<String>,
    /// See `--sqs-wait-time`.
    pub(crate) sqs_wait_time_secs: Option<u32>,
    /// See `--sqs-max-messages`.
    pub(crate) sqs_max_messages: Option<u32>,
    /// See `--sqs-visibility-timeout`.
    pub(crate) sqs_visibility_timeout_secs: Option<u32>,
    /// See `--sqs-max-receives`.
    pub(crate) sqs_max_receives: Option<u32>,
    /// See `--sqs-reconcile-after`.
    pub(crate) sqs_reconcile_after_secs: Option<u32>,
    /// See `--alert-webhook`.
    pub(crate) alert_webhook: Option<Vec<String>>,
    /// See `--alert-max-per-minute`.
    pub(crate) alert_max_per_minute: Option<u32>,
    /// See `--public-url`.
    pub(crate) public_url: Option<String>,
    /// Detection settings: the file's `[engine]` table (no flag sets them),
    /// its missing keys at their defaults.
    #[serde(default)]
    pub engine: EngineConfig,
}

impl Layer {
    /// Reads and checks the configuration file, or says nothing (every
    /// setting `None`, the engine's defaults) when there is none.
    pub fn from_file(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(p) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", p.display()))?;
        let cfg: Self = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", p.display()))?;
        cfg.engine
            .validate()
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", p.display()))?;
        Ok(cfg)
    }

    /// What the command's flags (or their environment variables) give.
    pub(crate) fn of_command(cmd: &Command) -> Self {
        match cmd {
            Command::Serve(a) => Self::of_serve(a),
            Command::Produce(a) => Self::of_storage(&a.storage),
            Command::Baseline {
                action: BaselineAction::Show(a) | BaselineAction::Reset(a),
            } => Self::of_storage(&a.storage),
            // Their flags are their own (`score --spreadsheet-safe` has a
            // default, not the file's): nothing here.
            Command::Score(_) | Command::Eval(_) => Self::default(),
        }
    }

    fn of_storage(a: &StorageArgs) -> Self {
        Self {
            data_dir: a.data_dir.clone(),
            bucket: a.bucket.clone(),
            s3_max_copy_bytes: a.s3_max_copy_bytes,
            ..Self::default()
        }
    }

    fn of_serve(a: &ServeArgs) -> Self {
        // An on/off flag that is off, or a list flag given no values, says
        // nothing: the file decides.
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        Self {
            bind: a.bind,
            reconcile_interval_secs: a.reconcile_interval,
            shutdown_grace_secs: a.shutdown_grace,
            insecure_skip_sns_verify: a.insecure_skip_sns_verify.then_some(true),
            sns_topic_arn: list(&a.sns_topic_arn),
            sns_cert_endpoint: a.sns_cert_endpoint.clone(),
            request_timeout_secs: a.request_timeout,
            log_format: a.log_format,
            spreadsheet_safe: a.spreadsheet_safe,
            http_header_timeout_secs: a.http_header_timeout,
            max_connections: a.max_connections,
            sqs_queue_url: a.sqs_queue_url.clone(),
            sqs_wait_time_secs: a.sqs_wait_time,
            sqs_max_messages: a.sqs_max_messages,
            sqs_visibility_timeout_secs: a.sqs_visibility_timeout,
            sqs_max_receives: a.sqs_max_receives,
            sqs_reconcile_after_secs: a.sqs_reconcile_after,
            alert_webhook: list(&a.alert_webhook),
            alert_max_per_minute: a.alert_max_per_minute,
            public_url: a.public_url.clone(),
            ..Self::of_storage(&a.storage)
        }
    }
}

/// Where a setting's value came from, as an error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The flag, or its environment variable (clap does not say which).
    Flag(&'static str),
    /// The configuration file's key.
    File(PathBuf, &'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::File(path, key) => write!(f, "config file {}: {key}", path.display()),
        }
    }
}

/// A setting's two sources, and the rule that resolves it.
#[derive(Debug)]
pub(crate) struct Sources {
    /// What the command's flags and environment variables give.
    flags: Layer,
    /// What the configuration file gives.
    file: Layer,
    /// The file, to name it in errors.
    path: Option<PathBuf>,
}

/// How `tswatch serve` runs, resolved.
#[derive(Debug)]
pub(crate) struct Serve {
    /// The address to listen on.
    pub(crate) bind: SocketAddr,
    /// The service's settings.
    pub(crate) settings: Settings,
}

/// Resolved storage choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageChoice {
    /// Local directory.
    Local(PathBuf),
    /// S3 bucket, and the largest object it copies in one request.
    S3(String, u64),
}

impl Sources {
    /// The command's flags over the file read from `path` (`None`: no file).
    pub(crate) fn new(flags: Layer, file: Layer, path: Option<&Path>) -> Self {
        Self {
            flags,
            file,
            path: path.map(Path::to_path_buf),
        }
    }

    /// The one precedence: the flag (or its environment variable), else
    /// the file; `None`: neither gives it (the caller has the default).
    fn get<T: Clone>(&self, field: fn(&Layer) -> &Option<T>) -> Option<T> {
        field(&self.flags)
            .clone()
            .or_else(|| field(&self.file).clone())
    }

    /// As [`Sources::get`], with where the value came from, for a setting
    /// whose value is checked after parsing: its `flag` and file `key`.
    fn given<T: Clone>(
        &self,
        field: fn(&Layer) -> &Option<T>,
        flag: &'static str,
        key: &'static str,
    ) -> Option<(T, Origin)> {
        if let Some(v) = field(&self.flags) {
            return Some((v.clone(), Origin::Flag(flag)));
        }
        let v = field(&self.file).clone()?;
        // A value from the file implies one was read.
        let path = self.path.clone().unwrap_or_default();
        Some((v, Origin::File(path, key)))
    }

    /// Detection settings (the file's `[engine]` table, or the defaults).
    pub(crate) fn engine(&self) -> EngineConfig {
        self.file.engine
    }

    /// Whether logs are JSON lines (`--log-format json`; default text).
    pub(crate) fn log_json(&self) -> bool {
        self.get(|l| &l.log_format) == Some(LogFormat::Json)
    }

    /// Where the data is: a bucket if one is set (an empty name is none),
    /// else the data directory (default `./data`).
    pub(crate) fn storage(&self) -> StorageChoice {
        match self.get(|l| &l.bucket).filter(|b| !b.is_empty()) {
            Some(b) => StorageChoice::S3(
                b,
                self.get(|l| &l.s3_max_copy_bytes)
                    .unwrap_or(crate::storage::S3_MAX_COPY_BYTES),
            ),
            None => StorageChoice::Local(
                self.get(|l| &l.data_dir)
                    .unwrap_or_else(|| PathBuf::from("data")),
            ),
        }
    }

    /// `tswatch serve`'s settings, every value checked.
    pub(crate) fn serve(&self) -> anyhow::Result<Serve> {
        let secs = Duration::from_secs;
        // Intervals and timeouts of 0 would spin or refuse every request:
        // they are taken as 1.
        let settings = Settings {
            engine: self.engine(),
            reconcile_every: secs(
                self.get(|l| &l.reconcile_interval_secs)
                    .unwrap_or(60)
                    .max(1),
            ),
            shutdown_grace: secs(self.get(|l| &l.shutdown_grace_secs).unwrap_or(15)),
            insecure_skip_sns_verify: self.get(|l| &l.insecure_skip_sns_verify).unwrap_or(false),
            sns_topics: self.get(|l| &l.sns_topic_arn).unwrap_or_default(),
            sns_cert_endpoint: self.get(|l| &l.sns_cert_endpoint),
            request_timeout: secs(self.get(|l| &l.request_timeout_secs).unwrap_or(15).max(1)),
            http_header_timeout: secs(
                self.get(|l| &l.http_header_timeout_secs)
                    .unwrap_or(10)
                    .max(1),
            ),
            max_connections: self
                .get(|l| &l.max_connections)
                .unwrap_or_else(crate::http::server::default_max_connections)
                .max(1),
            spreadsheet_safe: self.get(|l| &l.spreadsheet_safe).unwrap_or_default(),
            queue_capacity: 10_000,
            sqs: self.sqs()?,
            alerts: self.alerts()?,
        };
        let bind = self
            .get(|l| &l.bind)
            .unwrap_or_else(|| ([127, 0, 0, 1], 8000).into());
        Ok(Serve { bind, settings })
    }

    /// The alert webhooks' settings; their URLs are checked here, so a bad
    /// one stops the start with a clear message.
    fn alerts(&self) -> anyhow::Result<AlertSettings> {
        let webhooks = match self.given(|l| &l.alert_webhook, "--alert-webhook", "alert_webhook") {
            Some((urls, from)) => urls
                .iter()
                .filter(|u| !u.trim().is_empty())
                .map(|u| Webhook::parse(&from.to_string(), u))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let max_per_minute = match self.given(
            |l| &l.alert_max_per_minute,
            "--alert-max-per-minute",
            "alert_max_per_minute",
        ) {
            Some((n, from)) => {
                anyhow::ensure!(n >= 1, "{from} must be at least 1");
                n
            }
            None => alerts::DEFAULT_MAX_PER_MINUTE,
        };
        let public_url = match self.given(|l| &l.public_url, "--public-url", "public_url") {
            Some((u, from)) => Some(
                alerts::check_url(&from.to_string(), &u)?
                    .as_str()
                    .trim_end_matches('/')
                    .to_string(),
            ),
            None => None,
        };
        Ok(AlertSettings {
            webhooks,
            max_per_minute,
            public_url,
        })
    }

    /// The SQS consumer's settings, if a queue is configured (an empty URL
    /// is none).
    fn sqs(&self) -> anyhow::Result<Option<SqsSettings>> {
        let Some(queue_url) = self.get(|l| &l.sqs_queue_url).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let d = SqsSettings::default();
        // The flags' ranges are clap's; the file's are checked here.
        let ranged = |field: fn(&Layer) -> &Option<u32>,
                      flag: &'static str,
                      key: &'static str,
                      default: u32,
                      range: std::ops::RangeInclusive<u32>,
                      rule: &str|
         -> anyhow::Result<u32> {
            match self.given(field, flag, key) {
                Some((n, from)) => {
                    anyhow::ensure!(range.contains(&n), "{from} must be {rule}");
                    Ok(n)
                }
                None => Ok(default),
            }
        };
        Ok(Some(SqsSettings {
            queue_url,
            wait_secs: ranged(
                |l| &l.sqs_wait_time_secs,
                "--sqs-wait-time",
                "sqs_wait_time_secs",
                d.wait_secs,
                0..=20,
                "0 to 20",
            )?,
            max_messages: ranged(
                |l| &l.sqs_max_messages,
                "--sqs-max-messages",
                "sqs_max_messages",
                d.max_messages,
                1..=10,
                "1 to 10",
            )?,
            visibility_secs: ranged(
                |l| &l.sqs_visibility_timeout_secs,
                "--sqs-visibility-timeout",
                "sqs_visibility_timeout_secs",
                d.visibility_secs,
                3..=43_200,
                "3 to 43200",
            )?,
            max_receives: ranged(
                |l| &l.sqs_max_receives,
                "--sqs-max-receives",
                "sqs_max_receives",
                d.max_receives,
                1..=u32::MAX,
                "at least 1",
            )?,
            reconcile_after_secs: self
                .get(|l| &l.sqs_reconcile_after_secs)
                .unwrap_or(d.reconcile_after_secs),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The `Layer` a file with `text` gives.
    fn file(text: &str) -> Layer {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The flags `tswatch serve ARGS` gives, with the environment left
    /// out: a `TSWATCH_*` variable in the shell running the tests must not
    /// change what they see.
    fn flags(args: &[&str]) -> Layer {
        use clap::{CommandFactory, FromArgMatches};
        let no_env = |a: clap::Arg| a.env(None);
        let cmd = crate::cli::Cli::command()
            .mut_args(no_env)
            .mut_subcommands(move |c| c.mut_args(no_env));
        let matches = cmd
            .try_get_matches_from(["tswatch", "serve"].iter().chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        let cli = crate::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"));
        Layer::of_command(&cli.command)
    }

    fn sources(flags: Layer, file: Layer) -> Sources {
        Sources::new(flags, file, Some(Path::new("/etc/t.toml")))
    }

    fn refused(s: &Sources) -> String {
        match s.serve() {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_flag_wins_over_the_file_and_the_file_over_the_default() {
        let f = file(
            "bind = \"127.0.0.1:9001\"\nreconcile_interval_secs = 5\nshutdown_grace_secs = 3\n\
             spreadsheet_safe = \"all\"\nlog_format = \"json\"\nsns_topic_arn = [\"arn:file\"]\n\
             alert_webhook = [\"http://file.example/\"]\ninsecure_skip_sns_verify = true\n",
        );
        let s = sources(
            flags(&[
                "--bind",
                "127.0.0.1:9002",
                "--shutdown-grace",
                "4",
                "--log-format",
                "text",
                "--sns-topic-arn",
                "arn:flag",
                "--request-timeout",
                "0",
            ]),
            f,
        );
        let serve = s.serve().unwrap_or_else(|e| panic!("{e}"));
        let st = &serve.settings;
        // Flag over file.
        assert_eq!(serve.bind, SocketAddr::from(([127, 0, 0, 1], 9002)));
        assert_eq!(st.shutdown_grace, Duration::from_secs(4));
        assert_eq!(st.sns_topics, ["arn:flag"]);
        assert!(!s.log_json());
        // File over default; an unset on/off flag or list leaves it to the file.
        assert_eq!(st.reconcile_every, Duration::from_secs(5));
        assert_eq!(st.spreadsheet_safe, CellSafety::All);
        assert!(st.insecure_skip_sns_verify);
        assert_eq!(st.alerts.webhooks.len(), 1);
        // Defaults, and 0 taken as 1.
        assert_eq!(st.request_timeout, Duration::from_secs(1));
        assert_eq!(st.http_header_timeout, Duration::from_secs(10));
        assert_eq!(st.alerts.max_per_minute, alerts::DEFAULT_MAX_PER_MINUTE);
        assert!(st.sqs.is_none() && st.sns_cert_endpoint.is_none());
        // No flags: the file's; no file: the defaults.
        let s = sources(Layer::default(), file("log_format = \"json\"\n"));
        assert!(s.log_json());
        let s = Sources::new(Layer::default(), Layer::default(), None);
        let serve = s.serve().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serve.bind, SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert_eq!(serve.settings.reconcile_every, Duration::from_secs(60));
        assert_eq!(s.storage(), StorageChoice::Local(PathBuf::from("data")));
    }

    #[test]
    fn the_storage_is_the_bucket_if_any_else_the_directory() {
        let f = || file("bucket = \"file-bucket\"\ndata_dir = \"/file\"\ns3_max_copy_bytes = 7\n");
        let s = sources(flags(&["--bucket", "flag-bucket"]), f());
        assert_eq!(s.storage(), StorageChoice::S3("flag-bucket".into(), 7));
        let s = sources(Layer::default(), f());
        assert_eq!(s.storage(), StorageChoice::S3("file-bucket".into(), 7));
        let s = sources(Layer::default(), file("data_dir = \"/file\"\n"));
        assert_eq!(s.storage(), StorageChoice::Local(PathBuf::from("/file")));
        let s = sources(Layer::default(), file("bucket = \"\"\n"));
        assert_eq!(s.storage(), StorageChoice::Local(PathBuf::from("data")));
    }

    #[test]
    fn a_refused_value_is_named_by_where_it_came_from() {
        let ftp = "only http and https URLs are supported, not ftp:";
        let s = sources(flags(&["--alert-webhook", "ftp://x/"]), Layer::default());
        assert_eq!(refused(&s), format!("--alert-webhook: {ftp}"));
        let s = sources(Layer::default(), file("alert_webhook = [\"ftp://x/\"]\n"));
        assert_eq!(
            refused(&s),
            format!("config file /etc/t.toml: alert_webhook: {ftp}")
        );
        let s = sources(Layer::default(), file("public_url = \"ftp://x/\"\n"));
        assert_eq!(
            refused(&s),
            format!("config file /etc/t.toml: public_url: {ftp}")
        );
        let s = sources(flags(&["--public-url", "nope"]), Layer::default());
        assert!(refused(&s).starts_with("--public-url: not a valid URL"));
        let s = sources(Layer::default(), file("alert_max_per_minute = 0\n"));
        assert_eq!(
            refused(&s),
            "config file /etc/t.toml: alert_max_per_minute must be at least 1"
        );
        // The file's SQS numbers, checked as clap checks the flags'.
        for (key, value, rule) in [
            ("sqs_wait_time_secs", "21", "0 to 20"),
            ("sqs_max_messages", "0", "1 to 10"),
            ("sqs_max_messages", "11", "1 to 10"),
            ("sqs_visibility_timeout_secs", "2", "3 to 43200"),
            ("sqs_max_receives", "0", "at least 1"),
        ] {
            let text = format!("sqs_queue_url = \"http://127.0.0.1:9/1/q\"\n{key} = {value}\n");
            assert_eq!(
                refused(&sources(Layer::default(), file(&text))),
                format!("config file /etc/t.toml: {key} must be {rule}")
            );
        }
        // Without a queue they are not used, so not checked.
        let s = sources(Layer::default(), file("sqs_wait_time_secs = 99\n"));
        assert!(s.serve().is_ok());
    }

    /// The file's numbers are held to the same ranges clap holds the
    /// flags to: a value one refuses, the other refuses too.
    #[test]
    fn the_file_and_the_flags_accept_the_same_numbers() {
        let queue = "http://127.0.0.1:9/1/q";
        for (flag, key) in [
            ("--sqs-wait-time", "sqs_wait_time_secs"),
            ("--sqs-max-messages", "sqs_max_messages"),
            ("--sqs-visibility-timeout", "sqs_visibility_timeout_secs"),
            ("--sqs-max-receives", "sqs_max_receives"),
            ("--alert-max-per-minute", "alert_max_per_minute"),
        ] {
            for n in [0, 1, 2, 3, 10, 11, 20, 21, 43_200, 43_201] {
                let value = n.to_string();
                let args = ["tswatch", "serve", "--sqs-queue-url", queue, flag, &value];
                let by_flag = crate::cli::Cli::try_parse_from(args).is_ok();
                let text = format!("sqs_queue_url = \"{queue}\"\n{key} = {n}\n");
                let by_file = sources(Layer::default(), file(&text)).serve().is_ok();
                assert_eq!(by_flag, by_file, "{flag} {n} vs {key} = {n}");
            }
        }
    }

    /// Every `serve` flag has an environment variable and a file key (the
    /// flag's name, or with `_secs` for a time), and `tswatch --help` lists
    /// every key of the file.
    #[test]
    fn every_flag_has_a_variable_and_a_key_that_help_lists() {
        let err = toml::from_str::<Layer>("not_a_key = 1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let listed = err
            .split("expected one of ")
            .nth(1)
            .unwrap_or_else(|| panic!("{err}"));
        let keys: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
        assert!(keys.contains(&"bind") && keys.contains(&"engine"), "{err}");
        for key in &keys {
            assert!(
                crate::cli::CONFIG_HELP.contains(key),
                "{key} is not in tswatch --help"
            );
        }
        let cmd = crate::cli::Cli::command();
        let serve = cmd
            .find_subcommand("serve")
            .unwrap_or_else(|| panic!("no serve"));
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["config", "help", "version"].contains(&long) {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{long} has no variable");
            let key = long.replace('-', "_");
            assert!(
                keys.contains(&key.as_str()) || keys.contains(&format!("{key}_secs").as_str()),
                "--{long} has no file key"
            );
        }
    }
}
