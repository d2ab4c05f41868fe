//! S3 event notifications, however they arrive (`/notify` through SNS, or
//! an SQS queue, directly or wrapped by SNS): one reading, with its checks
//! in one order, for every path.

use crate::state::keys::{self, RawKey};
use serde_json::Value;

/// What an S3 event notification asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum S3Event {
    /// `s3:TestEvent`, sent when a notification is configured.
    Test,
    /// Raw batches to process, and records left aside (key, why).
    Records {
        /// Files to process, each once, in the event's order.
        keys: Vec<RawKey>,
        /// Records that are not raw batches of this bucket (the key is
        /// empty when the record names none).
        ignored: Vec<(String, String)>,
    },
}

/// Reads an S3 event notification. `bucket` (when on S3) sets aside the
/// records of other buckets. `Err` says why the event can never be acted on.
/// Each record's checks, in order: it names a key; the key decodes (S3
/// form-encodes it); the event is an object creation; the bucket is ours;
/// the key is a raw batch that can be processed.
pub(crate) fn parse_s3_event(event: &Value, bucket: Option<&str>) -> Result<S3Event, String> {
    if event.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(S3Event::Test);
    }
    let records = event
        .get("Records")
        .and_then(Value::as_array)
        .ok_or("not an S3 event notification (no Records)")?;
    let (mut keys, mut ignored) = (Vec::new(), Vec::new());
    for r in records {
        let Some(raw_key) = r.pointer("/s3/object/key").and_then(Value::as_str) else {
            ignored.push((String::new(), "record has no s3.object.key".to_string()));
            continue;
        };
        let key = match keys::decode_event_key(raw_key) {
            Ok(k) => k,
            Err(e) => {
                ignored.push((raw_key.to_string(), e.to_string()));
                continue;
            }
        };
        let name = r
            .get("eventName")
            .and_then(Value::as_str)
            .unwrap_or("ObjectCreated:Put");
        if !name.starts_with("ObjectCreated") {
            ignored.push((key, format!("event {name} is not an object creation")));
            continue;
        }
        let rec_bucket = r.pointer("/s3/bucket/name").and_then(Value::as_str);
        if let (Some(want), Some(got)) = (bucket, rec_bucket)
            && want != got
        {
            ignored.push((key, format!("event for bucket {got}, not {want}")));
            continue;
        }
        match RawKey::parse(&key) {
            Ok(k) if !keys.contains(&k) => keys.push(k),
            Ok(_) => {}
            Err(e) => ignored.push((key, e.to_string())),
        }
    }
    Ok(S3Event::Records { keys, ignored })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_are_checked_in_one_order() {
        let ev = json!({"Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "raw/a+1.csv"}}},
            {"eventName": "ObjectCreated:Copy", "s3": {"bucket": {"name": "b"}, "object": {"key": "raw%2Fa+1.csv"}}},
            {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "other"}, "object": {"key": "raw/x.csv"}}},
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "other"}, "object": {"key": "raw/y.csv"}}},
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "raw/%FF.csv"}}},
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "processed/z.csv"}}},
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}
        ]});
        let S3Event::Records { keys, ignored } = parse_s3_event(&ev, Some("b")).unwrap() else {
            panic!("records expected");
        };
        assert_eq!(
            keys.iter().map(RawKey::as_str).collect::<Vec<_>>(),
            ["raw/a 1.csv"],
            "decoded, and once"
        );
        let why: Vec<&str> = ignored.iter().map(|(_, w)| w.as_str()).collect();
        assert!(why[0].contains("not an object creation"), "{why:?}");
        assert!(why[1].contains("event for bucket other"), "{why:?}");
        assert!(why[2].contains("not UTF-8"), "{why:?}");
        assert!(why[3].contains("not a CSV batch"), "{why:?}");
        assert_eq!(ignored[4].0, "");
        assert_eq!(
            parse_s3_event(&json!({"Event": "s3:TestEvent"}), None),
            Ok(S3Event::Test)
        );
        assert!(parse_s3_event(&json!({"x": 1}), None).is_err());
    }
}
