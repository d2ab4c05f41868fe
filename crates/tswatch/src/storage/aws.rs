//! AWS credentials and region the way every AWS tool finds them: the AWS
//! SDK's own provider chain (`aws-config`) — environment, shared
//! `~/.aws/credentials` and `~/.aws/config` with `AWS_PROFILE`, SSO,
//! `credential_process`, web identity, container and instance roles —
//! handed to `object_store` (S3) and the SQS client through
//! object_store's credential-provider hook.

use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError};
use object_store::CredentialProvider;
use object_store::aws::{AwsCredential, AwsCredentialProvider};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Credentials are renewed this long before they expire (at most half
/// their remaining life).
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Credentials without an expiry (static keys, which may be rotated) are
/// read again after this long, as the SDK's own cache does.
const STATIC_FOR: Duration = Duration::from_secs(900);

/// The region and credentials of the AWS environment, resolved once and
/// shared by everything that talks to AWS (S3, SQS, the emulator's
/// certificate endpoint), so that the chain and its cache exist once.
#[derive(Debug, Clone)]
pub(crate) struct Aws {
    /// See [`region`].
    pub(crate) region: String,
    /// The [`Chain`], as `object_store` and the SQS client take it.
    pub(crate) credentials: AwsCredentialProvider,
}

impl Aws {
    /// Resolves the region, then builds the credential chain for it.
    pub(crate) async fn load() -> Self {
        let region = region().await;
        let credentials = Chain::load(&region).await.into_provider();
        Self {
            region,
            credentials,
        }
    }
}

/// No credentials could be had from any source of the chain.
#[derive(Debug, thiserror::Error)]
#[error("no AWS credentials: {0}")]
pub(crate) struct NoCredentials(String);

/// The AWS SDK's default credential chain, cached until shortly before
/// the credentials expire.
#[derive(Debug)]
pub(crate) struct Chain {
    chain: aws_config::default_provider::credentials::DefaultCredentialsChain,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

/// A credential, when to renew it, and when it stops working.
#[derive(Debug)]
struct Cached {
    credential: Arc<AwsCredential>,
    renew_at: SystemTime,
    expiry: Option<SystemTime>,
}

impl Chain {
    /// The chain for the current environment (`AWS_PROFILE` and the
    /// shared files are read as the AWS CLI reads them) in `region`, given
    /// so that building the chain never asks the instance metadata service
    /// for one.
    pub(crate) async fn load(region: &str) -> Self {
        Self {
            chain: aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                .region(aws_config::Region::new(region.to_string()))
                .build()
                .await,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// As the provider `object_store` and the SQS client take.
    pub(crate) fn into_provider(self) -> AwsCredentialProvider {
        Arc::new(self)
    }
}

#[async_trait::async_trait]
impl CredentialProvider for Chain {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some(c) = &*cached
            && now < c.renew_at
        {
            return Ok(c.credential.clone());
        }
        match self.chain.provide_credentials().await {
            Ok(got) => {
                let credential = Arc::new(AwsCredential {
                    key_id: got.access_key_id().to_string(),
                    secret_key: got.secret_access_key().to_string(),
                    token: got.session_token().map(str::to_string),
                });
                let expiry = got.expiry();
                let renew_at = match expiry {
                    Some(e) => {
                        let left = e.duration_since(now).unwrap_or_default();
                        now + left - RENEW_BEFORE.min(left / 2)
                    }
                    None => now + STATIC_FOR,
                };
                *cached = Some(Cached {
                    credential: credential.clone(),
                    renew_at,
                    expiry,
                });
                Ok(credential)
            }
            // A failed renewal does not end credentials that still work.
            Err(e) => match &*cached {
                Some(c) if c.expiry.is_none_or(|x| now < x) => {
                    tracing::warn!(error = %chain_text(&e), "could not renew AWS credentials; using the current ones");
                    Ok(c.credential.clone())
                }
                _ => Err(object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(describe(&e)),
                }),
            },
        }
    }
}

/// What went wrong, in the user's terms (never a metadata-endpoint URL
/// when there simply are no credentials).
fn describe(e: &CredentialsError) -> NoCredentials {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    NoCredentials(match e {
        CredentialsError::CredentialsNotLoaded(_) => format!(
            "none found in the environment (AWS_ACCESS_KEY_ID), the shared files \
             (~/.aws/credentials, ~/.aws/config; profile {profile:?}), web identity, \
             or a container or instance role"
        ),
        CredentialsError::ProviderTimedOut(_) => {
            "the credential provider timed out (an instance or container role that does not answer?)"
                .to_string()
        }
        // The instance role is the chain's last resort: when it fails,
        // nothing before it had credentials either.
        other if chain_text(other).contains("IMDS") => {
            format!(
                "none found in the environment (AWS_ACCESS_KEY_ID), the shared files \
                 (~/.aws/credentials, ~/.aws/config; profile {profile:?}) or web identity, \
                 and no instance role answered"
            )
        }
        other => chain_text(other),
    })
}

/// An error and its sources on one line, each said once.
fn chain_text(e: &CredentialsError) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    msg
}

/// The region: `AWS_REGION` / `AWS_DEFAULT_REGION`, else the profile's
/// `region` (what `aws configure` writes), else `us-east-1`. The instance
/// metadata service is not asked (it would stall every start off AWS).
pub(crate) async fn region() -> String {
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Ok(r) = std::env::var(var)
            && !r.is_empty()
        {
            return r;
        }
    }
    use aws_config::meta::region::ProvideRegion;
    aws_config::profile::ProfileFileRegionProvider::new()
        .region()
        .await
        .map_or_else(|| "us-east-1".to_string(), |r| r.to_string())
}
