//! Object keys: validation and the bucket layout (`raw/`, `processed/`, `state/`).
//!
//! Invariant: every key that reaches storage went through [`validate`], so no
//! key can name a location outside the bucket or the data directory.

use crate::state::stream::Stream;
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
    /// A raw batch whose outputs or state the storage could never hold.
    #[error("{key:?} cannot be processed: {reason}")]
    Unusable {
        /// The key as given.
        key: String,
        /// Why not.
        reason: String,
    },
}

/// Longest key segment (a file name on local disks).
pub(crate) const MAX_SEGMENT: usize = 255;
/// Stream names taken by tswatch's own files in `state/` (its documents,
/// their local lock files, the staging area).
pub(crate) const RESERVED_STREAMS: [&str; 7] = [
    "staging",
    "engine.json",
    "baseline.json",
    "lease.json",
    "engine.lock",
    "baseline.lock",
    "lease.lock",
];
/// What `processed/<name>_summary.json` adds to `raw/<name>.csv`.
const LONGEST_OUTPUT_SUFFIX: &str = "_summary.json";
/// What a local write adds to a file's name while it is written
/// (object_store's `<name>#<n>`), with room for `n` up to 999.
const LOCAL_WRITE_SUFFIX: usize = "#999".len();
/// Longest file name of a batch: its summary's name, while written, must
/// still be a valid file name.
pub(crate) const MAX_FILE_NAME: usize =
    MAX_SEGMENT - LONGEST_OUTPUT_SUFFIX.len() - LOCAL_WRITE_SUFFIX;

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
        let unusable = |reason: String| {
            Err(KeyError::Unusable {
                key: key.to_string(),
                reason,
            })
        };
        // The outputs' keys must fit where the input's did: S3 keys are at
        // most 1024 bytes, local file names at most 255.
        let longest = "processed/".len() + name.len() + LONGEST_OUTPUT_SUFFIX.len();
        if longest > 1024 {
            return unusable(format!(
                "its summary key would be {longest} bytes; S3 keys are at most 1024 (so raw keys at most {})",
                1024 - "processed/".len() - LONGEST_OUTPUT_SUFFIX.len() + "raw/.csv".len()
            ));
        }
        let last = name.rsplit('/').next().unwrap_or(name);
        if let Some(seg) = name
            .split('/')
            .find(|s| s.len() > MAX_SEGMENT)
            .or((last.len() > MAX_FILE_NAME).then_some(last))
        {
            return unusable(format!(
                "a name segment of {} bytes; at most {MAX_SEGMENT} (the file name at most {MAX_FILE_NAME}, so that <name>{LONGEST_OUTPUT_SUFFIX} fits while it is written)",
                seg.len()
            ));
        }
        if let Some((stream, _)) = name.split_once('/')
            && RESERVED_STREAMS.contains(&stream)
        {
            return unusable(format!(
                "stream name {stream:?} is reserved for tswatch's own state (state/{stream}); reserved: {}",
                RESERVED_STREAMS.join(", ")
            ));
        }
        Ok(Self {
            key: key.to_string(),
            name: name.to_string(),
        })
    }

    /// The full key, `raw/<name>.csv`.
    pub(crate) fn as_str(&self) -> &str {
        &self.key
    }

    /// The stream the batch belongs to: the first folder of
    /// `raw/<stream>/<name>.csv`, or the default stream for
    /// `raw/<name>.csv`. Each stream has its own state.
    pub(crate) fn stream(&self) -> Stream {
        match self.name.split_once('/') {
            // Checked by `parse`: one segment of a valid key, not reserved.
            Some((s, _)) => Stream::checked(s),
            None => Stream::DEFAULT,
        }
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
pub(crate) fn decode_event_key(raw: &str) -> Result<String, KeyError> {
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
        assert_eq!(
            RawKey::parse("raw/x.csv").unwrap().stream(),
            Stream::DEFAULT
        );
        let site_a = Stream::named("site-a").unwrap();
        assert_eq!(RawKey::parse("raw/site-a/x.csv").unwrap().stream(), site_a);
        assert_eq!(
            RawKey::parse("raw/site-a/2026/x.csv").unwrap().stream(),
            site_a
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

    #[test]
    fn keys_whose_outputs_cannot_exist_are_unusable() {
        let unusable = |k: &str| matches!(RawKey::parse(k), Err(KeyError::Unusable { .. }));
        // Longest raw key whose summary key fits in 1024 bytes: 1009.
        let ok = format!(
            "raw/{}/{}/{}/{}/{}.csv",
            "a".repeat(200),
            "b".repeat(200),
            "c".repeat(200),
            "d".repeat(200),
            "e".repeat(197)
        );
        assert_eq!(ok.len(), 1009);
        let k = RawKey::parse(&ok).unwrap();
        assert_eq!(k.summary().len(), 1024);
        let long = format!(
            "raw/{}/{}/{}/{}/{}.csv",
            "a".repeat(200),
            "b".repeat(200),
            "c".repeat(200),
            "d".repeat(200),
            "e".repeat(198)
        );
        assert!(unusable(&long), "{}", long.len());
        // A segment over 255 bytes, or a file name whose summary would be.
        assert!(unusable(&format!("raw/{}/x.csv", "s".repeat(256))));
        assert!(RawKey::parse(&format!("raw/{}/x.csv", "s".repeat(255))).is_ok());
        assert_eq!(MAX_FILE_NAME, 238);
        assert!(RawKey::parse(&format!("raw/{}.csv", "f".repeat(238))).is_ok());
        assert!(unusable(&format!("raw/{}.csv", "f".repeat(239))));
        // Streams that would sit on tswatch's own state.
        for s in RESERVED_STREAMS {
            assert!(unusable(&format!("raw/{s}/x.csv")), "{s}");
        }
        // As a file name of the default stream, the same words are fine.
        assert!(RawKey::parse("raw/staging.csv").is_ok());
        assert!(RawKey::parse("raw/stagingx/a.csv").is_ok());
    }
}
