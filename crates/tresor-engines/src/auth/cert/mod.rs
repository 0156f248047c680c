//! The TLS certificate auth method: a client logs in with the certificate
//! it presented on the TLS connection. Vault's paths and fields, so `vault
//! login -method=cert` and hvac's `auth.cert.login` work unchanged:
//!
//! | path | operations |
//! | --- | --- |
//! | `certs/<name>` | read, write, delete (`certificate`, `allowed_*`, `required_extensions`, `display_name`, `token_*`) |
//! | `certs` | list |
//! | `crls/<name>` | read, write (`crl`, PEM), delete |
//! | `crls` | list |
//! | `config` | read, write |
//! | `login` | write, unauthenticated (`name` optional) |
//!
//! A trusted certificate that is a CA admits clients whose chain verifies up
//! to it; one that is not a CA admits exactly that certificate. CRLs are held
//! in memory, loaded at `initialize` (unseal) and kept in step with writes,
//! so a login never runs before the revocations are known. A token renews
//! only over a connection presenting the very certificate it logged in with.
//!
//! Storage: `cert/<name>`, `crls/<name>`, `config`.

mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tresor_sdk::paths::pattern;
use tresor_sdk::{
    fields, Auth, Backend, BackendConfig, BackendError, BackendType, Map, Operation, PathTable,
    Request, Response, SpecialPaths, Storage, StorageExt,
};

use crate::auth::token_fields::{ip_allowed, with_legacy_names, TokenFields};
use verify::{glob_match, LeafInfo};

const CERT_PREFIX: &str = "cert/";
const CRL_PREFIX: &str = "crls/";
const CONFIG_KEY: &str = "config";

const NO_CERT: &str = "invalid certificate or no client certificate supplied";
const NO_MATCH: &str =
    "no chain matching all constraints could be found for this login certificate";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    CertList,
    Cert,
    CrlList,
    Crl,
    Config,
    Login,
}

/// `cert` auth method.
pub struct CertAuth {
    routes: PathTable<Route>,
    /// CRL name → revoked serials; `None` until loaded from storage.
    crls: RwLock<Option<BTreeMap<String, BTreeSet<String>>>>,
}

pub fn factory(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(CertAuth::new()))
}

impl Default for CertAuth {
    fn default() -> Self {
        Self::new()
    }
}

impl CertAuth {
    pub fn new() -> Self {
        let cert = format!("certs/(?P<name>{})", pattern::NAME);
        let crl = format!("crls/(?P<name>{})", pattern::NAME);
        CertAuth {
            routes: PathTable::new(&[
                ("certs/?", Route::CertList),
                (cert.as_str(), Route::Cert),
                ("crls/?", Route::CrlList),
                (crl.as_str(), Route::Crl),
                ("config", Route::Config),
                ("login", Route::Login),
            ]),
            crls: RwLock::new(None),
        }
    }

    async fn load_crls(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        let mut all = BTreeMap::new();
        for name in storage.list(CRL_PREFIX).await? {
            if let Some(c) = storage
                .get_json::<CrlEntry>(&format!("{CRL_PREFIX}{name}"))
                .await?
            {
                all.insert(name, c.serials);
            }
        }
        *self.crls.write() = Some(all);
        Ok(())
    }

    /// Is any certificate of the chain revoked? Loads the CRLs first if
    /// `initialize` has not (fail closed rather than skip the check).
    async fn revoked(
        &self,
        storage: &dyn Storage,
        chain: &[Vec<u8>],
    ) -> Result<bool, BackendError> {
        if self.crls.read().is_none() {
            self.load_crls(storage).await?;
        }
        let serials: Vec<String> = chain
            .iter()
            .filter_map(|d| verify::parse(d).map(|c| c.serial.to_string()))
            .collect();
        let guard = self.crls.read();
        Ok(guard.as_ref().is_some_and(|m| {
            m.values()
                .any(|set| serials.iter().any(|s| set.contains(s)))
        }))
    }
}

// ----- stored types -------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CertEntry {
    certificate: String,
    /// DER of each certificate of `certificate`, parsed once at write.
    ders: Vec<Vec<u8>>,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    allowed_names: Vec<String>,
    #[serde(default)]
    allowed_common_names: Vec<String>,
    #[serde(default)]
    allowed_dns_sans: Vec<String>,
    #[serde(default)]
    allowed_email_sans: Vec<String>,
    #[serde(default)]
    allowed_uri_sans: Vec<String>,
    #[serde(default)]
    allowed_organizational_units: Vec<String>,
    #[serde(default)]
    required_extensions: Vec<String>,
    #[serde(default)]
    token: TokenFields,
}

fn any_glob(patterns: &[String], values: &[String]) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| values.iter().any(|v| glob_match(p, v)))
}

impl CertEntry {
    /// Vault's `matchesConstraints`: each non-empty list must match.
    fn constraints_match(&self, i: &LeafInfo) -> bool {
        let cn = std::slice::from_ref(&i.common_name);
        let names: Vec<String> = cn.iter().chain(&i.dns).chain(&i.email).cloned().collect();
        any_glob(&self.allowed_names, &names)
            && any_glob(&self.allowed_common_names, cn)
            && any_glob(&self.allowed_dns_sans, &i.dns)
            && any_glob(&self.allowed_email_sans, &i.email)
            && any_glob(&self.allowed_uri_sans, &i.uri)
            && any_glob(&self.allowed_organizational_units, &i.ous)
            && self.required_extensions.iter().all(|req| {
                let Some((oid, want)) = req.split_once(':') else {
                    return false;
                };
                i.extensions.iter().any(|(o, v)| {
                    o == oid.trim() && v.as_deref().is_some_and(|v| glob_match(want.trim(), v))
                })
            })
    }

    fn to_data(&self) -> Map {
        let mut m = Map::new();
        m.insert("certificate".into(), json!(self.certificate));
        m.insert("display_name".into(), json!(self.display_name));
        m.insert("allowed_names".into(), json!(self.allowed_names));
        m.insert(
            "allowed_common_names".into(),
            json!(self.allowed_common_names),
        );
        m.insert("allowed_dns_sans".into(), json!(self.allowed_dns_sans));
        m.insert("allowed_email_sans".into(), json!(self.allowed_email_sans));
        m.insert("allowed_uri_sans".into(), json!(self.allowed_uri_sans));
        m.insert(
            "allowed_organizational_units".into(),
            json!(self.allowed_organizational_units),
        );
        m.insert(
            "required_extensions".into(),
            json!(self.required_extensions),
        );
        m.insert("allowed_metadata_extensions".into(), json!([]));
        m.insert("ocsp_enabled".into(), json!(false));
        self.token.populate(&mut m);
        m
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CrlEntry {
    serials: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Config {
    #[serde(default)]
    enable_identity_alias_metadata: bool,
}

/// What a login remembers for renewal.
#[derive(Debug, Serialize, Deserialize)]
struct Internal {
    cert_name: String,
    /// Hex SHA-256 of the leaf DER presented at login.
    leaf_sha256: String,
    #[serde(default)]
    subject_key_id: String,
    #[serde(default)]
    authority_key_id: String,
}

// ----- request types ------------------------------------------------------

macro_rules! list_field {
    ($name:ident, $field:literal) => {
        fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
            fields::opt_string_list(d)
                .map_err(|e: D::Error| serde::de::Error::custom(format!("{}: {e}", $field)))
        }
    };
}
list_field!(f_names, "allowed_names");
list_field!(f_cns, "allowed_common_names");
list_field!(f_dns, "allowed_dns_sans");
list_field!(f_email, "allowed_email_sans");
list_field!(f_uri, "allowed_uri_sans");
list_field!(f_ous, "allowed_organizational_units");
list_field!(f_ext, "required_extensions");

fn f_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    fields::opt_boolean(d).map_err(|e: D::Error| serde::de::Error::custom(format!("config: {e}")))
}

#[derive(Deserialize)]
struct CertInput {
    certificate: Option<String>,
    display_name: Option<String>,
    #[serde(default, deserialize_with = "f_names")]
    allowed_names: Option<Vec<String>>,
    #[serde(default, deserialize_with = "f_cns")]
    allowed_common_names: Option<Vec<String>>,
    #[serde(default, deserialize_with = "f_dns")]
    allowed_dns_sans: Option<Vec<String>>,
    #[serde(default, deserialize_with = "f_email")]
    allowed_email_sans: Option<Vec<String>>,
    #[serde(default, deserialize_with = "f_uri")]
    allowed_uri_sans: Option<Vec<String>>,
    #[serde(default, deserialize_with = "f_ous")]
    allowed_organizational_units: Option<Vec<String>>,
    #[serde(default, deserialize_with = "f_ext")]
    required_extensions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "f_bool")]
    ocsp_enabled: Option<bool>,
}

#[derive(Deserialize)]
struct CrlInput {
    #[serde(default)]
    crl: String,
}

#[derive(Deserialize)]
struct ConfigInput {
    #[serde(default, deserialize_with = "f_bool")]
    disable_binding: Option<bool>,
    #[serde(default, deserialize_with = "f_bool")]
    enable_identity_alias_metadata: Option<bool>,
}

#[derive(Deserialize)]
struct LoginInput {
    #[serde(default)]
    name: String,
}

// ----- handlers -------------------------------------------------------------

fn cert_key(name: &str) -> String {
    format!("{CERT_PREFIX}{}", name.to_lowercase())
}

async fn load_cert(storage: &dyn Storage, name: &str) -> Result<Option<CertEntry>, BackendError> {
    Ok(storage.get_json(&cert_key(name)).await?)
}

async fn cert_write(
    req: &Request,
    storage: &dyn Storage,
    name: &str,
) -> Result<Option<Response>, BackendError> {
    let i: CertInput = req.parse()?;
    if i.ocsp_enabled == Some(true) {
        return Err(BackendError::bad_request(
            "ocsp_enabled: OCSP checking is not supported; use crls/",
        ));
    }
    let mut e = load_cert(storage, name).await?.unwrap_or_default();
    if let Some(pem) = i.certificate {
        e.ders = verify::pem_certs("certificate", &pem).map_err(BackendError::BadRequest)?;
        e.certificate = pem;
    }
    if e.ders.is_empty() {
        return Err(BackendError::bad_request("certificate: missing"));
    }
    if let Some(v) = i.display_name {
        e.display_name = v;
    }
    let set = |slot: &mut Vec<String>, v: Option<Vec<String>>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut e.allowed_names, i.allowed_names);
    set(&mut e.allowed_common_names, i.allowed_common_names);
    set(&mut e.allowed_dns_sans, i.allowed_dns_sans);
    set(&mut e.allowed_email_sans, i.allowed_email_sans);
    set(&mut e.allowed_uri_sans, i.allowed_uri_sans);
    set(
        &mut e.allowed_organizational_units,
        i.allowed_organizational_units,
    );
    set(&mut e.required_extensions, i.required_extensions);
    for r in &e.required_extensions {
        if !r.contains(':') {
            return Err(BackendError::bad_request(format!(
                "required_extensions: {r:?} must be formatted as 'oid:value'"
            )));
        }
    }
    // Vault's cert roles also keep `lease` (whole seconds), the oldest name
    // of `token_ttl`, used only when neither `token_ttl` nor `ttl` is given.
    e.token.merge_update(&with_legacy_names(
        req,
        &[
            ("ttl", "token_ttl"),
            ("lease", "token_ttl"),
            ("max_ttl", "token_max_ttl"),
        ],
    ))?;
    storage.put_json(&cert_key(name), &e).await?;
    Ok(None)
}

impl CertAuth {
    async fn crl(
        &self,
        req: &Request,
        storage: &dyn Storage,
        name: &str,
    ) -> Result<Option<Response>, BackendError> {
        let key = format!("{CRL_PREFIX}{}", name.to_lowercase());
        match req.operation {
            Operation::Read => Ok(storage.get_json::<CrlEntry>(&key).await?.map(|c| {
                let serials: Map = c.serials.into_iter().map(|s| (s, json!({}))).collect();
                let mut m = Map::new();
                m.insert("serials".into(), serials.into());
                Response::data(m)
            })),
            Operation::Create | Operation::Update => {
                let i: CrlInput = req.parse()?;
                let serials = verify::crl_serials(&i.crl).map_err(BackendError::BadRequest)?;
                let entry = CrlEntry { serials };
                storage.put_json(&key, &entry).await?;
                self.load_crls(storage).await?;
                Ok(None)
            }
            Operation::Delete => {
                storage.delete(&key).await?;
                self.load_crls(storage).await?;
                Ok(None)
            }
            _ => Err(BackendError::UnsupportedOperation),
        }
    }

    /// The first trusted entry (all, or the named one) that verifies the
    /// presented chain, satisfies its constraints and is not revoked.
    async fn matching(
        &self,
        storage: &dyn Storage,
        peer: &[Vec<u8>],
        only: Option<&str>,
    ) -> Result<Option<(String, CertEntry, LeafInfo)>, BackendError> {
        let names = match only {
            Some(n) => vec![n.to_lowercase()],
            None => storage.list(CERT_PREFIX).await?,
        };
        let Some(leaf) = peer.first().and_then(|d| verify::parse(d)) else {
            return Ok(None);
        };
        let info = verify::leaf_info(&leaf);
        for name in names {
            let Some(entry) = load_cert(storage, &name).await? else {
                continue;
            };
            let Some(chain) = verify::verify_chain(peer, &entry.ders) else {
                continue;
            };
            if !entry.constraints_match(&info) || self.revoked(storage, &chain).await? {
                continue;
            }
            return Ok(Some((name, entry, info)));
        }
        Ok(None)
    }

    async fn login(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let i: LoginInput = req.parse()?;
        if req.peer_certificates.is_empty() {
            return Err(BackendError::bad_request(NO_CERT));
        }
        let only = (!i.name.is_empty()).then_some(i.name.as_str());
        let Some((name, entry, info)) =
            self.matching(storage, &req.peer_certificates, only).await?
        else {
            return Err(BackendError::bad_request(NO_MATCH));
        };
        if !ip_allowed(&entry.token.token_bound_cidrs, req.remote_addr) {
            return Err(BackendError::PermissionDenied);
        }
        let leaf_sha256 = sha256_hex(&req.peer_certificates[0]);
        let mut meta = BTreeMap::new();
        meta.insert("cert_name".to_string(), name.clone());
        meta.insert("common_name".to_string(), info.common_name.clone());
        meta.insert("serial_number".to_string(), info.serial.clone());
        meta.insert("subject_key_id".to_string(), info.subject_key_id.clone());
        meta.insert(
            "authority_key_id".to_string(),
            info.authority_key_id.clone(),
        );
        let display = if entry.display_name.is_empty() {
            name.clone()
        } else {
            entry.display_name.clone()
        };
        let mut auth = entry.token.to_auth(&info.common_name, &display, meta);
        auth.internal_data = serde_json::to_value(Internal {
            cert_name: name,
            leaf_sha256,
            subject_key_id: info.subject_key_id,
            authority_key_id: info.authority_key_id,
        })?;
        Ok(Some(Response {
            auth: Some(auth),
            ..Default::default()
        }))
    }

    /// Renewal must come over a connection presenting the login's
    /// certificate, which must still be trusted by the same entry, unrevoked,
    /// for the same policies.
    async fn renew(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let issued: &Auth = req.auth.as_ref().ok_or(BackendError::PermissionDenied)?;
        let internal: Internal = serde_json::from_value(issued.internal_data.clone())
            .map_err(|_| BackendError::PermissionDenied)?;
        let Some(leaf) = req.peer_certificates.first() else {
            return Err(BackendError::bad_request(
                "renewing a cert auth token requires the client certificate used at login",
            ));
        };
        let presented = sha256_hex(leaf);
        if !bool::from(presented.as_bytes().ct_eq(internal.leaf_sha256.as_bytes())) {
            return Err(BackendError::PermissionDenied);
        }
        let Some((_, entry, _)) = self
            .matching(storage, &req.peer_certificates, Some(&internal.cert_name))
            .await?
        else {
            return Err(BackendError::PermissionDenied);
        };
        if !entry.token.policies_match(issued) {
            return Err(BackendError::bad_request(
                "policies have changed, not renewing",
            ));
        }
        Ok(Some(Response {
            auth: Some(entry.token.renew_auth(issued)),
            ..Default::default()
        }))
    }
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

async fn config(req: &Request, storage: &dyn Storage) -> Result<Option<Response>, BackendError> {
    match req.operation {
        Operation::Read => {
            let c: Config = storage.get_json(CONFIG_KEY).await?.unwrap_or_default();
            let mut m = Map::new();
            m.insert("disable_binding".into(), json!(false));
            m.insert(
                "enable_identity_alias_metadata".into(),
                json!(c.enable_identity_alias_metadata),
            );
            Ok(Some(Response::data(m)))
        }
        Operation::Create | Operation::Update => {
            let i: ConfigInput = req.parse()?;
            if i.disable_binding == Some(true) {
                return Err(BackendError::bad_request(
                    "disable_binding: not supported; renewal always requires the login certificate",
                ));
            }
            let mut c: Config = storage.get_json(CONFIG_KEY).await?.unwrap_or_default();
            if let Some(v) = i.enable_identity_alias_metadata {
                c.enable_identity_alias_metadata = v;
            }
            storage.put_json(CONFIG_KEY, &c).await?;
            Ok(None)
        }
        _ => Err(BackendError::UnsupportedOperation),
    }
}

#[async_trait]
impl Backend for CertAuth {
    fn backend_type(&self) -> BackendType {
        BackendType::Credential
    }

    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths {
            unauthenticated: vec!["login".into()],
            root: Vec::new(),
        }
    }

    async fn initialize(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        self.load_crls(storage).await
    }

    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        match self.routes.route(&req.path) {
            Some((Route::Cert, c)) => Ok(Some(load_cert(storage, c.get("name")).await?.is_some())),
            Some((Route::Crl, c)) => Ok(Some(
                storage
                    .get(&format!("{CRL_PREFIX}{}", c.get("name").to_lowercase()))
                    .await?
                    .is_some(),
            )),
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        if req.operation == Operation::Renew {
            return self.renew(req, storage).await;
        }
        let (route, caps) = self
            .routes
            .route(&req.path)
            .ok_or(BackendError::UnsupportedPath)?;
        match (route, req.operation) {
            (Route::CertList, Operation::List) => {
                Ok(Some(Response::list(storage.list(CERT_PREFIX).await?)))
            }
            (Route::CrlList, Operation::List) => {
                Ok(Some(Response::list(storage.list(CRL_PREFIX).await?)))
            }
            (Route::Cert, Operation::Read) => Ok(load_cert(storage, caps.get("name"))
                .await?
                .map(|e| Response::data(e.to_data()))),
            (Route::Cert, Operation::Create | Operation::Update) => {
                cert_write(req, storage, caps.get("name")).await
            }
            (Route::Cert, Operation::Delete) => {
                storage.delete(&cert_key(caps.get("name"))).await?;
                Ok(None)
            }
            (Route::Crl, _) => self.crl(req, storage, caps.get("name")).await,
            (Route::Config, _) => config(req, storage).await,
            (Route::Login, Operation::Create | Operation::Update) => self.login(req, storage).await,
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}
