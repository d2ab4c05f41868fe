//! Streams: the files of one folder under `raw/` (`raw/<stream>/<name>.csv`)
//! share a state, and the files directly under `raw/` (`raw/<name>.csv`)
//! are the default stream, whose state is where the seed keeps it
//! (`state/engine.json`, `state/baseline.json`).
//!
//! Invariant: a [`Stream`] is either the default stream or a name that is
//! one valid key segment and not one of tswatch's own names in `state/`
//! (`RESERVED_STREAMS` in [`crate::state::keys`]), so every key built from
//! it is valid. Names are
//! checked where they come in: from a raw key, from `--stream`, from a
//! listing of `state/`.

use crate::state::keys::{KeyError, MAX_SEGMENT, RESERVED_STREAMS, validate};
use std::fmt;

/// A stream: the default one, or a named one (`raw/<name>/...`).
///
/// Ordered with the default stream first, then by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stream(
    /// The name; `None` for the default stream.
    Option<String>,
);

impl Stream {
    /// The default stream (`raw/<name>.csv`).
    pub const DEFAULT: Stream = Stream(None);

    /// The stream named `name`, checked: one key segment (no `/`, not `.`
    /// or `..`, no control characters, at most 255 bytes) and
    /// not reserved for tswatch's own files in `state/`.
    pub fn named(name: &str) -> Result<Self, KeyError> {
        let invalid = |reason| KeyError::Invalid {
            key: name.to_string(),
            reason,
        };
        if name.is_empty() || name.len() > MAX_SEGMENT {
            return Err(invalid("a stream name must be 1 to 255 bytes long"));
        }
        if name.contains('/') {
            return Err(invalid("a stream name must not contain '/'"));
        }
        validate(&format!("state/{name}/engine.json"))
            .map_err(|_| invalid("a stream name must be a valid key segment"))?;
        if RESERVED_STREAMS.contains(&name) {
            return Err(KeyError::Unusable {
                key: name.to_string(),
                reason: format!(
                    "stream name {name:?} is reserved for tswatch's own state (state/{name}); reserved: {}",
                    RESERVED_STREAMS.join(", ")
                ),
            });
        }
        Ok(Self(Some(name.to_string())))
    }

    /// A stream as `--stream` gives it: empty for the default stream,
    /// else a name ([`Stream::named`]).
    pub fn parse(arg: &str) -> Result<Self, KeyError> {
        if arg.is_empty() {
            Ok(Self::DEFAULT)
        } else {
            Self::named(arg)
        }
    }

    /// A stream whose name was checked already (the first folder of a
    /// validated raw key).
    pub(crate) fn checked(name: &str) -> Self {
        Self(Some(name.to_string()))
    }

    /// Whether this is the default stream.
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }

    /// The name; `None` for the default stream.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// How metrics and the dashboard name it: `default` for the default
    /// stream.
    pub fn label(&self) -> &str {
        self.name().unwrap_or("default")
    }

    /// Its source of truth: `state/<stream>/engine.json`, or
    /// `state/engine.json` for the default stream.
    pub fn engine_key(&self) -> String {
        self.state_key("engine.json")
    }

    /// The seed-shaped projection of its baseline:
    /// `state/<stream>/baseline.json`, or `state/baseline.json`.
    pub fn baseline_key(&self) -> String {
        self.state_key("baseline.json")
    }

    /// Its lease (see [`crate::apply::lease`]): `state/<stream>/lease.json`,
    /// or `state/lease.json`.
    pub(crate) fn lease_key(&self) -> String {
        self.state_key("lease.json")
    }

    /// `state/<stream>/<file>`, or `state/<file>` for the default stream.
    fn state_key(&self, file: &str) -> String {
        match self.name() {
            Some(name) => format!("state/{name}/{file}"),
            None => format!("state/{file}"),
        }
    }
}

/// The name as keys and the API write it: nothing for the default stream
/// (so `raw/<name>.csv`'s stream is `""` in `events_by_stream`, in
/// refusal records, alerts and log fields).
impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_the_default_stream_are_the_seeds() {
        let d = Stream::default();
        assert!(d.is_default());
        assert_eq!(d, Stream::DEFAULT);
        assert_eq!(d.engine_key(), "state/engine.json");
        assert_eq!(d.baseline_key(), "state/baseline.json");
        assert_eq!(d.lease_key(), "state/lease.json");
        assert_eq!(d.to_string(), "");
        assert_eq!(d.label(), "default");
        let s = Stream::named("site-a").unwrap();
        assert_eq!(s.engine_key(), "state/site-a/engine.json");
        assert_eq!(s.baseline_key(), "state/site-a/baseline.json");
        assert_eq!(s.lease_key(), "state/site-a/lease.json");
        assert_eq!((s.to_string().as_str(), s.label()), ("site-a", "site-a"));
        // The default stream sorts first, as "" did.
        assert!(d < Stream::named("0").unwrap());
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(Stream::parse("").unwrap(), Stream::DEFAULT);
        assert_eq!(Stream::parse("n").unwrap(), Stream::named("n").unwrap());
        for bad in ["", "a/b", ".", "..", "a\0", "a\\b", &"s".repeat(256)] {
            assert!(
                matches!(Stream::named(bad), Err(KeyError::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert!(Stream::named(&"s".repeat(255)).is_ok());
        for s in RESERVED_STREAMS {
            let e = Stream::parse(s).unwrap_err();
            assert!(e.to_string().contains("reserved"), "{e}");
        }
    }
}
