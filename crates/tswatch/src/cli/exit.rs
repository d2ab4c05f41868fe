//! The exit codes of the `tswatch` commands, in one place: what each means,
//! how a failure is classified, and the table `tswatch --help` prints.

/// How a command ended, as its process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitCode {
    /// The command did what was asked.
    Success = 0,
    /// A runtime or storage failure: a file or bucket that cannot be read
    /// or written, a state file that cannot be used, a crashed child.
    Failure = 1,
    /// A usage error: a bad flag or value (clap's own code), a bad
    /// configuration file, an unknown scenario, flags that do not go together.
    Usage = 2,
    /// The input was rejected: a CSV `score` cannot use (no header, a
    /// malformed row, a column that collides with a score column, ...).
    InputRejected = 3,
    /// A quality gate failed: an `eval --all` target was missed, or the
    /// `eval --nab` own-flag score is below `--min-flag-score`.
    GateFailed = 4,
}

/// The table `tswatch --help` ends with (docs/configuration.md has the same table).
pub(crate) const HELP: &str = "\
Exit codes:
  0  success
  1  runtime or storage failure (a file, bucket or state that cannot be used)
  2  usage error (a bad flag or value, configuration file or scenario name)
  3  input rejected (`score`: a CSV that cannot be scored)
  4  quality gate failed (`eval --all` target missed, `eval --nab` below --min-flag-score)";

/// A failure that is not a plain runtime failure: wraps the error (shown as
/// it is) and says which exit code it ends the process with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Classified {
    /// See [`ExitCode::Usage`].
    #[error(transparent)]
    Usage(anyhow::Error),
    /// See [`ExitCode::InputRejected`].
    #[error(transparent)]
    InputRejected(anyhow::Error),
    /// See [`ExitCode::GateFailed`].
    #[error(transparent)]
    GateFailed(anyhow::Error),
}

impl Classified {
    /// The exit code this failure ends the process with.
    pub(crate) fn code(&self) -> ExitCode {
        match self {
            Classified::Usage(_) => ExitCode::Usage,
            Classified::InputRejected(_) => ExitCode::InputRejected,
            Classified::GateFailed(_) => ExitCode::GateFailed,
        }
    }
}

/// A usage error with this message.
pub(crate) fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    Classified::Usage(anyhow::anyhow!("{message}")).into()
}

impl ExitCode {
    /// The code a command's error ends the process with: the first
    /// [`Classified`] in its chain of causes, else [`ExitCode::Failure`].
    pub(crate) fn of(e: &anyhow::Error) -> ExitCode {
        e.chain()
            .find_map(|c| c.downcast_ref::<Classified>())
            .map_or(ExitCode::Failure, Classified::code)
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_first_classified_cause_decides() {
        let plain = anyhow::anyhow!("disk full");
        assert_eq!(ExitCode::of(&plain), ExitCode::Failure);
        let gate: anyhow::Error = Classified::GateFailed(anyhow::anyhow!("below")).into();
        assert_eq!(ExitCode::of(&gate), ExitCode::GateFailed);
        // Context added on top keeps the classification.
        let wrapped = Err::<(), _>(usage("no such scenario"))
            .context("eval")
            .unwrap_err();
        assert_eq!(ExitCode::of(&wrapped), ExitCode::Usage);
        // And the message is the wrapped error's own.
        assert_eq!(usage("bad").to_string(), "bad");
    }

    #[test]
    fn the_help_table_lists_every_code() {
        for c in [
            ExitCode::Success,
            ExitCode::Failure,
            ExitCode::Usage,
            ExitCode::InputRejected,
            ExitCode::GateFailed,
        ] {
            assert!(HELP.contains(&format!("\n  {}  ", c as u8)), "{c:?}");
        }
    }
}
