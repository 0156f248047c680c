//! HTTP → [`CoreRequest`] pieces: path normalisation, body reading and JSON
//! parsing under limits, verbs, tokens, wrap TTL, headers, query data.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::Value;
use tresor_sdk::{Map, Operation};

use crate::error::ApiError;

// Typed names: a `&str` key is parsed and hashed afresh on every lookup.
pub(crate) const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-vault-token");
pub(crate) const WRAP_TTL_HEADER: HeaderName = HeaderName::from_static("x-vault-wrap-ttl");

/// Decode and check a request path (the part after the route prefix).
///
/// `.`/`..` segments (also percent-encoded) and empty segments are refused
/// rather than resolved: a path that means something other than what it
/// spells is a traversal attempt, and resolving it here would let it pass
/// ACLs written against the spelled path. A trailing `/` is kept because it
/// means "list" to Vault.
pub(crate) fn normalize_path(raw: &str) -> Result<String, ApiError> {
    checked_path(raw).map(Cow::into_owned)
}

/// The decoded form of `raw` once it passed the checks of
/// [`normalize_path`]; borrowed when nothing was percent-encoded (the usual
/// case, so the check every request passes allocates nothing).
fn checked_path(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    if plain_path_ok(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    full_check(raw)
}

/// Only paths [`plain_path_ok`] refused come here: no fast paths needed.
fn full_check(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    // Borrowed when there is nothing to decode.
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("invalid path: not UTF-8"))?;
    if decoded.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid path"));
    }
    let body = decoded.strip_suffix('/').unwrap_or(&decoded);
    if !body.is_empty() {
        if !segments_ok(body.as_bytes()) {
            return Err(ApiError::bad_request(
                "invalid path: empty, '.' or '..' segment",
            ));
        }
    } else if decoded.len() > 1 {
        // "//" and friends.
        return Err(ApiError::bad_request("invalid path: empty segment"));
    }
    Ok(decoded)
}

/// The common case in one pass: printable ASCII, no escapes, and segments
/// that are neither empty nor `.`/`..` (a single trailing `/` allowed).
/// `false` sends the path through the full check, which names the problem.
fn plain_path_ok(path: &[u8]) -> bool {
    let mut seg_start = 0;
    for (i, &b) in path.iter().enumerate() {
        if b == b'%' || !(0x20..0x7f).contains(&b) {
            return false;
        }
        if b == b'/' {
            let seg = &path[seg_start..i];
            if seg.is_empty() || seg == b"." || seg == b".." {
                return false;
            }
            seg_start = i + 1;
        }
    }
    let last = &path[seg_start..];
    // `last` is empty after a trailing '/' (or for an empty path): fine.
    !(last == b"." || last == b"..")
}

/// No segment of `body` (split at `/`) is empty, `.` or `..`.
fn segments_ok(body: &[u8]) -> bool {
    body.split(|&b| b == b'/')
        .all(|s| !(s.is_empty() || s == b"." || s == b".."))
}

/// Check the whole raw path of any request, whatever route it is for.
pub(crate) fn check_raw_path(raw: &str) -> Result<(), ApiError> {
    let rest = raw.strip_prefix('/').unwrap_or(raw);
    if rest.is_empty() {
        return Ok(());
    }
    checked_path(rest).map(|_| ())
}

/// Read a body of at most `limit` bytes; larger → 413.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    // Refuse an announced oversize body before reading a byte of it.
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(ApiError::bad_request("failed to read request body")),
    }
}

/// The deepest nesting of arrays/objects in `bytes`, stopping early once it
/// passes `max`. A byte scan, not a parse: it runs before serde_json so that
/// a hostile document never reaches a recursive parser.
pub(crate) fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parse a request body as a JSON object. Empty (or `null`) is an empty map.
pub(crate) fn parse_json_object(bytes: &[u8], max_depth: usize) -> Result<Map, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    if nesting_exceeds(bytes, max_depth) {
        return Err(ApiError::json(format!("nesting depth exceeds {max_depth}")));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Depth was bounded above; serde_json's own limit (128) would refuse
    // valid documents between 128 and our limit.
    de.disable_recursion_limit();
    let value = Value::deserialize(&mut de).map_err(ApiError::json)?;
    de.end().map_err(ApiError::json)?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(ApiError::json("body must be a JSON object")),
    }
}

/// The client token: `X-Vault-Token`, else `Authorization: Bearer`.
pub(crate) fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers
        .get(&TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_string());
    }
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    let (scheme, rest) = auth.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// `X-Vault-Wrap-TTL`: seconds or a duration string.
pub(crate) fn wrap_ttl(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(v) = headers.get(&WRAP_TTL_HEADER) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid wrap TTL"))?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    match tresor_sdk::fields::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err(ApiError::bad_request("invalid wrap TTL: must be positive")),
        Err(e) => Err(ApiError::bad_request(format!("invalid wrap TTL: {e}"))),
    }
}

/// A request's headers for the core, which asks only for those a mount
/// lets through.
#[derive(Debug)]
struct Headers(HeaderMap);

impl tresor_core::RequestHeaders for Headers {
    fn values(&self, name: &str) -> Vec<String> {
        self.0
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

pub(crate) fn headers(map: HeaderMap) -> std::sync::Arc<dyn tresor_core::RequestHeaders> {
    std::sync::Arc::new(Headers(map))
}

/// Query parameters, in order.
pub(crate) fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    if uri.query().is_none() {
        return Ok(Vec::new());
    }
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|_| ApiError::bad_request("invalid query string"))
}

/// Query parameters as request data, Vault's way: one value → string,
/// repeated → list of strings. `list` and `help` select the operation and
/// are not data.
pub(crate) fn query_data(pairs: &[(String, String)]) -> Map {
    let mut map = Map::new();
    for (k, v) in pairs {
        if k == "list" || k == "help" {
            continue;
        }
        match map.get_mut(k) {
            None => {
                map.insert(k.clone(), Value::String(v.clone()));
            }
            Some(Value::Array(items)) => items.push(Value::String(v.clone())),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(v.clone())]);
            }
        }
    }
    map
}

/// Go's `strconv.ParseBool`, which is what Vault accepts in query flags.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn query_flag(pairs: &[(String, String)], name: &str) -> Result<bool, ApiError> {
    match pairs.iter().find(|(k, _)| k == name) {
        None => Ok(false),
        Some((_, v)) => parse_bool(v)
            .ok_or_else(|| ApiError::bad_request(format!("invalid value for {name:?}: {v:?}"))),
    }
}

/// Where the request data comes from for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataSource {
    Query,
    Body,
}

/// The operation of a `/v1/` request from its verb (and `?list=`/`?help=`).
pub(crate) fn operation(
    method: &Method,
    pairs: &[(String, String)],
) -> Result<(Operation, DataSource), ApiError> {
    let op = match method.as_str() {
        "GET" => {
            if query_flag(pairs, "help")? {
                Operation::Help
            } else if query_flag(pairs, "list")? {
                Operation::List
            } else {
                Operation::Read
            }
        }
        "LIST" => Operation::List,
        "POST" | "PUT" => return Ok((Operation::Update, DataSource::Body)),
        "PATCH" => return Ok((Operation::Patch, DataSource::Body)),
        "DELETE" => Operation::Delete,
        _ => return Err(ApiError::method_not_allowed()),
    };
    Ok((op, DataSource::Query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            normalize_path("secret/data/a").ok().as_deref(),
            Some("secret/data/a")
        );
        assert_eq!(
            normalize_path("secret/metadata/").ok().as_deref(),
            Some("secret/metadata/")
        );
        assert_eq!(
            normalize_path("secret/a%20b").ok().as_deref(),
            Some("secret/a b")
        );
        for bad in [
            "..",
            ".",
            "a/../b",
            "a/./b",
            "a/..",
            "%2e%2e/x",
            "%2E%2e",
            "a/%2e",
            "a//b",
            "/a",
            "//",
            "a%2F..%2Fb",
            "a%00b",
            "%ff",
        ] {
            let e = normalize_path(bad).err();
            assert_eq!(e.map(|e| e.status), Some(StatusCode::BAD_REQUEST), "{bad}");
        }
        assert!(check_raw_path("/").is_ok());
        assert!(check_raw_path("/v1/sys/health").is_ok());
        assert!(check_raw_path("/v1/../x").is_err());
        assert!(check_raw_path("/health/").is_ok());
    }

    #[test]
    fn fast_path_check_agrees_with_the_full_one() {
        // Every path of up to 6 characters over an alphabet that covers
        // the cases: whatever the one-pass check accepts, the full check
        // accepts as the same path.
        let alphabet = ['a', '.', '/', '%', '\u{1}', 'é'];
        let mut paths = vec![String::new()];
        for _ in 0..6 {
            let mut next = Vec::new();
            for p in &paths {
                for c in alphabet {
                    next.push(format!("{p}{c}"));
                }
            }
            for p in &paths {
                if plain_path_ok(p.as_bytes()) {
                    assert_eq!(full_check(p).ok().as_deref(), Some(p.as_str()), "{p:?}");
                }
            }
            paths = next;
        }
    }

    #[test]
    fn depth_scan() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nesting_exceeds(deep(500).as_bytes(), 500));
        assert!(nesting_exceeds(deep(501).as_bytes(), 500));
        // Brackets inside strings do not count, escaped quotes do not end strings.
        let s = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(600), "{".repeat(600));
        assert!(!nesting_exceeds(s.as_bytes(), 500));
    }

    #[test]
    fn json_bodies() {
        assert_eq!(parse_json_object(b"", 500).ok(), Some(Map::new()));
        assert_eq!(parse_json_object(b"  \n", 500).ok(), Some(Map::new()));
        assert_eq!(parse_json_object(b"null", 500).ok(), Some(Map::new()));
        let m = parse_json_object(br#"{"a": 1}"#, 500).ok();
        assert_eq!(m.and_then(|m| m.get("a").cloned()), Some(Value::from(1)));
        for bad in [&b"[1]"[..], b"\"x\"", b"{", b"{} x", b"nope"] {
            let e = parse_json_object(bad, 500).err();
            assert_eq!(e.as_ref().map(|e| e.status), Some(StatusCode::BAD_REQUEST));
            let msg = e.map(|e| e.errors.join("")).unwrap_or_default();
            assert!(msg.starts_with("failed to parse JSON input: "), "{msg}");
        }
        // Between serde_json's default limit (128) and ours.
        // The deepest accepted document parses and serialises again on a
        // 2 MiB stack (a tokio worker's), debug build included.
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(499), "]".repeat(499));
        let parsed = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let m = parse_json_object(deep.as_bytes(), 500).ok()?;
                serde_json::to_vec(&m).ok()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(parsed.is_some());
        let too_deep = format!("{{\"a\": {}{}}}", "[".repeat(600), "]".repeat(600));
        assert!(parse_json_object(too_deep.as_bytes(), 500).is_err());
    }

    #[test]
    fn tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(token(&h), None);
        h.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(token(&h).as_deref(), Some("abc"));
        h.insert("x-vault-token", http::HeaderValue::from_static("xyz"));
        assert_eq!(token(&h).as_deref(), Some("xyz"));
    }

    #[test]
    fn wrap_ttls() {
        let mut h = HeaderMap::new();
        h.insert(
            WRAP_TTL_HEADER.clone(),
            http::HeaderValue::from_static("60"),
        );
        assert_eq!(wrap_ttl(&h).ok().flatten(), Some(Duration::from_secs(60)));
        h.insert(
            WRAP_TTL_HEADER.clone(),
            http::HeaderValue::from_static("5m"),
        );
        assert_eq!(wrap_ttl(&h).ok().flatten(), Some(Duration::from_secs(300)));
        h.insert(
            WRAP_TTL_HEADER.clone(),
            http::HeaderValue::from_static("soon"),
        );
        assert!(wrap_ttl(&h).is_err());
    }

    #[test]
    fn verbs_and_query() {
        let q = |s: &str| query_pairs(&s.parse::<Uri>().unwrap_or_default()).unwrap_or_default();
        let op = |m: &str, uri: &str| {
            operation(
                &Method::from_bytes(m.as_bytes()).unwrap_or_default(),
                &q(uri),
            )
            .map(|o| o.0)
        };
        assert_eq!(op("GET", "/v1/x").ok(), Some(Operation::Read));
        assert_eq!(op("GET", "/v1/x?list=true").ok(), Some(Operation::List));
        assert_eq!(op("GET", "/v1/x?list=false").ok(), Some(Operation::Read));
        assert!(op("GET", "/v1/x?list=maybe").is_err());
        assert_eq!(op("LIST", "/v1/x").ok(), Some(Operation::List));
        assert_eq!(op("PUT", "/v1/x").ok(), Some(Operation::Update));
        assert_eq!(op("POST", "/v1/x").ok(), Some(Operation::Update));
        assert_eq!(op("PATCH", "/v1/x").ok(), Some(Operation::Patch));
        assert_eq!(op("DELETE", "/v1/x").ok(), Some(Operation::Delete));
        assert_eq!(
            op("OPTIONS", "/v1/x").err().map(|e| e.status),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        let data = query_data(&q("/v1/x?list=true&a=1&b=2&b=3&help=0"));
        assert_eq!(data.get("a"), Some(&Value::from("1")));
        assert_eq!(data.get("b"), Some(&serde_json::json!(["2", "3"])));
        assert!(!data.contains_key("list"));
    }
}
