//! Kubernetes auth against in-memory storage, with a small HTTP peer that
//! answers TokenReview the way an API server does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tresor_engines::auth::kubernetes::KubernetesBackend;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Auth, Backend, BackendError, Operation, Response};

const REVIEWER: &str = "reviewer-token";

#[derive(Default)]
struct Cluster {
    /// token → (username, uid); absent tokens are not authenticated.
    accounts: HashMap<String, (String, String)>,
    /// Audiences the tokens were issued for; empty = the API server's own.
    token_audiences: HashMap<String, Vec<String>>,
    /// Bearer tokens allowed to create TokenReviews.
    reviewers: Vec<String>,
    last_bearer: String,
    last_spec: Value,
}

type Shared = Arc<Mutex<Cluster>>;

async fn token_review(
    State(st): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    let mut c = st.lock().expect("lock");
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    c.last_bearer = bearer.clone();
    c.last_spec = body["spec"].clone();
    if !c.reviewers.contains(&bearer) {
        return Err(StatusCode::FORBIDDEN);
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let issued_for = c
        .token_audiences
        .get(token)
        .cloned()
        .unwrap_or_else(|| vec!["https://kubernetes.default.svc".into()]);
    let status = match c.accounts.get(token) {
        Some((user, uid)) if wanted.is_empty() || wanted.iter().any(|w| issued_for.contains(w)) => {
            json!({
                "authenticated": true,
                "user": {"username": user, "uid": uid, "groups": ["system:serviceaccounts"]},
                "audiences": if wanted.is_empty() { issued_for } else { wanted },
            })
        }
        Some(_) => json!({"authenticated": false, "error": "token audiences are invalid"}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}),
        ),
    ))
}

async fn start_cluster() -> (Shared, String) {
    let st: Shared = Arc::new(Mutex::new(Cluster {
        reviewers: vec![REVIEWER.into()],
        ..Default::default()
    }));
    let app = Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (st, format!("http://{addr}"))
}

fn add_account(c: &Shared, token: &str, ns: &str, name: &str, uid: &str) {
    c.lock().expect("lock").accounts.insert(
        token.into(),
        (format!("system:serviceaccount:{ns}:{name}"), uid.into()),
    );
}

async fn call(
    b: &KubernetesBackend,
    s: &MemoryStorage,
    op: Operation,
    path: &str,
    body: Value,
) -> Result<Option<Response>, BackendError> {
    b.handle(&req(op, path).body(body), s).await
}

async fn write(b: &KubernetesBackend, s: &MemoryStorage, path: &str, body: Value) {
    call(b, s, Operation::Update, path, body)
        .await
        .unwrap_or_else(|e| panic!("write {path}: {e}"));
}

async fn login(
    b: &KubernetesBackend,
    s: &MemoryStorage,
    role: &str,
    jwt: &str,
) -> Result<Auth, BackendError> {
    let r = call(
        b,
        s,
        Operation::Update,
        "login",
        json!({"role": role, "jwt": jwt}),
    )
    .await?;
    Ok(r.and_then(|r| r.auth).expect("auth"))
}

async fn setup(host: &str, reviewer: Option<&str>) -> (KubernetesBackend, MemoryStorage) {
    let b = KubernetesBackend::new();
    let s = MemoryStorage::new();
    let mut cfg = json!({"kubernetes_host": host, "disable_local_ca_jwt": true});
    if let Some(r) = reviewer {
        cfg["token_reviewer_jwt"] = json!(r);
    }
    write(&b, &s, "config", cfg).await;
    write(
        &b,
        &s,
        "role/app",
        json!({
            "bound_service_account_names": ["app", "worker-*"],
            "bound_service_account_namespaces": ["prod"],
            "token_policies": ["app"],
            "ttl": "20m",
        }),
    )
    .await;
    (b, s)
}

#[tokio::test]
async fn login_binds_on_the_token_review_answer() {
    let (cluster, host) = start_cluster().await;
    add_account(&cluster, "sa-app", "prod", "app", "uid-1");
    let (b, s) = setup(&host, Some(REVIEWER)).await;
    let auth = login(&b, &s, "app", "sa-app").await.expect("login");
    assert_eq!(auth.alias_name, "uid-1");
    assert_eq!(auth.display_name, "prod-app");
    assert_eq!(auth.policies, vec!["app"]);
    assert_eq!(auth.lease.ttl.as_secs(), 1200);
    assert_eq!(auth.metadata["service_account_name"], "app");
    assert_eq!(auth.metadata["service_account_namespace"], "prod");
    assert_eq!(auth.metadata["service_account_uid"], "uid-1");
    assert_eq!(auth.metadata["role"], "app");
    let c = cluster.lock().expect("lock");
    assert_eq!(c.last_bearer, REVIEWER);
    assert_eq!(c.last_spec["token"], "sa-app");
    assert!(c.last_spec.get("audiences").is_none());
}

#[tokio::test]
async fn glob_names_and_alias_by_name() {
    let (cluster, host) = start_cluster().await;
    add_account(&cluster, "sa-w", "prod", "worker-7", "uid-7");
    let (b, s) = setup(&host, Some(REVIEWER)).await;
    write(
        &b,
        &s,
        "role/app",
        json!({"alias_name_source": "serviceaccount_name"}),
    )
    .await;
    let auth = login(&b, &s, "app", "sa-w").await.expect("glob");
    assert_eq!(auth.alias_name, "prod/worker-7");
}

#[tokio::test]
async fn refuses_unauthenticated_token() {
    let (_cluster, host) = start_cluster().await;
    let (b, s) = setup(&host, Some(REVIEWER)).await;
    let e = login(&b, &s, "app", "not-a-token")
        .await
        .expect_err("refused");
    assert!(matches!(e, BackendError::PermissionDenied), "{e:?}");
}

#[tokio::test]
async fn refuses_service_account_outside_role() {
    let (cluster, host) = start_cluster().await;
    add_account(&cluster, "sa-other-name", "prod", "admin", "u1");
    add_account(&cluster, "sa-other-ns", "dev", "app", "u2");
    add_account(&cluster, "sa-prefix", "prod", "worker", "u3");
    let (b, s) = setup(&host, Some(REVIEWER)).await;
    let e = login(&b, &s, "app", "sa-other-name")
        .await
        .expect_err("name");
    assert!(
        e.to_string()
            .contains("service account name not authorized"),
        "{e}"
    );
    let e = login(&b, &s, "app", "sa-other-ns").await.expect_err("ns");
    assert!(e.to_string().contains("namespace not authorized"), "{e}");
    let e = login(&b, &s, "app", "sa-prefix")
        .await
        .expect_err("glob needs the dash");
    assert!(
        e.to_string()
            .contains("service account name not authorized"),
        "{e}"
    );
}

/// The client's claims say one thing, the cluster another: the cluster wins.
#[tokio::test]
async fn claims_in_the_jwt_are_not_trusted() {
    let (cluster, host) = start_cluster().await;
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let forged = format!(
        "{}.{}.sig",
        b64(json!({"alg": "RS256"})),
        b64(
            json!({"iss": "kubernetes/serviceaccount", "kubernetes.io/serviceaccount/namespace": "prod", "kubernetes.io/serviceaccount/service-account.name": "app", "sub": "system:serviceaccount:prod:app"})
        )
    );
    add_account(&cluster, &forged, "dev", "intruder", "u9");
    let (b, s) = setup(&host, Some(REVIEWER)).await;
    let e = login(&b, &s, "app", &forged).await.expect_err("refused");
    assert!(e.to_string().contains("not authorized"), "{e}");
}

#[tokio::test]
async fn audience_is_sent_and_required() {
    let (cluster, host) = start_cluster().await;
    add_account(&cluster, "sa-vault", "prod", "app", "u1");
    add_account(&cluster, "sa-api", "prod", "app", "u2");
    cluster
        .lock()
        .expect("lock")
        .token_audiences
        .insert("sa-vault".into(), vec!["vault".into()]);
    let (b, s) = setup(&host, Some(REVIEWER)).await;
    write(&b, &s, "role/app", json!({"audience": "vault"})).await;
    login(&b, &s, "app", "sa-vault").await.expect("audience");
    assert_eq!(
        cluster.lock().expect("lock").last_spec["audiences"],
        json!(["vault"])
    );
    let e = login(&b, &s, "app", "sa-api")
        .await
        .expect_err("wrong audience");
    assert!(matches!(e, BackendError::PermissionDenied), "{e:?}");
}

#[tokio::test]
async fn without_reviewer_jwt_the_client_token_reviews_itself() {
    let (cluster, host) = start_cluster().await;
    add_account(&cluster, "sa-app", "prod", "app", "u1");
    cluster
        .lock()
        .expect("lock")
        .reviewers
        .push("sa-app".into());
    let (b, s) = setup(&host, None).await;
    login(&b, &s, "app", "sa-app").await.expect("self review");
    assert_eq!(cluster.lock().expect("lock").last_bearer, "sa-app");
    // A token the cluster does not let review is refused.
    add_account(&cluster, "sa-weak", "prod", "app", "u2");
    let e = login(&b, &s, "app", "sa-weak").await.expect_err("403");
    assert!(matches!(e, BackendError::PermissionDenied), "{e:?}");
}

#[tokio::test]
async fn config_roles_and_renewal() {
    let (cluster, host) = start_cluster().await;
    add_account(&cluster, "sa-app", "prod", "app", "u1");
    let (b, s) = setup(&host, Some(REVIEWER)).await;
    let c = call(&b, &s, Operation::Read, "config", json!({}))
        .await
        .expect("read")
        .expect("some");
    let d = c.data.expect("data");
    assert_eq!(d["kubernetes_host"], json!(host));
    assert_eq!(d["token_reviewer_jwt_set"], true);
    assert!(!serde_json::to_string(&d).expect("json").contains(REVIEWER));
    let e = call(&b, &s, Operation::Update, "config", json!({}))
        .await
        .expect_err("host");
    assert!(e.to_string().contains("kubernetes_host"), "{e}");
    let e = call(
        &b,
        &s,
        Operation::Update,
        "config",
        json!({"kubernetes_host": host, "kubernetes_ca_cert": "junk"}),
    )
    .await
    .expect_err("ca");
    assert!(e.to_string().contains("kubernetes_ca_cert"), "{e}");

    for (body, needle) in [
        (
            json!({"bound_service_account_namespaces": ["a"]}),
            "bound_service_account_names",
        ),
        (
            json!({"bound_service_account_names": ["a"]}),
            "bound_service_account_namespaces",
        ),
        (
            json!({"bound_service_account_names": ["*", "a"], "bound_service_account_namespaces": ["a"]}),
            "can not mix",
        ),
        (
            json!({"bound_service_account_names": ["a"], "bound_service_account_namespaces": ["a"], "alias_name_source": "x"}),
            "alias_name_source",
        ),
    ] {
        let e = call(&b, &s, Operation::Update, "role/bad", body)
            .await
            .expect_err("refused");
        assert!(e.to_string().contains(needle), "{e}");
    }
    let r = call(&b, &s, Operation::Read, "role/app", json!({}))
        .await
        .expect("read")
        .expect("some");
    let d = r.data.expect("data");
    assert_eq!(d["bound_service_account_names"], json!(["app", "worker-*"]));
    assert_eq!(d["alias_name_source"], "serviceaccount_uid");
    assert_eq!(d["token_ttl"], 1200);
    let l = call(&b, &s, Operation::List, "role", json!({}))
        .await
        .expect("list")
        .expect("some");
    assert_eq!(l.data.expect("data")["keys"], json!(["app"]));
    let e = login(&b, &s, "nope", "sa-app").await.expect_err("role");
    assert!(e.to_string().contains("invalid role name"), "{e}");

    let auth = login(&b, &s, "app", "sa-app").await.expect("login");
    let mut r = req(Operation::Renew, "login");
    r.auth = Some(auth.clone());
    b.handle(&r, &s).await.expect("renew");
    write(&b, &s, "role/app", json!({"token_policies": "other"})).await;
    let e = b.handle(&r, &s).await.expect_err("policies");
    assert!(e.to_string().contains("policies have changed"), "{e}");
    call(&b, &s, Operation::Delete, "role/app", json!({}))
        .await
        .expect("delete");
    let e = b.handle(&r, &s).await.expect_err("gone");
    assert!(e.to_string().contains("no longer exists"), "{e}");
}
