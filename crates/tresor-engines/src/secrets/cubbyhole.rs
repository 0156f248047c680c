//! The cubbyhole: KV version 1 where every path lives inside the calling
//! token's own space. No token can reach another token's entries, not even
//! a root token, because the token is part of the storage key rather than a
//! policy decision.
//!
//! Storage layout, which the core relies on: `{client_token_id}/{path}`.
//! When a token is revoked the core deletes the prefix `{client_token_id}/`.

use std::sync::Arc;

use async_trait::async_trait;
use tresor_sdk::{Backend, BackendConfig, BackendError, Operation, Request, Response, Storage};

use super::kv::{
    help, list_prefix, passthrough_list, passthrough_read, passthrough_write, secret_path,
};

const HELP: &str = "The cubbyhole secrets engine stores secrets private to the calling \
token; they are destroyed when the token expires or is revoked.";

/// The cubbyhole backend.
#[derive(Debug, Default)]
pub struct Cubbyhole;

impl Cubbyhole {
    pub fn new() -> Self {
        Cubbyhole
    }
}

pub fn factory(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(Cubbyhole::new()))
}

/// The caller's storage prefix, `{client_token_id}/`.
fn token_prefix(req: &Request) -> Result<String, BackendError> {
    match req.client_token_id.as_deref() {
        None | Some("") => Err(BackendError::PermissionDenied),
        // A `/` in the id would let one token's space overlap another's.
        Some(id) if id.contains('/') => Err(BackendError::Internal(
            "client token id contains '/'".into(),
        )),
        Some(id) => Ok(format!("{id}/")),
    }
}

fn entry_key(req: &Request) -> Result<String, BackendError> {
    let prefix = token_prefix(req)?;
    Ok(format!("{prefix}{}", secret_path(&req.path)?))
}

#[async_trait]
impl Backend for Cubbyhole {
    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        Ok(Some(storage.get(&entry_key(req)?).await?.is_some()))
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        match req.operation {
            Operation::Read => passthrough_read(storage, &entry_key(req)?).await,
            Operation::Create | Operation::Update => {
                passthrough_write(storage, &entry_key(req)?, &req.data).await
            }
            Operation::Delete => {
                storage.delete(&entry_key(req)?).await?;
                Ok(None)
            }
            Operation::List => {
                let prefix = format!("{}{}", token_prefix(req)?, list_prefix(&req.path)?);
                passthrough_list(storage, &prefix).await
            }
            Operation::Help => Ok(Some(help(HELP))),
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}
