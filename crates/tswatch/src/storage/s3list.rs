//! S3 listings that one odd key cannot stop. object_store turns a whole
//! page of a listing into an error when one key on it is not a path it can
//! represent (a `..` segment, a control character), so one such object
//! under `raw/` would hide every file listed with it, on every pass. This
//! lists with ListObjectsV2 itself (keys URL-encoded, as S3 offers for keys
//! XML cannot carry), and skips the keys tswatch cannot use, saying so once.

use crate::state::keys;
use crate::storage::StoreError;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::HttpRequestBody;
use serde::Deserialize;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Listed {
    /// Its key, decoded and valid ([`keys::validate`]).
    pub(crate) key: String,
    /// Its ETag, as S3 gives it.
    pub(crate) etag: String,
    /// When it was last written.
    pub(crate) modified: chrono::DateTime<chrono::Utc>,
}

/// Where and how to reach the bucket: what object_store was configured
/// with (`Storage::s3` reads it from the same builder).
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    /// The bucket.
    pub(crate) bucket: String,
    /// Its region.
    pub(crate) region: String,
    /// The endpoint (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`), if any.
    pub(crate) endpoint: Option<String>,
    /// Virtual-hosted style: the endpoint names the bucket already.
    pub(crate) virtual_hosted: bool,
    /// Accept any TLS certificate (`AWS_ALLOW_INVALID_CERTIFICATES`).
    pub(crate) allow_invalid_certificates: bool,
    /// Send requests unsigned (`AWS_SKIP_SIGNATURE`).
    pub(crate) skip_signature: bool,
}

impl Target {
    /// The URL the bucket's listing is asked of, as object_store addresses
    /// the bucket.
    fn base(&self) -> String {
        let (bucket, region) = (&self.bucket, &self.region);
        match (&self.endpoint, self.virtual_hosted) {
            (Some(e), true) => e.trim_end_matches('/').to_string(),
            (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        }
    }
}

/// Attempts per page, for transient failures (network, 5xx, SlowDown).
const ATTEMPTS: u32 = 4;

/// Lists one bucket.
#[derive(Debug)]
pub(crate) struct Lister {
    http: reqwest::Client,
    /// Where the bucket is answered, path style or virtual-hosted.
    base: String,
    region: String,
    credentials: AwsCredentialProvider,
    skip_signature: bool,
    /// Unusable keys already reported.
    reported: crate::report::OnceSet,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page {
    #[serde(default)]
    contents: Vec<Entry>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    last_modified: chrono::DateTime<chrono::Utc>,
    #[serde(rename = "ETag", default)]
    e_tag: String,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(object_store::Error::Generic {
        store: "S3",
        source: e.to_string().into(),
    })
}

/// Query-string encoding (RFC 3986 unreserved characters kept), as SigV4
/// canonicalises it.
fn enc(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

impl Lister {
    /// A lister for `target`, signing with `credentials`.
    pub(crate) fn new(
        target: &Target,
        credentials: AwsCredentialProvider,
    ) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(60))
            .danger_accept_invalid_certs(target.allow_invalid_certificates)
            .build()
            .map_err(backend)?;
        Ok(Self {
            http,
            base: target.base(),
            region: target.region.clone(),
            credentials,
            skip_signature: target.skip_signature,
            reported: Default::default(),
        })
    }

    /// Every usable object under `prefix`; unusable keys are skipped.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.page_with_retries(prefix, token.as_deref()).await?;
            for e in page.contents {
                let key = match keys::decode_event_key(&e.key) {
                    Ok(k) => k,
                    Err(err) => {
                        self.report(&e.key, &err);
                        continue;
                    }
                };
                match keys::validate(&key) {
                    Ok(_) => out.push(Listed {
                        key,
                        etag: e.e_tag,
                        modified: e.last_modified,
                    }),
                    Err(err) => self.report(&key, &err),
                }
            }
            match page.next_continuation_token {
                Some(t) if page.is_truncated => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Logs an unusable key, once per key (per process).
    fn report(&self, key: &str, err: &keys::KeyError) {
        if self.reported.first(key) {
            tracing::warn!(key = ?key, error = %err, "skipping an object tswatch cannot use (reported once)");
        }
    }

    /// One page, tried again on transient failures (as object_store does).
    async fn page_with_retries(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<Page, StoreError> {
        let mut attempt = 1;
        loop {
            match self.page(prefix, token).await {
                Ok(p) => return Ok(p),
                Err((e, transient)) if transient && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "listing failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One page; on failure, whether it may pass if tried again.
    async fn page(&self, prefix: &str, token: Option<&str>) -> Result<Page, (StoreError, bool)> {
        let permanent = |e| (backend(e), false);
        let transient = |e| (backend(e), true);
        let mut url = format!(
            "{}?encoding-type=url&list-type=2&prefix={}",
            self.base,
            enc(prefix)
        );
        if let Some(t) = token {
            // Query parameters in SigV4's sorted order.
            url = format!(
                "{}?continuation-token={}&encoding-type=url&list-type=2&prefix={}",
                self.base,
                enc(t),
                enc(prefix)
            );
        }
        let mut rb = self.http.get(&url);
        if !self.skip_signature {
            let credential = self
                .credentials
                .get_credential()
                .await
                .map_err(|e| permanent(e.to_string()))?;
            let mut signed = http::Request::builder()
                .method(http::Method::GET)
                .uri(&url)
                .body(HttpRequestBody::empty())
                .map_err(|e| permanent(e.to_string()))?;
            AwsAuthorizer::new(&credential, "s3", &self.region)
                .try_authorize(&mut signed, None)
                .map_err(|e| permanent(e.to_string()))?;
            for (name, value) in signed.headers() {
                rb = rb.header(name, value);
            }
        }
        let resp = rb.send().await.map_err(|e| transient(e.to_string()))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| transient(e.to_string()))?;
        if !status.is_success() {
            let msg = format!("listing {prefix}: HTTP {status}: {body}");
            let again = status.is_server_error() || status.as_u16() == 429;
            return Err((backend(msg), again));
        }
        quick_xml::de::from_str(&body).map_err(|e| permanent(format!("listing {prefix}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>raw/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<Contents><Key>raw/a%20b.csv</Key><LastModified>2026-12-07T10:00:00.000Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>raw/..//x.csv</Key><LastModified>2026-12-07T10:00:01.000Z</LastModified><ETag>"d"</ETag><Size>3</Size></Contents>
<NextContinuationToken>tok+/=</NextContinuationToken></ListBucketResult>"#;
        let p: Page = quick_xml::de::from_str(xml).unwrap();
        assert!(p.is_truncated);
        assert_eq!(p.next_continuation_token.as_deref(), Some("tok+/="));
        assert_eq!(p.contents.len(), 2);
        assert_eq!(p.contents[0].e_tag, "\"abc\"");
        assert_eq!(
            keys::decode_event_key(&p.contents[0].key).unwrap(),
            "raw/a b.csv"
        );
        let empty: Page = quick_xml::de::from_str(
            "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
        )
        .unwrap();
        assert!(empty.contents.is_empty() && !empty.is_truncated);
        assert_eq!(enc("raw/x y+z~"), "raw%2Fx%20y%2Bz~");
        let t = |endpoint: Option<&str>, virtual_hosted| Target {
            bucket: "bkt".into(),
            region: "eu-west-1".into(),
            endpoint: endpoint.map(String::from),
            virtual_hosted,
            ..Default::default()
        };
        assert_eq!(
            t(None, false).base(),
            "https://s3.eu-west-1.amazonaws.com/bkt"
        );
        assert_eq!(
            t(None, true).base(),
            "https://bkt.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            t(Some("http://127.0.0.1:9000/"), false).base(),
            "http://127.0.0.1:9000/bkt"
        );
        assert_eq!(
            t(Some("https://bkt.minio.local"), true).base(),
            "https://bkt.minio.local"
        );
    }
}
