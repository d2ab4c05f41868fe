//! How a command's failure reaches the user: one line per distinct cause,
//! S3's XML bodies cut to their code and message, and a hint for the
//! failures people meet first (no credentials, a wrong secret, a missing
//! bucket). Never a backtrace: those are for bugs, and bugs panic.

use std::fmt::Write;

/// The error and its causes as the user reads them.
pub(crate) fn render(e: &anyhow::Error) -> String {
    let causes: Vec<String> = e.chain().map(|c| tidy(&c.to_string())).collect();
    let mut shown: Vec<&str> = Vec::new();
    for c in &causes {
        // A cause a wrapper already quoted ("writing x: disk full", then
        // "disk full") says nothing new.
        if c.is_empty() || shown.iter().any(|s| s.contains(c.as_str())) {
            continue;
        }
        shown.push(c);
    }
    let mut out = String::from("error: ");
    out.push_str(shown.first().copied().unwrap_or("unknown error"));
    for c in shown.iter().skip(1) {
        let _ = write!(out, "\n  caused by: {c}");
    }
    if let Some(h) = hint(&causes.join("\n")) {
        let _ = write!(out, "\n  hint: {h}");
    }
    out
}

/// One cause, with an S3 XML error body reduced to `Code: Message`.
fn tidy(s: &str) -> String {
    // object_store's wrapper words say nothing to a user.
    let mut s = s
        .replace("Generic S3 error: ", "")
        .replace("Error performing ", "")
        .replace(" - Server returned non-2xx status code:", ":")
        .replace("Server returned non-2xx status code: ", "");
    // "... in 134.426869ms" (or 1.2s, 800µs): the timing of a request.
    let mut from = 0;
    while let Some(at) = s[from..].find(" in ").map(|i| from + i) {
        match timing_len(&s[at + 4..]) {
            Some(n) => s.replace_range(at..at + 4 + n, ""),
            None => from = at + 4,
        }
    }
    // A refused signature or key is no missing privilege.
    const DENIED: &str = "The operation lacked the necessary privileges to complete for path ";
    if (s.contains("SignatureDoesNotMatch") || s.contains("InvalidAccessKeyId"))
        && let Some(i) = s.find(DENIED)
        && let Some(j) = s[i..].find(": ")
    {
        s.replace_range(i..i + j + 2, "");
    }
    let s = s.as_str();
    let Some(start) = s.find("<?xml").or_else(|| s.find("<Error>")) else {
        return s.trim().to_string();
    };
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let from = s[start..].find(&open)? + start + open.len();
        let to = s[from..].find(&close)? + from;
        Some(s[from..to].trim().to_string())
    };
    let body = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        (None, Some(m)) => m,
        (None, None) => "(an XML error body)".to_string(),
    };
    let head = s[..start].trim().trim_end_matches(':').trim();
    if head.is_empty() {
        body
    } else {
        format!("{head}: {body}")
    }
}

/// The length of a duration as object_store prints it (`134.4ms`, `1.2s`,
/// `800µs`, `12ns`) at the start of `s`, if there is one there.
fn timing_len(s: &str) -> Option<usize> {
    let digits = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    if digits == 0 {
        return None;
    }
    let rest = &s[digits..];
    let unit = ["ms", "µs", "ns", "s"]
        .iter()
        .find(|u| rest.starts_with(**u))?;
    let end = digits + unit.len();
    // A word that merely starts with digits and a unit ("10msgs") stays.
    match s[end..].chars().next() {
        Some(c) if c.is_alphanumeric() => None,
        _ => Some(end),
    }
}

/// What to do about the failures with a known cure.
fn hint(all: &str) -> Option<&'static str> {
    let has = |needle: &str| all.contains(needle);
    if has("NoSuchBucket") {
        Some(
            "the bucket does not exist here: check --bucket (BUCKET_NAME), AWS_REGION and, for an emulator, AWS_ENDPOINT_URL",
        )
    } else if has("SignatureDoesNotMatch") {
        Some(
            "the request signature was refused: the secret access key does not belong to the access key id (check AWS_SECRET_ACCESS_KEY or the profile's aws_secret_access_key)",
        )
    } else if has("InvalidAccessKeyId") {
        Some(
            "the access key id is unknown to this endpoint (check AWS_ACCESS_KEY_ID or the profile)",
        )
    } else if has("no AWS credentials") {
        Some(
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, run `aws configure`, or choose a profile with AWS_PROFILE",
        )
    } else if has("AccessDenied") {
        Some(
            "the credentials work but lack a permission tswatch needs (s3:GetObject, PutObject, DeleteObject, ListBucket on the bucket)",
        )
    } else if has("Permission denied") {
        Some("tswatch's user cannot read or write that path: check its owner and mode")
    } else {
        None
    }
}

/// `text` with its control characters (newlines, escape sequences, ...)
/// written as Rust escapes (`\n`, `\u{1b}`), so a string from outside
/// (a topic, a key, an error quoting either) cannot forge a log line or
/// drive the terminal that shows it.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    // Line and paragraph separators and bidirectional overrides cannot end
    // a line, but can make one look like two, or read backwards.
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Remembers which keys were reported, so a warning repeated by every
/// reconciliation pass is logged once (at most 10,000 keys are remembered;
/// past that, the set starts over).
#[derive(Debug, Default)]
pub(crate) struct OnceSet(std::sync::Mutex<std::collections::HashSet<String>>);

impl OnceSet {
    /// Whether `key` is seen here for the first time.
    pub(crate) fn first(&self, key: &str) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return false;
        };
        if seen.len() >= 10_000 {
            seen.clear();
        }
        seen.insert(key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_are_shown_once() {
        let e = anyhow::anyhow!("No such file or directory (os error 2)")
            .context("reading x.csv: No such file or directory (os error 2)")
            .context("scoring x.csv");
        let r = render(&e);
        assert_eq!(
            r,
            "error: scoring x.csv\n  caused by: reading x.csv: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn s3_xml_bodies_become_code_and_message_with_a_hint() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>b</BucketName></Error>"#;
        let e = anyhow::anyhow!("{xml}")
            .context(format!("Client error with status 404 Not Found: {xml}"))
            .context(format!(
                "Generic S3 error: Client error with status 404 Not Found: {xml}"
            ))
            .context("opening bucket b");
        let r = render(&e);
        assert_eq!(r.matches("NoSuchBucket").count(), 1, "{r}");
        assert!(!r.contains("<?xml"), "{r}");
        assert!(r.contains("hint: the bucket does not exist"), "{r}");
    }

    #[test]
    fn a_refused_signature_reads_as_one() {
        // As object_store reports a wrong secret (measured against moto
        // with authentication on).
        let e = anyhow::anyhow!(
            "storage error: The operation lacked the necessary privileges to complete for path state/engine.json: Error performing GET http://127.0.0.1:5079/b/state/engine.json in 134.426869ms - Server returned non-2xx status code: 403 Forbidden: SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided."
        );
        let r = render(&e);
        assert!(
            r.starts_with("error: storage error: GET http://127.0.0.1:5079/b/state/engine.json: 403 Forbidden: SignatureDoesNotMatch"),
            "{r}"
        );
        assert!(!r.contains("privileges") && !r.contains("ms -"), "{r}");
    }

    #[test]
    fn timings_in_any_unit_go_and_other_words_stay() {
        assert_eq!(
            tidy("GET x in 1.2s - Server returned non-2xx status code: 500"),
            "GET x: 500"
        );
        assert_eq!(tidy("GET x in 800µs: boom"), "GET x: boom");
        assert_eq!(tidy("sent in 10msgs"), "sent in 10msgs");
        assert_eq!(tidy("in 5 parts"), "in 5 parts");
    }

    #[test]
    fn a_bad_secret_is_called_a_bad_signature() {
        let e = anyhow::anyhow!(
            "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>"
        )
        .context("opening bucket b");
        let r = render(&e);
        assert!(
            r.contains("SignatureDoesNotMatch: The request signature"),
            "{r}"
        );
        assert!(r.contains("hint: the request signature was refused"), "{r}");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain: ünï ✓"), "plain: ünï ✓");
        assert_eq!(
            escape_controls("a\nFAKE level=ERROR\u{1b}[31mred\r\t\u{7f}"),
            "a\\nFAKE level=ERROR\\u{1b}[31mred\\r\\t\\u{7f}"
        );
        assert_eq!(
            escape_controls("x\u{202e}gnp.exe\u{2028}y"),
            "x\\u{202e}gnp.exe\\u{2028}y"
        );
    }
}
