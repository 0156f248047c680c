//! The PKI secrets engine: a certificate authority on Vault's paths, so
//! `vault pki`, hvac's `client.secrets.pki` and cert-manager's Vault issuer
//! work unchanged.
//!
//! | path | operations |
//! | --- | --- |
//! | `root/generate/<internal\|exported\|existing>`, `issuers/generate/root/<type>` | write: a self-signed CA |
//! | `intermediate/generate/<type>`, `issuers/generate/intermediate/<type>` | write: a key and its CSR |
//! | `root/sign-intermediate`, `issuer/<ref>/sign-intermediate` | write: sign a CA CSR |
//! | `intermediate/set-signed`, `config/ca`, `issuers/import/{bundle,cert}` | write: import certificates (and keys) |
//! | `root/sign-self-issued`, `root/replace`, `root` (delete) | |
//! | `issuers` (list), `issuer/<ref>` (read, write, patch, delete), `issuer/<ref>/{json,pem,der}` | |
//! | `config/issuers`, `config/crl`, `config/urls` | read, write |
//! | `ca`, `ca/pem`, `ca_chain`, `cert/ca`, `cert/ca_chain`, `cert/crl` | read, no token |
//! | `roles/<name>` (read, write, patch, delete), `roles` (list) | |
//! | `issue/<role>`, `sign/<role>`, `sign-verbatim[/<role>]`, and under `issuer/<ref>/` | write |
//! | `revoke`, `crl`, `crl/pem`, `crl/rotate`, `issuer/<ref>/crl[/pem\|/der]` | |
//! | `cert/<serial>` (read, no token), `certs`, `certs/revoked` (list) | |
//! | `tidy`, `tidy-status` | |
//! | `ocsp` (POST, JSON `request` = base64 DER), `ocsp/<base64 DER>` (GET) | no token |
//!
//! Storage layout: see [`store`]. Private keys never leave storage except in
//! the answer to an `exported` generate or an `issue`.

mod issue;
mod issuers;
mod ocsp;
mod revoke;
mod roles;
mod store;
mod x509;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tresor_sdk::paths::pattern::NAME;
use tresor_sdk::{
    Backend, BackendConfig, BackendError, Map, Operation, PathTable, Request, Response,
    SpecialPaths, Storage, SystemView,
};

use issue::Mode;
use roles::Role;

pub fn factory(config: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(Pki::new(config.system.clone())))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    RootGenerate,
    IntermediateGenerate,
    SignIntermediate,
    SetSigned,
    Import,
    SignSelfIssued,
    Root,
    RootReplace,
    Issuers,
    Issuer,
    IssuerCert,
    IssuerCrl,
    ConfigIssuers,
    ConfigCrl,
    ConfigUrls,
    Ca,
    CaPem,
    CaChain,
    CertCa,
    CertCaChain,
    CertCrl,
    Cert,
    CertRaw,
    Certs,
    CertsRevoked,
    Roles,
    Role,
    Issue,
    Sign,
    SignVerbatim,
    Revoke,
    Crl,
    CrlPem,
    CrlRotate,
    Tidy,
    TidyStatus,
    Ocsp,
    OcspGet,
}

/// The PKI backend of one mount.
pub struct Pki {
    routes: PathTable<Route>,
    system: Arc<dyn SystemView>,
    /// Serialises what must not interleave: issuer changes and CRL builds
    /// (each CRL number is taken once).
    lock: tokio::sync::Mutex<()>,
}

impl Pki {
    pub fn new(system: Arc<dyn SystemView>) -> Self {
        let n = NAME;
        let ty = "(?P<type>internal|exported|existing|kms)";
        let iss = format!("issuer/(?P<issuer>{n})");
        let routes: Vec<(String, Route)> = vec![
            (format!("root/generate/{ty}"), Route::RootGenerate),
            (format!("issuers/generate/root/{ty}"), Route::RootGenerate),
            (
                format!("intermediate/generate/{ty}"),
                Route::IntermediateGenerate,
            ),
            (
                format!("issuers/generate/intermediate/{ty}"),
                Route::IntermediateGenerate,
            ),
            ("root/sign-intermediate".into(), Route::SignIntermediate),
            (format!("{iss}/sign-intermediate"), Route::SignIntermediate),
            ("intermediate/set-signed".into(), Route::SetSigned),
            ("config/ca".into(), Route::Import),
            ("issuers/import/(?:bundle|cert)".into(), Route::Import),
            ("root/sign-self-issued".into(), Route::SignSelfIssued),
            (format!("{iss}/sign-self-issued"), Route::SignSelfIssued),
            ("root".into(), Route::Root),
            ("root/replace".into(), Route::RootReplace),
            ("issuers/?".into(), Route::Issuers),
            (iss.clone(), Route::Issuer),
            (format!("{iss}/(?P<fmt>json|pem|der)"), Route::IssuerCert),
            (format!("{iss}/crl(?:/(?P<fmt>pem|der))?"), Route::IssuerCrl),
            (format!("{iss}/issue/(?P<role>{n})"), Route::Issue),
            (format!("{iss}/sign/(?P<role>{n})"), Route::Sign),
            (
                format!("{iss}/sign-verbatim(?:/(?P<role>{n}))?"),
                Route::SignVerbatim,
            ),
            ("config/issuers".into(), Route::ConfigIssuers),
            ("config/crl".into(), Route::ConfigCrl),
            ("config/urls".into(), Route::ConfigUrls),
            ("ca".into(), Route::Ca),
            ("ca/pem".into(), Route::CaPem),
            ("ca_chain".into(), Route::CaChain),
            ("cert/ca".into(), Route::CertCa),
            ("cert/ca_chain".into(), Route::CertCaChain),
            ("cert/crl".into(), Route::CertCrl),
            ("cert/(?P<serial>[0-9A-Fa-f:-]+)".into(), Route::Cert),
            (
                "cert/(?P<serial>[0-9A-Fa-f:-]+)/raw(?P<pem>/pem)?".into(),
                Route::CertRaw,
            ),
            ("certs/?".into(), Route::Certs),
            ("certs/revoked/?".into(), Route::CertsRevoked),
            ("roles/?".into(), Route::Roles),
            (format!("roles/(?P<role>{n})"), Route::Role),
            (format!("issue/(?P<role>{n})"), Route::Issue),
            (format!("sign/(?P<role>{n})"), Route::Sign),
            (
                format!("sign-verbatim(?:/(?P<role>{n}))?"),
                Route::SignVerbatim,
            ),
            ("revoke".into(), Route::Revoke),
            ("crl".into(), Route::Crl),
            ("crl/pem".into(), Route::CrlPem),
            ("crl/rotate".into(), Route::CrlRotate),
            ("tidy".into(), Route::Tidy),
            ("tidy-status".into(), Route::TidyStatus),
            ("ocsp".into(), Route::Ocsp),
            ("ocsp/(?P<req>.+)".into(), Route::OcspGet),
        ];
        let table: Vec<(&str, Route)> = routes.iter().map(|(p, r)| (p.as_str(), *r)).collect();
        Pki {
            routes: PathTable::new(&table),
            system,
            lock: tokio::sync::Mutex::new(()),
        }
    }
}

const PEM_CHAIN: &str = "application/pem-certificate-chain";
const PKIX_CERT: &str = "application/pkix-cert";
const PKIX_CRL: &str = "application/pkix-crl";
const OCSP_RESPONSE: &str = "application/ocsp-response";

fn go_duration(d: Duration) -> String {
    crate::secrets::kv::go_duration(d)
}

fn data(v: Value) -> Response {
    Response::data(issuers::obj(v))
}

async fn default_issuer(s: &dyn Storage) -> Result<Option<store::IssuerEntry>, BackendError> {
    store::resolve_issuer(s, "default").await
}

fn first_der(pem_text: &str) -> Result<Vec<u8>, BackendError> {
    x509::pem_certs(pem_text)?
        .into_iter()
        .next()
        .ok_or_else(|| BackendError::Internal("stored certificate has no PEM block".into()))
}

#[async_trait]
impl Backend for Pki {
    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths {
            // Read-only public material, as in Vault. `issuer/<ref>/pem`
            // and friends are not listed: patterns here are exact or
            // prefixes, and the `issuer/` prefix also holds writes.
            unauthenticated: [
                "ca", "ca/pem", "ca_chain", "cert/*", "crl", "crl/pem", "ocsp", "ocsp/*",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            root: ["root", "root/sign-self-issued"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        match self.routes.route(&req.path) {
            Some((Route::Role, caps)) => Ok(Some(
                storage
                    .get(&format!("{}{}", store::ROLES, caps.get("role")))
                    .await?
                    .is_some(),
            )),
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        req: &Request,
        s: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        use Operation::*;
        if req.operation == Revoke {
            return self.revoke_lease(req, s).await;
        }
        if req.operation == Renew {
            return Err(BackendError::bad_request(
                "certificates cannot be renewed; issue a new one",
            ));
        }
        let (route, caps) = self
            .routes
            .route(&req.path)
            .ok_or(BackendError::UnsupportedPath)?;
        let op = req.operation;
        let write = matches!(op, Create | Update);
        let r = match (route, op) {
            (Route::RootGenerate, _) if write => {
                issuers::generate_root(self, req, s, caps.get("type")).await?
            }
            (Route::IntermediateGenerate, _) if write => {
                issuers::generate_intermediate(self, req, s, caps.get("type")).await?
            }
            (Route::SignIntermediate, _) if write => {
                issuers::sign_intermediate(self, req, s, caps.get("issuer")).await?
            }
            (Route::SetSigned, _) if write => issuers::import(self, req, s, true).await?,
            (Route::Import, _) if write => issuers::import(self, req, s, false).await?,
            (Route::SignSelfIssued, _) if write => {
                issuers::sign_self_issued(req, s, caps.get("issuer")).await?
            }
            (Route::Root, Delete) => {
                issuers::delete_all(self, s).await?;
                return Ok(None);
            }
            (Route::RootReplace, _) if write => {
                let mut r = req.clone();
                if !r.data.contains_key("default") {
                    r.data.insert("default".into(), json!("next"));
                }
                issuers::write_issuers_config(self, &r, s).await?
            }
            (Route::Issuers, List) => issuers::list_issuers(s).await?,
            (Route::Issuer, Read) => {
                let Some(e) = store::resolve_issuer(s, caps.get("issuer")).await? else {
                    return Ok(None);
                };
                Response::data(issuers::issuer_data(&e, &store::urls_config(s).await?))
            }
            (Route::Issuer, Create | Update | Patch) => {
                issuers::update_issuer(self, req, s, caps.get("issuer")).await?
            }
            (Route::Issuer, Delete) => {
                issuers::delete_issuer(self, s, caps.get("issuer")).await?;
                return Ok(None);
            }
            (Route::IssuerCert, Read) => {
                let Some(e) = store::resolve_issuer(s, caps.get("issuer")).await? else {
                    return Ok(None);
                };
                match caps.get("fmt") {
                    "der" => Response::raw(PKIX_CERT, first_der(&e.certificate)?),
                    "pem" => Response::raw(PEM_CHAIN, format!("{}\n", e.certificate).into_bytes()),
                    _ => data(json!({
                        "certificate": e.certificate,
                        "ca_chain": issuers::chain_of(&e),
                        "issuer_id": e.id,
                        "issuer_name": e.name,
                    })),
                }
            }
            (Route::IssuerCrl, Read) => {
                let der = revoke::current_crl(self, s, caps.get("issuer")).await?;
                match caps.get("fmt") {
                    "der" => Response::raw(PKIX_CRL, der),
                    "pem" => Response::raw(
                        PEM_CHAIN,
                        format!("{}\n", revoke::crl_pem(&der)).into_bytes(),
                    ),
                    _ => data(json!({ "crl": revoke::crl_pem(&der) })),
                }
            }
            (Route::ConfigIssuers, Read) => {
                let c = store::issuers_config(s).await?;
                data(json!({
                    "default": c.default,
                    "default_follows_latest_issuer": c.default_follows_latest_issuer,
                }))
            }
            (Route::ConfigIssuers, _) if write => {
                issuers::write_issuers_config(self, req, s).await?
            }
            (Route::ConfigCrl, Read) => revoke::crl_config_data(&store::crl_config(s).await?),
            (Route::ConfigCrl, _) if write => revoke::write_crl_config(self, req, s).await?,
            (Route::ConfigUrls, Read) => revoke::urls_data(&store::urls_config(s).await?),
            (Route::ConfigUrls, _) if write => revoke::write_urls(req, s).await?,
            (Route::Ca, Read) => match default_issuer(s).await? {
                Some(e) => Response::raw(PKIX_CERT, first_der(&e.certificate)?),
                None => return Ok(None),
            },
            (Route::CaPem, Read) => match default_issuer(s).await? {
                Some(e) => Response::raw(PEM_CHAIN, format!("{}\n", e.certificate).into_bytes()),
                None => return Ok(None),
            },
            (Route::CaChain, Read) => match default_issuer(s).await? {
                Some(e) => Response::raw(
                    PEM_CHAIN,
                    format!("{}\n", issuers::chain_of(&e).join("\n")).into_bytes(),
                ),
                None => return Ok(None),
            },
            (Route::CertCa, Read) => match default_issuer(s).await? {
                Some(e) => data(json!({ "certificate": e.certificate, "revocation_time": 0 })),
                None => return Ok(None),
            },
            (Route::CertCaChain, Read) => match default_issuer(s).await? {
                Some(e) => {
                    let chain = issuers::chain_of(&e);
                    data(json!({ "certificate": chain.join("\n"), "ca_chain": chain }))
                }
                None => return Ok(None),
            },
            (Route::CertCrl, Read) => {
                let der = revoke::current_crl(self, s, "default").await?;
                data(json!({ "certificate": revoke::crl_pem(&der), "revocation_time": 0 }))
            }
            (Route::Cert, Read) => return revoke::read_cert(s, caps.get("serial")).await,
            (Route::CertRaw, Read) => {
                let Some(resp) = revoke::read_cert(s, caps.get("serial")).await? else {
                    return Ok(None);
                };
                let pem_text = resp
                    .data
                    .as_ref()
                    .and_then(|d| d.get("certificate"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if caps.get("pem").is_empty() {
                    Response::raw(PKIX_CERT, first_der(&pem_text)?)
                } else {
                    Response::raw(PEM_CHAIN, format!("{pem_text}\n").into_bytes())
                }
            }
            (Route::Certs, List) => revoke::list_serials(s, store::CERTS).await?,
            (Route::CertsRevoked, List) => revoke::list_serials(s, store::REVOKED).await?,
            (Route::Roles, List) => Response::list(store::list(s, store::ROLES).await?),
            (Route::Role, Read) => {
                let Some(role) =
                    store::get::<Role>(s, &format!("{}{}", store::ROLES, caps.get("role"))).await?
                else {
                    return Ok(None);
                };
                role_response(&role)?
            }
            (Route::Role, Create | Update | Patch) => {
                write_role(s, req, caps.get("role"), op == Patch).await?
            }
            (Route::Role, Delete) => {
                s.delete(&format!("{}{}", store::ROLES, caps.get("role")))
                    .await?;
                return Ok(None);
            }
            (Route::Issue, _) if write => {
                issue::issue(
                    self,
                    req,
                    s,
                    Mode::Issue,
                    caps.get("role"),
                    caps.get("issuer"),
                )
                .await?
            }
            (Route::Sign, _) if write => {
                issue::issue(
                    self,
                    req,
                    s,
                    Mode::Sign,
                    caps.get("role"),
                    caps.get("issuer"),
                )
                .await?
            }
            (Route::SignVerbatim, _) if write => {
                issue::issue(
                    self,
                    req,
                    s,
                    Mode::Verbatim,
                    caps.get("role"),
                    caps.get("issuer"),
                )
                .await?
            }
            (Route::Revoke, _) if write => revoke::revoke(req, s).await?,
            (Route::Crl, Read) => {
                Response::raw(PKIX_CRL, revoke::current_crl(self, s, "default").await?)
            }
            (Route::CrlPem, Read) => {
                let der = revoke::current_crl(self, s, "default").await?;
                Response::raw(
                    PEM_CHAIN,
                    format!("{}\n", revoke::crl_pem(&der)).into_bytes(),
                )
            }
            (Route::CrlRotate, Read | Update | Create) => {
                revoke::rebuild_all(self, s).await?;
                data(json!({ "success": true }))
            }
            (Route::Tidy, _) if write => revoke::tidy(self, req, s).await?,
            (Route::TidyStatus, Read) => revoke::tidy_status(s).await?,
            (Route::Ocsp, _) if write => {
                let der = ocsp::post_body(req)?;
                Response::raw(OCSP_RESPONSE, ocsp::respond(s, &der).await?)
            }
            (Route::OcspGet, Read) => {
                let der = ocsp::decode_b64(caps.get("req"))?;
                Response::raw(OCSP_RESPONSE, ocsp::respond(s, &der).await?)
            }
            _ => return Err(BackendError::UnsupportedOperation),
        };
        // Vault answers a LIST with nothing in it 404, as `vault list` expects.
        let empty_list = op == List
            && r.data
                .as_ref()
                .and_then(|d| d.get("keys"))
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
        if empty_list {
            return Ok(None);
        }
        Ok(Some(r))
    }

    async fn periodic(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        revoke::periodic(self, storage).await
    }
}

impl Pki {
    /// A `generate_lease` certificate's lease ran out or was revoked.
    async fn revoke_lease(
        &self,
        req: &Request,
        s: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let serial = req
            .secret
            .as_ref()
            .and_then(|sec| sec.internal_data.get("serial_number"))
            .and_then(Value::as_str)
            .ok_or_else(|| BackendError::bad_request("lease carries no certificate serial"))?
            .to_string();
        match revoke::revoke_serial(s, &serial).await {
            Ok(_) => Ok(None),
            // Already tidied away: nothing left to revoke.
            Err(BackendError::BadRequest(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn role_response(role: &Role) -> Result<Response, BackendError> {
    let mut m: Map = match serde_json::to_value(role)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    // Vault answers key_bits as the effective size.
    if role.key_bits == 0 && role.key_type != "any" {
        let bits = x509::KeySpec::parse(&role.key_type, 0)?.bits();
        m.insert("key_bits".into(), json!(bits));
    }
    Ok(Response::data(m))
}

async fn write_role(
    s: &dyn Storage,
    req: &Request,
    name: &str,
    patch: bool,
) -> Result<Response, BackendError> {
    let key = format!("{}{name}", store::ROLES);
    let role: Role = if patch {
        let existing = store::get::<Role>(s, &key)
            .await?
            .ok_or(BackendError::UnsupportedPath)?;
        let mut merged = match serde_json::to_value(&existing)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        for (k, v) in &req.data {
            merged.insert(k.clone(), v.clone());
        }
        let mut r = req.clone();
        r.data = merged;
        r.parse()?
    } else {
        req.parse()?
    };
    role.validate()?;
    store::put(s, &key, &role).await?;
    role_response(&role)
}
