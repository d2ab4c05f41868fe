//! Amazon SNS HTTP(S) messages: parsing, and authenticity checks.
//!
//! A message is accepted only if its `Signature` verifies (SignatureVersion
//! 1: SHA1withRSA, 2: SHA256withRSA) over the canonical string of its type,
//! with the public key of a certificate fetched over https from an SNS host
//! of AWS, and if its `TopicArn` is one of the configured topics: with none
//! configured, nothing is accepted (any AWS account can make SNS sign a
//! message for a topic of its own). `SubscribeURL` must point to an SNS
//! host too.
//!
//! The checks run cheapest first, so a forged message costs no network:
//! topic, URLs (the certificate's path as SNS names them), the signature's
//! size, and the timestamp (at most an hour old, the longest SNS retries an
//! HTTP delivery) come before a certificate fetch. Fetches are few: keys
//! are cached, failures too (for five minutes), two run at a time and at
//! most thirty a minute. A message ID seen in the last hour is a replay.

use base64::Engine as _;
use serde::Deserialize;
use std::collections::VecDeque;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A message as SNS posts it (the fields tswatch uses).
#[derive(Debug, Clone, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    /// `Notification`, `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Unique message id.
    pub message_id: String,
    /// Topic the message came from.
    pub topic_arn: String,
    /// The payload (for S3 events, the event JSON as a string).
    pub message: String,
    /// When SNS sent it.
    pub timestamp: String,
    /// `1` or `2`.
    #[serde(default)]
    pub signature_version: String,
    /// Base64 RSA signature.
    #[serde(default)]
    pub signature: String,
    /// Where the signing certificate is.
    #[serde(default, rename = "SigningCertURL")]
    pub signing_cert_url: String,
    /// Confirmation link (subscription messages).
    #[serde(default, rename = "SubscribeURL")]
    pub subscribe_url: Option<String>,
    /// Confirmation token (subscription messages).
    #[serde(default)]
    pub token: Option<String>,
    /// Optional subject (notifications).
    #[serde(default)]
    pub subject: Option<String>,
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnsError {
    /// Not an SNS message.
    #[error("not an SNS message: {0}")]
    Malformed(String),
    /// A URL that is not an https URL of an AWS SNS host.
    #[error("{field} is not an https URL of an AWS SNS host: {url:?}")]
    UntrustedUrl {
        /// Which field.
        field: &'static str,
        /// The URL given.
        url: String,
    },
    /// SignatureVersion other than 1 or 2.
    #[error("unsupported SignatureVersion {0:?}")]
    UnsupportedVersion(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The certificate could not be fetched or read.
    #[error("signing certificate unusable: {0}")]
    Certificate(String),
    /// The topic is not one of the configured ones.
    #[error("topic {0:?} is not accepted by this service")]
    WrongTopic(String),
    /// No topic is configured, so no message is accepted.
    #[error(
        "no SNS topic is accepted: start tswatch with --sns-topic-arn <ARN> (TSWATCH_SNS_TOPIC_ARN), the topic your bucket notifies"
    )]
    NoTopics,
    /// The timestamp is unreadable, too old or in the future.
    #[error("Timestamp {0:?} is not within the last hour: a stale or replayed message")]
    Stale(String),
    /// Too many certificate fetches just now; SNS will deliver again.
    #[error("too many signing-certificate fetches just now; retry later")]
    Busy,
    /// The certificate could not be fetched just now (network, timeout,
    /// the host failing); SNS will deliver again.
    #[error("signing certificate unreachable just now: {0}")]
    CertificateUnreachable(String),
    /// The certificate's host is in another region than the topic.
    #[error("SigningCertURL {url:?} is not in the topic's region {region:?}")]
    OtherRegion {
        /// The certificate URL.
        url: String,
        /// The topic's region.
        region: String,
    },
}

impl SnsError {
    /// A short, fixed name for the reason (a metrics label).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UntrustedUrl { .. } => "untrusted_url",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::BadSignature => "bad_signature",
            Self::Certificate(_) => "certificate",
            Self::WrongTopic(_) => "wrong_topic",
            Self::NoTopics => "no_topics",
            Self::Stale(_) => "stale",
            Self::Busy => "busy",
            Self::CertificateUnreachable(_) => "certificate_unreachable",
            Self::OtherRegion { .. } => "other_region",
        }
    }
}

impl SnsMessage {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Self, SnsError> {
        serde_json::from_slice(body).map_err(|e| SnsError::Malformed(e.to_string()))
    }

    /// The canonical string SNS signs for this message type.
    pub fn string_to_sign(&self) -> Result<String, SnsError> {
        let mut s = String::new();
        let mut add = |k: &str, v: &str| {
            s.push_str(k);
            s.push('\n');
            s.push_str(v);
            s.push('\n');
        };
        let missing = |f: &str| SnsError::Malformed(format!("{} without {f}", self.kind));
        match self.kind.as_str() {
            "Notification" => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                if let Some(subj) = &self.subject {
                    add("Subject", subj);
                }
                add("Timestamp", &self.timestamp);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                add(
                    "SubscribeURL",
                    self.subscribe_url
                        .as_deref()
                        .ok_or_else(|| missing("SubscribeURL"))?,
                );
                add("Timestamp", &self.timestamp);
                add(
                    "Token",
                    self.token.as_deref().ok_or_else(|| missing("Token"))?,
                );
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            other => return Err(SnsError::Malformed(format!("unknown Type {other:?}"))),
        }
        Ok(s)
    }
}

/// Whether `url` is `https://sns.<region>.amazonaws.com[.cn]/...` with no
/// user info and no port (so it cannot be steered to another host).
pub(crate) fn is_sns_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.contains(['@', ':']) {
        return false;
    }
    let Some(region) = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))
        .and_then(|h| h.strip_prefix("sns."))
    else {
        return false;
    };
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where certificates come from: https in production, fixed PEMs in tests.
pub trait CertSource: Send + Sync + std::fmt::Debug {
    /// The PEM at `url`.
    fn fetch<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;
}

/// Fetches certificates over https: no redirects, short timeout, size cap.
#[derive(Debug)]
pub(crate) struct HttpsCertSource {
    client: reqwest::Client,
    endpoint: Option<String>,
    /// Signs the certificate request as an SNS call (emulators route on it).
    signer: Option<object_store::aws::AwsCredentialProvider>,
}

impl HttpsCertSource {
    /// A source with a fresh client, fetching from the SNS host named by
    /// each message (the only choice in production).
    pub(crate) fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(5))
                .build()?,
            endpoint: None,
            signer: None,
        })
    }

    /// A source that fetches `https://sns.<region>.amazonaws.com/<path>`
    /// from `<endpoint>/<path>` instead: an SNS emulator or a mirror. The
    /// message must still name an SNS host, and its signature must still
    /// verify with the certificate found there. With `signer`, the request
    /// is SigV4-signed for SNS in the URL's region, as an SDK call to the
    /// emulator would be (a stock `moto_server` routes requests by that
    /// signature and answers an unsigned GET with 404).
    pub(crate) fn with_endpoint(
        endpoint: &str,
        signer: Option<object_store::aws::AwsCredentialProvider>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            endpoint: Some(endpoint.trim_end_matches('/').to_string()),
            signer,
            ..Self::new()?
        })
    }

    /// The SigV4 headers of a GET of `target` as an SNS call for the region
    /// named in `url` (`https://sns.<region>.amazonaws.com/...`).
    async fn sns_signature(&self, url: &str, target: &str) -> Result<http::HeaderMap, String> {
        let Some(signer) = &self.signer else {
            return Ok(http::HeaderMap::new());
        };
        let region = url
            .strip_prefix("https://sns.")
            .and_then(|r| r.split('.').next())
            .unwrap_or("us-east-1");
        // A mirror needs no signature: without credentials, the GET goes
        // unsigned (an emulator that routes on it will then refuse it).
        let credential = match signer.get_credential().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "certificate request sent unsigned: no AWS credentials");
                return Ok(http::HeaderMap::new());
            }
        };
        let mut req = http::Request::builder()
            .method(http::Method::GET)
            .uri(target)
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| e.to_string())?;
        object_store::aws::AwsAuthorizer::new(&credential, "sns", region)
            .try_authorize(&mut req, None)
            .map_err(|e| e.to_string())?;
        Ok(req.headers().clone())
    }
}

/// The part of an `https://host...` URL after the host (`/x.pem`, `?a=b`, ...).
fn after_host(url: &str) -> &str {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    rest.find(['/', '?', '#']).map_or("", |i| &rest[i..])
}

impl CertSource for HttpsCertSource {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        Box::pin(async move {
            let (target, headers) = match &self.endpoint {
                Some(base) => {
                    let target = format!("{base}{}", after_host(url));
                    let headers = self.sns_signature(url, &target).await?;
                    (target, headers)
                }
                None => (url.to_string(), http::HeaderMap::new()),
            };
            let r = self
                .client
                .get(&target)
                .headers(headers)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            let b = r.bytes().await.map_err(|e| e.to_string())?;
            if b.len() > 64 * 1024 {
                return Err("certificate larger than 64 KiB".into());
            }
            Ok(b.to_vec())
        })
    }
}

/// Oldest message accepted: SNS retries an HTTP delivery for at most an
/// hour (the longest delivery policy it allows).
pub(crate) const MAX_MESSAGE_AGE: Duration = Duration::from_secs(3600);
/// How far in the future a timestamp may be (clock skew).
const MAX_SKEW: Duration = Duration::from_secs(300);
/// How long a failed certificate fetch is remembered.
const FAILURE_TTL: Duration = Duration::from_secs(300);
/// Certificate fetches allowed per minute, and at once.
const FETCHES_PER_MINUTE: usize = 30;
const FETCHES_AT_ONCE: usize = 2;
/// Certificates remembered.
const CACHED_CERTS: usize = 64;
/// Failed certificate URLs remembered (apart: they never push a good key
/// out).
const CACHED_FAILURES: usize = 1024;
/// Message IDs remembered (an hour's worth at a busy rate).
const SEEN_IDS: usize = 100_000;

/// When and why fetching a certificate failed.
type Failure = (Instant, String);

/// Accepted message IDs, and the same oldest first with when.
type SeenIds = (HashSet<String>, VecDeque<(Instant, String)>);

/// Verifies messages; caches the public key of each certificate URL.
#[derive(Debug)]
pub struct Verifier {
    source: Arc<dyn CertSource>,
    topics: Vec<String>,
    keys: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    failures: Mutex<HashMap<String, Failure>>,
    /// When the recent fetches started (at most [`FETCHES_PER_MINUTE`]).
    fetched: Mutex<VecDeque<Instant>>,
    fetching: tokio::sync::Semaphore,
    /// Message IDs accepted in the last [`MAX_MESSAGE_AGE`], oldest first.
    seen: Mutex<SeenIds>,
}

impl Verifier {
    /// A verifier accepting `topics`; with none, [`Verifier::verify`]
    /// accepts nothing.
    pub fn new(source: Arc<dyn CertSource>, topics: Vec<String>) -> Self {
        Self {
            source,
            topics,
            keys: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            fetched: Mutex::new(VecDeque::new()),
            fetching: tokio::sync::Semaphore::new(FETCHES_AT_ONCE),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Only the topic check, used when signature checks are switched off
    /// (emulators): then no configured topic means any topic.
    pub(crate) fn check_topic(&self, msg: &SnsMessage) -> Result<(), SnsError> {
        if self.topics.is_empty() || self.topics.contains(&msg.topic_arn) {
            Ok(())
        } else {
            Err(SnsError::WrongTopic(msg.topic_arn.clone()))
        }
    }

    /// Whether message `id` was accepted before (within the last hour).
    pub fn is_replay(&self, id: &str) -> bool {
        self.seen.lock().is_ok_and(|s| s.0.contains(id))
    }

    /// Remembers that message `id` was accepted, so a replay is refused.
    pub fn accepted(&self, id: &str) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let (ids, order) = &mut *seen;
        let now = Instant::now();
        while let Some((at, old)) = order.front() {
            if now.duration_since(*at) < MAX_MESSAGE_AGE && order.len() < SEEN_IDS {
                break;
            }
            ids.remove(old);
            order.pop_front();
        }
        if ids.insert(id.to_string()) {
            order.push_back((now, id.to_string()));
        }
    }

    /// Full check at the current time: topic, URLs, signature size,
    /// timestamp, certificate, signature.
    pub async fn verify(&self, msg: &SnsMessage) -> Result<(), SnsError> {
        self.verify_at(msg, chrono::Utc::now()).await
    }

    /// As [`Verifier::verify`], as if the time were `now`.
    pub async fn verify_at(
        &self,
        msg: &SnsMessage,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), SnsError> {
        if self.topics.is_empty() {
            return Err(SnsError::NoTopics);
        }
        self.check_topic(msg)?;
        if let Some(u) = &msg.subscribe_url
            && !is_sns_url(u)
        {
            return Err(SnsError::UntrustedUrl {
                field: "SubscribeURL",
                url: u.clone(),
            });
        }
        let cert_url = &msg.signing_cert_url;
        if !is_sns_url(cert_url) || !is_cert_path(after_host(cert_url)) {
            return Err(SnsError::UntrustedUrl {
                field: "SigningCertURL",
                url: cert_url.clone(),
            });
        }
        // SNS signs with a certificate of the topic's own region; any other
        // would only make this service fetch certificates at will.
        let region = msg.topic_arn.split(':').nth(3).unwrap_or_default();
        let cert_region = cert_url
            .strip_prefix("https://sns.")
            .and_then(|r| r.split('.').next())
            .unwrap_or_default();
        if region.is_empty() || cert_region != region {
            return Err(SnsError::OtherRegion {
                url: cert_url.clone(),
                region: region.to_string(),
            });
        }
        let alg: &'static dyn aws_lc_rs::signature::VerificationAlgorithm =
            match msg.signature_version.as_str() {
                "1" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                "2" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                v => return Err(SnsError::UnsupportedVersion(v.to_string())),
            };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(msg.signature.trim())
            .map_err(|_| SnsError::BadSignature)?;
        // RSA 2048 to 8192 bits: anything else cannot verify, so it costs
        // no certificate fetch.
        if !(256..=1024).contains(&signature.len()) {
            return Err(SnsError::BadSignature);
        }
        let text = msg.string_to_sign()?;
        check_timestamp(&msg.timestamp, now)?;
        let key = self.public_key(cert_url).await?;
        aws_lc_rs::signature::UnparsedPublicKey::new(alg, key.as_slice())
            .verify(text.as_bytes(), &signature)
            .map_err(|_| SnsError::BadSignature)
    }

    /// The cached outcome for `url`, if there is one still good.
    fn cached_key(&self, url: &str) -> Option<Result<Arc<Vec<u8>>, SnsError>> {
        if let Some(k) = self.keys.lock().ok()?.get(url) {
            return Some(Ok(k.clone()));
        }
        match self.failures.lock().ok()?.get(url) {
            Some((at, e)) if at.elapsed() < FAILURE_TTL => {
                Some(Err(SnsError::Certificate(format!(
                    "{e} (remembered; tried again {} s after)",
                    FAILURE_TTL.as_secs()
                ))))
            }
            _ => None,
        }
    }

    async fn public_key(&self, url: &str) -> Result<Arc<Vec<u8>>, SnsError> {
        if let Some(k) = self.cached_key(url) {
            return k;
        }
        let _turn = self.fetching.acquire().await.map_err(|_| SnsError::Busy)?;
        // Another request may have fetched it while this one waited.
        if let Some(k) = self.cached_key(url) {
            return k;
        }
        {
            let mut recent = self.fetched.lock().map_err(|_| SnsError::Busy)?;
            let now = Instant::now();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
            {
                recent.pop_front();
            }
            if recent.len() >= FETCHES_PER_MINUTE {
                return Err(SnsError::Busy);
            }
            recent.push_back(now);
        }
        let key = match self.source.fetch(url).await {
            Ok(pem) => public_key_from_pem(&pem).map(Arc::new),
            // The host answered, and said no: that will not change soon.
            Err(e) if e.starts_with("HTTP 4") => Err(SnsError::Certificate(e)),
            // Unreachable, slow, or failing on its side: SNS delivers
            // again later, and then it is fetched again.
            Err(e) => return Err(SnsError::CertificateUnreachable(e)),
        };
        match &key {
            Ok(k) => {
                if let Ok(mut m) = self.keys.lock() {
                    // Only genuine SNS certificates get here: few.
                    if m.len() >= CACHED_CERTS
                        && let Some(old) = m.keys().next().cloned()
                    {
                        m.remove(&old);
                    }
                    m.insert(url.to_string(), k.clone());
                }
            }
            Err(e) => {
                if let Ok(mut f) = self.failures.lock() {
                    if f.len() >= CACHED_FAILURES {
                        f.retain(|_, (at, _)| at.elapsed() < FAILURE_TTL);
                        if f.len() >= CACHED_FAILURES {
                            f.clear();
                        }
                    }
                    f.insert(url.to_string(), (Instant::now(), e.to_string()));
                }
            }
        }
        key
    }
}

/// Whether `path` is a signing certificate's path as SNS names them:
/// `/SimpleNotificationService-<32 hex digits>.pem`, nothing after.
fn is_cert_path(path: &str) -> bool {
    path.strip_prefix("/SimpleNotificationService-")
        .and_then(|p| p.strip_suffix(".pem"))
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Refuses a timestamp older than [`MAX_MESSAGE_AGE`] or too far ahead.
fn check_timestamp(ts: &str, now: chrono::DateTime<chrono::Utc>) -> Result<(), SnsError> {
    let stale = || SnsError::Stale(ts.to_string());
    let t = chrono::DateTime::parse_from_rfc3339(ts).map_err(|_| stale())?;
    let age = now.signed_duration_since(t);
    let max_age = chrono::Duration::from_std(MAX_MESSAGE_AGE).map_err(|_| stale())?;
    let skew = chrono::Duration::from_std(MAX_SKEW).map_err(|_| stale())?;
    // The skew both ways: a retry at SNS's last moment, or a clock ahead.
    if age > max_age + skew || age < -skew {
        return Err(stale());
    }
    Ok(())
}

/// The RSA public key (PKCS#1 DER) of a PEM certificate.
pub(crate) fn public_key_from_pem(pem: &[u8]) -> Result<Vec<u8>, SnsError> {
    use x509_cert::der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(pem)
        .map_err(|e| SnsError::Certificate(format!("not a PEM certificate: {e}")))?;
    let spki = cert.tbs_certificate().subject_public_key_info();
    spki.subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| SnsError::Certificate("public key is not a whole number of bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sns_hosts_only() {
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/x.pem",
            "https://sns.us-gov-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=x",
        ] {
            assert!(is_sns_url(ok), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://x@evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://xsns.us-east-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.US-EAST-1.amazonaws.com/x.pem",
            "https://s3.us-east-1.amazonaws.com/x.pem",
            "https://127.0.0.1/x.pem",
        ] {
            assert!(!is_sns_url(bad), "{bad}");
        }
    }

    #[test]
    fn endpoint_keeps_the_path() {
        assert_eq!(
            after_host("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem"),
            "/SimpleNotificationService-a.pem"
        );
        assert_eq!(after_host("https://sns.x.amazonaws.com?q=1"), "?q=1");
        assert_eq!(after_host("https://sns.x.amazonaws.com"), "");
    }

    #[test]
    fn canonical_strings() {
        let m = SnsMessage {
            kind: "Notification".into(),
            message_id: "id".into(),
            topic_arn: "arn".into(),
            message: "hello".into(),
            timestamp: "ts".into(),
            signature_version: "2".into(),
            signature: String::new(),
            signing_cert_url: String::new(),
            subscribe_url: None,
            token: None,
            subject: Some("subj".into()),
        };
        assert_eq!(
            m.string_to_sign().unwrap(),
            "Message\nhello\nMessageId\nid\nSubject\nsubj\nTimestamp\nts\nTopicArn\narn\nType\nNotification\n"
        );
        let c = SnsMessage {
            kind: "SubscriptionConfirmation".into(),
            subscribe_url: Some("u".into()),
            token: Some("tok".into()),
            subject: None,
            ..m
        };
        assert_eq!(
            c.string_to_sign().unwrap(),
            "Message\nhello\nMessageId\nid\nSubscribeURL\nu\nTimestamp\nts\nToken\ntok\nTopicArn\narn\nType\nSubscriptionConfirmation\n"
        );
    }
}
