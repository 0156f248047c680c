//! Revocation: `revoke`, the CRLs built from the one-entry-per-revocation
//! store, `cert/<serial>`, the cert listings and `tidy`.

use std::time::Duration;

use rcgen::{CertificateRevocationListParams, RevokedCertParams};
use serde::Deserialize;
use serde_json::json;
use tresor_sdk::{fields, BackendError, Request, Response, Storage};

use super::issuers::{self, obj};
use super::store::{self, CertEntry, CrlEntry, IssuerEntry, RevokedEntry};
use super::x509;
use super::Pki;

#[derive(Debug, Deserialize)]
struct RevokeRequest {
    #[serde(default)]
    serial_number: String,
    #[serde(default)]
    certificate: String,
}

pub(super) async fn revoke(req: &Request, s: &dyn Storage) -> Result<Response, BackendError> {
    let r: RevokeRequest = req.parse()?;
    let entry = match (r.serial_number.is_empty(), r.certificate.is_empty()) {
        (false, true) => {
            let serial = x509::normalize_serial(&r.serial_number)?;
            revoke_serial(s, &serial).await?
        }
        (true, false) => revoke_certificate(s, &r.certificate).await?,
        _ => {
            return Err(BackendError::bad_request(
                "exactly one of serial_number and certificate is required",
            ))
        }
    };
    Ok(Response::data(obj(json!({
        "revocation_time": entry.revocation_time,
        "revocation_time_rfc3339": x509::rfc3339(entry.revocation_time),
        "state": "revoked",
    }))))
}

/// Revokes a stored certificate; the lease-expiry path lands here too.
pub(super) async fn revoke_serial(
    s: &dyn Storage,
    serial: &str,
) -> Result<RevokedEntry, BackendError> {
    let key = x509::serial_key(serial);
    if let Some(e) = store::get::<RevokedEntry>(s, &format!("{}{key}", store::REVOKED)).await? {
        return Ok(e);
    }
    let cert: CertEntry = store::get(s, &format!("{}{key}", store::CERTS))
        .await?
        .ok_or_else(|| {
            BackendError::bad_request(format!(
                "serial_number: certificate with serial {serial} not found (no_store roles keep none; revoke by certificate)"
            ))
        })?;
    record(
        s,
        serial,
        &cert.issuer_id,
        cert.not_after,
        &cert.certificate,
    )
    .await
}

/// Revokes by value, for certificates not kept (`no_store`): accepted only
/// when one of our issuers signed it.
async fn revoke_certificate(s: &dyn Storage, pem_text: &str) -> Result<RevokedEntry, BackendError> {
    let der = x509::pem_certs(pem_text)?
        .into_iter()
        .next()
        .ok_or_else(|| BackendError::bad_request("certificate: no PEM certificate found"))?;
    let c = x509::parse_cert(&der)?;
    let serial = x509::format_serial(c.raw_serial());
    let key = x509::serial_key(&serial);
    if let Some(e) = store::get::<RevokedEntry>(s, &format!("{}{key}", store::REVOKED)).await? {
        return Ok(e);
    }
    let mut issuer_id = None;
    for i in store::issuers(s).await? {
        let idr = x509::pem_certs(&i.certificate)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let Ok(ic) = x509::parse_cert(&idr) else {
            continue;
        };
        if c.issuer().as_raw() == ic.subject().as_raw()
            && c.verify_signature(Some(ic.public_key())).is_ok()
        {
            issuer_id = Some(i.id.clone());
            break;
        }
    }
    let issuer_id = issuer_id.ok_or_else(|| {
        BackendError::bad_request("certificate: not issued by any issuer of this mount")
    })?;
    record(
        s,
        &serial,
        &issuer_id,
        c.validity().not_after.timestamp(),
        &x509::cert_pem(&der),
    )
    .await
}

async fn record(
    s: &dyn Storage,
    serial: &str,
    issuer_id: &str,
    not_after: i64,
    pem_text: &str,
) -> Result<RevokedEntry, BackendError> {
    if store::issuers(s)
        .await?
        .iter()
        .any(|i| i.serial_number == serial)
    {
        return Err(BackendError::bad_request(format!(
            "serial_number: {serial} is an issuer of this mount; an issuer cannot be put on its own CRL"
        )));
    }
    let now = chrono::Utc::now().timestamp();
    let entry = RevokedEntry {
        serial_number: serial.to_string(),
        revocation_time: now,
        issuer_id: issuer_id.to_string(),
        not_after,
        certificate: pem_text.to_string(),
    };
    store::put(
        s,
        &format!("{}{}", store::REVOKED, x509::serial_key(serial)),
        &entry,
    )
    .await?;
    // Rebuilding here would make every revocation cost O(revoked): the CRL
    // is only marked dirty, and rebuilt before it is next read (or by the
    // periodic task), so consecutive revocations share one rebuild and a
    // reader never sees a CRL that lacks a revocation.
    s.put(store::CRL_DIRTY, b"1").await?;
    Ok(entry)
}

/// Builds and stores a fresh CRL for every issuer that has a key.
pub(super) async fn rebuild_all(pki: &Pki, s: &dyn Storage) -> Result<(), BackendError> {
    let _guard = pki.lock.lock().await;
    let cfg = store::crl_config(s).await?;
    let revoked = all_revoked(s).await?;
    for i in store::issuers(s).await? {
        if i.key_id.is_empty() {
            continue;
        }
        build(s, &i, &revoked, &cfg).await?;
    }
    s.delete(store::CRL_DIRTY).await?;
    Ok(())
}

async fn all_revoked(s: &dyn Storage) -> Result<Vec<RevokedEntry>, BackendError> {
    let mut out = Vec::new();
    for k in store::list(s, store::REVOKED).await? {
        if let Some(e) = store::get::<RevokedEntry>(s, &format!("{}{k}", store::REVOKED)).await? {
            out.push(e);
        }
    }
    Ok(out)
}

async fn build(
    s: &dyn Storage,
    issuer: &IssuerEntry,
    revoked: &[RevokedEntry],
    cfg: &store::CrlConfig,
) -> Result<CrlEntry, BackendError> {
    let loaded = issuers::load_signer(s, &issuer.id).await?;
    let crl_key = format!("{}{}", store::CRLS, issuer.id);
    let previous = store::get::<CrlEntry>(s, &crl_key).await?;
    let number = previous.map(|p| p.number + 1).unwrap_or(1);
    let now = chrono::Utc::now().timestamp();
    let expiry = i64::try_from(cfg.expiry.as_secs().max(60)).unwrap_or(72 * 3600);
    let mut entries = Vec::new();
    if !cfg.disable {
        // Kept until the certificate expires; tidy removes the entry later.
        for r in revoked
            .iter()
            .filter(|r| r.issuer_id == issuer.id && r.not_after > now)
        {
            let serial = hex::decode(r.serial_number.replace(':', ""))
                .map_err(|_| BackendError::Internal("stored serial is not hex".into()))?;
            entries.push(RevokedCertParams {
                serial_number: x509::serial_number(&serial),
                revocation_time: x509::offset_time(r.revocation_time)?,
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    let params = CertificateRevocationListParams {
        this_update: x509::offset_time(now)?,
        next_update: x509::offset_time(now + expiry)?,
        crl_number: x509::serial_number(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: loaded
            .signer
            .stand_in
            .params()
            .key_identifier_method
            .clone(),
    };
    let crl = params
        .signed_by(&loaded.signer.stand_in, &loaded.signer.key)
        .map_err(|e| BackendError::Internal(format!("signing CRL: {e}")))?;
    let entry = CrlEntry {
        number,
        der: crl.der().to_vec(),
        next_update: now + expiry,
    };
    store::put(s, &crl_key, &entry).await?;
    Ok(entry)
}

/// The issuer's current CRL, rebuilt when missing or past its nextUpdate.
pub(super) async fn current_crl(
    pki: &Pki,
    s: &dyn Storage,
    reference: &str,
) -> Result<Vec<u8>, BackendError> {
    let issuer = store::require_issuer(s, reference).await?;
    let key = format!("{}{}", store::CRLS, issuer.id);
    // With auto_rebuild (Vault's opt-in) the stored CRL may trail recent
    // revocations until the periodic rebuild; without it, a read after a
    // revocation rebuilds first.
    if !store::crl_config(s).await?.auto_rebuild && s.get(store::CRL_DIRTY).await?.is_some() {
        rebuild_all(pki, s).await?;
    }
    if let Some(e) = store::get::<CrlEntry>(s, &key).await? {
        if e.next_update > chrono::Utc::now().timestamp() {
            return Ok(e.der);
        }
    }
    let _guard = pki.lock.lock().await;
    let cfg = store::crl_config(s).await?;
    let revoked = all_revoked(s).await?;
    Ok(build(s, &issuer, &revoked, &cfg).await?.der)
}

pub(super) fn crl_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("X509 CRL", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
    .trim_end()
    .to_string()
}

pub(super) async fn read_cert(
    s: &dyn Storage,
    serial: &str,
) -> Result<Option<Response>, BackendError> {
    let serial = x509::normalize_serial(serial)?;
    let key = x509::serial_key(&serial);
    let revoked = store::get::<RevokedEntry>(s, &format!("{}{key}", store::REVOKED)).await?;
    let cert = store::get::<CertEntry>(s, &format!("{}{key}", store::CERTS)).await?;
    let (pem_text, issuer_id) = match (&cert, &revoked) {
        (Some(c), _) => (c.certificate.clone(), c.issuer_id.clone()),
        (None, Some(r)) => (r.certificate.clone(), r.issuer_id.clone()),
        (None, None) => return Ok(None),
    };
    let (rt, rt3339) = match &revoked {
        Some(r) => (
            json!(r.revocation_time),
            json!(x509::rfc3339(r.revocation_time)),
        ),
        None => (json!(0), json!("")),
    };
    Ok(Some(Response::data(obj(json!({
        "certificate": pem_text,
        "revocation_time": rt,
        "revocation_time_rfc3339": rt3339,
        "issuer_id": issuer_id,
        "serial_number": serial,
    })))))
}

pub(super) async fn list_serials(s: &dyn Storage, prefix: &str) -> Result<Response, BackendError> {
    let keys = store::list(s, prefix)
        .await?
        .into_iter()
        .map(|k| k.replace('-', ":"))
        .collect();
    Ok(Response::list(keys))
}

#[derive(Debug, Deserialize)]
struct CrlConfigRequest {
    #[serde(default, deserialize_with = "fields::opt_duration")]
    expiry: Option<Duration>,
    #[serde(default, deserialize_with = "fields::opt_boolean")]
    disable: Option<bool>,
    #[serde(default, deserialize_with = "fields::opt_boolean")]
    ocsp_disable: Option<bool>,
    #[serde(default, deserialize_with = "fields::opt_boolean")]
    auto_rebuild: Option<bool>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    auto_rebuild_grace_period: Option<Duration>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    ocsp_expiry: Option<Duration>,
}

pub(super) fn crl_config_data(c: &store::CrlConfig) -> Response {
    Response::data(obj(json!({
        "expiry": super::go_duration(c.expiry),
        "disable": c.disable,
        "ocsp_disable": c.ocsp_disable,
        "auto_rebuild": c.auto_rebuild,
        "auto_rebuild_grace_period": super::go_duration(c.auto_rebuild_grace_period),
        "ocsp_expiry": super::go_duration(c.ocsp_expiry),
        "enable_delta": false,
        "delta_rebuild_interval": "15m",
        "cross_cluster_revocation": false,
        "unified_crl": false,
        "unified_crl_on_existing_paths": false,
    })))
}

pub(super) async fn write_crl_config(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
) -> Result<Response, BackendError> {
    let r: CrlConfigRequest = req.parse()?;
    let mut c = store::crl_config(s).await?;
    if let Some(e) = r.expiry {
        if e < Duration::from_secs(60) {
            return Err(BackendError::bad_request("expiry: must be at least 1m"));
        }
        c.expiry = e;
    }
    if let Some(d) = r.disable {
        c.disable = d;
    }
    if let Some(d) = r.ocsp_disable {
        c.ocsp_disable = d;
    }
    if let Some(a) = r.auto_rebuild {
        c.auto_rebuild = a;
    }
    if let Some(g) = r.auto_rebuild_grace_period {
        c.auto_rebuild_grace_period = g;
    }
    if let Some(o) = r.ocsp_expiry {
        c.ocsp_expiry = o;
    }
    if c.auto_rebuild && c.auto_rebuild_grace_period >= c.expiry {
        return Err(BackendError::bad_request(
            "auto_rebuild_grace_period: must be shorter than expiry",
        ));
    }
    store::put(s, store::CONFIG_CRL, &c).await?;
    // A changed expiry or disable flag shows in the next CRL at once.
    rebuild_all(pki, s).await?;
    Ok(crl_config_data(&c))
}

#[derive(Debug, Deserialize)]
struct UrlsRequest {
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    issuing_certificates: Option<Vec<String>>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    crl_distribution_points: Option<Vec<String>>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    ocsp_servers: Option<Vec<String>>,
}

pub(super) async fn write_urls(req: &Request, s: &dyn Storage) -> Result<Response, BackendError> {
    let r: UrlsRequest = req.parse()?;
    let mut u = store::urls_config(s).await?;
    if let Some(v) = r.issuing_certificates {
        u.issuing_certificates = v;
    }
    if let Some(v) = r.crl_distribution_points {
        u.crl_distribution_points = v;
    }
    if let Some(v) = r.ocsp_servers {
        u.ocsp_servers = v;
    }
    for url in u
        .issuing_certificates
        .iter()
        .chain(&u.crl_distribution_points)
        .chain(&u.ocsp_servers)
    {
        if url::Url::parse(url).is_err() {
            return Err(BackendError::bad_request(format!("invalid URL {url:?}")));
        }
    }
    store::put(s, store::CONFIG_URLS, &u).await?;
    Ok(urls_data(&u))
}

pub(super) fn urls_data(u: &store::UrlsConfig) -> Response {
    Response::data(obj(json!({
        "issuing_certificates": u.issuing_certificates,
        "crl_distribution_points": u.crl_distribution_points,
        "ocsp_servers": u.ocsp_servers,
        "enable_templating": false,
    })))
}

fn default_buffer() -> Duration {
    Duration::from_secs(72 * 3600)
}

#[derive(Debug, Deserialize)]
struct TidyRequest {
    #[serde(default, deserialize_with = "fields::boolean")]
    tidy_cert_store: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    tidy_revoked_certs: bool,
    #[serde(default = "default_buffer", deserialize_with = "fields::duration")]
    safety_buffer: Duration,
}

/// Runs the tidy inline (stores here are small enough) and answers like
/// Vault's asynchronous one: 202 and a pointer to `tidy-status`.
pub(super) async fn tidy(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
) -> Result<Response, BackendError> {
    let r: TidyRequest = req.parse()?;
    if !r.tidy_cert_store && !r.tidy_revoked_certs {
        return Err(BackendError::bad_request(
            "tidy: at least one of tidy_cert_store and tidy_revoked_certs must be true",
        ));
    }
    let started = chrono::Utc::now();
    let cutoff = started.timestamp() - i64::try_from(r.safety_buffer.as_secs()).unwrap_or(0);
    let mut status = store::TidyStatus {
        state: "Running".into(),
        time_started: Some(started.to_rfc3339()),
        safety_buffer: r.safety_buffer.as_secs(),
        tidy_cert_store: r.tidy_cert_store,
        tidy_revoked_certs: r.tidy_revoked_certs,
        ..Default::default()
    };
    let result = tidy_inner(pki, s, &r, cutoff, &mut status).await;
    status.time_finished = Some(chrono::Utc::now().to_rfc3339());
    match &result {
        Ok(()) => {
            status.state = "Finished".into();
            status.message = "Tidying finished".into();
        }
        Err(e) => {
            status.state = "Error".into();
            status.error = Some(e.to_string());
        }
    }
    store::put(s, store::TIDY_STATUS, &status).await?;
    result?;
    let mut resp = Response::default().warning(
        "Tidy operation successfully started. Any information from the operation will be printed to the tidy-status endpoint.",
    );
    resp.status = Some(202);
    Ok(resp)
}

async fn tidy_inner(
    pki: &Pki,
    s: &dyn Storage,
    r: &TidyRequest,
    cutoff: i64,
    status: &mut store::TidyStatus,
) -> Result<(), BackendError> {
    if r.tidy_cert_store {
        for k in store::list(s, store::CERTS).await? {
            let key = format!("{}{k}", store::CERTS);
            if let Some(c) = store::get::<CertEntry>(s, &key).await? {
                if c.not_after < cutoff {
                    s.delete(&key).await?;
                    status.cert_store_deleted_count += 1;
                    continue;
                }
            }
            status.current_cert_store_count += 1;
        }
    }
    if r.tidy_revoked_certs {
        let mut removed = false;
        for k in store::list(s, store::REVOKED).await? {
            let key = format!("{}{k}", store::REVOKED);
            if let Some(e) = store::get::<RevokedEntry>(s, &key).await? {
                if e.not_after < cutoff {
                    s.delete(&key).await?;
                    s.delete(&format!("{}{k}", store::CERTS)).await?;
                    status.revoked_cert_deleted_count += 1;
                    removed = true;
                    continue;
                }
            }
            status.current_revoked_cert_count += 1;
        }
        if removed {
            rebuild_all(pki, s).await?;
        }
    }
    Ok(())
}

pub(super) async fn tidy_status(s: &dyn Storage) -> Result<Response, BackendError> {
    let st: store::TidyStatus = store::get(s, store::TIDY_STATUS).await?.unwrap_or_default();
    let state = if st.state.is_empty() {
        "Inactive".to_string()
    } else {
        st.state.clone()
    };
    Ok(Response::data(obj(json!({
        "state": state,
        "error": st.error,
        "time_started": st.time_started,
        "time_finished": st.time_finished,
        "message": st.message,
        "safety_buffer": st.safety_buffer,
        "tidy_cert_store": st.tidy_cert_store,
        "tidy_revoked_certs": st.tidy_revoked_certs,
        "cert_store_deleted_count": st.cert_store_deleted_count,
        "revoked_cert_deleted_count": st.revoked_cert_deleted_count,
        "current_cert_store_count": st.current_cert_store_count,
        "current_revoked_cert_count": st.current_revoked_cert_count,
        "missing_issuer_cert_count": 0,
    }))))
}

/// Periodic work: an `auto_rebuild` CRL is rebuilt after revocations, and
/// every CRL before it expires (within the grace period).
pub(super) async fn periodic(pki: &Pki, s: &dyn Storage) -> Result<(), BackendError> {
    let cfg = store::crl_config(s).await?;
    let dirty = s.get(store::CRL_DIRTY).await?.is_some();
    let grace = i64::try_from(cfg.auto_rebuild_grace_period.as_secs()).unwrap_or(0);
    let now = chrono::Utc::now().timestamp();
    let mut stale = false;
    for i in store::issuers(s).await? {
        if i.key_id.is_empty() {
            continue;
        }
        match store::get::<CrlEntry>(s, &format!("{}{}", store::CRLS, i.id)).await? {
            Some(e) if e.next_update - grace > now => {}
            Some(_) => stale = cfg.auto_rebuild,
            None => {}
        }
    }
    if dirty || stale {
        rebuild_all(pki, s).await?;
    }
    Ok(())
}
