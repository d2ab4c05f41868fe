//! Object keys: validation and the bucket layout (`raw/`, `processed/`, `state/`).
//!
//! Invariant: every key that reaches storage went through [`validate`], so no
//! key can name a location outside the bucket or the data directory.

use object_store::path::Path;

/// Why a key was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyError {
    /// The key is unusable; the message says how.
    #[error("invalid object key {key:?}: {reason}")]
    Invalid {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key is valid but not a raw CSV batch.
    #[error("{0:?} is not a CSV batch under raw/")]
    NotRaw(String),
}

/// Checks that `key` is a plain relative object key and converts it.
pub fn validate(key: &str) -> Result<Path, KeyError> {
    let bad = |reason| {
        Err(KeyError::Invalid {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() || key.len() > 1024 {
        return bad("must be 1 to 1024 bytes long");
    }
    if key.starts_with('/') || key.contains('\\') {
        return bad("must be relative and use '/' separators");
    }
    if key.chars().any(|c| c == '\0' || c.is_control()) {
        return bad("must not contain NUL or control characters");
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("must not contain empty, '.' or '..' segments");
    }
    Path::parse(key).or_else(|_| bad("is not a valid object path"))
}

/// A batch under `raw/`: where its outputs go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawKey {
    key: String,
    /// The part between `raw/` and `.csv`.
    name: String,
}

impl RawKey {
    /// Accepts `raw/<name>.csv` (name may contain `/`), validated.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        validate(key)?;
        let name = key
            .strip_prefix("raw/")
            .and_then(|k| k.strip_suffix(".csv"))
            .filter(|n| !n.is_empty() && !n.ends_with('/'))
            .ok_or_else(|| KeyError::NotRaw(key.to_string()))?;
        Ok(Self {
            key: key.to_string(),
            name: name.to_string(),
        })
    }

    /// The full key, `raw/<name>.csv`.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The stream the batch belongs to: the first folder of
    /// `raw/<stream>/<name>.csv`, or `""` (the default stream) for
    /// `raw/<name>.csv`. Each stream has its own state.
    pub fn stream(&self) -> &str {
        self.name.split_once('/').map_or("", |(s, _)| s)
    }

    /// `processed/<name>.csv`
    pub fn processed(&self) -> String {
        format!("processed/{}.csv", self.name)
    }

    /// `processed/<name>_summary.json`
    pub fn summary(&self) -> String {
        format!("processed/{}_summary.json", self.name)
    }

    /// `processed/<name>_error.json`
    pub fn error(&self) -> String {
        format!("processed/{}_error.json", self.name)
    }
}

impl std::fmt::Display for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

/// Decodes a key as S3 puts it in event notifications: form-encoded, so `+`
/// is a space and `%XX` a byte. Fails on bytes that are not UTF-8.
pub fn decode_event_key(raw: &str) -> Result<String, KeyError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| KeyError::Invalid {
            key: raw.to_string(),
            reason: "decodes to bytes that are not UTF-8",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = RawKey::parse("raw/site 1/sensors_x.csv").unwrap();
        assert_eq!(k.processed(), "processed/site 1/sensors_x.csv");
        assert_eq!(k.summary(), "processed/site 1/sensors_x_summary.json");
        assert_eq!(k.error(), "processed/site 1/sensors_x_error.json");
    }

    #[test]
    fn streams_are_the_first_folder() {
        assert_eq!(RawKey::parse("raw/x.csv").unwrap().stream(), "");
        assert_eq!(
            RawKey::parse("raw/site-a/x.csv").unwrap().stream(),
            "site-a"
        );
        assert_eq!(
            RawKey::parse("raw/site-a/2026/x.csv").unwrap().stream(),
            "site-a"
        );
    }

    #[test]
    fn escapes_are_refused() {
        for k in [
            "raw/../state/baseline.json",
            "/etc/passwd",
            "raw//x.csv",
            "raw/./x.csv",
            "raw/a\0.csv",
            "raw\\..\\x.csv",
            "",
        ] {
            assert!(validate(k).is_err(), "{k:?} accepted");
        }
        assert!(matches!(
            RawKey::parse("processed/x.csv"),
            Err(KeyError::NotRaw(_))
        ));
        assert!(matches!(
            RawKey::parse("raw/x.txt"),
            Err(KeyError::NotRaw(_))
        ));
        assert!(matches!(
            RawKey::parse("raw/.csv"),
            Err(KeyError::NotRaw(_))
        ));
    }

    #[test]
    fn event_keys_are_form_decoded() {
        assert_eq!(decode_event_key("raw%2Fa+b.csv").unwrap(), "raw/a b.csv");
        assert_eq!(
            decode_event_key("raw/caf%C3%A9.csv").unwrap(),
            "raw/café.csv"
        );
        assert_eq!(decode_event_key("raw/a%2Bb.csv").unwrap(), "raw/a+b.csv");
        assert!(decode_event_key("raw/%FF.csv").is_err());
    }
}
