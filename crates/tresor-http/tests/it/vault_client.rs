//! A real Vault client (vaultrs) against tresor: if it works here, it works
//! for the people who already use it against Vault.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use crate::common::{dev, uninitialized, ROOT};
use vaultrs::api::token::requests::CreateTokenRequest;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use vaultrs::{kv2, sys, token};

fn vault(url: &str, token: &str) -> VaultClient {
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(url)
            .token(token)
            .build()
            .expect("settings"),
    )
    .expect("client")
}

fn api_code(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn kv2_set_read_list() {
    let s = dev().await;
    let c = vault(&s.url, ROOT);
    let mut secret = HashMap::new();
    secret.insert("user".to_string(), "app".to_string());
    secret.insert("password".to_string(), "hunter2".to_string());
    let meta = kv2::set(&c, "secret", "app/db", &secret)
        .await
        .expect("set");
    assert_eq!(meta.version, 1);
    kv2::set(&c, "secret", "app/cache", &secret)
        .await
        .expect("set");

    let read: HashMap<String, String> = kv2::read(&c, "secret", "app/db").await.expect("read");
    assert_eq!(read, secret);

    let mut keys = kv2::list(&c, "secret", "app").await.expect("list");
    keys.sort();
    assert_eq!(keys, vec!["cache".to_string(), "db".to_string()]);

    let err = kv2::read::<HashMap<String, String>>(&c, "secret", "nope")
        .await
        .expect_err("missing");
    assert_eq!(api_code(&err), Some(404), "{err:?}");
}

#[tokio::test]
async fn tokens_and_acl() {
    let s = dev().await;
    let root = vault(&s.url, ROOT);
    let me = token::lookup_self(&root).await.expect("lookup-self");
    assert!(me.policies.contains(&"root".to_string()));

    let mut req = CreateTokenRequest::builder();
    req.policies(vec!["default".to_string()]);
    let auth = token::new(&root, Some(&mut req))
        .await
        .expect("create token");
    assert!(!auth.client_token.is_empty());

    let weak = vault(&s.url, &auth.client_token);
    let err = kv2::read::<HashMap<String, String>>(&weak, "secret", "anything")
        .await
        .expect_err("default policy can't read secret/");
    assert_eq!(api_code(&err), Some(403), "{err:?}");

    let bogus = vault(&s.url, "no-such-token");
    let err = token::lookup_self(&bogus).await.expect_err("bogus token");
    assert_eq!(api_code(&err), Some(403), "{err:?}");
}

#[tokio::test]
async fn sys_health_status_and_mounts() {
    let s = dev().await;
    let c = vault(&s.url, ROOT);
    let h = sys::health(&c).await.expect("health");
    assert!(h.initialized && !h.sealed && !h.standby);
    assert!(matches!(sys::status(&c).await, Ok(sys::ServerStatus::OK)));
    let mounts = sys::mount::list(&c).await.expect("mounts");
    assert_eq!(
        mounts.get("secret/").map(|m| m.mount_type.as_str()),
        Some("kv")
    );

    let u = uninitialized().await;
    let c = vault(&u.url, ROOT);
    assert!(matches!(
        sys::status(&c).await,
        Ok(sys::ServerStatus::UNINITIALIZED)
    ));
}

#[tokio::test]
async fn seal_then_status_is_sealed() {
    let s = dev().await;
    let c = vault(&s.url, ROOT);
    sys::seal(&c).await.expect("seal");
    assert!(matches!(
        sys::status(&c).await,
        Ok(sys::ServerStatus::SEALED)
    ));
}
