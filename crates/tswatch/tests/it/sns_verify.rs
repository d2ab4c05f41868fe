//! SNS authenticity: `Verifier` against messages signed in the test with
//! freshly generated keys and certificates, a real message signed by moto,
//! property tests on arbitrary input, and the real binary's `/notify`.

use crate::harness::*;
use crate::signer::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tswatch::ingest::sns::{CertSource, SnsError, SnsMessage, Verifier};

/// Serves fixed PEMs by exact URL and counts fetches.
#[derive(Debug, Default)]
struct Certs {
    pems: HashMap<String, Vec<u8>>,
    fetches: AtomicUsize,
}

impl CertSource for Certs {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let r = self
            .pems
            .get(url)
            .cloned()
            .ok_or_else(|| format!("HTTP 404 for {url}"));
        Box::pin(async move { r })
    }
}

impl Certs {
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A verifier whose certificate source serves key 0's certificate at
/// [`CERT_URL`] (and at `extra_urls`), accepting `topics` ([`TOPIC`] when
/// none are given).
fn verifier(extra_urls: &[&str], topics: &[&str]) -> (Arc<Certs>, Verifier) {
    let topics = if topics.is_empty() {
        &[TOPIC][..]
    } else {
        topics
    };
    let pem = cert_pem(0);
    let mut pems = HashMap::new();
    pems.insert(CERT_URL.to_string(), pem.clone());
    for u in extra_urls {
        pems.insert(u.to_string(), pem.clone());
    }
    let certs = Arc::new(Certs {
        pems,
        ..Default::default()
    });
    let v = Verifier::new(
        certs.clone(),
        topics.iter().map(|t| t.to_string()).collect(),
    );
    (certs, v)
}

/// `ts` moved by `secs` seconds, in SNS's format.
fn shifted(ts: &str, secs: i64) -> String {
    (chrono::DateTime::parse_from_rfc3339(ts).unwrap() + chrono::Duration::seconds(secs))
        .with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// An S3 event for `key` in bucket `b`.
fn event_for(key: &str) -> String {
    s3_event("b", &[key])
}

/// Every kind of message SNS signs, unsigned.
fn all_kinds() -> Vec<SnsMessage> {
    vec![
        notification(&event_for("raw/a.csv"), None),
        notification(
            &event_for("raw/café 1+2.csv"),
            Some("Amazon S3 Notification"),
        ),
        notification("line one\nline two: ünïcödé ✓", Some("")),
        confirmation("SubscriptionConfirmation"),
        confirmation("UnsubscribeConfirmation"),
    ]
}

/// The verifier builds the text AWS signs exactly as AWS documents it.
#[test]
fn the_string_to_sign_is_the_documented_one() {
    for m in all_kinds() {
        assert_eq!(
            m.string_to_sign().ok(),
            aws_string_to_sign(&m),
            "{}",
            m.kind
        );
    }
    let mut n = notification("hello", Some("subj"));
    n.message_id = "id-1".into();
    n.timestamp = "2026-01-01T00:00:00.000Z".into();
    assert_eq!(
        aws_string_to_sign(&n).unwrap(),
        format!(
            "Message\nhello\nMessageId\nid-1\nSubject\nsubj\nTimestamp\n\
             2026-01-01T00:00:00.000Z\nTopicArn\n{TOPIC}\nType\nNotification\n"
        )
    );
}

#[tokio::test]
async fn valid_v1_and_v2_signatures_are_accepted() {
    let (certs, v) = verifier(&[], &[]);
    for version in ["1", "2"] {
        for mut m in all_kinds() {
            sign(&mut m, 0, version);
            v.verify(&m)
                .await
                .unwrap_or_else(|e| panic!("v{version} {}: {e}", m.kind));
            // The same message as it arrives over HTTP.
            let parsed = SnsMessage::parse(to_json(&m).to_string().as_bytes()).unwrap();
            assert_eq!(parsed, m);
            v.verify(&parsed).await.unwrap();
        }
    }
    assert_eq!(certs.fetches(), 1, "one certificate, fetched once");
}

#[tokio::test]
async fn forged_and_truncated_signatures_are_refused() {
    let (_, v) = verifier(&[], &[]);
    for version in ["1", "2"] {
        let mut good = notification(&event_for("raw/a.csv"), None);
        sign(&mut good, 0, version);
        let sig = signature_bytes(&good);

        // Signed with another key than the certificate's.
        let mut forged = good.clone();
        sign(&mut forged, 1, version);
        assert_ne!(forged.signature, good.signature);
        let mut variants = vec![("another key", forged.signature)];
        variants.push(("one byte short", b64(&sig[..sig.len() - 1])));
        variants.push(("half", b64(&sig[..sig.len() / 2])));
        variants.push(("one byte more", b64(&[&sig[..], &[0]].concat())));
        let mut flipped = sig.clone();
        flipped[100] ^= 1;
        variants.push(("one bit flipped", b64(&flipped)));
        variants.push((
            "base64 cut short",
            good.signature[..good.signature.len() - 4].into(),
        ));
        variants.push(("not base64", "!!not base64!!".into()));
        variants.push(("empty", String::new()));
        variants.push(("zeros", b64(&vec![0u8; sig.len()])));
        for (what, s) in variants {
            let m = SnsMessage {
                signature: s,
                ..good.clone()
            };
            assert_eq!(
                v.verify(&m).await,
                Err(SnsError::BadSignature),
                "v{version}: {what}"
            );
        }
        v.verify(&good).await.unwrap();
    }
}

#[tokio::test]
async fn a_replayed_message_with_an_altered_field_is_refused() {
    // Every topic named below is accepted: the signature must refuse them.
    let (_, v) = verifier(
        &[],
        &[
            TOPIC,
            "arn:aws:sns:us-east-1:123456789012:other",
            "arn:aws:sns:us-east-1:1:x",
        ],
    );
    for version in ["1", "2"] {
        let mut n = notification(&event_for("raw/a.csv"), Some("subject"));
        sign(&mut n, 0, version);
        let mut c = confirmation("SubscriptionConfirmation");
        sign(&mut c, 0, version);
        v.verify(&n).await.unwrap();
        v.verify(&c).await.unwrap();

        let other_sns_url =
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=evil";
        let altered: Vec<(&str, SnsMessage)> = vec![
            (
                "Message",
                SnsMessage {
                    message: event_for("raw/b.csv"),
                    ..n.clone()
                },
            ),
            (
                "Message (one byte)",
                SnsMessage {
                    message: n.message.replacen("a.csv", "a.csw", 1),
                    ..n.clone()
                },
            ),
            (
                "MessageId",
                SnsMessage {
                    message_id: "other".into(),
                    ..n.clone()
                },
            ),
            (
                "Timestamp",
                SnsMessage {
                    timestamp: shifted(&n.timestamp, 1),
                    ..n.clone()
                },
            ),
            (
                "TopicArn",
                SnsMessage {
                    topic_arn: "arn:aws:sns:us-east-1:123456789012:other".into(),
                    ..n.clone()
                },
            ),
            (
                "Subject",
                SnsMessage {
                    subject: Some("Subject".into()),
                    ..n.clone()
                },
            ),
            (
                "Subject removed",
                SnsMessage {
                    subject: None,
                    ..n.clone()
                },
            ),
            (
                "confirmation Message",
                SnsMessage {
                    message: "x".into(),
                    ..c.clone()
                },
            ),
            (
                "confirmation Timestamp",
                SnsMessage {
                    timestamp: shifted(&c.timestamp, -60),
                    ..c.clone()
                },
            ),
            (
                "confirmation TopicArn",
                SnsMessage {
                    topic_arn: "arn:aws:sns:us-east-1:1:x".into(),
                    ..c.clone()
                },
            ),
            (
                "SubscribeURL",
                SnsMessage {
                    subscribe_url: Some(other_sns_url.into()),
                    ..c.clone()
                },
            ),
            (
                "Token",
                SnsMessage {
                    token: Some("evil".into()),
                    ..c.clone()
                },
            ),
            (
                "Type",
                SnsMessage {
                    kind: "UnsubscribeConfirmation".into(),
                    ..c.clone()
                },
            ),
        ];
        for (what, m) in altered {
            assert_eq!(
                v.verify(&m).await,
                Err(SnsError::BadSignature),
                "v{version}: altered {what}"
            );
        }
        // A notification relabelled as a confirmation cannot even be read as one.
        let relabelled = SnsMessage {
            kind: "SubscriptionConfirmation".into(),
            ..n.clone()
        };
        assert!(matches!(
            v.verify(&relabelled).await,
            Err(SnsError::Malformed(_))
        ));
    }
}

#[tokio::test]
async fn signature_versions_cannot_be_relabelled() {
    let (_, v) = verifier(&[], &[]);
    for (signed_as, labelled) in [("1", "2"), ("2", "1")] {
        let mut m = notification(&event_for("raw/a.csv"), None);
        sign(&mut m, 0, signed_as);
        m.signature_version = labelled.into();
        assert_eq!(
            v.verify(&m).await,
            Err(SnsError::BadSignature),
            "v{signed_as} labelled v{labelled}"
        );
    }
    for version in ["3", "", "0", "02", "2 ", "v2", "1.0"] {
        let mut m = notification(&event_for("raw/a.csv"), None);
        sign(&mut m, 0, "2");
        m.signature_version = version.into();
        assert_eq!(
            v.verify(&m).await,
            Err(SnsError::UnsupportedVersion(version.into())),
            "SignatureVersion {version:?}"
        );
    }
}

#[tokio::test]
async fn only_configured_topics_are_accepted() {
    let other = "arn:aws:sns:us-east-1:123456789012:other";
    let (_, v) = verifier(&[], &[TOPIC, "arn:aws:sns:eu-west-1:1:second"]);
    let mut ok = notification(&event_for("raw/a.csv"), None);
    sign(&mut ok, 0, "2");
    v.verify(&ok).await.unwrap();
    // Validly signed, but from a topic this service does not serve.
    for mut m in [
        notification(&event_for("raw/a.csv"), None),
        confirmation("SubscriptionConfirmation"),
    ] {
        m.topic_arn = other.into();
        sign(&mut m, 0, "2");
        assert_eq!(v.verify(&m).await, Err(SnsError::WrongTopic(other.into())));
        // The same messages pass a verifier that accepts their topic.
        verifier(&[], &[other]).1.verify(&m).await.unwrap();
        // With no topic configured, nothing is accepted, and no
        // certificate is fetched for it.
        let certs = Arc::new(Certs::default());
        let none = Verifier::new(certs.clone(), vec![]);
        assert_eq!(none.verify(&m).await, Err(SnsError::NoTopics));
        assert_eq!(certs.fetches(), 0);
    }
}

#[tokio::test]
async fn old_messages_and_replays_are_refused() {
    let (certs, v) = verifier(&[], &[]);
    let mut m = notification(&event_for("raw/a.csv"), None);
    sign(&mut m, 0, "2");
    let sent = chrono::DateTime::parse_from_rfc3339(&m.timestamp)
        .unwrap()
        .with_timezone(&chrono::Utc);
    let later = |secs: i64| sent + chrono::Duration::seconds(secs);
    // Within the hour SNS may take to deliver, and a little clock skew.
    v.verify_at(&m, later(3599)).await.unwrap();
    v.verify_at(&m, later(3600 + 299)).await.unwrap();
    v.verify_at(&m, later(-290)).await.unwrap();
    for at in [later(3600 + 301), later(-301), later(86_400 * 365 * 25)] {
        assert_eq!(
            v.verify_at(&m, at).await,
            Err(SnsError::Stale(m.timestamp.clone())),
            "{at}"
        );
    }
    // From 2001, signed: refused before any certificate is fetched.
    let fetched = certs.fetches();
    let mut old = m.clone();
    old.timestamp = "2001-09-09T01:46:40.000Z".into();
    sign(&mut old, 0, "2");
    assert!(matches!(v.verify(&old).await, Err(SnsError::Stale(_))));
    for bad in ["", "yesterday", "2026-13-01T00:00:00Z"] {
        let mut b = m.clone();
        b.timestamp = bad.into();
        sign(&mut b, 0, "2");
        assert!(
            matches!(v.verify(&b).await, Err(SnsError::Stale(_))),
            "{bad:?}"
        );
    }
    assert_eq!(certs.fetches(), fetched);
    // A message ID accepted once is a replay from then on.
    assert!(!v.is_replay(&m.message_id));
    v.accepted(&m.message_id);
    assert!(v.is_replay(&m.message_id));
    assert!(!v.is_replay("another id"));
}

#[tokio::test]
async fn junk_signatures_and_odd_certificate_paths_cost_no_fetch() {
    let (certs, v) = verifier(&[], &[]);
    let mut m = notification(&event_for("raw/a.csv"), None);
    sign(&mut m, 0, "2");
    for junk in ["AAAA", "", "!!", &b64(&[7u8; 255]), &b64(&[7u8; 1025])] {
        let j = SnsMessage {
            signature: junk.to_string(),
            ..m.clone()
        };
        assert_eq!(v.verify(&j).await, Err(SnsError::BadSignature), "{junk:?}");
    }
    for path in [
        "/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem?x=1",
        "/SimpleNotificationService-0123456789abcdef0123456789abcde.pem",
        "/SimpleNotificationService-0123456789abcdef0123456789abcdeg.pem",
        "/other/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
        "/x.pem",
    ] {
        let mut p = m.clone();
        p.signing_cert_url = format!("https://sns.us-east-1.amazonaws.com{path}");
        sign(&mut p, 0, "2");
        assert!(
            matches!(v.verify(&p).await, Err(SnsError::UntrustedUrl { .. })),
            "{path}"
        );
    }
    assert_eq!(certs.fetches(), 0);
}

#[tokio::test]
async fn certificates_come_from_the_topics_region_and_outages_are_not_remembered() {
    // Another region's SNS host, for a us-east-1 topic: refused unfetched.
    let (certs, v) = verifier(&[], &[]);
    let mut m = notification(&event_for("raw/a.csv"), None);
    m.signing_cert_url = CERT_URL.replace("us-east-1", "eu-west-1");
    sign(&mut m, 0, "2");
    assert!(matches!(
        v.verify(&m).await,
        Err(SnsError::OtherRegion { .. })
    ));
    assert_eq!(certs.fetches(), 0);
    // A certificate host that cannot be reached: 503-worthy, and tried
    // again with the next message (SNS delivers again).
    let source = Arc::new(Unreachable::default());
    let down = Verifier::new(source.clone(), vec![TOPIC.into()]);
    let mut m = notification(&event_for("raw/a.csv"), None);
    sign(&mut m, 0, "2");
    for n in 1..=3 {
        assert!(matches!(
            down.verify(&m).await,
            Err(SnsError::CertificateUnreachable(_))
        ));
        assert_eq!(source.0.load(Ordering::SeqCst), n);
    }
}

/// A certificate source whose host never answers.
#[derive(Debug, Default)]
struct Unreachable(AtomicUsize);

impl CertSource for Unreachable {
    fn fetch<'a>(
        &'a self,
        _url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err("error sending request: operation timed out".to_string()) })
    }
}

#[tokio::test]
async fn certificate_fetches_are_bounded() {
    let (certs, v) = verifier(&[], &[]);
    // Thirty distinct certificates that do not exist: each fetched once...
    let mut m = notification(&event_for("raw/a.csv"), None);
    for i in 0..30 {
        m.signing_cert_url =
            format!("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-{i:032x}.pem");
        sign(&mut m, 0, "2");
        assert!(matches!(v.verify(&m).await, Err(SnsError::Certificate(_))));
        assert!(matches!(v.verify(&m).await, Err(SnsError::Certificate(_))));
    }
    assert_eq!(certs.fetches(), 30, "failures are remembered");
    // ...and then the minute's budget is spent: not even the real one is
    // fetched until it renews (SNS delivers again later).
    let mut good = notification(&event_for("raw/a.csv"), None);
    sign(&mut good, 0, "2");
    assert_eq!(v.verify(&good).await, Err(SnsError::Busy));
    assert_eq!(certs.fetches(), 30);
}

#[tokio::test]
async fn certificates_only_come_from_sns_hosts() {
    let bad = [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem",
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-a.pem",
        "https://x@evil.com/SimpleNotificationService-a.pem",
        "https://sns.us-east-1.amazonaws.com@evil.com/SimpleNotificationService-a.pem",
        "https://x@sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem",
        "https://sns.us-east-1.amazonaws.com:443/SimpleNotificationService-a.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-a.pem",
        "https://xsns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem",
        "https://sns..amazonaws.com/SimpleNotificationService-a.pem",
        "https://sns.amazonaws.com/SimpleNotificationService-a.pem",
        "https://SNS.us-east-1.amazonaws.com/SimpleNotificationService-a.pem",
        "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-a.pem",
        "https://evil.com/sns.us-east-1.amazonaws.com/a.pem",
        "https://127.0.0.1/SimpleNotificationService-a.pem",
        // SNS hosts, but not a certificate.
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.txt",
        "https://sns.us-east-1.amazonaws.com/?Action=x&f=.pem",
        "https://sns.us-east-1.amazonaws.com/a.pem/",
        "https://sns.us-east-1.amazonaws.com",
        "",
        "sns.us-east-1.amazonaws.com/a.pem",
    ];
    // The test source would even serve a good certificate there: only the
    // URL check stands between these messages and acceptance.
    let (certs, v) = verifier(&bad, &[]);
    for url in bad {
        let mut m = notification(&event_for("raw/a.csv"), None);
        m.signing_cert_url = url.into();
        sign(&mut m, 0, "2");
        assert_eq!(
            v.verify(&m).await,
            Err(SnsError::UntrustedUrl {
                field: "SigningCertURL",
                url: url.into()
            }),
            "{url}"
        );
    }
    assert_eq!(
        certs.fetches(),
        0,
        "nothing is fetched from an untrusted URL"
    );

    // A signed confirmation may not send the service to a non-SNS URL either.
    for url in [
        "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
        "https://127.0.0.1:9/steal",
        "https://sns.us-east-1.amazonaws.com.evil.com/?Action=ConfirmSubscription",
    ] {
        let mut c = confirmation("SubscriptionConfirmation");
        c.subscribe_url = Some(url.into());
        sign(&mut c, 0, "2");
        assert_eq!(
            v.verify(&c).await,
            Err(SnsError::UntrustedUrl {
                field: "SubscribeURL",
                url: url.into()
            })
        );
    }
}

#[tokio::test]
async fn certificates_and_failures_are_cached() {
    let second = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-5ec0bd5ec0bd5ec0bd5ec0bd5ec0bd00.pem";
    let missing = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000000000dead.pem";
    let (certs, v) = verifier(&[second], &[]);
    let mut m = notification(&event_for("raw/a.csv"), None);
    sign(&mut m, 0, "2");
    v.verify(&m).await.unwrap();
    v.verify(&m).await.unwrap();
    let mut m1 = m.clone();
    sign(&mut m1, 0, "1");
    v.verify(&m1).await.unwrap();
    assert_eq!(certs.fetches(), 1, "one URL, one fetch");
    m.signing_cert_url = second.into();
    v.verify(&m).await.unwrap();
    v.verify(&m).await.unwrap();
    assert_eq!(certs.fetches(), 2);
    m.signing_cert_url = missing.into();
    sign(&mut m, 0, "2");
    for _ in 0..3 {
        assert!(matches!(
            v.verify(&m).await,
            Err(SnsError::Certificate(e)) if e.contains("404")
        ));
        assert_eq!(
            certs.fetches(),
            3,
            "a failed fetch is remembered, not tried again at once"
        );
    }
}

#[tokio::test]
async fn unusable_certificates_are_refused() {
    let garbage = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9a7ba9e09a7ba9e09a7ba9e09a7ba9e0.pem";
    let other_key = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-07e407e407e407e407e407e407e407e4.pem";
    let mut pems = HashMap::new();
    pems.insert(
        garbage.to_string(),
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
    );
    pems.insert(other_key.to_string(), cert_pem(1));
    let v = Verifier::new(
        Arc::new(Certs {
            pems,
            ..Default::default()
        }),
        vec![TOPIC.into()],
    );
    let mut m = notification(&event_for("raw/a.csv"), None);
    m.signing_cert_url = garbage.into();
    sign(&mut m, 0, "2");
    assert!(matches!(v.verify(&m).await, Err(SnsError::Certificate(_))));
    m.signing_cert_url = other_key.into();
    assert_eq!(v.verify(&m).await, Err(SnsError::BadSignature));
}

/// Fetches certificates from moto, as SNS hosts them (moto routes the
/// request to its SNS backend by the credential scope).
#[derive(Debug)]
struct MotoCerts {
    endpoint: String,
}

impl CertSource for MotoCerts {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        Box::pin(async move {
            let path = url
                .strip_prefix("https://sns.us-east-1.amazonaws.com")
                .ok_or("not moto's region")?;
            let r = reqwest::Client::new()
                .get(format!("{}{path}", self.endpoint))
                .header("Authorization", moto_auth("sns"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            Ok(r.bytes().await.map_err(|e| e.to_string())?.to_vec())
        })
    }
}

/// A loopback HTTP endpoint that hands every POSTed body to a channel.
async fn capture_endpoint() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(body.to_vec());
            ""
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sns", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test]
async fn a_real_moto_signed_message_verifies() {
    let moto = Moto::start().await;
    let topic = moto.create_topic("verify-me").await;
    let (url, mut rx) = capture_endpoint().await;
    moto.subscribe(&topic, "http", &url).await;
    let payload = event_for("raw/from moto+1.csv");
    moto.sns(&[
        ("Action", "Publish"),
        ("TopicArn", &topic),
        ("Message", &payload),
    ])
    .await;
    let body = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let m = SnsMessage::parse(&body).unwrap();
    assert_eq!(m.kind, "Notification");
    assert_eq!(m.signature_version, "2");
    assert_eq!(m.message, payload);
    assert!(
        m.signing_cert_url.ends_with(".pem"),
        "{}",
        m.signing_cert_url
    );

    let v = Verifier::new(
        Arc::new(MotoCerts {
            endpoint: moto.endpoint.clone(),
        }),
        vec![topic.clone()],
    );
    v.verify(&m).await.unwrap();
    // The same message, replayed with another payload or topic.
    let tampered = SnsMessage {
        message: event_for("raw/evil.csv"),
        ..m.clone()
    };
    assert_eq!(v.verify(&tampered).await, Err(SnsError::BadSignature));
    let relabelled = SnsMessage {
        signature_version: "1".into(),
        ..m.clone()
    };
    assert_eq!(v.verify(&relabelled).await, Err(SnsError::BadSignature));
    let elsewhere = Verifier::new(
        Arc::new(MotoCerts {
            endpoint: moto.endpoint.clone(),
        }),
        vec!["arn:aws:sns:us-east-1:123456789012:other".into()],
    );
    assert!(matches!(
        elsewhere.verify(&m).await,
        Err(SnsError::WrongTopic(_))
    ));
}

// ---------------------------------------------------------------------------
// Properties: arbitrary input never panics and is never accepted.

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => any::<String>().prop_map(Value::from),
        2 => prop::sample::select(vec![
            "Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation",
            "1", "2", "3", "", CERT_URL, TOPIC,
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=t",
            "AAAA", "2026-11-25T00:00:00.000Z",
        ]).prop_map(Value::from),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| Value::from(b64(&b))),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(json!({"nested": [1, 2]})),
    ]
}

fn sns_like_json() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(vec![
        "Type",
        "MessageId",
        "TopicArn",
        "Message",
        "Timestamp",
        "SignatureVersion",
        "Signature",
        "SigningCertURL",
        "SubscribeURL",
        "Token",
        "Subject",
        "UnsubscribeURL",
        "type",
        "",
    ]);
    let s = || {
        prop_oneof![
            3 => any::<String>(),
            1 => prop::sample::select(vec![TOPIC, "", "2026-11-25T00:00:00.000Z"])
                .prop_map(String::from),
        ]
    };
    // Complete messages that reach the signature check.
    let complete = (
        prop::sample::select(vec![
            "Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation", "Other",
        ]),
        (s(), s(), s(), s()),
        prop::sample::select(vec!["1", "2", "3"]),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::option::of(s()),
        prop::option::of(s()),
    )
        .prop_map(|(kind, (id, message, ts, token), version, sig, subject, token2)| {
            let mut v = json!({
                "Type": kind, "MessageId": id, "TopicArn": TOPIC, "Message": message,
                "Timestamp": ts, "SignatureVersion": version, "Signature": b64(&sig),
                "SigningCertURL": CERT_URL, "Token": token,
                "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
            });
            if let Some(s) = subject {
                v["Subject"] = json!(s);
            }
            if let Some(t) = token2 {
                v["Token"] = json!(t);
            }
            serde_json::to_vec(&v).unwrap()
        });
    prop_oneof![
        3 => prop::collection::btree_map(names, field_value(), 0..12)
            .prop_map(|m| serde_json::to_vec(&m).unwrap()),
        3 => complete,
        1 => prop::collection::vec(any::<u8>(), 0..400),
        1 => any::<String>().prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever arrives, parsing and verification return (never panic), and
    /// nothing without a valid signature is accepted.
    #[test]
    fn arbitrary_messages_are_never_accepted(body in sns_like_json()) {
        let (_, v) = verifier(&[], &[]);
        if let Ok(m) = SnsMessage::parse(&body) {
            let _ = m.string_to_sign();
            prop_assert!(rt().block_on(v.verify(&m)).is_err(), "accepted {m:?}");
        }
    }
}

/// What the signature covers, as AWS documents it ([`aws_string_to_sign`],
/// not the verifier's own reading), with the signature, its version and
/// the certificate URL.
fn signed_content(m: &SnsMessage) -> Option<(String, Vec<u8>, String, String)> {
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(m.signature.trim())
        .ok()?;
    Some((
        aws_string_to_sign(m)?,
        sig,
        m.signature_version.clone(),
        m.signing_cert_url.clone(),
    ))
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Remove(usize),
    Replace(usize, char),
}

fn apply(s: &str, e: &Edit) -> String {
    let mut cs: Vec<char> = s.chars().collect();
    match *e {
        Edit::Insert(i, c) => cs.insert(i % (cs.len() + 1), c),
        Edit::Remove(i) if !cs.is_empty() => {
            cs.remove(i % cs.len());
        }
        Edit::Replace(i, c) if !cs.is_empty() => {
            let n = cs.len();
            cs[i % n] = c;
        }
        _ => {}
    }
    cs.into_iter().collect()
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        any::<char>(),
        prop::char::range('0', 'z'),
        Just(' '),
        Just('\n')
    ];
    prop_oneof![
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), ch).prop_map(|(i, c)| Edit::Replace(i, c)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// One edit anywhere in a validly signed message: accepted exactly when
    /// the signed content, signature, version and certificate URL are
    /// unchanged (an edit to an unsigned field, or whitespace around the
    /// base64, changes nothing that matters).
    #[test]
    fn an_edited_signed_message_is_accepted_only_if_nothing_signed_changed(
        which in 0usize..5, field in 0usize..10, e in edit(),
    ) {
        static SIGNED: std::sync::OnceLock<Vec<SnsMessage>> = std::sync::OnceLock::new();
        let signed = SIGNED.get_or_init(|| {
            all_kinds()
                .into_iter()
                .zip(["1", "2", "1", "2", "1"])
                .map(|(mut m, v)| { sign(&mut m, 0, v); m })
                .collect()
        });
        let orig = &signed[which];
        let mut m = orig.clone();
        let opt = |o: &Option<String>| apply(o.as_deref().unwrap_or(""), &e);
        match field {
            0 => m.kind = apply(&m.kind, &e),
            1 => m.message_id = apply(&m.message_id, &e),
            2 => m.topic_arn = apply(&m.topic_arn, &e),
            3 => m.message = apply(&m.message, &e),
            4 => m.timestamp = apply(&m.timestamp, &e),
            5 => m.signature_version = apply(&m.signature_version, &e),
            6 => m.signature = apply(&m.signature, &e),
            7 => m.subject = Some(opt(&m.subject)),
            8 => m.subscribe_url = Some(opt(&m.subscribe_url)),
            _ => m.token = Some(opt(&m.token)),
        }
        let (_, v) = verifier(&[], &[]);
        let verdict = rt().block_on(v.verify(&m));
        let unchanged =
            signed_content(&m) == signed_content(orig) && m.subscribe_url == orig.subscribe_url;
        if unchanged {
            prop_assert!(verdict.is_ok(), "{verdict:?} for {m:?}");
        } else {
            prop_assert!(verdict.is_err(), "accepted an edited message {m:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// The real binary.

/// Serves test key 0's certificate at the path of [`CERT_URL`], and passes
/// any other request on to moto unchanged (its `Authorization` header is
/// tswatch's own: a stock moto routes on it).
async fn cert_endpoint(moto_endpoint: String) -> String {
    let pem = cert_pem(0);
    let test_path = CERT_URL
        .strip_prefix("https://sns.us-east-1.amazonaws.com")
        .unwrap()
        .to_string();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
            let (pem, test_path, moto) = (pem.clone(), test_path.clone(), moto_endpoint.clone());
            async move {
                if uri.path() == test_path {
                    return (axum::http::StatusCode::OK, pem);
                }
                let mut req = reqwest::Client::new().get(format!("{moto}{}", uri.path()));
                for (k, v) in &headers {
                    if k != axum::http::header::HOST {
                        req = req.header(k.as_str(), v.as_bytes());
                    }
                }
                let r = req.send().await.unwrap();
                let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
                (status, r.bytes().await.unwrap().to_vec())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn signed_event_for(bucket: &str, key: &str) -> SnsMessage {
    let mut m = notification(&s3_event(bucket, &[key]), Some("Amazon S3 Notification"));
    m.message_id = format!("id-{key}");
    sign(&mut m, 0, "2");
    m
}

#[tokio::test]
async fn the_service_verifies_signatures_and_refuses_tampered_messages() {
    const BUCKET: &str = "signed";
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let moto_topic = moto.create_topic("signed-events").await;
    let certs = cert_endpoint(moto.endpoint.clone()).await;
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    let topics = format!("{TOPIC},{moto_topic}");
    let svc = Service::start(
        cmd,
        &[
            "--sns-cert-endpoint",
            &certs,
            "--sns-topic-arn",
            &topics,
            "--reconcile-interval",
            "3600",
        ],
        tmp.path(),
    )
    .await;
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    for k in ["raw/legit.csv", "raw/tampered.csv", "raw/other_topic.csv"] {
        moto.put_object(BUCKET, k, fixture.clone()).await;
    }

    // Signed for raw/legit.csv, replayed naming raw/tampered.csv.
    let legit = signed_event_for(BUCKET, "raw/legit.csv");
    let mut tampered = legit.clone();
    tampered.message = legit.message.replace("legit", "tampered");
    let mut wrong_topic = signed_event_for(BUCKET, "raw/other_topic.csv");
    wrong_topic.topic_arn = "arn:aws:sns:us-east-1:123456789012:other".into();
    sign(&mut wrong_topic, 0, "2");
    let mut off_host = signed_event_for(BUCKET, "raw/tampered.csv");
    off_host.signing_cert_url = "https://sns.us-east-1.amazonaws.com.evil.com/x.pem".into();
    let mut unsigned = signed_event_for(BUCKET, "raw/tampered.csv");
    unsigned.signature.clear();
    let mut stale = signed_event_for(BUCKET, "raw/tampered.csv");
    stale.timestamp = "2001-09-09T01:46:40.000Z".into();
    sign(&mut stale, 0, "2");
    for (what, m, reason) in [
        ("stale", &stale, "is not within the last hour"),
        ("tampered", &tampered, "signature does not verify"),
        (
            "wrong topic",
            &wrong_topic,
            "is not accepted by this service",
        ),
        (
            "certificate off AWS",
            &off_host,
            "SigningCertURL is not an https URL of an AWS SNS host",
        ),
        ("unsigned", &unsigned, "signature does not verify"),
    ] {
        let (st, body) = svc.post("/notify", to_json(m).to_string()).await;
        assert_eq!(st, 403, "{what}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{what}: {body}"
        );
        assert!(body.get("queued").is_none(), "{what}: {body}");
    }
    // The untampered original is accepted and queued...
    let (st, body) = svc.post("/notify", to_json(&legit).to_string()).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["queued"], json!(["raw/legit.csv"]));
    wait_for(
        "raw/legit.csv processed",
        Duration::from_secs(60),
        || async {
            moto.get_object(BUCKET, "processed/legit_summary.json")
                .await
        },
    )
    .await;
    // ...and processed; the one worker takes keys in order, so had anything
    // been queued by a refused message it would have been processed first.
    for k in ["tampered", "other_topic"] {
        for suffix in ["_summary.json", "_error.json", ".csv"] {
            let key = format!("processed/{k}{suffix}");
            assert!(
                moto.get_object(BUCKET, &key).await.is_none(),
                "{key} exists"
            );
        }
    }
    // The same signed message again is a replay: answered, not acted on.
    let (st, body) = svc.post("/notify", to_json(&legit).to_string()).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["status"], "already received", "{body}");
    assert_eq!(body["queued"], json!([]), "{body}");
    let log = svc.proc.log_text();
    assert_eq!(log.matches("rejected SNS message").count(), 5, "{log}");
    assert!(log.contains("signature does not verify"), "{log}");

    // Real SNS deliveries from moto, verification on: moto signs each
    // message and hosts its certificate, fetched through --sns-cert-endpoint.
    let endpoint = format!("{}/notify", svc.base);
    moto.subscribe(&moto_topic, "http", &endpoint).await;
    moto.notify_bucket_to_topic(BUCKET, &moto_topic).await;
    moto.put_object(BUCKET, "raw/via moto+sns.csv", fixture)
        .await;
    let s: Value = serde_json::from_slice(
        &wait_for(
            "moto's signed event processed",
            Duration::from_secs(60),
            || async {
                moto.get_object(BUCKET, "processed/via moto+sns_summary.json")
                    .await
            },
        )
        .await,
    )
    .unwrap();
    assert_eq!(s["total_rows"], 100);
    assert_eq!(
        log_count(&svc, "rejected SNS message"),
        5,
        "moto's messages verified"
    );
}

fn log_count(svc: &Service, needle: &str) -> usize {
    svc.proc.log_text().matches(needle).count()
}

#[tokio::test]
async fn a_stock_moto_server_is_a_certificate_endpoint() {
    // The documented emulator path with nothing in between: moto signs its
    // deliveries, and tswatch fetches moto's certificate from moto itself.
    const BUCKET: &str = "stock";
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let topic = moto.create_topic("stock-events").await;
    let mut cmd = tswatch();
    s3_env(&mut cmd, &moto, BUCKET);
    let svc = Service::start(
        cmd,
        &[
            "--sns-cert-endpoint",
            &moto.endpoint,
            "--sns-topic-arn",
            &topic,
            "--reconcile-interval",
            "3600",
        ],
        tmp.path(),
    )
    .await;
    let endpoint = format!("{}/notify", svc.base);
    moto.subscribe(&topic, "http", &endpoint).await;
    moto.notify_bucket_to_topic(BUCKET, &topic).await;
    let fixture = std::fs::read(fixtures().join("sensors_20260224T001051.csv")).unwrap();
    moto.put_object(BUCKET, "raw/stock.csv", fixture).await;
    wait_for(
        "the signed event processed",
        Duration::from_secs(60),
        || async {
            moto.get_object(BUCKET, "processed/stock_summary.json")
                .await
        },
    )
    .await;
    let log = svc.proc.log_text();
    assert!(!log.contains("rejected SNS message"), "{log}");
    assert!(!log.contains("unusable"), "{log}");
}
