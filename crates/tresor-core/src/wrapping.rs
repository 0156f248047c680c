//! Response wrapping: an answer is put in the cubbyhole of a fresh
//! single-use token, and the caller gets only that token (`wrap_info`).
//! The real answer leaves the server once, to whoever unwraps first.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tresor_api::{Envelope, WrapInfo};
use tresor_sdk::{Operation, Request};
use zeroize::Zeroizing;

use crate::core::{Caller, CoreResponse, Reply, ResponseBody, Unsealed};
use crate::mount::Route;
use crate::token::{generate_token, now, random_base62, TokenEntry};
use crate::{token_api, CoreError};

/// The policy wrapping tokens carry; it grants nothing but the
/// `sys/wrapping/*` endpoints (enforced in the pipeline, not by an ACL).
pub(crate) const WRAPPING_POLICY: &str = "response-wrapping";

/// The longest wrap TTL accepted, like the mount maximum of Vault.
const MAX_WRAP_TTL: Duration = Duration::from_secs(768 * 3600);

/// Paths a wrapping token may call.
pub(crate) fn wrapping_token_allows(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "sys/wrapping/unwrap" | "sys/wrapping/lookup" | "sys/wrapping/rewrap"
    )
}

pub(crate) fn is_wrapping_token(e: &TokenEntry) -> bool {
    e.policies.len() == 1 && e.policies[0] == WRAPPING_POLICY
}

fn rfc3339(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn cubbyhole(st: &Unsealed) -> Result<Arc<Route>, CoreError> {
    st.router
        .get("cubbyhole/")
        .ok_or_else(|| CoreError::Internal("no cubbyhole mount for response wrapping".into()))
}

/// Wrap a finished answer: store it in a new wrapping token's cubbyhole and
/// answer `wrap_info` instead.
pub(crate) async fn wrap(
    st: &Unsealed,
    resp: CoreResponse,
    ttl: Duration,
    creation_path: &str,
    request_id: &str,
) -> Result<CoreResponse, CoreError> {
    let ResponseBody::Envelope(env) = resp.body else {
        // Nothing to wrap (204, raw bodies): answer as is, like Vault.
        return Ok(resp);
    };
    if ttl.is_zero() || ttl > MAX_WRAP_TTL {
        return Err(CoreError::BadRequest(format!(
            "wrap TTL must be between 1s and {}s",
            MAX_WRAP_TTL.as_secs()
        )));
    }
    let wrapped_accessor = env.auth.as_ref().map(|a| a.accessor.clone());
    let token = generate_token()?;
    let n = now();
    let entry = TokenEntry {
        hash: st.tokens.hash(&token),
        accessor: random_base62(24)?,
        policies: vec![WRAPPING_POLICY.into()],
        display_name: "response-wrapping".into(),
        num_uses: 1,
        creation_time: n,
        creation_ttl: ttl.as_secs(),
        expire_time: n + ttl.as_secs() as i64,
        max_expire_time: n + ttl.as_secs() as i64,
        path: creation_path.to_string(),
        ..Default::default()
    };
    let stored = serde_json::to_vec(&*env)?;
    cubbyhole(st)?
        .storage
        .put(&format!("{}/response", entry.hash), &stored)
        .await?;
    token_api::store_with_lease(st, entry.clone()).await?;
    let info = WrapInfo {
        token: token.to_string(),
        accessor: entry.accessor.clone(),
        ttl: ttl.as_secs(),
        creation_time: rfc3339(n),
        creation_path: creation_path.to_string(),
        wrapped_accessor,
    };
    let out = Envelope {
        request_id: request_id.to_string(),
        wrap_info: Some(info),
        ..Default::default()
    };
    Ok(CoreResponse {
        status: 200,
        body: ResponseBody::Envelope(Box::new(out)),
    })
}

#[derive(Debug, Default, Deserialize)]
struct TokenInput {
    #[serde(default)]
    token: String,
}

/// The wrapping token a `sys/wrapping/*` call is about: the `token` field,
/// else the caller's own token.
async fn target(
    st: &Unsealed,
    caller: &Caller,
    req: &Request,
) -> Result<(Arc<TokenEntry>, Zeroizing<String>), CoreError> {
    let input: TokenInput = req.parse()?;
    let (entry, token) = if input.token.is_empty() {
        let e = caller.entry.clone().ok_or(CoreError::PermissionDenied)?;
        let t = caller.token.clone().unwrap_or_default();
        (Some(e), t)
    } else {
        (
            st.tokens.lookup(&input.token).await?,
            Zeroizing::new(input.token),
        )
    };
    match entry {
        Some(e) if is_wrapping_token(&e) => Ok((e, token)),
        _ => Err(CoreError::BadRequest(
            "wrapping token is not valid or does not exist".into(),
        )),
    }
}

/// Read and destroy what a wrapping token holds.
async fn take(st: &Unsealed, e: &TokenEntry) -> Result<Envelope, CoreError> {
    let cubby = cubbyhole(st)?;
    let key = format!("{}/response", e.hash);
    let stored = cubby.storage.get(&key).await?;
    token_api::revoke_tree(st, &e.hash).await?;
    let stored = stored.ok_or_else(|| {
        CoreError::BadRequest("wrapping token is not valid or does not exist".into())
    })?;
    Ok(serde_json::from_slice(&stored)?)
}

#[derive(Debug, Default, Deserialize)]
struct WrapLookupInput {
    #[serde(default)]
    token: String,
}

/// `sys/wrapping/{wrap,unwrap,lookup,rewrap}`.
pub(crate) async fn handle(
    st: &Unsealed,
    caller: &Caller,
    req: &Request,
    op: &str,
    wrap_ttl: Option<Duration>,
) -> Result<Reply, CoreError> {
    let write = matches!(req.operation, Operation::Create | Operation::Update);
    match op {
        "unwrap" if write => {
            let (e, _) = target(st, caller, req).await?;
            let mut env = take(st, &e).await?;
            env.request_id = req.id.clone();
            Ok(Reply::Body(CoreResponse {
                status: 200,
                body: ResponseBody::Envelope(Box::new(env)),
            }))
        }
        "lookup" if write || req.operation == Operation::Read => {
            let input: WrapLookupInput = req.parse()?;
            let e = st
                .tokens
                .lookup(&input.token)
                .await?
                .filter(|e| is_wrapping_token(e))
                .ok_or_else(|| {
                    CoreError::BadRequest("wrapping token is not valid or does not exist".into())
                })?;
            Ok(Reply::Resp(Some(tresor_sdk::Response::data(
                json!({
                    "creation_path": e.path,
                    "creation_time": rfc3339(e.creation_time),
                    "creation_ttl": e.creation_ttl,
                })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ))))
        }
        "rewrap" if write => {
            let (e, _) = target(st, caller, req).await?;
            let env = take(st, &e).await?;
            let ttl = Duration::from_secs(e.creation_ttl.max(1));
            let resp = CoreResponse {
                status: 200,
                body: ResponseBody::Envelope(Box::new(env)),
            };
            Ok(Reply::Body(wrap(st, resp, ttl, &e.path, &req.id).await?))
        }
        "wrap" if write => {
            // Vault: wrapping is the whole point, so no TTL is an error.
            let ttl = wrap_ttl.ok_or_else(|| {
                CoreError::BadRequest("endpoint requires response wrapping to be used".into())
            })?;
            let env = Envelope {
                request_id: req.id.clone(),
                data: Some(Value::Object(req.data.clone())),
                ..Default::default()
            };
            let resp = CoreResponse {
                status: 200,
                body: ResponseBody::Envelope(Box::new(env)),
            };
            // Already wrapped here: the pipeline must not wrap it twice.
            Ok(Reply::Body(
                wrap(st, resp, ttl, "sys/wrapping/wrap", &req.id).await?,
            ))
        }
        _ => Err(CoreError::UnsupportedOperation),
    }
}
