use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// The storage a backend sees: its own prefix, encrypted by the barrier.
/// Keys are `/`-separated; `list` returns one level, folders with a trailing
/// `/`, sorted.
#[async_trait]
pub trait Storage: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Apply every operation or none.
    async fn batch(&self, ops: Vec<StorageOp>) -> Result<(), StorageError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("storage backend: {0}")]
    Backend(String),
    /// The entry exists but could not be decrypted or authenticated.
    #[error("entry {0:?} failed integrity check")]
    Integrity(String),
    #[error("decode {key:?}: {reason}")]
    Decode { key: String, reason: String },
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    /// The barrier is sealed.
    #[error("sealed")]
    Sealed,
}

/// JSON helpers on top of any [`Storage`].
#[async_trait]
pub trait StorageExt: Storage {
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StorageError::Decode {
                        key: key.to_string(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    async fn put_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageError::Decode {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        self.put(key, &bytes).await
    }

    /// Every key under `prefix`, recursively (folders expanded).
    async fn list_recursive(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut stack = vec![prefix.to_string()];
        while let Some(dir) = stack.pop() {
            for k in self.list(&dir).await? {
                let full = format!("{dir}{k}");
                if k.ends_with('/') {
                    stack.push(full);
                } else {
                    out.push(full);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl<S: Storage + ?Sized> StorageExt for S {}

pub fn json_op<T: Serialize>(key: impl Into<String>, value: &T) -> Result<StorageOp, StorageError> {
    let key = key.into();
    let value = serde_json::to_vec(value).map_err(|e| StorageError::Decode {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    Ok(StorageOp::Put { key, value })
}
