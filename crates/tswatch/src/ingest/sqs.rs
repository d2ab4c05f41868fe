//! A small Amazon SQS client: the JSON protocol over `reqwest`, signed with
//! SigV4 by `object_store`'s [`AwsAuthorizer`] with the AWS credential chain
//! the S3 storage uses ([`crate::storage::aws::Chain`]), without the SQS SDK.
//!
//! Only what the consumer needs: receive, delete, change visibility, plus
//! send and queue attributes (operations and tests).

use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::HttpRequestBody;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Why an SQS call failed.
#[derive(Debug, thiserror::Error)]
pub enum SqsError {
    /// The queue URL cannot be used.
    #[error("invalid SQS queue URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No credentials could be obtained.
    #[error("AWS credentials for SQS: {0}")]
    Credentials(String),
    /// The request could not be built or signed.
    #[error("cannot sign the SQS request: {0}")]
    Sign(String),
    /// The request did not reach SQS or the answer was cut.
    #[error("SQS {action}: {source}")]
    Transport {
        /// The action (`ReceiveMessage`, ...).
        action: &'static str,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// SQS refused the request.
    #[error("SQS {action} refused (HTTP {status}): {code}: {message}")]
    Service {
        /// The action.
        action: &'static str,
        /// HTTP status.
        status: u16,
        /// The error code, e.g. `QueueDoesNotExist`, `InvalidClientTokenId`.
        code: String,
        /// SQS's message.
        message: String,
    },
    /// The answer was not what the protocol promises.
    #[error("SQS {action}: unexpected response: {reason}")]
    Decode {
        /// The action.
        action: &'static str,
        /// What went wrong.
        reason: String,
    },
}

impl SqsError {
    /// Whether SQS refused the credentials or the signature.
    pub fn is_auth(&self) -> bool {
        matches!(self, SqsError::Service { status: 403, .. })
            || matches!(self, SqsError::Service { code, .. }
                if code.contains("Signature") || code.contains("ClientTokenId") || code.contains("AccessDenied"))
    }
}

/// A received message.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Message {
    /// SQS's id of the message.
    pub message_id: String,
    /// The handle to delete it or change its visibility (changes per receive).
    pub receipt_handle: String,
    /// The body (an S3 event, or an SNS envelope around one).
    #[serde(default)]
    pub body: String,
    /// System attributes that were asked for, e.g. `ApproximateReceiveCount`.
    #[serde(default)]
    pub attributes: HashMap<String, String>,
}

impl Message {
    /// How many times the message has been received, this time included
    /// (1 when SQS did not say).
    pub fn receive_count(&self) -> u32 {
        self.attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveRequest<'a> {
    queue_url: &'a str,
    max_number_of_messages: u32,
    wait_time_seconds: u32,
    visibility_timeout: u32,
    // Both spellings: `AttributeNames` is the older one, still honoured.
    attribute_names: [&'static str; 1],
    message_system_attribute_names: [&'static str; 1],
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ReceiveResponse {
    #[serde(default)]
    messages: Vec<Message>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteRequest<'a> {
    queue_url: &'a str,
    receipt_handle: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct VisibilityRequest<'a> {
    queue_url: &'a str,
    receipt_handle: &'a str,
    visibility_timeout: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SendRequest<'a> {
    queue_url: &'a str,
    message_body: &'a str,
}

/// Any answer whose content is not needed.
#[derive(Deserialize, Default)]
struct Ignored {}

/// An error answer of the JSON protocol.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(alias = "Message", default)]
    message: String,
}

/// A client for one queue.
#[derive(Debug, Clone)]
pub struct SqsClient {
    http: reqwest::Client,
    queue_url: String,
    /// Where requests are POSTed: the queue URL's scheme, host and port.
    endpoint: String,
    region: String,
    credentials: AwsCredentialProvider,
}

impl SqsClient {
    /// A client for `queue_url` with explicit credentials.
    pub fn new(
        queue_url: &str,
        region: Option<&str>,
        credentials: AwsCredentialProvider,
    ) -> Result<Self, SqsError> {
        let (endpoint, url_region) = split_queue_url(queue_url)?;
        let region = url_region
            .or(region.map(str::to_string))
            .unwrap_or_else(|| "us-east-1".to_string());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Long polls last up to 20 s; leave room for them.
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| SqsError::Transport {
                action: "client",
                source,
            })?;
        Ok(Self {
            http,
            queue_url: queue_url.to_string(),
            endpoint,
            region,
            credentials,
        })
    }

    /// Long-polls for up to `max` (1..=10) messages, waiting up to `wait`
    /// seconds (0..=20); each comes back invisible to others for
    /// `visibility` seconds.
    pub async fn receive(
        &self,
        max: u32,
        wait: u32,
        visibility: u32,
    ) -> Result<Vec<Message>, SqsError> {
        let r: ReceiveResponse = self
            .call(
                "ReceiveMessage",
                &ReceiveRequest {
                    queue_url: &self.queue_url,
                    max_number_of_messages: max.clamp(1, 10),
                    wait_time_seconds: wait.min(20),
                    visibility_timeout: visibility,
                    attribute_names: ["ApproximateReceiveCount"],
                    message_system_attribute_names: ["ApproximateReceiveCount"],
                },
            )
            .await?;
        Ok(r.messages)
    }

    /// Deletes a received message.
    pub async fn delete(&self, receipt_handle: &str) -> Result<(), SqsError> {
        let _: Ignored = self
            .call(
                "DeleteMessage",
                &DeleteRequest {
                    queue_url: &self.queue_url,
                    receipt_handle,
                },
            )
            .await?;
        Ok(())
    }

    /// Makes a received message invisible for `seconds` more from now
    /// (0: visible again at once).
    pub async fn change_visibility(
        &self,
        receipt_handle: &str,
        seconds: u32,
    ) -> Result<(), SqsError> {
        let _: Ignored = self
            .call(
                "ChangeMessageVisibility",
                &VisibilityRequest {
                    queue_url: &self.queue_url,
                    receipt_handle,
                    visibility_timeout: seconds.min(43_200),
                },
            )
            .await?;
        Ok(())
    }

    /// Sends a message.
    pub async fn send(&self, body: &str) -> Result<(), SqsError> {
        let _: Ignored = self
            .call(
                "SendMessage",
                &SendRequest {
                    queue_url: &self.queue_url,
                    message_body: body,
                },
            )
            .await?;
        Ok(())
    }

    /// One signed JSON-protocol call.
    async fn call<Req: Serialize, Resp: DeserializeOwned + Default>(
        &self,
        action: &'static str,
        req: &Req,
    ) -> Result<Resp, SqsError> {
        let body = serde_json::to_vec(req).map_err(|e| SqsError::Sign(e.to_string()))?;
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| SqsError::Credentials(e.to_string()))?;
        let mut signed = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{}/", self.endpoint))
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            .body(HttpRequestBody::from(body.clone()))
            .map_err(|e| SqsError::Sign(e.to_string()))?;
        AwsAuthorizer::new(&credential, "sqs", &self.region)
            .try_authorize(&mut signed, None)
            .map_err(|e| SqsError::Sign(e.to_string()))?;
        let mut rb = self.http.post(format!("{}/", self.endpoint)).body(body);
        for (name, value) in signed.headers() {
            rb = rb.header(name, value);
        }
        let resp = rb
            .send()
            .await
            .map_err(|source| SqsError::Transport { action, source })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| SqsError::Transport { action, source })?;
        if !status.is_success() {
            let (code, message) = error_of(&bytes);
            return Err(SqsError::Service {
                action,
                status: status.as_u16(),
                code,
                message,
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Resp::default());
        }
        serde_json::from_slice(&bytes).map_err(|e| SqsError::Decode {
            action,
            reason: e.to_string(),
        })
    }
}

/// `(code, message)` of an error answer: JSON (`__type`, `message`), or the
/// query protocol's XML (`<Code>`, `<Message>`) that some endpoints and
/// emulators still send.
fn error_of(bytes: &[u8]) -> (String, String) {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(bytes) {
        let code = e.kind.rsplit('#').next().unwrap_or_default().to_string();
        return (code, e.message);
    }
    let text = String::from_utf8_lossy(bytes);
    let tag = |name: &str| {
        text.split(&format!("<{name}>"))
            .nth(1)
            .and_then(|t| t.split(&format!("</{name}>")).next())
            .map(str::to_string)
    };
    match tag("Code") {
        Some(code) => (code, tag("Message").unwrap_or_default()),
        None => (String::new(), text.chars().take(300).collect()),
    }
}

/// `(scheme://host[:port], region named by an AWS host)` of a queue URL.
fn split_queue_url(url: &str) -> Result<(String, Option<String>), SqsError> {
    let bad = |reason| SqsError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("https://")
        .map(|r| ("https", r))
        .or_else(|| url.strip_prefix("http://").map(|r| ("http", r)));
    let Some((scheme, rest)) = rest else {
        return Err(bad("must start with https:// (or http:// for an emulator)"));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("must name a host, without user information"));
    }
    if path.trim_matches('/').is_empty() {
        return Err(bad("must have the path /<account>/<queue name>"));
    }
    let host = authority.split(':').next().unwrap_or_default();
    let aws = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"));
    // `sqs.<region>.amazonaws.com`, or the legacy `<region>.queue.amazonaws.com`.
    let region = aws
        .and_then(|h| h.strip_prefix("sqs.").or_else(|| h.strip_suffix(".queue")))
        .filter(|r| {
            !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        .map(str::to_string);
    Ok((format!("{scheme}://{authority}"), region))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls() {
        let (ep, region) =
            split_queue_url("https://sqs.eu-west-1.amazonaws.com/123456789012/tswatch").unwrap();
        assert_eq!(ep, "https://sqs.eu-west-1.amazonaws.com");
        assert_eq!(region.as_deref(), Some("eu-west-1"));
        let (_, region) =
            split_queue_url("https://ap-south-1.queue.amazonaws.com/123456789012/q").unwrap();
        assert_eq!(region.as_deref(), Some("ap-south-1"));
        let (_, region) =
            split_queue_url("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q").unwrap();
        assert_eq!(region.as_deref(), Some("cn-north-1"));
        let (_, region) = split_queue_url("https://queue.amazonaws.com/123456789012/q").unwrap();
        assert_eq!(region, None);
        let (ep, region) = split_queue_url("http://127.0.0.1:5000/123456789012/q").unwrap();
        assert_eq!(ep, "http://127.0.0.1:5000");
        assert_eq!(region, None);
        for bad in [
            "sqs.us-east-1.amazonaws.com/1/q",
            "ftp://x/1/q",
            "https://x@evil/1/q",
            "https://sqs.us-east-1.amazonaws.com",
            "https:///1/q",
        ] {
            assert!(split_queue_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn error_answers() {
        assert_eq!(
            error_of(br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"gone"}"#),
            ("QueueDoesNotExist".into(), "gone".into())
        );
        assert_eq!(
            error_of(b"<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></ErrorResponse>"),
            ("SignatureDoesNotMatch".into(), "no".into())
        );
        assert_eq!(error_of(b"oops"), (String::new(), "oops".into()));
    }

    #[test]
    fn receive_count_defaults_to_one() {
        let m: Message = serde_json::from_str(
            r#"{"MessageId":"a","ReceiptHandle":"h","Body":"{}","Attributes":{"ApproximateReceiveCount":"3"}}"#,
        )
        .unwrap();
        assert_eq!(m.receive_count(), 3);
        let m: Message = serde_json::from_str(r#"{"MessageId":"a","ReceiptHandle":"h"}"#).unwrap();
        assert_eq!(m.receive_count(), 1);
    }
}
