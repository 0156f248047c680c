//! KV version 1: one JSON object per path, no history. The storage key is
//! the secret path itself, so LIST is a plain storage listing.

use async_trait::async_trait;
use tresor_sdk::{Backend, BackendError, Operation, Request, Response, Storage};

use super::{
    help, list_prefix, passthrough_list, passthrough_read, passthrough_write, secret_path,
};

const HELP: &str = "The kv (version 1) secrets engine stores one JSON object per path. \
Read, write (create or update), delete and list secrets under this mount.";

/// The KV version 1 backend.
#[derive(Debug, Default)]
pub struct KvV1;

impl KvV1 {
    pub fn new() -> Self {
        KvV1
    }
}

#[async_trait]
impl Backend for KvV1 {
    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        let key = secret_path(&req.path)?;
        Ok(Some(storage.get(key).await?.is_some()))
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        match req.operation {
            Operation::Read => passthrough_read(storage, secret_path(&req.path)?).await,
            Operation::Create | Operation::Update => {
                passthrough_write(storage, secret_path(&req.path)?, &req.data).await
            }
            Operation::Delete => {
                storage.delete(secret_path(&req.path)?).await?;
                Ok(None)
            }
            Operation::List => passthrough_list(storage, &list_prefix(&req.path)?).await,
            Operation::Help => Ok(Some(help(HELP))),
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}
