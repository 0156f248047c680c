//! JWT/OIDC auth against in-memory storage, with a small identity provider
//! (discovery, JWKS, token endpoint) served by axum on loopback. Keys are
//! generated at test time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tresor_engines::auth::jwt::JwtBackend;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Response};

// ----- keys ------------------------------------------------------------------

struct TestKey {
    kid: String,
    pkcs8: Vec<u8>,
    x: String,
    y: String,
    pem: String,
}

impl TestKey {
    fn new(kid: &str) -> Self {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("keygen");
        let pkcs8 = kp.to_pkcs8v1().expect("pkcs8").as_ref().to_vec();
        let point = kp.public_key().as_ref().to_vec();
        let spki = kp.public_key().as_der().expect("spki");
        let b64 = STANDARD.encode(spki.as_ref());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).expect("ascii"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        TestKey {
            kid: kid.into(),
            pkcs8,
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
            pem,
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": self.x, "y": self.y, "kid": self.kid, "use": "sig", "alg": "ES256"})
    }

    fn sign_without_kid(&self, claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            claims,
            &EncodingKey::from_ec_der(&self.pkcs8),
        )
        .expect("sign")
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(&self.pkcs8)).expect("sign")
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": "https://issuer.test",
        "sub": "user-1",
        "aud": "tresor",
        "email": "alice@example.test",
        "team": "dev-blue",
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 300,
    });
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        for (k, v) in e {
            c.insert(k, v);
        }
    }
    c
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

// ----- helpers -----------------------------------------------------------------

async fn call(
    b: &JwtBackend,
    s: &MemoryStorage,
    op: Operation,
    path: &str,
    body: Value,
) -> Result<Option<Response>, BackendError> {
    b.handle(&req(op, path).body(body), s).await
}

async fn write(b: &JwtBackend, s: &MemoryStorage, path: &str, body: Value) {
    call(b, s, Operation::Update, path, body)
        .await
        .unwrap_or_else(|e| panic!("write {path}: {e}"));
}

async fn login(
    b: &JwtBackend,
    s: &MemoryStorage,
    role: &str,
    jwt: &str,
) -> Result<tresor_sdk::Auth, BackendError> {
    let r = call(
        b,
        s,
        Operation::Update,
        "login",
        json!({"role": role, "jwt": jwt}),
    )
    .await?;
    Ok(r.and_then(|r| r.auth).expect("auth in login answer"))
}

fn refused(r: Result<tresor_sdk::Auth, BackendError>, needle: &str) {
    match r {
        Ok(_) => panic!("login accepted, expected refusal containing {needle:?}"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "error {e:?} does not mention {needle:?}"
        ),
    }
}

/// A mount with one static key and a `jwt` role bound to audience, issuer
/// and the `team` claim.
async fn static_setup(
    key: &TestKey,
    claims_type: &str,
    team: Value,
) -> (JwtBackend, MemoryStorage) {
    let b = JwtBackend::new();
    let s = MemoryStorage::new();
    write(
        &b,
        &s,
        "config",
        json!({"jwt_validation_pubkeys": [key.pem], "bound_issuer": "https://issuer.test"}),
    )
    .await;
    write(
        &b,
        &s,
        "role/dev",
        json!({
            "role_type": "jwt",
            "user_claim": "email",
            "bound_audiences": ["tresor"],
            "bound_claims_type": claims_type,
            "bound_claims": {"team": team},
            "claim_mappings": {"sub": "subject"},
            "token_policies": ["dev"],
            "token_ttl": "1h",
        }),
    )
    .await;
    (b, s)
}

// ----- JWT login -----------------------------------------------------------------

#[tokio::test]
async fn login_with_static_key_maps_claims() {
    let key = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!(["dev-blue", "dev-green"])).await;
    let auth = login(&b, &s, "dev", &key.sign(&claims(json!({}))))
        .await
        .expect("login");
    assert_eq!(auth.alias_name, "alice@example.test");
    assert_eq!(auth.display_name, "alice@example.test");
    assert_eq!(auth.policies, vec!["dev"]);
    assert_eq!(auth.lease.ttl, Duration::from_secs(3600));
    assert_eq!(auth.metadata.get("role").map(String::as_str), Some("dev"));
    assert_eq!(
        auth.metadata.get("subject").map(String::as_str),
        Some("user-1")
    );
}

#[tokio::test]
async fn refuses_token_signed_by_another_key() {
    let key = TestKey::new("k1");
    let other = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!("dev-blue")).await;
    refused(
        login(&b, &s, "dev", &other.sign(&claims(json!({})))).await,
        "signature",
    );
}

#[tokio::test]
async fn refuses_expired_and_future_tokens() {
    let key = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!("dev-blue")).await;
    let expired = claims(json!({"exp": now() - 600, "iat": now() - 900}));
    refused(login(&b, &s, "dev", &key.sign(&expired)).await, "expired");
    let not_yet = claims(json!({"nbf": now() + 3600}));
    refused(
        login(&b, &s, "dev", &key.sign(&not_yet)).await,
        "not yet valid",
    );
    let no_exp = claims(json!({"exp": null}));
    refused(login(&b, &s, "dev", &key.sign(&no_exp)).await, "exp");
    // Inside the default leeways (150 s + 60 s skew) a just-expired token passes.
    let just = claims(json!({"exp": now() - 30}));
    login(&b, &s, "dev", &key.sign(&just))
        .await
        .expect("within leeway");
}

#[tokio::test]
async fn refuses_other_audience_and_issuer() {
    let key = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!("dev-blue")).await;
    refused(
        login(
            &b,
            &s,
            "dev",
            &key.sign(&claims(json!({"aud": "someone-else"}))),
        )
        .await,
        "aud",
    );
    refused(
        login(
            &b,
            &s,
            "dev",
            &key.sign(&claims(json!({"iss": "https://evil.test"}))),
        )
        .await,
        "issuer",
    );
}

#[tokio::test]
async fn refuses_alg_none() {
    let key = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!("dev-blue")).await;
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    refused(login(&b, &s, "dev", &token).await, "error validating token");
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "None", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    refused(login(&b, &s, "dev", &token).await, "error validating token");
}

#[tokio::test]
async fn refuses_hs256_signed_with_the_public_key() {
    let key = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!("dev-blue")).await;
    for secret in [
        key.pem.as_bytes().to_vec(),
        key.pem.trim().as_bytes().to_vec(),
    ] {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(&secret),
        )
        .expect("sign");
        refused(login(&b, &s, "dev", &token).await, "HS256");
    }
}

#[tokio::test]
async fn refuses_claim_outside_bound_claims_string_and_glob() {
    let key = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!("dev-blue")).await;
    refused(
        login(&b, &s, "dev", &key.sign(&claims(json!({"team": "ops"})))).await,
        "team",
    );
    refused(
        login(&b, &s, "dev", &key.sign(&claims(json!({"team": null})))).await,
        "team",
    );
    // String mode takes `*` literally.
    let (b, s) = static_setup(&key, "string", json!("dev-*")).await;
    refused(
        login(&b, &s, "dev", &key.sign(&claims(json!({})))).await,
        "team",
    );

    let (b, s) = static_setup(&key, "glob", json!("dev-*")).await;
    login(&b, &s, "dev", &key.sign(&claims(json!({}))))
        .await
        .expect("glob matches");
    login(
        &b,
        &s,
        "dev",
        &key.sign(&claims(json!({"team": ["ops", "dev-red"]}))),
    )
    .await
    .expect("list claim matches");
    refused(
        login(
            &b,
            &s,
            "dev",
            &key.sign(&claims(json!({"team": "prod-blue"}))),
        )
        .await,
        "team",
    );
}

#[tokio::test]
async fn refuses_oidc_role_and_unknown_role_on_jwt_login() {
    let key = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!("dev-blue")).await;
    write(
        &b,
        &s,
        "role/web",
        json!({"user_claim": "sub", "allowed_redirect_uris": ["https://app.test/cb"]}),
    )
    .await;
    refused(
        login(&b, &s, "web", &key.sign(&claims(json!({})))).await,
        "oidc role_type",
    );
    refused(
        login(&b, &s, "nope", &key.sign(&claims(json!({})))).await,
        "could not be found",
    );
}

#[tokio::test]
async fn config_and_roles_follow_vault() {
    let key = TestKey::new("k1");
    let b = JwtBackend::new();
    let s = MemoryStorage::new();
    for (body, needle) in [
        (json!({}), "exactly one of"),
        (
            json!({"jwt_validation_pubkeys": [key.pem], "jwks_url": "https://x.test/jwks"}),
            "exactly one of",
        ),
        (
            json!({"jwt_validation_pubkeys": ["not a pem"]}),
            "jwt_validation_pubkeys",
        ),
        (
            json!({"jwt_validation_pubkeys": [key.pem], "jwt_supported_algs": ["HS256"]}),
            "jwt_supported_algs",
        ),
        (
            json!({"jwt_validation_pubkeys": [key.pem], "jwt_supported_algs": ["none"]}),
            "jwt_supported_algs",
        ),
        (
            json!({"jwt_validation_pubkeys": [key.pem], "oidc_client_id": "x", "oidc_client_secret": "y"}),
            "oidc_discovery_url",
        ),
    ] {
        let e = call(&b, &s, Operation::Update, "config", body)
            .await
            .expect_err("refused");
        assert!(e.to_string().contains(needle), "{e}");
    }
    write(
        &b,
        &s,
        "config",
        json!({"jwt_validation_pubkeys": key.pem, "default_role": "dev"}),
    )
    .await;
    let cfg = call(&b, &s, Operation::Read, "config", json!({}))
        .await
        .expect("read")
        .expect("some");
    let data = cfg.data.expect("data");
    assert_eq!(data["default_role"], "dev");
    assert_eq!(data["jwt_validation_pubkeys"][0], json!(key.pem));
    assert!(!data.contains_key("oidc_client_secret"));

    for (body, needle) in [
        (
            json!({"role_type": "jwt", "bound_audiences": "a"}),
            "user_claim",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub"}),
            "bound constraint",
        ),
        (json!({"user_claim": "sub"}), "allowed_redirect_uris"),
        (json!({"role_type": "x", "user_claim": "sub"}), "role_type"),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": "a", "bound_claims_type": "regex"}),
            "bound_claims_type",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": "a", "claim_mappings": {"x": "role"}}),
            "reserved",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": "a", "clock_skew_leeway": "soon"}),
            "clock_skew_leeway",
        ),
    ] {
        let e = call(&b, &s, Operation::Update, "role/bad", body)
            .await
            .expect_err("refused");
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert_eq!(
        b.existence_check(&req(Operation::Update, "role/dev"), &s)
            .await
            .expect("exists"),
        Some(false)
    );
    write(&b, &s, "role/dev", json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "user-1", "policies": "a,b", "ttl": "10m", "expiration_leeway": -1})).await;
    assert_eq!(
        b.existence_check(&req(Operation::Update, "role/dev"), &s)
            .await
            .expect("exists"),
        Some(true)
    );
    // An update merges.
    write(&b, &s, "role/dev", json!({"bound_audiences": ["tresor"]})).await;
    let r = call(&b, &s, Operation::Read, "role/dev", json!({}))
        .await
        .expect("read")
        .expect("some");
    let d = r.data.expect("data");
    assert_eq!(d["role_type"], "jwt");
    assert_eq!(d["bound_subject"], "user-1");
    assert_eq!(d["bound_audiences"], json!(["tresor"]));
    assert_eq!(d["token_policies"], json!(["a", "b"]));
    assert_eq!(d["token_ttl"], 600);
    assert_eq!(d["expiration_leeway"], -1);
    assert_eq!(d["clock_skew_leeway"], 60);
    assert_eq!(d["bound_claims"], Value::Null);
    write(
        &b,
        &s,
        "role/other",
        json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x"}),
    )
    .await;
    let l = call(&b, &s, Operation::List, "role/", json!({}))
        .await
        .expect("list")
        .expect("some");
    assert_eq!(l.data.expect("data")["keys"], json!(["dev", "other"]));
    call(&b, &s, Operation::Delete, "role/other", json!({}))
        .await
        .expect("delete");
    assert!(call(&b, &s, Operation::Read, "role/other", json!({}))
        .await
        .expect("read")
        .is_none());

    // default_role is used when the login names none.
    let token = key.sign(&claims(json!({"aud": "tresor"})));
    let r = call(&b, &s, Operation::Update, "login", json!({"jwt": token}))
        .await
        .expect("login");
    assert_eq!(r.and_then(|r| r.auth).expect("auth").alias_name, "user-1");
}

#[tokio::test]
async fn renewal_checks_role_and_policies() {
    let key = TestKey::new("k1");
    let (b, s) = static_setup(&key, "string", json!("dev-blue")).await;
    let auth = login(&b, &s, "dev", &key.sign(&claims(json!({}))))
        .await
        .expect("login");
    let renew = |auth: tresor_sdk::Auth| {
        let mut r = req(Operation::Renew, "login");
        r.auth = Some(auth);
        r
    };
    let mut issued = auth.clone();
    issued.policies = vec!["default".into(), "dev".into()];
    let r = b
        .handle(&renew(issued.clone()), &s)
        .await
        .expect("renew")
        .expect("some");
    assert_eq!(r.auth.expect("auth").lease.ttl, Duration::from_secs(3600));

    write(
        &b,
        &s,
        "role/dev",
        json!({"token_policies": ["dev", "admin"]}),
    )
    .await;
    let e = b
        .handle(&renew(issued.clone()), &s)
        .await
        .expect_err("policies changed");
    assert!(e.to_string().contains("policies have changed"), "{e}");

    call(&b, &s, Operation::Delete, "role/dev", json!({}))
        .await
        .expect("delete");
    let e = b.handle(&renew(issued), &s).await.expect_err("role gone");
    assert!(e.to_string().contains("no longer exists"), "{e}");
}

// ----- identity provider ---------------------------------------------------------------

#[derive(Default)]
struct Idp {
    issuer: String,
    keys: Vec<Value>,
    signing: Option<Arc<TestKey>>,
    jwks_fetches: usize,
    /// code → (code_challenge, nonce, redirect_uri)
    codes: HashMap<String, (String, String, String)>,
    client_id: String,
    client_secret: String,
    /// Overrides the nonce put in ID tokens (to test the nonce check).
    forced_nonce: Option<String>,
}

type Shared = Arc<Mutex<Idp>>;

async fn discovery(State(st): State<Shared>) -> Json<Value> {
    let i = st.lock().expect("lock");
    Json(json!({
        "issuer": i.issuer,
        "jwks_uri": format!("{}/jwks", i.issuer),
        "authorization_endpoint": format!("{}/authorize", i.issuer),
        "token_endpoint": format!("{}/token", i.issuer),
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
}

async fn jwks(State(st): State<Shared>) -> Json<Value> {
    let mut i = st.lock().expect("lock");
    i.jwks_fetches += 1;
    Json(json!({"keys": i.keys}))
}

fn form(body: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{body}"))
        .expect("form")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn token(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, (StatusCode, String)> {
    let f = form(&body);
    let mut i = st.lock().expect("lock");
    // RFC 6749 §2.3.1: id and secret are form-encoded inside Basic.
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_default();
    let (user, pass) = basic.split_once(':').unwrap_or_default();
    let creds = form(&format!("u={user}&p={pass}"));
    if creds.get("u") != Some(&i.client_id) || creds.get("p") != Some(&i.client_secret) {
        return Err((StatusCode::UNAUTHORIZED, "bad client credentials".into()));
    }
    if f.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return Err((StatusCode::BAD_REQUEST, "grant_type".into()));
    }
    let code = f.get("code").cloned().unwrap_or_default();
    let Some((challenge, nonce, redirect)) = i.codes.remove(&code) else {
        return Err((StatusCode::BAD_REQUEST, "invalid_grant".into()));
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let computed = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
    );
    if computed != challenge {
        return Err((StatusCode::BAD_REQUEST, "PKCE verification failed".into()));
    }
    if f.get("redirect_uri") != Some(&redirect) {
        return Err((StatusCode::BAD_REQUEST, "redirect_uri".into()));
    }
    let key = i.signing.clone().expect("signing key");
    let id_token = key.sign(&json!({
        "iss": i.issuer,
        "aud": i.client_id,
        "sub": "oidc-user",
        "email": "bob@example.test",
        "nonce": i.forced_nonce.clone().unwrap_or(nonce),
        "iat": now(),
        "exp": now() + 300,
    }));
    Ok(Json(
        json!({"access_token": "at", "token_type": "Bearer", "id_token": id_token}),
    ))
}

async fn start_idp() -> Shared {
    let st: Shared = Arc::new(Mutex::new(Idp::default()));
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    {
        let mut i = st.lock().expect("lock");
        i.issuer = format!("http://{addr}");
        i.client_id = "tresor-client".into();
        i.client_secret = "s3cret&=".into();
    }
    st
}

#[tokio::test]
async fn jwks_unknown_kid_triggers_refresh() {
    let idp = start_idp().await;
    let k1 = TestKey::new("k1");
    let k2 = TestKey::new("k2");
    let issuer = {
        let mut i = idp.lock().expect("lock");
        i.keys = vec![k1.jwk()];
        i.issuer.clone()
    };
    let b = JwtBackend::with_jwks_refresh_interval(Duration::ZERO);
    let s = MemoryStorage::new();
    write(
        &b,
        &s,
        "config",
        json!({"jwks_url": format!("{issuer}/jwks"), "jwt_supported_algs": ["ES256"]}),
    )
    .await;
    write(
        &b,
        &s,
        "role/r",
        json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": "tresor"}),
    )
    .await;
    login(&b, &s, "r", &k1.sign(&claims(json!({}))))
        .await
        .expect("k1");
    login(&b, &s, "r", &k1.sign(&claims(json!({}))))
        .await
        .expect("k1 cached");
    assert_eq!(idp.lock().expect("lock").jwks_fetches, 1);
    // The provider rotates in k2; the first token with it makes us refetch.
    idp.lock().expect("lock").keys.push(k2.jwk());
    login(&b, &s, "r", &k2.sign(&claims(json!({}))))
        .await
        .expect("k2 after refresh");
    assert_eq!(idp.lock().expect("lock").jwks_fetches, 2);
    // Without a kid, a signature no cached key verifies also makes us look again.
    let k4 = TestKey::new("k4");
    idp.lock().expect("lock").keys.push(k4.jwk());
    login(&b, &s, "r", &k4.sign_without_kid(&claims(json!({}))))
        .await
        .expect("kid-less token after refresh");
    assert_eq!(idp.lock().expect("lock").jwks_fetches, 3);
    // A kid nobody published: refused (after one more look).
    refused(
        login(&b, &s, "r", &TestKey::new("k3").sign(&claims(json!({})))).await,
        "kid",
    );
}

#[tokio::test]
async fn jwks_refresh_is_rate_limited() {
    let idp = start_idp().await;
    let k1 = TestKey::new("k1");
    let issuer = {
        let mut i = idp.lock().expect("lock");
        i.keys = vec![k1.jwk()];
        i.issuer.clone()
    };
    let b = JwtBackend::new();
    let s = MemoryStorage::new();
    write(
        &b,
        &s,
        "config",
        json!({"jwks_url": format!("{issuer}/jwks")}),
    )
    .await;
    write(
        &b,
        &s,
        "role/r",
        json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": "tresor"}),
    )
    .await;
    login(&b, &s, "r", &k1.sign(&claims(json!({}))))
        .await
        .expect("k1");
    for n in 0..5 {
        let k = TestKey::new(&format!("made-up-{n}"));
        refused(login(&b, &s, "r", &k.sign(&claims(json!({})))).await, "kid");
    }
    assert_eq!(idp.lock().expect("lock").jwks_fetches, 1);
}

/// Plays the browser and the user: starts the flow, "authenticates" at the
/// provider (which records the PKCE challenge and nonce for the code).
async fn begin_oidc(
    b: &JwtBackend,
    s: &MemoryStorage,
    idp: &Shared,
    client_nonce: &str,
) -> (String, String) {
    let r = call(
        b,
        s,
        Operation::Update,
        "oidc/auth_url",
        json!({"role": "web", "redirect_uri": "https://app.test/cb", "client_nonce": client_nonce}),
    )
    .await
    .expect("auth_url")
    .expect("some");
    let url = r.data.expect("data")["auth_url"]
        .as_str()
        .expect("auth_url")
        .to_string();
    let u = reqwest::Url::parse(&url).expect("url");
    let q: HashMap<String, String> = u
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert!(url.starts_with(&format!("{}/authorize?", idp.lock().expect("lock").issuer)));
    assert_eq!(q["client_id"], "tresor-client");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], "https://app.test/cb");
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    assert!(q["scope"].split(' ').any(|s| s == "email"));
    let code = format!("code-{}", q["state"]);
    idp.lock().expect("lock").codes.insert(
        code.clone(),
        (
            q["code_challenge"].clone(),
            q["nonce"].clone(),
            q["redirect_uri"].clone(),
        ),
    );
    (q["state"].clone(), code)
}

async fn oidc_setup(idp: &Shared) -> (JwtBackend, MemoryStorage) {
    let key = Arc::new(TestKey::new("oidc-1"));
    let issuer = {
        let mut i = idp.lock().expect("lock");
        i.keys = vec![key.jwk()];
        i.signing = Some(key);
        i.issuer.clone()
    };
    let b = JwtBackend::new();
    let s = MemoryStorage::new();
    write(&b, &s, "config", json!({"oidc_discovery_url": issuer, "oidc_client_id": "tresor-client", "oidc_client_secret": "s3cret&=", "default_role": "web"})).await;
    write(
        &b,
        &s,
        "role/web",
        json!({
            "user_claim": "email",
            "allowed_redirect_uris": ["https://app.test/cb"],
            "oidc_scopes": ["email"],
            "token_policies": "web",
        }),
    )
    .await;
    (b, s)
}

#[tokio::test]
async fn oidc_flow_end_to_end_with_pkce() {
    let idp = start_idp().await;
    let (b, s) = oidc_setup(&idp).await;
    let (state, code) = begin_oidc(&b, &s, &idp, "cn-1").await;
    let r = call(
        &b,
        &s,
        Operation::Read,
        "oidc/callback",
        json!({"state": state, "code": code, "client_nonce": "cn-1"}),
    )
    .await
    .expect("callback")
    .expect("some");
    let auth = r.auth.expect("auth");
    assert_eq!(auth.alias_name, "bob@example.test");
    assert_eq!(auth.policies, vec!["web"]);
    assert_eq!(auth.metadata.get("role").map(String::as_str), Some("web"));
    // The state is single-use.
    let e = call(
        &b,
        &s,
        Operation::Read,
        "oidc/callback",
        json!({"state": state, "code": code, "client_nonce": "cn-1"}),
    )
    .await
    .expect_err("replay");
    assert!(e.to_string().contains("OAuth state"), "{e}");
}

#[tokio::test]
async fn oidc_refusals() {
    let idp = start_idp().await;
    let (b, s) = oidc_setup(&idp).await;

    // Wrong state.
    let (_state, code) = begin_oidc(&b, &s, &idp, "").await;
    let e = call(
        &b,
        &s,
        Operation::Read,
        "oidc/callback",
        json!({"state": "forged", "code": code}),
    )
    .await
    .expect_err("wrong state");
    assert!(
        e.to_string().contains("Expired or missing OAuth state"),
        "{e}"
    );

    // Wrong client nonce.
    let (state, code) = begin_oidc(&b, &s, &idp, "mine").await;
    let e = call(
        &b,
        &s,
        Operation::Read,
        "oidc/callback",
        json!({"state": state, "code": code, "client_nonce": "theirs"}),
    )
    .await
    .expect_err("client nonce");
    assert!(e.to_string().contains("client_nonce"), "{e}");

    // A code bound to another PKCE challenge (stolen code, other session).
    let (state, _code) = begin_oidc(&b, &s, &idp, "").await;
    idp.lock().expect("lock").codes.insert(
        "stolen".into(),
        (
            "other-challenge".into(),
            "n".into(),
            "https://app.test/cb".into(),
        ),
    );
    let e = call(
        &b,
        &s,
        Operation::Read,
        "oidc/callback",
        json!({"state": state, "code": "stolen"}),
    )
    .await
    .expect_err("pkce");
    assert!(e.to_string().contains("exchanging"), "{e}");

    // An ID token whose nonce is not ours.
    let (state, code) = begin_oidc(&b, &s, &idp, "").await;
    idp.lock().expect("lock").forced_nonce = Some("replayed".into());
    let e = call(
        &b,
        &s,
        Operation::Read,
        "oidc/callback",
        json!({"state": state, "code": code}),
    )
    .await
    .expect_err("nonce");
    assert!(e.to_string().contains("nonce"), "{e}");

    // Redirect URIs outside the role.
    let e = call(
        &b,
        &s,
        Operation::Update,
        "oidc/auth_url",
        json!({"role": "web", "redirect_uri": "https://evil.test/cb"}),
    )
    .await
    .expect_err("redirect");
    assert!(e.to_string().contains("unauthorized redirect_uri"), "{e}");

    // The config never shows the client secret.
    let cfg = call(&b, &s, Operation::Read, "config", json!({}))
        .await
        .expect("read")
        .expect("some");
    assert!(!serde_json::to_string(&cfg.data)
        .expect("json")
        .contains("s3cret"));
}
