//! Typed errors of the detection library.

/// A configuration value out of its allowed range.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The named field holds a value outside its range.
    #[error("invalid engine setting `{field}`: {reason}")]
    Invalid {
        /// Field name as written in the configuration file.
        field: &'static str,
        /// What the allowed values are.
        reason: String,
    },
}

/// Persisted state that cannot be used as it is.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    /// A channel's statistics are not finite or are negative.
    #[error("channel `{0}` has non-finite or negative statistics")]
    BadChannel(String),
    /// A retained history row does not match the history's channel list.
    #[error("history row {row} has {got} values, expected at most {expected}")]
    BadHistoryRow {
        /// Index of the row.
        row: usize,
        /// Values it holds.
        got: usize,
        /// Channels in the history.
        expected: usize,
    },
    /// The forest's feature list names a channel the history lacks.
    #[error("forest feature `{0}` is not a history channel")]
    BadFeature(String),
}

/// An input that would take a stream past its channel limit.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "{new} new channel(s) would give this stream {total}; it may have at most {max} (engine setting max_channels)"
)]
pub struct ChannelLimit {
    /// Channels the input names that the stream does not have yet.
    pub new: usize,
    /// Channels the stream would then have.
    pub total: usize,
    /// The limit.
    pub max: usize,
}
