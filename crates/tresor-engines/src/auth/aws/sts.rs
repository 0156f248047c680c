//! Talking to AWS: replaying a client's GetCallerIdentity to STS, and the
//! server's own signed IAM lookups (GetUser/GetRole) for unique IDs.

use std::time::Duration;

use quick_xml::events::Event;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tresor_sdk::BackendError;

use super::iam_request::CheckedRequest;

/// Longest answer we read from AWS; GetCallerIdentity is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(15);
pub(crate) const DEFAULT_IAM_ENDPOINT: &str = "https://iam.amazonaws.com";

/// Who STS says signed the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallerIdentity {
    pub(crate) arn: String,
    pub(crate) user_id: String,
    pub(crate) account: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GciResponse {
    #[serde(rename = "@xmlns", default)]
    _xmlns: Option<IgnoredAny>,
    #[serde(rename = "GetCallerIdentityResult")]
    result: GciResult,
    #[serde(rename = "ResponseMetadata", default)]
    _meta: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GciResult {
    #[serde(rename = "Arn")]
    arn: String,
    #[serde(rename = "UserId")]
    user_id: String,
    #[serde(rename = "Account")]
    account: String,
}

/// The name of the document element: serde's XML mapping does not check it.
fn root_name(xml: &str) -> Option<String> {
    let mut r = quick_xml::Reader::from_str(xml);
    loop {
        match r.read_event().ok()? {
            Event::Start(e) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned())
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Strict parse of STS's answer: the expected document, each field once
/// and non-empty, nothing unknown.
pub(crate) fn parse_caller_identity(xml: &str) -> Result<CallerIdentity, BackendError> {
    let bad = |why: String| {
        BackendError::bad_request(format!("invalid GetCallerIdentity answer from STS: {why}"))
    };
    if root_name(xml).as_deref() != Some("GetCallerIdentityResponse") {
        return Err(bad("not a GetCallerIdentityResponse".into()));
    }
    let r: GciResponse = quick_xml::de::from_str(xml).map_err(|e| bad(e.to_string()))?;
    let GciResult {
        arn,
        user_id,
        account,
    } = r.result;
    let (arn, user_id, account) = (
        arn.trim().to_string(),
        user_id.trim().to_string(),
        account.trim().to_string(),
    );
    if arn.is_empty() || user_id.is_empty() || account.is_empty() {
        return Err(bad("empty Arn, UserId or Account".into()));
    }
    Ok(CallerIdentity {
        arn,
        user_id,
        account,
    })
}

fn client() -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        // A redirect would carry the signed request somewhere we did not choose.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| BackendError::Internal(format!("http client: {e}")))
}

async fn read_limited(resp: reqwest::Response) -> Result<String, BackendError> {
    let mut resp = resp;
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BackendError::Internal(format!("reading AWS answer: {e}")))?
    {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err(BackendError::Internal("AWS answer too large".into()));
        }
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out).map_err(|_| BackendError::Internal("AWS answer is not UTF-8".into()))
}

/// Send the checked request to the configured endpoint (never the client's
/// URL), with the Host the client signed for.
pub(crate) async fn replay(
    endpoint: &reqwest::Url,
    req: &CheckedRequest,
) -> Result<CallerIdentity, BackendError> {
    let mut target = endpoint.clone();
    target.set_path("/");
    target.set_query(None);
    let mut builder = client()?
        .post(target)
        .header(reqwest::header::HOST, &req.host)
        .body(req.body.clone());
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let resp = builder.send().await.map_err(|e| {
        // The error text of reqwest names the URL, never headers or body.
        tracing::warn!(error = %e, "STS request failed");
        BackendError::Internal("error making upstream request to STS".into())
    })?;
    let status = resp.status();
    let text = read_limited(resp).await?;
    if !status.is_success() {
        return Err(BackendError::bad_request(format!(
            "STS refused the signed GetCallerIdentity request (HTTP {})",
            status.as_u16()
        )));
    }
    parse_caller_identity(&text)
}

/// Credentials for the server's own IAM calls.
#[derive(Clone)]
pub(crate) struct AwsCreds {
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
    pub(crate) session_token: Option<String>,
}

impl std::fmt::Debug for AwsCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCreds")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct GetUserResponse {
    #[serde(rename = "GetUserResult")]
    result: GetUserResult,
}
#[derive(Debug, Deserialize)]
struct GetUserResult {
    #[serde(rename = "User")]
    user: Entity,
}
#[derive(Debug, Deserialize)]
struct GetRoleResponse {
    #[serde(rename = "GetRoleResult")]
    result: GetRoleResult,
}
#[derive(Debug, Deserialize)]
struct GetRoleResult {
    #[serde(rename = "Role")]
    role: Entity,
}
#[derive(Debug, Deserialize)]
struct Entity {
    #[serde(rename = "Arn")]
    arn: String,
    #[serde(rename = "UserId", alias = "RoleId")]
    id: String,
}

/// Sign a form POST for an AWS query API (IAM here) with SigV4.
pub(crate) fn sign_form_post(
    creds: &AwsCreds,
    url: &reqwest::Url,
    region: &str,
    service: &str,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> Result<Vec<(String, String)>, BackendError> {
    crate::sigv4::sign_form_post(
        crate::sigv4::Keys {
            access_key: &creds.access_key,
            secret_key: &creds.secret_key,
            session_token: creds.session_token.as_deref(),
        },
        url,
        region,
        service,
        body,
        extra_headers,
    )
}

/// The unique ID (AIDA…/AROA…) of an IAM user or role, and its full ARN.
pub(crate) async fn resolve_unique_id(
    creds: &AwsCreds,
    iam_endpoint: &reqwest::Url,
    kind: &str,
    name: &str,
) -> Result<(String, String), BackendError> {
    let (action, param) = match kind {
        "user" => ("GetUser", "UserName"),
        _ => ("GetRole", "RoleName"),
    };
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", action)
        .append_pair(param, name)
        .append_pair("Version", "2010-05-08")
        .finish();
    let mut url = iam_endpoint.clone();
    url.set_path("/");
    let headers = sign_form_post(creds, &url, "us-east-1", "iam", &body, &[])?;
    let mut b = client()?.post(url).body(body);
    for (k, v) in &headers {
        if k != "host" {
            b = b.header(k.as_str(), v.as_str());
        }
    }
    let resp = b.send().await.map_err(|e| {
        tracing::warn!(error = %e, "IAM request failed");
        BackendError::Internal("error making upstream request to IAM".into())
    })?;
    let status = resp.status();
    let text = read_limited(resp).await?;
    if !status.is_success() {
        return Err(BackendError::bad_request(format!(
            "bound_iam_principal_arn: IAM {action} for {name:?} failed (HTTP {}); set resolve_aws_unique_ids=false to bind without resolving",
            status.as_u16()
        )));
    }
    let parse_err =
        |e: quick_xml::DeError| BackendError::Internal(format!("IAM {action} answer: {e}"));
    let e = if kind == "user" {
        quick_xml::de::from_str::<GetUserResponse>(&text)
            .map_err(parse_err)?
            .result
            .user
    } else {
        quick_xml::de::from_str::<GetRoleResponse>(&text)
            .map_err(parse_err)?
            .result
            .role
    };
    Ok((e.id.trim().to_string(), e.arn.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:iam::123456789012:user/Alice</Arn>
    <UserId>AIDACKCEVSQ6C2EXAMPLE</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>01234567-89ab</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;

    #[test]
    fn parses_sts_answer_strictly() {
        let id = parse_caller_identity(GOOD).expect("good");
        assert_eq!(id.arn, "arn:aws:iam::123456789012:user/Alice");
        assert_eq!(id.user_id, "AIDACKCEVSQ6C2EXAMPLE");
        for bad in [
            GOOD.replace("GetCallerIdentityResponse", "AssumeRoleResponse"),
            GOOD.replace("<Account>123456789012</Account>", ""),
            GOOD.replace("<Account>", "<Extra>x</Extra><Account>"),
            GOOD.replace(
                "<Arn>arn:aws:iam::123456789012:user/Alice</Arn>",
                "<Arn>a</Arn><Arn>b</Arn>",
            ),
            GOOD.replace(
                "<UserId>AIDACKCEVSQ6C2EXAMPLE</UserId>",
                "<UserId> </UserId>",
            ),
            "not xml".to_string(),
        ] {
            assert!(parse_caller_identity(&bad).is_err(), "{bad}");
        }
    }
}
