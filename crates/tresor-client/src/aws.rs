//! Login helper for the `aws` auth method's IAM flow, as `vault login
//! -method=aws` does it.
//!
//! The client never sends its AWS secret to the server: it SigV4-signs an
//! `sts:GetCallerIdentity` request and hands the signed request (method, URL,
//! body, headers, each base64) to `auth/<mount>/login`; the server replays it
//! to STS and learns who signed it. `X-Vault-AWS-IAM-Server-ID` is signed
//! with the rest, so a request made for one server cannot be replayed to
//! another that requires a different value.

use std::fmt;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::{Client, ClientError, Envelope};

/// The only request the server replays.
pub const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// STS's global endpoint, served from us-east-1.
pub const STS_GLOBAL_URL: &str = "https://sts.amazonaws.com/";
/// Region signed for when none is given (Vault's CLI default).
pub const DEFAULT_REGION: &str = "us-east-1";
/// Header a server may require (`iam_server_id_header_value`).
pub const SERVER_ID_HEADER: &str = "X-Vault-AWS-IAM-Server-ID";
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// AWS credentials to sign with. The secret parts are wiped on drop and
/// never shown by `Debug`.
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AwsCredentials {
    /// Explicit credentials; an empty session token counts as none.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.filter(|t| !t.is_empty()).map(Zeroizing::new),
        }
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`
    /// (or the older `AWS_SECURITY_TOKEN`), as the AWS SDKs read them.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_env_with(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) reading variables through `get`.
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<Self, ClientError> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Ok(Self::new(
                id,
                secret,
                get("AWS_SESSION_TOKEN").or_else(|| get("AWS_SECURITY_TOKEN")),
            )),
            _ => Err(ClientError::AwsCredentials(
                "no AWS credentials found: give aws_access_key_id and aws_secret_access_key, \
                 or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    .into(),
            )),
        }
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

/// What to put in an IAM login besides the signature.
#[derive(Debug, Clone, Default)]
pub struct AwsIamLogin {
    /// Role to log in as; the server derives it from the ARN when absent.
    pub role: Option<String>,
    /// Value of `X-Vault-AWS-IAM-Server-ID`, when the server requires one.
    pub server_id: Option<String>,
    /// Region to sign for (default us-east-1).
    pub region: Option<String>,
}

/// The STS URL for `region`: the global endpoint for us-east-1 (which is
/// what Vault's CLI sends and what a server accepts without an
/// `sts_endpoint`), the regional one otherwise, so that the region signed
/// for is the region that checks the signature.
pub fn sts_url(region: &str) -> Result<String, ClientError> {
    // The region goes into a host name: nothing but a region-shaped label.
    let ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(ClientError::AwsCredentials(format!(
            "invalid AWS region {region:?}"
        )));
    }
    Ok(if region == DEFAULT_REGION {
        STS_GLOBAL_URL.to_string()
    } else {
        format!("https://sts.{region}.amazonaws.com/")
    })
}

impl AwsIamLogin {
    /// The region signed for.
    pub fn region(&self) -> &str {
        self.region
            .as_deref()
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_REGION)
    }

    /// The login body: `role` (when given), `iam_http_request_method`, and
    /// base64 `iam_request_url`, `iam_request_body` and
    /// `iam_request_headers` (a JSON object of one-element string lists, the
    /// shape Go's `http.Header` gives Vault's CLI), signed at `time`.
    pub fn login_data(
        &self,
        creds: &AwsCredentials,
        time: SystemTime,
    ) -> Result<Map<String, Value>, ClientError> {
        let region = self.region();
        let url = sts_url(region)?;
        let host = url
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        let len = STS_BODY.len().to_string();
        let mut headers: Vec<(&str, &str)> =
            vec![("Content-Type", CONTENT_TYPE), ("Content-Length", &len)];
        if let Some(id) = self.server_id.as_deref().filter(|s| !s.is_empty()) {
            headers.push((SERVER_ID_HEADER, id));
        }

        let sign_err = |e: &dyn fmt::Display| ClientError::AwsSigning(e.to_string());
        let identity = Credentials::new(
            creds.access_key_id.as_str(),
            creds.secret_access_key.as_str(),
            creds.session_token.as_ref().map(|t| t.to_string()),
            None,
            "tresor-cli",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("sts")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| sign_err(&e))?
            .into();
        // Host is signed (the server insists) but, as in Go's requests, not
        // sent among the headers: it comes from the URL.
        let signable = SignableRequest::new(
            "POST",
            &url,
            std::iter::once(("host", host.as_str())).chain(headers.iter().copied()),
            SignableBody::Bytes(STS_BODY.as_bytes()),
        )
        .map_err(|e| sign_err(&e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| sign_err(&e))?
            .into_parts();

        let mut header_map = Map::new();
        for (k, v) in headers {
            header_map.insert(k.to_string(), json!([v]));
        }
        for (k, v) in instructions.headers() {
            header_map.insert(canonical_name(k), json!([v]));
        }

        let mut data = Map::new();
        if let Some(role) = self.role.as_deref().filter(|r| !r.is_empty()) {
            data.insert("role".into(), json!(role));
        }
        data.insert("iam_http_request_method".into(), json!("POST"));
        data.insert("iam_request_url".into(), json!(STANDARD.encode(&url)));
        data.insert("iam_request_body".into(), json!(STANDARD.encode(STS_BODY)));
        data.insert(
            "iam_request_headers".into(),
            json!(STANDARD.encode(Value::Object(header_map).to_string())),
        );
        Ok(data)
    }
}

/// `x-amz-date` → `X-Amz-Date`, as Go writes header names.
fn canonical_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

impl Client {
    /// Log in with the aws auth method mounted at `mount` (IAM flow), signing
    /// with `creds` now. The answer's `auth` carries the new token; this
    /// client's own token is not sent.
    pub async fn login_aws_iam(
        &self,
        mount: &str,
        login: &AwsIamLogin,
        creds: &AwsCredentials,
    ) -> Result<Envelope, ClientError> {
        let data = login.login_data(creds, SystemTime::now())?;
        let path = format!("auth/{}/login", mount.trim_matches('/'));
        self.with_token("")
            .write(&path, &Value::Object(data))
            .await?
            .ok_or_else(|| ClientError::Decode {
                method: "PUT".into(),
                url: self.url(&path),
                message: "empty answer to a login".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn decode(v: &Value) -> String {
        String::from_utf8(STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
    }

    fn headers(data: &Map<String, Value>) -> BTreeMap<String, String> {
        let v: Value = serde_json::from_str(&decode(&data["iam_request_headers"])).unwrap();
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let list = v.as_array().unwrap();
                assert_eq!(list.len(), 1, "{k}: {v}");
                (
                    k.to_ascii_lowercase(),
                    list[0].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn signed_headers(authz: &str) -> Vec<String> {
        let start = authz.find("SignedHeaders=").unwrap() + "SignedHeaders=".len();
        let end = start + authz[start..].find(',').unwrap();
        authz[start..end].split(';').map(str::to_string).collect()
    }

    // 2024-01-02T03:04:05Z
    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    #[test]
    fn login_data_has_the_shape_the_server_replays() {
        let creds = AwsCredentials::new("AKIDEXAMPLE", "not-a-real-secret", None);
        let login = AwsIamLogin {
            role: Some("dev".into()),
            server_id: Some("tresor.example.com".into()),
            region: None,
        };
        let data = login.login_data(&creds, at()).unwrap();
        assert_eq!(data["role"], json!("dev"));
        assert_eq!(data["iam_http_request_method"], json!("POST"));
        assert_eq!(
            decode(&data["iam_request_url"]),
            "https://sts.amazonaws.com/"
        );
        assert_eq!(
            decode(&data["iam_request_body"]),
            "Action=GetCallerIdentity&Version=2011-06-15"
        );
        let h = headers(&data);
        assert_eq!(
            h["content-type"],
            "application/x-www-form-urlencoded; charset=utf-8"
        );
        assert_eq!(h["content-length"], "43");
        assert_eq!(h["x-vault-aws-iam-server-id"], "tresor.example.com");
        assert_eq!(h["x-amz-date"], "20240102T030405Z");
        assert!(!h.contains_key("x-amz-security-token"));
        assert!(!h.contains_key("host"));
        let authz = &h["authorization"];
        assert!(
            authz.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240102/us-east-1/sts/aws4_request, "
            ),
            "{authz}"
        );
        assert_eq!(
            signed_headers(authz),
            [
                "content-length",
                "content-type",
                "host",
                "x-amz-date",
                "x-vault-aws-iam-server-id"
            ]
        );
        // The signature botocore computes for the same request, key and
        // time (an implementation we did not write).
        assert!(
            authz.ends_with(
                "Signature=5d94eaf583b86dd46ddb996800473bca5d039861a1c29da25d503304acc74866"
            ),
            "{authz}"
        );
        // The secret itself goes nowhere.
        let all = serde_json::to_string(&data).unwrap() + &decode(&data["iam_request_headers"]);
        assert!(!all.contains("not-a-real-secret"));
        // Same inputs, same signature: nothing random goes into the request.
        assert_eq!(login.login_data(&creds, at()).unwrap(), data);
    }

    #[test]
    fn session_token_is_sent_and_signed_and_region_picks_the_endpoint() {
        let creds = AwsCredentials::new("ASIAEXAMPLE", "s", Some("session-token".into()));
        let login = AwsIamLogin {
            role: None,
            server_id: None,
            region: Some("eu-west-1".into()),
        };
        let data = login.login_data(&creds, at()).unwrap();
        assert!(!data.contains_key("role"));
        assert_eq!(
            decode(&data["iam_request_url"]),
            "https://sts.eu-west-1.amazonaws.com/"
        );
        let h = headers(&data);
        assert_eq!(h["x-amz-security-token"], "session-token");
        assert!(!h.contains_key("x-vault-aws-iam-server-id"));
        let authz = &h["authorization"];
        assert!(
            authz.contains("/20240102/eu-west-1/sts/aws4_request"),
            "{authz}"
        );
        assert_eq!(
            signed_headers(authz),
            [
                "content-length",
                "content-type",
                "host",
                "x-amz-date",
                "x-amz-security-token"
            ]
        );
        // botocore's signature for the same request (see above).
        assert!(
            authz.ends_with(
                "Signature=ad64ace55d37e2e0e82c626692161aad3ec0f691a592e32d01c24c9c74567cf1"
            ),
            "{authz}"
        );

        // us-east-1 given explicitly still uses the global endpoint.
        let east = AwsIamLogin {
            region: Some("us-east-1".into()),
            ..AwsIamLogin::default()
        };
        let data = east.login_data(&creds, at()).unwrap();
        assert_eq!(decode(&data["iam_request_url"]), STS_GLOBAL_URL);
    }

    #[test]
    fn region_must_look_like_a_region() {
        for bad in ["", "evil.example/x", "US-EAST-1", "a b"] {
            assert!(sts_url(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            sts_url("ap-southeast-2").unwrap(),
            "https://sts.ap-southeast-2.amazonaws.com/"
        );
    }

    #[test]
    fn credentials_from_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = AwsCredentials::from_env_with(env(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "hunter2-secret"),
            ("AWS_SECURITY_TOKEN", "old-style"),
        ]))
        .unwrap();
        assert_eq!(c.access_key_id(), "AKID");
        assert_eq!(
            c.session_token.as_deref().map(String::as_str),
            Some("old-style")
        );
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("old-style"),
            "{dbg}"
        );

        let err = AwsCredentials::from_env_with(env(&[("AWS_ACCESS_KEY_ID", "AKID")])).unwrap_err();
        assert!(matches!(err, ClientError::AwsCredentials(_)));
    }

    #[test]
    fn header_names_are_written_as_go_does() {
        assert_eq!(canonical_name("x-amz-date"), "X-Amz-Date");
        assert_eq!(canonical_name("authorization"), "Authorization");
    }
}
