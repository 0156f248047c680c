//! The cryptographic operations: encrypt, decrypt, rewrap, datakey, sign,
//! verify, hmac, random and hash, each single or `batch_input` as Vault
//! takes them.
//!
//! In a batch, an item that fails for a reason of its own (bad base64, bad
//! ciphertext, wrong context) gets `{"error": ...}` in its place of
//! `batch_results`, and the answer is 400 — or `partial_failure_response_code`
//! when some items succeeded — with the results still in `data`, as Vault
//! does. A failure of the server itself fails the whole request.

use std::sync::Arc;

use aws_lc_rs::digest;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_sdk::{fields, BackendError, Map, Request, Response, Storage};
use zeroize::Zeroizing;

use super::policy::{self, HashAlg, KeyType, Policy, SignOpts};
use super::{KeySpec, Transit};

/// Vault's cap on one `random` request.
const MAX_RANDOM_BYTES: u64 = 128 * 1024;

// ----- request types ----------------------------------------------------------

#[derive(Debug, Deserialize)]
struct EncryptInput {
    #[serde(default)]
    plaintext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default, deserialize_with = "fields::uint")]
    key_version: u64,
    #[serde(default)]
    associated_data: Option<String>,
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    convergent_encryption: bool,
    #[serde(default)]
    batch_input: Option<Vec<CryptItem>>,
    #[serde(default, deserialize_with = "fields::uint")]
    partial_failure_response_code: u64,
}

/// One item of an encrypt, decrypt or rewrap batch.
#[derive(Debug, Default, Deserialize)]
struct CryptItem {
    #[serde(default)]
    plaintext: Option<String>,
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    associated_data: Option<String>,
    #[serde(default, deserialize_with = "fields::uint")]
    key_version: u64,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DecryptInput {
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    associated_data: Option<String>,
    #[serde(default, deserialize_with = "fields::uint")]
    key_version: u64,
    #[serde(default)]
    batch_input: Option<Vec<CryptItem>>,
    #[serde(default, deserialize_with = "fields::uint")]
    partial_failure_response_code: u64,
}

#[derive(Debug, Deserialize)]
struct DatakeyInput {
    #[serde(default)]
    context: Option<String>,
    #[serde(default = "default_bits", deserialize_with = "fields::uint")]
    bits: u64,
    #[serde(default, deserialize_with = "fields::uint")]
    key_version: u64,
    #[serde(default)]
    associated_data: Option<String>,
}

fn default_bits() -> u64 {
    256
}

#[derive(Debug, Deserialize)]
struct SignInput {
    #[serde(default)]
    input: Option<String>,
    #[serde(default, deserialize_with = "fields::uint")]
    key_version: u64,
    #[serde(default)]
    hash_algorithm: Option<String>,
    /// Vault's older name of `hash_algorithm`.
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    signature_algorithm: Option<String>,
    #[serde(default)]
    marshaling_algorithm: Option<String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    prehashed: bool,
    #[serde(default)]
    batch_input: Option<Vec<SignItem>>,
    /// Verify only.
    #[serde(default)]
    signature: Option<String>,
    /// Verify only: check an HMAC instead of a signature.
    #[serde(default)]
    hmac: Option<String>,
    #[serde(default, deserialize_with = "fields::uint")]
    partial_failure_response_code: u64,
}

#[derive(Debug, Default, Deserialize)]
struct SignItem {
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    hmac: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RandomInput {
    #[serde(default, deserialize_with = "fields::opt_uint")]
    bytes: Option<u64>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HashInput {
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

// ----- helpers ----------------------------------------------------------------

fn bad(msg: impl Into<String>) -> BackendError {
    BackendError::bad_request(msg)
}

fn b64_field(field: &str, v: Option<&str>) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    match v {
        None | Some("") => Ok(Zeroizing::new(Vec::new())),
        Some(s) => B64
            .decode(s.trim())
            .map(Zeroizing::new)
            .map_err(|_| bad(format!("failed to base64-decode {field}"))),
    }
}

fn key_version(v: u64) -> Result<u32, BackendError> {
    u32::try_from(v).map_err(|_| bad(format!("key_version {v} is out of range")))
}

/// Splits `vault:v<N>:<body>`, naming `what` (ciphertext, signature, hmac).
fn parse_versioned<'a>(what: &str, s: &'a str) -> Result<(u32, &'a str), BackendError> {
    let rest = s
        .strip_prefix("vault:v")
        .ok_or_else(|| bad(format!("invalid {what}: no prefix")))?;
    let (v, body) = rest
        .split_once(':')
        .ok_or_else(|| bad(format!("invalid {what}: wrong number of fields")))?;
    let v: u32 = v.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        bad(format!(
            "invalid {what}: version number could not be decoded"
        ))
    })?;
    Ok((v, body))
}

/// Runs one item; a bad request becomes the item's error, anything else
/// fails the whole batch.
fn item_result(
    r: Result<Map, BackendError>,
    reference: Option<String>,
    any_err: &mut bool,
) -> Result<Value, BackendError> {
    let mut m = match r {
        Ok(m) => m,
        Err(BackendError::BadRequest(msg)) => {
            *any_err = true;
            let mut m = Map::new();
            m.insert("error".into(), Value::String(msg));
            m
        }
        Err(e) => return Err(e),
    };
    if let Some(r) = reference {
        m.insert("reference".into(), Value::String(r));
    }
    Ok(Value::Object(m))
}

fn batch_response(results: Vec<Value>, any_err: bool, partial_code: u64) -> Response {
    let all_err = results
        .iter()
        .all(|r| r.get("error").is_some_and(|e| !e.is_null()));
    let mut m = Map::new();
    m.insert("batch_results".into(), Value::Array(results));
    let mut resp = Response::data(m);
    if any_err {
        resp.status = Some(if all_err || partial_code == 0 {
            400
        } else {
            u16::try_from(partial_code).unwrap_or(400)
        });
    }
    resp
}

fn single(r: Result<Map, BackendError>) -> Result<Option<Response>, BackendError> {
    r.map(|m| Some(Response::data(m)))
}

fn sign_opts(url_alg: &str, input: &SignInput, kt: KeyType) -> Result<SignOpts, BackendError> {
    let hash_name = [
        Some(url_alg),
        input.hash_algorithm.as_deref(),
        input.algorithm.as_deref(),
    ]
    .into_iter()
    .flatten()
    .find(|s| !s.is_empty());
    let hash = match (kt, hash_name) {
        // Ed25519 hashes internally; Vault ignores the field for it.
        (KeyType::Ed25519, _) => HashAlg::Sha2_256,
        (_, Some(name)) => HashAlg::parse(name)?,
        // Vault's default, sha2-256, with a P-384 key: aws-lc-rs signs
        // P-384 only over SHA-384 (or SHA3-384), neither with a fixed
        // algorithm nor with `sign_digest`, which refuses a digest of
        // another hash. So an unset hash means sha2-384 for P-384 keys;
        // P-256 and P-521 keep Vault's sha2-256.
        (KeyType::EcdsaP384, None) => HashAlg::Sha2_384,
        (_, None) => HashAlg::Sha2_256,
    };
    let pss = match input.signature_algorithm.as_deref().unwrap_or("") {
        "" | "pss" => true,
        "pkcs1v15" => false,
        other => {
            return Err(bad(format!(
                "unsupported signature_algorithm {other:?}: use pss or pkcs1v15"
            )))
        }
    };
    let jws = match input.marshaling_algorithm.as_deref().unwrap_or("") {
        "" | "asn1" => false,
        "jws" => true,
        other => {
            return Err(bad(format!(
                "unsupported marshaling_algorithm {other:?}: use asn1 or jws"
            )))
        }
    };
    Ok(SignOpts {
        hash,
        pss,
        jws,
        prehashed: input.prehashed,
    })
}

/// One encryption: the data, its context and AAD, and the key version
/// asked for (0 for the latest).
struct Job<'a> {
    plaintext: &'a [u8],
    context: &'a [u8],
    aad: &'a [u8],
    requested: u32,
}

// ----- operations ---------------------------------------------------------------

impl Transit {
    async fn existing(
        &self,
        name: &str,
        storage: &dyn Storage,
        what: &str,
    ) -> Result<Arc<Policy>, BackendError> {
        self.get_policy(name, storage)
            .await?
            .ok_or_else(|| bad(format!("{what} key not found")))
    }

    async fn encrypt_one(
        &self,
        name: &str,
        storage: &dyn Storage,
        pol: &Arc<Policy>,
        job: Job<'_>,
    ) -> Result<Map, BackendError> {
        let Job {
            plaintext,
            context,
            aad,
            requested,
        } = job;
        let kt = pol.rec.key_type;
        if !kt.supports_encryption() {
            return Err(bad(format!(
                "key type {} does not support encryption",
                kt.as_str()
            )));
        }
        if !aad.is_empty() && kt.aead().is_none() {
            return Err(bad(format!(
                "associated_data is not supported with key type {}",
                kt.as_str()
            )));
        }
        let (p, v) = self.account(name, storage, pol.clone(), requested).await?;
        let blob = p.encrypt(v, context, plaintext, aad)?;
        let mut m = Map::new();
        m.insert(
            "ciphertext".into(),
            json!(format!("vault:v{v}:{}", B64.encode(blob))),
        );
        m.insert("key_version".into(), json!(v));
        Ok(m)
    }

    fn decrypt_one(
        pol: &Policy,
        ciphertext: Option<&str>,
        context: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let ct = ciphertext
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("missing ciphertext to decrypt"))?;
        let (v, body) = parse_versioned("ciphertext", ct)?;
        let blob = B64
            .decode(body)
            .map_err(|_| bad("invalid ciphertext: could not decode base64"))?;
        pol.decrypt(v, context, &blob, aad)
    }

    pub(super) async fn encrypt(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: EncryptInput = req.parse()?;
        let batch = input.batch_input.is_some();
        let items = match input.batch_input {
            Some(b) if b.is_empty() => return Err(bad("missing batch input to process")),
            Some(b) => b,
            None => vec![CryptItem {
                plaintext: Some(
                    input
                        .plaintext
                        .ok_or_else(|| bad("missing plaintext to encrypt"))?,
                ),
                context: input.context,
                associated_data: input.associated_data.clone(),
                key_version: input.key_version,
                ..Default::default()
            }],
        };
        let pol = match self.get_policy(name, storage).await? {
            Some(p) => p,
            None => {
                // Vault's upsert: encrypt creates a missing key (the core
                // checked the `create` capability through existence_check).
                let key_type = KeyType::parse(input.key_type.as_deref().unwrap_or(""))?;
                if !key_type.supports_encryption() {
                    return Err(bad(format!(
                        "key type {} cannot be created by encrypt: it does not encrypt",
                        key_type.as_str()
                    )));
                }
                let derived = items
                    .first()
                    .and_then(|i| i.context.as_deref())
                    .is_some_and(|c| !c.is_empty());
                if input.convergent_encryption && !derived {
                    return Err(bad(
                        "convergent encryption requires derivation to be enabled, so context is required",
                    ));
                }
                self.create(
                    name,
                    storage,
                    KeySpec {
                        key_type,
                        derived,
                        convergent: input.convergent_encryption,
                        exportable: false,
                        allow_plaintext_backup: false,
                        auto_rotate_period: std::time::Duration::ZERO,
                        key_size: 32,
                    },
                )
                .await?
            }
        };
        let top_aad = input.associated_data;
        let mut results = Vec::with_capacity(items.len());
        let mut any_err = false;
        for item in items {
            let r = async {
                let pt = b64_field("plaintext", item.plaintext.as_deref())?;
                let ctx = b64_field("context", item.context.as_deref())?;
                let aad = b64_field(
                    "associated_data",
                    item.associated_data.as_deref().or(top_aad.as_deref()),
                )?;
                let kv = key_version(if item.key_version != 0 {
                    item.key_version
                } else {
                    input.key_version
                })?;
                self.encrypt_one(
                    name,
                    storage,
                    &pol,
                    Job {
                        plaintext: &pt,
                        context: &ctx,
                        aad: &aad,
                        requested: kv,
                    },
                )
                .await
            }
            .await;
            if !batch {
                return single(r);
            }
            results.push(item_result(r, item.reference, &mut any_err)?);
        }
        Ok(Some(batch_response(
            results,
            any_err,
            input.partial_failure_response_code,
        )))
    }

    pub(super) async fn decrypt(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: DecryptInput = req.parse()?;
        let batch = input.batch_input.is_some();
        let items = match input.batch_input {
            Some(b) if b.is_empty() => return Err(bad("missing batch input to process")),
            Some(b) => b,
            None => vec![CryptItem {
                ciphertext: input.ciphertext,
                context: input.context,
                associated_data: input.associated_data.clone(),
                ..Default::default()
            }],
        };
        let pol = self.existing(name, storage, "encryption").await?;
        let top_aad = input.associated_data;
        let mut results = Vec::with_capacity(items.len());
        let mut any_err = false;
        for item in items {
            let r = (|| {
                let ctx = b64_field("context", item.context.as_deref())?;
                let aad = b64_field(
                    "associated_data",
                    item.associated_data.as_deref().or(top_aad.as_deref()),
                )?;
                let pt = Self::decrypt_one(&pol, item.ciphertext.as_deref(), &ctx, &aad)?;
                let mut m = Map::new();
                m.insert("plaintext".into(), json!(B64.encode(&*pt)));
                Ok(m)
            })();
            if !batch {
                return single(r);
            }
            results.push(item_result(r, item.reference, &mut any_err)?);
        }
        Ok(Some(batch_response(
            results,
            any_err,
            input.partial_failure_response_code,
        )))
    }

    pub(super) async fn rewrap(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: DecryptInput = req.parse()?;
        let batch = input.batch_input.is_some();
        let items = match input.batch_input {
            Some(b) if b.is_empty() => return Err(bad("missing batch input to process")),
            Some(b) => b,
            None => vec![CryptItem {
                ciphertext: input.ciphertext,
                context: input.context,
                associated_data: input.associated_data.clone(),
                key_version: input.key_version,
                ..Default::default()
            }],
        };
        let pol = self.existing(name, storage, "encryption").await?;
        let top_aad = input.associated_data;
        let mut results = Vec::with_capacity(items.len());
        let mut any_err = false;
        for item in items {
            let r = async {
                let ctx = b64_field("context", item.context.as_deref())?;
                let aad = b64_field(
                    "associated_data",
                    item.associated_data.as_deref().or(top_aad.as_deref()),
                )?;
                let pt = Self::decrypt_one(&pol, item.ciphertext.as_deref(), &ctx, &aad)?;
                let kv = key_version(if item.key_version != 0 {
                    item.key_version
                } else {
                    input.key_version
                })?;
                self.encrypt_one(
                    name,
                    storage,
                    &pol,
                    Job {
                        plaintext: &pt,
                        context: &ctx,
                        aad: &aad,
                        requested: kv,
                    },
                )
                .await
            }
            .await;
            if !batch {
                return single(r);
            }
            results.push(item_result(r, item.reference, &mut any_err)?);
        }
        Ok(Some(batch_response(
            results,
            any_err,
            input.partial_failure_response_code,
        )))
    }

    pub(super) async fn datakey(
        &self,
        name: &str,
        with_plaintext: bool,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: DatakeyInput = req.parse()?;
        let len = match input.bits {
            128 | 256 | 512 => (input.bits / 8) as usize,
            other => {
                return Err(bad(format!(
                    "invalid bits {other}: bits must be 128, 256 or 512"
                )))
            }
        };
        let pol = self.existing(name, storage, "encryption").await?;
        let ctx = b64_field("context", input.context.as_deref())?;
        let aad = b64_field("associated_data", input.associated_data.as_deref())?;
        let new_key = policy::random_bytes(len)?;
        let mut m = self
            .encrypt_one(
                name,
                storage,
                &pol,
                Job {
                    plaintext: &new_key,
                    context: &ctx,
                    aad: &aad,
                    requested: key_version(input.key_version)?,
                },
            )
            .await?;
        if with_plaintext {
            m.insert("plaintext".into(), json!(B64.encode(&*new_key)));
        }
        Ok(Some(Response::data(m)))
    }

    pub(super) async fn sign(
        &self,
        name: &str,
        url_alg: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: SignInput = req.parse()?;
        let pol = self.existing(name, storage, "signing").await?;
        let kt = pol.rec.key_type;
        if !kt.supports_signing() {
            return Err(bad(format!(
                "key type {} does not support signing",
                kt.as_str()
            )));
        }
        let opts = sign_opts(url_alg, &input, kt)?;
        let v = pol.encryption_version(key_version(input.key_version)?)?;
        let batch = input.batch_input.is_some();
        let items = match input.batch_input {
            Some(b) if b.is_empty() => return Err(bad("missing batch input to process")),
            Some(b) => b,
            None => vec![SignItem {
                input: input.input,
                ..Default::default()
            }],
        };
        let mut results = Vec::with_capacity(items.len());
        let mut any_err = false;
        for item in items {
            let r = (|| {
                let data = b64_field("input", item.input.as_deref())?;
                let sig = pol.sign(v, &data, opts)?;
                let encoded = if opts.jws {
                    B64URL.encode(sig)
                } else {
                    B64.encode(sig)
                };
                let mut m = Map::new();
                m.insert("signature".into(), json!(format!("vault:v{v}:{encoded}")));
                m.insert("key_version".into(), json!(v));
                Ok(m)
            })();
            if !batch {
                return single(r);
            }
            results.push(item_result(r, item.reference, &mut any_err)?);
        }
        Ok(Some(batch_response(
            results,
            any_err,
            input.partial_failure_response_code,
        )))
    }

    pub(super) async fn verify(
        &self,
        name: &str,
        url_alg: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let mut input: SignInput = req.parse()?;
        let pol = self
            .existing(name, storage, "signature verification")
            .await?;
        let kt = pol.rec.key_type;
        let hmac_alg = HashAlg::parse(
            [
                Some(url_alg),
                input.algorithm.as_deref(),
                input.hash_algorithm.as_deref(),
            ]
            .into_iter()
            .flatten()
            .find(|s| !s.is_empty())
            .unwrap_or("sha2-256"),
        );
        let batch = input.batch_input.is_some();
        let items = match input.batch_input.take() {
            Some(b) if b.is_empty() => return Err(bad("missing batch input to process")),
            Some(b) => b,
            None => vec![SignItem {
                input: input.input.take(),
                signature: input.signature.take(),
                hmac: input.hmac.take(),
                reference: None,
            }],
        };
        let mut results = Vec::with_capacity(items.len());
        let mut any_err = false;
        for item in items {
            let r = (|| {
                let data = b64_field("input", item.input.as_deref())?;
                let valid = match (item.hmac.as_deref(), item.signature.as_deref()) {
                    (Some(h), _) if !h.is_empty() => {
                        let (v, body) = parse_versioned("hmac", h)?;
                        let tag = B64
                            .decode(body)
                            .map_err(|_| bad("invalid hmac: could not decode base64"))?;
                        let alg = hmac_alg.as_ref().map_err(|e| bad(e.to_string()))?;
                        pol.hmac_verify(v, *alg, &data, &tag)?
                    }
                    (_, Some(s)) if !s.is_empty() => {
                        if !kt.supports_signing() {
                            return Err(bad(format!(
                                "key type {} does not support verification",
                                kt.as_str()
                            )));
                        }
                        let opts = sign_opts(url_alg, &input, kt)?;
                        let (v, body) = parse_versioned("signature", s)?;
                        let sig = if opts.jws {
                            B64URL.decode(body)
                        } else {
                            B64.decode(body)
                        }
                        .map_err(|_| bad("invalid signature: could not decode base64"))?;
                        pol.verify(v, &data, &sig, opts)?
                    }
                    _ => return Err(bad("missing signature or hmac to verify")),
                };
                let mut m = Map::new();
                m.insert("valid".into(), json!(valid));
                Ok(m)
            })();
            if !batch {
                return single(r);
            }
            results.push(item_result(r, item.reference, &mut any_err)?);
        }
        Ok(Some(batch_response(
            results,
            any_err,
            input.partial_failure_response_code,
        )))
    }

    pub(super) async fn hmac(
        &self,
        name: &str,
        url_alg: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: SignInput = req.parse()?;
        let pol = self.existing(name, storage, "encryption").await?;
        let alg = HashAlg::parse(
            [
                Some(url_alg),
                input.algorithm.as_deref(),
                input.hash_algorithm.as_deref(),
            ]
            .into_iter()
            .flatten()
            .find(|s| !s.is_empty())
            .unwrap_or("sha2-256"),
        )?;
        let v = pol.encryption_version(key_version(input.key_version)?)?;
        let batch = input.batch_input.is_some();
        let items = match input.batch_input {
            Some(b) if b.is_empty() => return Err(bad("missing batch input to process")),
            Some(b) => b,
            None => vec![SignItem {
                input: input.input,
                ..Default::default()
            }],
        };
        let mut results = Vec::with_capacity(items.len());
        let mut any_err = false;
        for item in items {
            let r = (|| {
                let data = b64_field("input", item.input.as_deref())?;
                let tag = pol.hmac(v, alg, &data)?;
                let mut m = Map::new();
                m.insert(
                    "hmac".into(),
                    json!(format!("vault:v{v}:{}", B64.encode(tag))),
                );
                Ok(m)
            })();
            if !batch {
                return single(r);
            }
            results.push(item_result(r, item.reference, &mut any_err)?);
        }
        Ok(Some(batch_response(
            results,
            any_err,
            input.partial_failure_response_code,
        )))
    }
}

fn encode(format: &str, bytes: &[u8]) -> Result<String, BackendError> {
    match format {
        "" | "base64" => Ok(B64.encode(bytes)),
        "hex" => Ok(hex::encode(bytes)),
        other => Err(bad(format!(
            "unsupported encoding format {other:?}: use base64 or hex"
        ))),
    }
}

/// `random[/<source>][/<bytes>]`. Every source is the platform's CSPRNG
/// (through aws-lc-rs): there is no seal device to draw from.
pub(super) fn random(
    url_source: &str,
    url_bytes: &str,
    req: &Request,
) -> Result<Option<Response>, BackendError> {
    let input: RandomInput = req.parse()?;
    let source = if url_source.is_empty() {
        input.source.as_deref().unwrap_or("platform")
    } else {
        url_source
    };
    if !matches!(source, "" | "platform" | "seal" | "all") {
        return Err(bad(format!(
            "unsupported source {source:?}: use platform, seal or all"
        )));
    }
    let n = if url_bytes.is_empty() {
        input.bytes.unwrap_or(32)
    } else {
        url_bytes
            .parse()
            .map_err(|_| bad(format!("invalid bytes {url_bytes:?}")))?
    };
    if n == 0 || n > MAX_RANDOM_BYTES {
        return Err(bad(format!(
            "bytes must be between 1 and {MAX_RANDOM_BYTES}"
        )));
    }
    let format = input.format.as_deref().unwrap_or("base64");
    let bytes = policy::random_bytes(n as usize)?;
    let mut m = Map::new();
    m.insert("random_bytes".into(), json!(encode(format, &bytes)?));
    Ok(Some(Response::data(m)))
}

/// `hash[/<algorithm>]`: `sum` in hex (default) or base64.
pub(super) fn hash(url_alg: &str, req: &Request) -> Result<Option<Response>, BackendError> {
    let input: HashInput = req.parse()?;
    let name = if url_alg.is_empty() {
        input.algorithm.as_deref().unwrap_or("sha2-256")
    } else {
        url_alg
    };
    let alg = HashAlg::parse(name)?.digest()?;
    let data = b64_field(
        "input",
        Some(
            input
                .input
                .as_deref()
                .ok_or_else(|| bad("missing input to hash"))?,
        ),
    )?;
    let sum = digest::digest(alg, &data);
    let format = input.format.as_deref().unwrap_or("hex");
    let sum = match format {
        "" | "hex" => hex::encode(sum.as_ref()),
        "base64" => B64.encode(sum.as_ref()),
        other => {
            return Err(bad(format!(
                "unsupported encoding format {other:?}: use hex or base64"
            )))
        }
    };
    let mut m = Map::new();
    m.insert("sum".into(), json!(sum));
    Ok(Some(Response::data(m)))
}
