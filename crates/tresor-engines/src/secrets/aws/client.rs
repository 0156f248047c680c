//! The few IAM and STS calls this engine makes, as SigV4-signed form POSTs
//! of AWS's query protocol, with their XML answers parsed by `quick-xml`.
//!
//! The signing function is a copy of the auth method's (`auth::aws`), whose
//! module is private: engines do not reach into each other.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tresor_sdk::BackendError;
use zeroize::Zeroizing;

const IAM_VERSION: &str = "2010-05-08";
const STS_VERSION: &str = "2011-06-15";
/// IAM is a global service; AWS wants its requests signed for us-east-1.
const IAM_SIGNING_REGION: &str = "us-east-1";
/// Largest answer we read; list answers are paged by AWS well below this.
const MAX_ANSWER: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);
/// Retries when `max_retries` is -1, as the AWS SDKs' standard mode.
const DEFAULT_RETRIES: u32 = 3;
/// Bound on what a caller may configure: each retry backs off exponentially.
const MAX_RETRIES: u32 = 10;

/// The credentials the engine acts with. The secret is wiped on drop and
/// never printed.
#[derive(Clone)]
pub(super) struct RootCreds {
    pub(super) access_key: String,
    pub(super) secret_key: Zeroizing<String>,
    pub(super) session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for RootCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCreds")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// A failed AWS call. `Api` carries AWS's error code, which callers use to
/// tell "already gone" (`NoSuchEntity`) from real failures.
#[derive(Debug)]
pub(super) enum AwsError {
    Api {
        status: u16,
        code: String,
        message: String,
    },
    Transport(String),
    Parse(String),
}

impl AwsError {
    pub(super) fn is_no_such_entity(&self) -> bool {
        matches!(self, AwsError::Api { code, .. } if code == "NoSuchEntity")
    }

    fn retryable(&self) -> bool {
        match self {
            AwsError::Transport(_) => true,
            AwsError::Api { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || matches!(
                        code.as_str(),
                        "Throttling" | "ThrottlingException" | "RequestLimitExceeded"
                    )
            }
            AwsError::Parse(_) => false,
        }
    }

    /// For the operator: AWS's own code and message (which name the entity,
    /// never a secret), prefixed with what we were doing.
    pub(super) fn into_backend(self, action: &str) -> BackendError {
        match self {
            AwsError::Api {
                status,
                code,
                message,
            } if status < 500 => {
                BackendError::bad_request(format!("AWS {action} failed: {code}: {message}"))
            }
            AwsError::Api {
                status,
                code,
                message,
            } => BackendError::Internal(format!(
                "AWS {action} failed (HTTP {status}): {code}: {message}"
            )),
            AwsError::Transport(e) => {
                BackendError::Internal(format!("AWS {action}: request failed: {e}"))
            }
            AwsError::Parse(e) => {
                BackendError::Internal(format!("AWS {action}: unreadable answer: {e}"))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Service {
    Iam,
    Sts,
}

/// One configured connection to AWS.
pub(super) struct AwsClient {
    creds: RootCreds,
    iam: reqwest::Url,
    sts: reqwest::Url,
    sts_region: String,
    retries: u32,
    http: reqwest::Client,
}

impl AwsClient {
    pub(super) fn new(
        creds: RootCreds,
        iam: reqwest::Url,
        sts: reqwest::Url,
        sts_region: String,
        max_retries: i64,
    ) -> Result<Self, BackendError> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            // A redirect would carry a signed request somewhere we did not choose.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BackendError::Internal(format!("http client: {e}")))?;
        let retries = u32::try_from(max_retries)
            .map(|r| r.min(MAX_RETRIES))
            .unwrap_or(DEFAULT_RETRIES);
        Ok(AwsClient {
            creds,
            iam,
            sts,
            sts_region,
            retries,
            http,
        })
    }

    /// Call `action` and parse its answer into `T`, retrying throttling,
    /// server errors and transport failures with exponential back-off.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        service: Service,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<T, AwsError> {
        let mut attempt = 0;
        loop {
            match self.call_once(service, action, params).await {
                Ok(text) => {
                    return quick_xml::de::from_str(&text)
                        .map_err(|e| AwsError::Parse(format!("{action}: {e}")))
                }
                Err(e) if e.retryable() && attempt < self.retries => {
                    attempt += 1;
                    let wait = Duration::from_millis(100 * (1u64 << attempt.min(6)));
                    tracing::debug!(action, attempt, "retrying AWS call");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn call_once(
        &self,
        service: Service,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<String, AwsError> {
        let (url, region, name, version) = match service {
            Service::Iam => (&self.iam, IAM_SIGNING_REGION, "iam", IAM_VERSION),
            Service::Sts => (&self.sts, self.sts_region.as_str(), "sts", STS_VERSION),
        };
        let body = form_body(action, params, version);
        let headers = sign_form_post(&self.creds, url, region, name, &body)
            .map_err(|e| AwsError::Transport(e.to_string()))?;
        let mut b = self.http.post(url.clone()).body(body);
        for (k, v) in &headers {
            // reqwest sets Host from the URL, the same value we signed.
            if k != "host" {
                b = b.header(k.as_str(), v.as_str());
            }
        }
        let resp = b
            .send()
            .await
            .map_err(|e| AwsError::Transport(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let text = read_limited(resp).await?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let (code, message) = parse_error(&text);
        Err(AwsError::Api {
            status,
            code,
            message,
        })
    }
}

/// The form body of a query-protocol call. A plain function: the
/// serializer is not `Send` and must not live across an await.
fn form_body(action: &str, params: &[(&str, &str)], version: &str) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action);
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.append_pair("Version", version);
    form.finish()
}

async fn read_limited(mut resp: reqwest::Response) -> Result<String, AwsError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| AwsError::Transport(e.without_url().to_string()))?
    {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err(AwsError::Parse("answer too large".into()));
        }
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out).map_err(|_| AwsError::Parse("answer is not UTF-8".into()))
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(rename = "Error")]
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

fn parse_error(xml: &str) -> (String, String) {
    match quick_xml::de::from_str::<ErrorResponse>(xml) {
        Ok(e) => (e.error.code, e.error.message),
        Err(_) => ("Unknown".into(), "unreadable error answer".into()),
    }
}

/// Sign a form POST for an AWS query API with SigV4 (the shared signer).
fn sign_form_post(
    creds: &RootCreds,
    url: &reqwest::Url,
    region: &str,
    service: &str,
    body: &str,
) -> Result<Vec<(String, String)>, BackendError> {
    crate::sigv4::sign_form_post(
        crate::sigv4::Keys {
            access_key: &creds.access_key,
            secret_key: creds.secret_key.as_str(),
            session_token: creds.session_token.as_ref().map(|t| t.as_str()),
        },
        url,
        region,
        service,
        body,
        &[],
    )
}

// ----- answers ----------------------------------------------------------------

/// `<X><member>..</member>..</X>`: AWS's query-protocol list.
#[derive(Debug, Deserialize)]
pub(super) struct Members<T> {
    #[serde(rename = "member", default = "Vec::new")]
    pub(super) member: Vec<T>,
}

// By hand: the derive would require `T: Default`.
impl<T> Default for Members<T> {
    fn default() -> Self {
        Members { member: Vec::new() }
    }
}

/// Where a paged list answer continues: `Some(marker)` when truncated.
pub(super) type NextPage = Option<String>;

fn next_page(is_truncated: bool, marker: Option<String>) -> NextPage {
    marker.filter(|_| is_truncated)
}

macro_rules! paged {
    ($($t:ty),*) => {$(
        impl $t {
            pub(super) fn next(&self) -> NextPage {
                next_page(self.is_truncated, self.marker.clone())
            }
        }
    )*};
}
paged!(
    ListAccessKeysResult,
    ListUserPoliciesResult,
    ListAttachedUserPoliciesResult,
    ListGroupsForUserResult
);

#[derive(Debug, Deserialize)]
pub(super) struct UserResult {
    #[serde(rename = "User")]
    pub(super) user: User,
}

#[derive(Debug, Deserialize)]
pub(super) struct User {
    #[serde(rename = "UserName")]
    pub(super) user_name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateUserResponse {
    #[serde(rename = "CreateUserResult")]
    pub(super) result: UserResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct GetUserResponse {
    #[serde(rename = "GetUserResult")]
    pub(super) result: UserResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateAccessKeyResponse {
    #[serde(rename = "CreateAccessKeyResult")]
    pub(super) result: CreateAccessKeyResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateAccessKeyResult {
    #[serde(rename = "AccessKey")]
    pub(super) key: NewAccessKey,
}

#[derive(Deserialize)]
pub(super) struct NewAccessKey {
    #[serde(rename = "AccessKeyId")]
    pub(super) access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    pub(super) secret_access_key: String,
}

impl std::fmt::Debug for NewAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccessKey")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ListAccessKeysResponse {
    #[serde(rename = "ListAccessKeysResult")]
    pub(super) result: ListAccessKeysResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListAccessKeysResult {
    #[serde(rename = "AccessKeyMetadata", default)]
    pub(super) keys: Members<AccessKeyMetadata>,
    #[serde(rename = "IsTruncated", default)]
    pub(super) is_truncated: bool,
    #[serde(rename = "Marker", default)]
    pub(super) marker: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AccessKeyMetadata {
    #[serde(rename = "AccessKeyId")]
    pub(super) access_key_id: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListUserPoliciesResponse {
    #[serde(rename = "ListUserPoliciesResult")]
    pub(super) result: ListUserPoliciesResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListUserPoliciesResult {
    #[serde(rename = "PolicyNames", default)]
    pub(super) names: Members<String>,
    #[serde(rename = "IsTruncated", default)]
    pub(super) is_truncated: bool,
    #[serde(rename = "Marker", default)]
    pub(super) marker: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListAttachedUserPoliciesResponse {
    #[serde(rename = "ListAttachedUserPoliciesResult")]
    pub(super) result: ListAttachedUserPoliciesResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListAttachedUserPoliciesResult {
    #[serde(rename = "AttachedPolicies", default)]
    pub(super) policies: Members<AttachedPolicy>,
    #[serde(rename = "IsTruncated", default)]
    pub(super) is_truncated: bool,
    #[serde(rename = "Marker", default)]
    pub(super) marker: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AttachedPolicy {
    #[serde(rename = "PolicyArn")]
    pub(super) arn: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListGroupsForUserResponse {
    #[serde(rename = "ListGroupsForUserResult")]
    pub(super) result: ListGroupsForUserResult,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListGroupsForUserResult {
    #[serde(rename = "Groups", default)]
    pub(super) groups: Members<Group>,
    #[serde(rename = "IsTruncated", default)]
    pub(super) is_truncated: bool,
    #[serde(rename = "Marker", default)]
    pub(super) marker: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Group {
    #[serde(rename = "GroupName")]
    pub(super) name: String,
}

/// Any answer whose content we do not need (DeleteUser, PutUserPolicy, ...).
pub(super) type Ignored = serde::de::IgnoredAny;

#[derive(Deserialize)]
pub(super) struct StsCredentials {
    #[serde(rename = "AccessKeyId")]
    pub(super) access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    pub(super) secret_access_key: String,
    #[serde(rename = "SessionToken")]
    pub(super) session_token: String,
    #[serde(rename = "Expiration")]
    pub(super) expiration: String,
}

#[derive(Deserialize)]
pub(super) struct AssumeRoleResponse {
    #[serde(rename = "AssumeRoleResult")]
    pub(super) result: AssumeRoleResult,
}

#[derive(Deserialize)]
pub(super) struct AssumeRoleResult {
    #[serde(rename = "Credentials")]
    pub(super) credentials: StsCredentials,
    #[serde(rename = "AssumedRoleUser")]
    pub(super) user: StsArn,
}

#[derive(Deserialize)]
pub(super) struct GetFederationTokenResponse {
    #[serde(rename = "GetFederationTokenResult")]
    pub(super) result: GetFederationTokenResult,
}

#[derive(Deserialize)]
pub(super) struct GetFederationTokenResult {
    #[serde(rename = "Credentials")]
    pub(super) credentials: StsCredentials,
    #[serde(rename = "FederatedUser")]
    pub(super) user: StsArn,
}

#[derive(Deserialize)]
pub(super) struct StsArn {
    #[serde(rename = "Arn", default)]
    pub(super) arn: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_errors() {
        let xml = r#"<ListAttachedUserPoliciesResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <ListAttachedUserPoliciesResult>
    <AttachedPolicies>
      <member><PolicyName>A</PolicyName><PolicyArn>arn:aws:iam::aws:policy/A</PolicyArn></member>
      <member><PolicyName>B</PolicyName><PolicyArn>arn:aws:iam::aws:policy/B</PolicyArn></member>
    </AttachedPolicies>
    <IsTruncated>true</IsTruncated><Marker>m1</Marker>
  </ListAttachedUserPoliciesResult>
</ListAttachedUserPoliciesResponse>"#;
        let r: ListAttachedUserPoliciesResponse = quick_xml::de::from_str(xml).unwrap();
        let arns: Vec<_> = r.result.policies.member.iter().map(|p| &p.arn).collect();
        assert_eq!(
            arns,
            ["arn:aws:iam::aws:policy/A", "arn:aws:iam::aws:policy/B"]
        );
        assert_eq!(r.result.next().as_deref(), Some("m1"));

        let empty = r#"<ListUserPoliciesResponse><ListUserPoliciesResult><PolicyNames/><IsTruncated>false</IsTruncated></ListUserPoliciesResult></ListUserPoliciesResponse>"#;
        let r: ListUserPoliciesResponse = quick_xml::de::from_str(empty).unwrap();
        assert!(r.result.names.member.is_empty());

        let err = r#"<ErrorResponse><Error><Type>Sender</Type><Code>NoSuchEntity</Code><Message>gone</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        assert_eq!(parse_error(err), ("NoSuchEntity".into(), "gone".into()));
        assert_eq!(parse_error("junk").0, "Unknown");
    }
}
