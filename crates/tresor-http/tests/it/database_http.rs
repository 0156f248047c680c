//! The database engine through the whole server, against the PostgreSQL
//! on 127.0.0.1:5432 (trust auth as `postgres`): credentials with a lease,
//! renewal, revocation through `sys/leases/*`, and expiry by the core's
//! expiration manager. Skips with a notice when PostgreSQL is not there.
//!
//! Whether a dynamic user can log in is checked with the engine itself: a
//! second connection configuration using the user's credentials, written
//! with `verify_connection`, is accepted only if the login works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use crate::common::call_root as call;

use std::time::Duration;

use crate::common::dev;
use serde_json::json;

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

fn postgres_up() -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_ok();
    if !up {
        eprintln!("PostgreSQL not reachable on 127.0.0.1:5432; skipping");
    }
    up
}

const URL: &str = "postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable";

/// Can `user`/`password` log in? Asked of the engine, with a throwaway
/// connection configuration that verifies on write.
async fn can_login(s: &common::TestServer, user: &str, password: &str) -> bool {
    let name = format!("login-{}", suffix());
    let (st, _) = call(
        s,
        "POST",
        &format!("database/config/{name}"),
        Some(json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": URL,
            "username": user,
            "password": password,
            "max_open_connections": 1,
        })),
    )
    .await;
    call(s, "DELETE", &format!("database/config/{name}"), None).await;
    st == 204 || st == 200
}

async fn setup(s: &common::TestServer, role: &str, ttl: &str) {
    let (st, body) = call(
        s,
        "POST",
        "sys/mounts/database",
        Some(json!({"type": "database"})),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {body}");
    let (st, body) = call(
        s,
        "POST",
        "database/config/pg",
        Some(json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": URL,
            "username": "postgres",
            // Trust auth ignores it; it must still never be shown.
            "password": "not-shown-anywhere",
            "allowed_roles": [role],
        })),
    )
    .await;
    assert_eq!(st, 204, "{body}");
    let (st, body) = call(
        s,
        "POST",
        &format!("database/roles/{role}"),
        Some(json!({
            "db_name": "pg",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
            "default_ttl": ttl,
            "max_ttl": "24h",
        })),
    )
    .await;
    assert_eq!(st, 204, "{body}");
}

#[tokio::test]
async fn postgres_creds_renew_and_revoke_over_http() {
    if !postgres_up() {
        return;
    }
    let s = dev().await;
    let role = format!("app{}", suffix());
    setup(&s, &role, "1h").await;

    let (st, conf) = call(&s, "GET", "database/config/pg", None).await;
    assert_eq!(st, 200, "{conf}");
    assert!(!conf.to_string().contains("not-shown-anywhere"), "{conf}");
    assert_eq!(conf["data"]["connection_details"]["connection_url"], URL);
    let (st, list) = call(&s, "GET", "database/config?list=true", None).await;
    assert_eq!((st, list["data"]["keys"].clone()), (200, json!(["pg"])));
    let (st, list) = call(&s, "LIST", "database/roles", None).await;
    assert_eq!((st, list["data"]["keys"].clone()), (200, json!([role])));

    let (st, creds) = call(&s, "GET", &format!("database/creds/{role}"), None).await;
    assert_eq!(st, 200, "{creds}");
    let lease_id = creds["lease_id"].as_str().unwrap().to_string();
    assert!(
        lease_id.starts_with(&format!("database/creds/{role}/")),
        "{lease_id}"
    );
    assert_eq!(creds["lease_duration"], 3600);
    assert_eq!(creds["renewable"], true);
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    let pw = creds["data"]["password"].as_str().unwrap().to_string();
    assert!(can_login(&s, &user, &pw).await, "new user cannot log in");

    let (st, body) = call(
        &s,
        "PUT",
        "sys/leases/renew",
        Some(json!({"lease_id": lease_id, "increment": 7200})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["lease_duration"], 7200);
    let (st, body) = call(
        &s,
        "PUT",
        "sys/leases/lookup",
        Some(json!({"lease_id": lease_id})),
    )
    .await;
    assert_eq!(st, 200, "{body}");

    let (st, body) = call(
        &s,
        "PUT",
        "sys/leases/revoke",
        Some(json!({"lease_id": lease_id})),
    )
    .await;
    assert_eq!(st, 204, "{body}");
    assert!(
        !can_login(&s, &user, &pw).await,
        "revoked user still logs in"
    );

    // revoke-prefix takes every lease of the role.
    let mut users = Vec::new();
    for _ in 0..3 {
        let (st, c) = call(&s, "GET", &format!("database/creds/{role}"), None).await;
        assert_eq!(st, 200, "{c}");
        users.push((
            c["data"]["username"].as_str().unwrap().to_string(),
            c["data"]["password"].as_str().unwrap().to_string(),
        ));
    }
    let (st, body) = call(
        &s,
        "PUT",
        &format!("sys/leases/revoke-prefix/database/creds/{role}"),
        Some(json!({})),
    )
    .await;
    assert_eq!(st, 204, "{body}");
    for (u, p) in &users {
        assert!(!can_login(&s, u, p).await, "{u} survived revoke-prefix");
    }
}

#[tokio::test]
async fn postgres_creds_expire() {
    if !postgres_up() {
        return;
    }
    let s = dev().await;
    let role = format!("short{}", suffix());
    setup(&s, &role, "2s").await;
    let (st, creds) = call(&s, "GET", &format!("database/creds/{role}"), None).await;
    assert_eq!(st, 200, "{creds}");
    assert_eq!(creds["lease_duration"], 2);
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    let pw = creds["data"]["password"].as_str().unwrap().to_string();
    assert!(can_login(&s, &user, &pw).await);
    let mut gone = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !can_login(&s, &user, &pw).await {
            gone = true;
            break;
        }
    }
    assert!(gone, "expired user still logs in");
}
