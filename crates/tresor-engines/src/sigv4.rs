//! SigV4 signing of AWS query-API form POSTs, shared by the AWS auth method
//! (IAM lookups) and the AWS secrets engine (IAM and STS calls).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use tresor_sdk::BackendError;

/// The credentials to sign with, borrowed from whichever type holds them.
pub(crate) struct Keys<'a> {
    pub(crate) access_key: &'a str,
    pub(crate) secret_key: &'a str,
    pub(crate) session_token: Option<&'a str>,
}

/// Sign a form POST for an AWS query API (IAM, STS) with SigV4; the
/// headers to send, `host` included (it is signed, and must match what the
/// client sends).
pub(crate) fn sign_form_post(
    keys: Keys<'_>,
    url: &reqwest::Url,
    region: &str,
    service: &str,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> Result<Vec<(String, String)>, BackendError> {
    let host = url
        .host_str()
        .map(|h| match url.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_string(),
        })
        .ok_or_else(|| BackendError::Internal("endpoint without host".into()))?;
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), host),
        (
            "content-type".into(),
            "application/x-www-form-urlencoded; charset=utf-8".into(),
        ),
    ];
    headers.extend(
        extra_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let identity = Credentials::new(
        keys.access_key,
        keys.secret_key,
        keys.session_token.map(str::to_string),
        None,
        "tresor",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| BackendError::Internal(format!("sigv4 params: {e}")))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| BackendError::Internal(format!("sigv4 request: {e}")))?;
    let (instructions, _sig) = sign(signable, &params)
        .map_err(|e| BackendError::Internal(format!("sigv4 signing: {e}")))?
        .into_parts();
    for (k, v) in instructions.headers() {
        headers.push((k.to_string(), v.to_string()));
    }
    Ok(headers)
}
