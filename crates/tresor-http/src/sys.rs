//! The `sys/` routes that work without a token and while sealed (init,
//! unseal, seal status, health, leader, rekey, generate-root). They call the
//! core's methods directly instead of `Core::handle`, whose pipeline starts
//! by refusing sealed requests.

use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_api::sys::{Health, InitRequest, InitStatus, UnsealRequest};
use tresor_core::Core;
use tresor_sdk::Map;

use crate::error::ApiError;
use crate::request::{self, parse_bool};
use crate::AppState;

const ROUTES: &[&str] = &[
    "sys/init",
    "sys/seal-status",
    "sys/unseal",
    "sys/health",
    "sys/leader",
    "sys/rekey/init",
    "sys/rekey/update",
    "sys/generate-root/attempt",
    "sys/generate-root/update",
];

pub(crate) fn is_sys_route(path: &str) -> bool {
    ROUTES.contains(&path)
}

fn json_ok<T: serde::Serialize>(value: &T) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

fn parse<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<T, ApiError> {
    let map: Map = request::parse_json_object(bytes, max_depth)?;
    serde_json::from_value(Value::Object(map))
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

fn is_write(m: &Method) -> bool {
    *m == Method::PUT || *m == Method::POST
}

pub(crate) async fn dispatch(
    state: &AppState,
    method: &Method,
    path: &str,
    pairs: &[(String, String)],
    body: &[u8],
) -> Result<Response, ApiError> {
    let core: &Core = &state.core;
    let depth = state.max_json_depth;
    match (path, method.as_str()) {
        ("sys/init", "GET") => {
            let initialized = core.init_status().await?;
            Ok(json_ok(&InitStatus { initialized }))
        }
        ("sys/init", _) if is_write(method) => {
            let req: InitRequest = parse(body, depth)?;
            Ok(json_ok(&core.init(req).await?))
        }
        ("sys/seal-status", "GET") => Ok(json_ok(&core.seal_status().await?)),
        ("sys/unseal", _) if is_write(method) => {
            let req: UnsealRequest = parse(body, depth)?;
            if !req.reset && req.key.as_deref().is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(
                    "'key' must be specified in request body as JSON, or 'reset' set to true",
                ));
            }
            Ok(json_ok(&core.unseal(req).await?))
        }
        ("sys/health", "GET" | "HEAD") => health(core, method, pairs).await,
        ("sys/leader", "GET") => Ok(json_ok(&core.leader())),
        ("sys/rekey/init", "GET") => Ok(json_ok(&core.rekey_status().await?)),
        ("sys/rekey/init", _) if is_write(method) => {
            let req: RekeyInit = parse(body, depth)?;
            if req.pgp_keys.as_ref().is_some_and(|k| !k.is_empty()) {
                return Err(ApiError::bad_request("pgp_keys are not supported"));
            }
            if req.backup {
                return Err(ApiError::bad_request("backup is not supported"));
            }
            if req.require_verification {
                return Err(ApiError::bad_request(
                    "require_verification is not supported",
                ));
            }
            Ok(json_ok(
                &core
                    .rekey_init(req.secret_shares, req.secret_threshold)
                    .await?,
            ))
        }
        ("sys/rekey/init", "DELETE") => {
            core.rekey_cancel().await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("sys/rekey/update", _) if is_write(method) => {
            let req: KeyUpdate = parse(body, depth)?;
            let (key, nonce) = req.require()?;
            Ok(json_ok(&core.rekey_update(key, nonce).await?))
        }
        ("sys/generate-root/attempt", "GET") => Ok(json_ok(&core.generate_root_status().await?)),
        ("sys/generate-root/attempt", _) if is_write(method) => {
            let req: GenerateRootInit = parse(body, depth)?;
            if req.pgp_key.as_deref().is_some_and(|k| !k.is_empty()) {
                return Err(ApiError::bad_request("pgp_key is not supported"));
            }
            if req.otp.as_deref().is_some_and(|k| !k.is_empty()) {
                // LEAD: the façade's generate_root_init() creates the OTP
                // itself (Vault ≥ 1.10 flow); a client-supplied OTP would need
                // a parameter.
                return Err(ApiError::bad_request(
                    "a client-supplied otp is not supported: omit it and use the otp in the response",
                ));
            }
            Ok(json_ok(&core.generate_root_init().await?))
        }
        ("sys/generate-root/attempt", "DELETE") => {
            core.generate_root_cancel().await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("sys/generate-root/update", _) if is_write(method) => {
            let req: KeyUpdate = parse(body, depth)?;
            let (key, nonce) = req.require()?;
            Ok(json_ok(&core.generate_root_update(key, nonce).await?))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[derive(Debug, Deserialize)]
struct RekeyInit {
    #[serde(default)]
    secret_shares: u8,
    #[serde(default)]
    secret_threshold: u8,
    #[serde(default)]
    pgp_keys: Option<Vec<String>>,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    require_verification: bool,
}

#[derive(Debug, Deserialize)]
struct GenerateRootInit {
    #[serde(default)]
    otp: Option<String>,
    #[serde(default)]
    pgp_key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeyUpdate {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

impl KeyUpdate {
    fn require(&self) -> Result<(&str, &str), ApiError> {
        let key = self
            .key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("'key' must be specified in request body as JSON")
            })?;
        let nonce = self
            .nonce
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("'nonce' must be specified in request body as JSON")
            })?;
        Ok((key, nonce))
    }
}

/// Status codes of `sys/health`, with Vault's defaults and query overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HealthCodes {
    pub(crate) active: u16,
    pub(crate) standby: u16,
    pub(crate) dr_secondary: u16,
    pub(crate) perf_standby: u16,
    pub(crate) sealed: u16,
    pub(crate) uninit: u16,
    pub(crate) standby_ok: bool,
    pub(crate) perf_standby_ok: bool,
}

impl Default for HealthCodes {
    fn default() -> Self {
        HealthCodes {
            active: 200,
            standby: 429,
            dr_secondary: 472,
            perf_standby: 473,
            sealed: 503,
            uninit: 501,
            standby_ok: false,
            perf_standby_ok: false,
        }
    }
}

impl HealthCodes {
    pub(crate) fn from_query(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut c = HealthCodes::default();
        for (k, v) in pairs {
            let code = || -> Result<u16, ApiError> {
                v.parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| ApiError::bad_request(format!("invalid value for {k:?}: {v:?}")))
            };
            let flag = || -> Result<bool, ApiError> {
                // Vault treats a bare `?standbyok` as true.
                if v.is_empty() {
                    return Ok(true);
                }
                parse_bool(v)
                    .ok_or_else(|| ApiError::bad_request(format!("invalid value for {k:?}: {v:?}")))
            };
            match k.as_str() {
                "standbyok" => c.standby_ok = flag()?,
                "perfstandbyok" => c.perf_standby_ok = flag()?,
                "activecode" => c.active = code()?,
                "standbycode" => c.standby = code()?,
                "drsecondarycode" => c.dr_secondary = code()?,
                "performancestandbycode" => c.perf_standby = code()?,
                "sealedcode" => c.sealed = code()?,
                "uninitcode" => c.uninit = code()?,
                _ => {}
            }
        }
        Ok(c)
    }

    /// Vault's order: uninitialised, sealed, DR secondary, perf standby,
    /// standby, active.
    pub(crate) fn status(&self, h: &Health) -> u16 {
        if !h.initialized {
            self.uninit
        } else if h.sealed {
            self.sealed
        } else if h.replication_dr_mode == "secondary" {
            self.dr_secondary
        } else if h.performance_standby {
            if self.perf_standby_ok {
                self.active
            } else {
                self.perf_standby
            }
        } else if h.standby {
            if self.standby_ok {
                self.active
            } else {
                self.standby
            }
        } else {
            self.active
        }
    }
}

async fn health(
    core: &Core,
    method: &Method,
    pairs: &[(String, String)],
) -> Result<Response, ApiError> {
    let codes = HealthCodes::from_query(pairs)?;
    let h = core.health().await;
    let status = StatusCode::from_u16(codes.status(&h)).unwrap_or(StatusCode::OK);
    if *method == Method::HEAD {
        return Ok(status.into_response());
    }
    Ok((status, axum::Json(json!(h))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn health_codes() {
        let active = Health {
            initialized: true,
            ..Health::default()
        };
        let standby = Health {
            standby: true,
            ..active.clone()
        };
        let perf = Health {
            performance_standby: true,
            standby: true,
            ..active.clone()
        };
        let dr = Health {
            replication_dr_mode: "secondary".into(),
            ..active.clone()
        };
        let sealed = Health {
            sealed: true,
            ..active.clone()
        };
        let uninit = Health {
            sealed: true,
            ..Health::default()
        };
        let d = HealthCodes::default();
        assert_eq!(d.status(&active), 200);
        assert_eq!(d.status(&standby), 429);
        assert_eq!(d.status(&perf), 473);
        assert_eq!(d.status(&dr), 472);
        assert_eq!(d.status(&sealed), 503);
        assert_eq!(d.status(&uninit), 501);

        let c = HealthCodes::from_query(&pairs(&[("standbyok", "true"), ("sealedcode", "299")]))
            .unwrap();
        assert_eq!(c.status(&standby), 200);
        assert_eq!(c.status(&sealed), 299);
        let c = HealthCodes::from_query(&pairs(&[("perfstandbyok", ""), ("activecode", "204")]))
            .unwrap();
        assert_eq!(c.status(&perf), 204);
        assert!(HealthCodes::from_query(&pairs(&[("uninitcode", "abc")])).is_err());
        assert!(HealthCodes::from_query(&pairs(&[("standbyok", "perhaps")])).is_err());
    }
}
