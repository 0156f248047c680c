//! Checks on the signed `sts:GetCallerIdentity` request a client hands to
//! `login`, before the server replays it.
//!
//! The server forwards the client's signature to STS, so anything the
//! client controls and STS would act on must be pinned here: where the
//! request goes (the configured endpoint, never the client's URL), what it
//! asks (only `GetCallerIdentity`), and which headers ride along (a short
//! allow-list, each covered by the signature, so nobody can add an unsigned
//! header that changes how STS or a proxy reads the request).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use tresor_sdk::BackendError;

/// STS's global endpoint: what clients sign for when nobody tells them otherwise.
pub(crate) const DEFAULT_STS_HOST: &str = "sts.amazonaws.com";
pub(crate) const DEFAULT_STS_ENDPOINT: &str = "https://sts.amazonaws.com";
pub(crate) const SERVER_ID_HEADER: &str = "x-vault-aws-iam-server-id";

/// Headers a client may send along; everything else is refused.
const ALLOWED_HEADERS: &[&str] = &[
    "host",
    "x-amz-date",
    "x-amz-security-token",
    "authorization",
    "content-type",
    "content-length",
    SERVER_ID_HEADER,
    "user-agent",
    "x-amz-content-sha256",
];

/// Longest decoded field we look at; a real request is well under 8 KiB.
const MAX_FIELD: usize = 64 * 1024;

/// A request that passed every check: what to replay, and to whom it was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedRequest {
    /// `host[:port]` the client signed for; sent as the Host header.
    pub(crate) host: String,
    /// Lower-cased names, in a stable order; Host is not among them.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

/// The four login fields as they arrived (headers may be base64 JSON or a
/// JSON object).
pub(crate) struct RawIamLogin<'a> {
    pub(crate) method: &'a str,
    pub(crate) url_b64: &'a str,
    pub(crate) body_b64: &'a str,
    pub(crate) headers: &'a Value,
}

fn b64_field(field: &str, v: &str) -> Result<String, BackendError> {
    if v.len() > MAX_FIELD {
        return Err(BackendError::bad_request(format!("{field}: too long")));
    }
    let bytes = STANDARD
        .decode(v.trim())
        .map_err(|_| BackendError::bad_request(format!("{field}: invalid base64")))?;
    String::from_utf8(bytes)
        .map_err(|_| BackendError::bad_request(format!("{field}: not valid UTF-8")))
}

/// Headers as a lower-cased map; a name given twice (in any case) or with
/// several values is refused: which one STS would see is not ours to guess.
fn parse_headers(v: &Value) -> Result<BTreeMap<String, String>, BackendError> {
    const F: &str = "iam_request_headers";
    let obj = match v {
        Value::String(s) => {
            let text = b64_field(F, s)?;
            serde_json::from_str::<Value>(&text)
                .map_err(|_| BackendError::bad_request(format!("{F}: not a JSON object")))?
        }
        other => other.clone(),
    };
    let Value::Object(map) = obj else {
        return Err(BackendError::bad_request(format!("{F}: not a JSON object")));
    };
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let value = match value {
            Value::String(s) => s,
            Value::Array(items) => match &items[..] {
                [Value::String(s)] => s.clone(),
                _ => {
                    return Err(BackendError::bad_request(format!(
                        "{F}: header {name:?} must have exactly one string value"
                    )))
                }
            },
            _ => {
                return Err(BackendError::bad_request(format!(
                    "{F}: header {name:?} must be a string or a list of strings"
                )))
            }
        };
        if value.chars().any(|c| c.is_control()) {
            return Err(BackendError::bad_request(format!(
                "{F}: header {name:?} contains control characters"
            )));
        }
        let lower = name.trim().to_ascii_lowercase();
        if out.insert(lower.clone(), value).is_some() {
            return Err(BackendError::bad_request(format!(
                "{F}: header {lower:?} given more than once"
            )));
        }
    }
    Ok(out)
}

/// The parts of an `AWS4-HMAC-SHA256` Authorization header we check.
#[derive(Debug, PartialEq, Eq)]
struct SigV4Auth {
    service: String,
    signed_headers: Vec<String>,
}

fn parse_authorization(v: &str) -> Result<SigV4Auth, BackendError> {
    let bad =
        |why: &str| BackendError::bad_request(format!("iam_request_headers: Authorization {why}"));
    let rest = v
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| bad("must be an AWS4-HMAC-SHA256 signature"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, val) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("is malformed"))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(bad("has an unknown component")),
        };
        if slot.replace(val).is_some() {
            return Err(bad("repeats a component"));
        }
    }
    let credential = credential.ok_or_else(|| bad("lacks Credential"))?;
    let signed = signed.ok_or_else(|| bad("lacks SignedHeaders"))?;
    let signature = signature.ok_or_else(|| bad("lacks Signature"))?;
    if signature.is_empty() || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("has a malformed Signature"));
    }
    // <access key>/<yyyymmdd>/<region>/<service>/aws4_request
    let scope: Vec<&str> = credential.split('/').collect();
    let [_, _, _, service, "aws4_request"] = scope[..] else {
        return Err(bad("has a malformed Credential scope"));
    };
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
    {
        return Err(bad("has malformed SignedHeaders"));
    }
    Ok(SigV4Auth {
        service: service.to_string(),
        signed_headers,
    })
}

/// Body must be exactly `Action=GetCallerIdentity&Version=2011-06-15` (any
/// order): any other parameter could make STS do something else.
fn check_body(body: &str) -> Result<(), BackendError> {
    const F: &str = "iam_request_body";
    let mut action = None;
    let mut version = None;
    for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
        let slot = match k.as_ref() {
            "Action" => &mut action,
            "Version" => &mut version,
            other => {
                return Err(BackendError::bad_request(format!(
                    "{F}: unexpected parameter {other:?}: only Action and Version are allowed"
                )))
            }
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(BackendError::bad_request(format!(
                "{F}: parameter {k:?} given twice"
            )));
        }
    }
    match action.as_deref() {
        Some("GetCallerIdentity") => {}
        Some(other) => {
            return Err(BackendError::bad_request(format!(
                "{F}: Action must be GetCallerIdentity, got {other:?}"
            )))
        }
        None => return Err(BackendError::bad_request(format!("{F}: missing Action"))),
    }
    if version.as_deref() != Some("2011-06-15") {
        return Err(BackendError::bad_request(format!(
            "{F}: Version must be 2011-06-15"
        )));
    }
    Ok(())
}

fn authority(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// Check a login's signed request. `endpoint` is where the server will
/// send it; `server_id` the configured `iam_server_id_header_value`.
pub(crate) fn check(
    raw: &RawIamLogin<'_>,
    endpoint: &reqwest::Url,
    server_id: &str,
) -> Result<CheckedRequest, BackendError> {
    if raw.method != "POST" {
        return Err(BackendError::bad_request(format!(
            "iam_http_request_method: must be POST, got {:?}",
            raw.method
        )));
    }
    let url_text = b64_field("iam_request_url", raw.url_b64)?;
    let url = reqwest::Url::parse(&url_text)
        .map_err(|_| BackendError::bad_request("iam_request_url: not a URL"))?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(BackendError::bad_request(
            "iam_request_url: must not carry credentials or a fragment",
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(BackendError::bad_request(
            "iam_request_url: must be the endpoint root without query parameters",
        ));
    }
    let host =
        authority(&url).ok_or_else(|| BackendError::bad_request("iam_request_url: no host"))?;
    let endpoint_host = authority(endpoint).unwrap_or_default();
    let host_ok = (host == DEFAULT_STS_HOST && url.scheme() == "https")
        || (host.eq_ignore_ascii_case(&endpoint_host) && url.scheme() == endpoint.scheme());
    if !host_ok {
        return Err(BackendError::bad_request(format!(
            "iam_request_url: host {host:?} is neither the configured STS endpoint nor {DEFAULT_STS_HOST}"
        )));
    }

    let body = b64_field("iam_request_body", raw.body_b64)?;
    check_body(&body)?;

    let mut headers = parse_headers(raw.headers)?;
    for name in headers.keys() {
        if !ALLOWED_HEADERS.contains(&name.as_str()) {
            return Err(BackendError::bad_request(format!(
                "iam_request_headers: header {name:?} is not allowed"
            )));
        }
    }
    let authz = headers
        .get("authorization")
        .ok_or_else(|| BackendError::bad_request("iam_request_headers: missing Authorization"))?;
    let sig = parse_authorization(authz)?;
    if sig.service != "sts" {
        return Err(BackendError::bad_request(
            "iam_request_headers: Authorization is not scoped to the sts service",
        ));
    }
    if !headers.contains_key("x-amz-date") {
        return Err(BackendError::bad_request(
            "iam_request_headers: missing X-Amz-Date",
        ));
    }
    match headers.get("host") {
        Some(h) if !h.eq_ignore_ascii_case(&host) => {
            return Err(BackendError::bad_request(format!(
                "iam_request_headers: Host {h:?} does not match iam_request_url"
            )))
        }
        _ => {}
    }
    if let Some(len) = headers.get("content-length") {
        if len.trim().parse::<usize>().ok() != Some(body.len()) {
            return Err(BackendError::bad_request(
                "iam_request_headers: Content-Length does not match iam_request_body",
            ));
        }
    }
    if let Some(ct) = headers.get("content-type") {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(BackendError::bad_request(
                "iam_request_headers: Content-Type must be application/x-www-form-urlencoded",
            ));
        }
    }
    if !sig.signed_headers.iter().any(|h| h == "host") {
        return Err(BackendError::bad_request(
            "iam_request_headers: Host must be among the SignedHeaders",
        ));
    }
    for signed in &sig.signed_headers {
        if signed != "host" && !headers.contains_key(signed) {
            return Err(BackendError::bad_request(format!(
                "iam_request_headers: signed header {signed:?} is missing"
            )));
        }
    }
    // Go SDKs send a User-Agent they do not sign; it changes nothing STS
    // decides, so an unsigned one is dropped rather than refused or replayed.
    if !sig.signed_headers.iter().any(|h| h == "user-agent") {
        headers.remove("user-agent");
    }
    for name in headers.keys() {
        if name != "authorization" && !sig.signed_headers.contains(name) {
            return Err(BackendError::bad_request(format!(
                "iam_request_headers: header {name:?} is not covered by the signature"
            )));
        }
    }
    if !server_id.is_empty() {
        match headers.get(SERVER_ID_HEADER) {
            None => {
                return Err(BackendError::bad_request(
                    "iam_request_headers: missing the X-Vault-AWS-IAM-Server-ID header this server requires",
                ))
            }
            Some(v) if v != server_id => {
                return Err(BackendError::bad_request(
                    "iam_request_headers: X-Vault-AWS-IAM-Server-ID does not match this server",
                ))
            }
            Some(_) => {}
        }
    }
    headers.remove("host");
    // The HTTP client writes Content-Length from the body, which we checked
    // against the signed value above.
    headers.remove("content-length");
    Ok(CheckedRequest {
        host,
        headers: headers.into_iter().collect(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sts/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-date;x-vault-aws-iam-server-id, Signature=abcdef0123";

    fn headers(extra: &[(&str, &str)], auth: &str) -> Value {
        let mut m = json!({
            "Host": ["sts.amazonaws.com"],
            "Content-Type": ["application/x-www-form-urlencoded; charset=utf-8"],
            "Content-Length": ["43"],
            "X-Amz-Date": ["20240101T000000Z"],
            "X-Vault-AWS-IAM-Server-ID": ["vault.example.com"],
            "Authorization": [auth],
        });
        for (k, v) in extra {
            m[*k] = json!(v);
        }
        Value::String(b64(&m.to_string()))
    }

    fn run(
        url: &str,
        body: &str,
        h: &Value,
        server_id: &str,
    ) -> Result<CheckedRequest, BackendError> {
        let (u, b) = (b64(url), b64(body));
        let endpoint = reqwest::Url::parse("http://127.0.0.1:5000").expect("url");
        check(
            &RawIamLogin {
                method: "POST",
                url_b64: &u,
                body_b64: &b,
                headers: h,
            },
            &endpoint,
            server_id,
        )
    }

    const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

    #[test]
    fn accepts_what_hvac_sends() {
        let c = run(
            "https://sts.amazonaws.com/",
            BODY,
            &headers(&[], AUTH),
            "vault.example.com",
        )
        .expect("valid");
        assert_eq!(c.host, "sts.amazonaws.com");
        assert!(c
            .headers
            .iter()
            .all(|(k, _)| k != "host" && k != "content-length"));
        let local = headers(&[("Host", "127.0.0.1:5000")], AUTH);
        run("http://127.0.0.1:5000/", BODY, &local, "").expect("configured endpoint");
    }

    #[test]
    fn refuses_tampering() {
        let cases: Vec<(&str, &str, Value, &str, &str)> = vec![
            (
                "https://evil.example/",
                BODY,
                headers(&[("Host", "evil.example")], AUTH),
                "",
                "host",
            ),
            (
                "https://sts.amazonaws.com/?Action=AssumeRole",
                BODY,
                headers(&[], AUTH),
                "",
                "query",
            ),
            (
                "https://sts.amazonaws.com/",
                "Action=GetSessionToken&Version=2011-06-15",
                headers(&[], AUTH),
                "",
                "GetCallerIdentity",
            ),
            (
                "https://sts.amazonaws.com/",
                "Action=GetCallerIdentity&Version=2011-06-15&X=1",
                headers(&[], AUTH),
                "",
                "unexpected parameter",
            ),
            (
                "https://sts.amazonaws.com/",
                BODY,
                headers(&[("X-Forwarded-Host", "a")], AUTH),
                "",
                "not allowed",
            ),
            (
                "https://sts.amazonaws.com/",
                BODY,
                headers(&[("X-Amz-Security-Token", "t")], AUTH),
                "",
                "not covered",
            ),
            (
                "https://sts.amazonaws.com/",
                BODY,
                headers(&[("X-Vault-AWS-IAM-Server-ID", "other")], AUTH),
                "vault.example.com",
                "does not match",
            ),
            (
                "https://sts.amazonaws.com/",
                BODY,
                headers(&[("Content-Length", "44")], AUTH),
                "",
                "Content-Length",
            ),
            (
                "https://sts.amazonaws.com/",
                BODY,
                headers(&[], &AUTH.replace("/sts/", "/iam/")),
                "",
                "sts service",
            ),
        ];
        for (url, body, h, sid, want) in cases {
            let e = run(url, body, &h, sid).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // Server ID configured but absent (and so unsigned).
        let auth = AUTH.replace(";x-vault-aws-iam-server-id", "");
        let mut m: serde_json::Map<String, Value> = serde_json::from_str(
            &String::from_utf8(
                STANDARD
                    .decode(headers(&[], &auth).as_str().unwrap_or(""))
                    .unwrap_or_default(),
            )
            .unwrap_or_default(),
        )
        .unwrap_or_default();
        m.remove("X-Vault-AWS-IAM-Server-ID");
        let h = Value::Object(m);
        let e = run("https://sts.amazonaws.com/", BODY, &h, "vault.example.com")
            .expect_err("missing id");
        assert!(e.to_string().contains("requires"), "{e}");
        run("https://sts.amazonaws.com/", BODY, &h, "").expect("no id configured");
    }

    #[test]
    fn refuses_duplicate_and_multi_valued_headers() {
        let h = json!({"Host": "sts.amazonaws.com", "host": "sts.amazonaws.com", "Authorization": AUTH});
        assert!(run("https://sts.amazonaws.com/", BODY, &h, "").is_err());
        let h = json!({"Host": ["a", "b"], "Authorization": AUTH});
        assert!(run("https://sts.amazonaws.com/", BODY, &h, "").is_err());
    }
}
