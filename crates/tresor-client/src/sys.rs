//! Typed helpers for the `sys/` endpoints Vault answers without envelope.

use crate::{Client, ClientError};
use reqwest::Method;
use serde_json::{json, Value};
use tresor_api::sys::{
    GenerateRootStatus, Health, InitRequest, InitResponse, InitStatus, RekeyStatus, SealStatus,
};

impl Client {
    pub async fn seal_status(&self) -> Result<SealStatus, ClientError> {
        self.get_typed("sys/seal-status").await
    }

    pub async fn init_status(&self) -> Result<InitStatus, ClientError> {
        self.get_typed("sys/init").await
    }

    pub async fn init(&self, req: &InitRequest) -> Result<InitResponse, ClientError> {
        let body =
            serde_json::to_value(req).map_err(|e| self.decode_err(&Method::PUT, "sys/init", e))?;
        self.put_typed("sys/init", &body).await
    }

    /// Submit one unseal key share.
    pub async fn unseal(&self, key: &str) -> Result<SealStatus, ClientError> {
        self.put_typed("sys/unseal", &json!({ "key": key })).await
    }

    /// Forget the key shares submitted so far.
    pub async fn unseal_reset(&self) -> Result<SealStatus, ClientError> {
        self.put_typed("sys/unseal", &json!({ "reset": true }))
            .await
    }

    pub async fn seal(&self) -> Result<(), ClientError> {
        self.call_json(Method::PUT, "sys/seal", None, false)
            .await
            .map(|_| ())
    }

    /// `sys/health` answers 429/472/473/501/503 *with* a body describing the
    /// state, so every status that carries a parsable body is a success here.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let (status, json, url) = self
            .exchange(Method::GET, "sys/health", None, "application/json")
            .await?;
        match json.filter(|j| j.get("initialized").is_some()) {
            Some(j) => self.typed(&Method::GET, "sys/health", Some(j)),
            None => Err(ClientError::Api {
                method: "GET".into(),
                url,
                status: status.as_u16(),
                errors: vec![],
            }),
        }
    }

    /// Rotate the barrier key (`sys/rotate`).
    pub async fn rotate(&self) -> Result<(), ClientError> {
        self.call_json(Method::PUT, "sys/rotate", None, false)
            .await
            .map(|_| ())
    }

    /// `sys/key-status`: term, install time (raw JSON; Vault puts the fields
    /// both at the top level and under `data`).
    pub async fn key_status(&self) -> Result<Value, ClientError> {
        let v = self
            .call_json(Method::GET, "sys/key-status", None, false)
            .await?;
        let v = v.ok_or_else(|| self.decode_err(&Method::GET, "sys/key-status", "empty body"))?;
        Ok(match v.get("data") {
            Some(d) if d.is_object() => d.clone(),
            _ => v,
        })
    }

    pub async fn rekey_init(&self, shares: u8, threshold: u8) -> Result<RekeyStatus, ClientError> {
        self.put_typed(
            "sys/rekey/init",
            &json!({ "secret_shares": shares, "secret_threshold": threshold }),
        )
        .await
    }

    pub async fn rekey_status(&self) -> Result<RekeyStatus, ClientError> {
        self.get_typed("sys/rekey/init").await
    }

    pub async fn rekey_cancel(&self) -> Result<(), ClientError> {
        self.call_json(Method::DELETE, "sys/rekey/init", None, false)
            .await
            .map(|_| ())
    }

    /// Submit one current key share; the answer carries the new `keys` once
    /// the threshold is reached.
    pub async fn rekey_update(&self, key: &str, nonce: &str) -> Result<RekeyStatus, ClientError> {
        self.put_typed("sys/rekey/update", &json!({ "key": key, "nonce": nonce }))
            .await
    }

    /// Start generating a root token, encoded with `otp`.
    pub async fn generate_root_init(
        &self,
        otp: Option<&str>,
        pgp_key: Option<&str>,
    ) -> Result<GenerateRootStatus, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(o) = otp {
            body.insert("otp".into(), o.into());
        }
        if let Some(p) = pgp_key {
            body.insert("pgp_key".into(), p.into());
        }
        self.put_typed("sys/generate-root/attempt", &Value::Object(body))
            .await
    }

    pub async fn generate_root_status(&self) -> Result<GenerateRootStatus, ClientError> {
        self.get_typed("sys/generate-root/attempt").await
    }

    pub async fn generate_root_cancel(&self) -> Result<(), ClientError> {
        self.call_json(Method::DELETE, "sys/generate-root/attempt", None, false)
            .await
            .map(|_| ())
    }

    pub async fn generate_root_update(
        &self,
        key: &str,
        nonce: &str,
    ) -> Result<GenerateRootStatus, ClientError> {
        self.put_typed(
            "sys/generate-root/update",
            &json!({ "key": key, "nonce": nonce }),
        )
        .await
    }

    async fn get_typed<T>(&self, path: &str) -> Result<T, ClientError>
    where
        T: Default + serde::Serialize + serde::de::DeserializeOwned,
    {
        let v = self.call_json(Method::GET, path, None, false).await?;
        self.typed(&Method::GET, path, v)
    }

    async fn put_typed<T>(&self, path: &str, body: &Value) -> Result<T, ClientError>
    where
        T: Default + serde::Serialize + serde::de::DeserializeOwned,
    {
        let v = self.call_json(Method::PUT, path, Some(body), false).await?;
        self.typed(&Method::PUT, path, v)
    }
}
