//! Thin KV helpers: mount discovery and the v2 sub-paths.

use crate::{Client, ClientError, Envelope};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// What `sys/internal/ui/mounts/<path>` says about the mount holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount path with trailing slash, e.g. `secret/`.
    pub path: String,
    /// KV version (1 or 2); 1 for any mount without `options.version`.
    pub version: u8,
    pub mount_type: String,
}

/// `mount` + `seg` + `path`, with exactly one slash between each.
pub fn kv_path(mount: &str, seg: &str, path: &str) -> String {
    let mount = mount.trim_matches('/');
    let path = path.trim_start_matches('/');
    if seg.is_empty() {
        format!("{mount}/{path}")
    } else {
        format!("{mount}/{seg}/{path}")
    }
}

impl Client {
    /// Which mount serves `path` and which KV version it runs, found the way
    /// the vault CLI does it. An old server without the endpoint (404) means
    /// KV v1 mounted at the first path segment.
    pub async fn mount_info(&self, path: &str) -> Result<MountInfo, ClientError> {
        let p = format!("sys/internal/ui/mounts/{}", path.trim_start_matches('/'));
        // The pre-flight is never wrapped: only the real answer is.
        let (status, json, url) = self
            .without_wrap()
            .exchange(Method::GET, &p, None, "application/json")
            .await?;
        if status == StatusCode::NOT_FOUND
            && json
                .as_ref()
                .and_then(|j| j.get("data"))
                .is_none_or(Value::is_null)
        {
            let first = path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default();
            return Ok(MountInfo {
                path: format!("{first}/"),
                version: 1,
                mount_type: "kv".into(),
            });
        }
        if !status.is_success() {
            let errors = json
                .and_then(|j| serde_json::from_value::<tresor_api::ErrorBody>(j).ok())
                .map(|b| b.errors)
                .unwrap_or_default();
            return Err(ClientError::Api {
                method: "GET".into(),
                url,
                status: status.as_u16(),
                errors,
            });
        }
        let data = json
            .as_ref()
            .and_then(|j| j.get("data"))
            .filter(|d| d.is_object())
            .ok_or_else(|| self.decode_err(&Method::GET, &p, "no data in pre-flight answer"))?;
        let version = match data.pointer("/options/version") {
            Some(Value::String(s)) => s.parse().unwrap_or(1),
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u8::try_from(n).ok()).unwrap_or(1),
            _ => 1,
        };
        let mount_path = data
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mount_type = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(MountInfo {
            path: mount_path,
            version,
            mount_type,
        })
    }

    pub async fn kv2_get(
        &self,
        mount: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Envelope>, ClientError> {
        let mut p = kv_path(mount, "data", path);
        if let Some(v) = version {
            p.push_str(&format!("?version={v}"));
        }
        self.read(&p).await
    }

    pub async fn kv2_put(
        &self,
        mount: &str,
        path: &str,
        data: Value,
        cas: Option<u64>,
    ) -> Result<Option<Envelope>, ClientError> {
        let mut body = json!({ "data": data });
        if let Some(c) = cas {
            body["options"] = json!({ "cas": c });
        }
        self.write(&kv_path(mount, "data", path), &body).await
    }

    /// Merge `data` into the latest version (JSON merge patch).
    pub async fn kv2_patch(
        &self,
        mount: &str,
        path: &str,
        data: Value,
        cas: Option<u64>,
    ) -> Result<Option<Envelope>, ClientError> {
        let mut body = json!({ "data": data });
        if let Some(c) = cas {
            body["options"] = json!({ "cas": c });
        }
        self.patch(
            &kv_path(mount, "data", path),
            &body,
            "application/merge-patch+json",
        )
        .await
    }

    /// Soft-delete the latest version, or the listed ones.
    pub async fn kv2_delete(
        &self,
        mount: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<(), ClientError> {
        if versions.is_empty() {
            self.delete(&kv_path(mount, "data", path)).await?;
        } else {
            self.write(
                &kv_path(mount, "delete", path),
                &json!({ "versions": versions }),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn kv2_undelete(
        &self,
        mount: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<(), ClientError> {
        self.write(
            &kv_path(mount, "undelete", path),
            &json!({ "versions": versions }),
        )
        .await
        .map(|_| ())
    }

    pub async fn kv2_destroy(
        &self,
        mount: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<(), ClientError> {
        self.write(
            &kv_path(mount, "destroy", path),
            &json!({ "versions": versions }),
        )
        .await
        .map(|_| ())
    }

    pub async fn kv2_list(&self, mount: &str, path: &str) -> Result<Option<Envelope>, ClientError> {
        self.list(&kv_path(mount, "metadata", path)).await
    }

    pub async fn kv2_metadata_get(
        &self,
        mount: &str,
        path: &str,
    ) -> Result<Option<Envelope>, ClientError> {
        self.read(&kv_path(mount, "metadata", path)).await
    }

    pub async fn kv2_metadata_put(
        &self,
        mount: &str,
        path: &str,
        body: &Value,
    ) -> Result<Option<Envelope>, ClientError> {
        self.write(&kv_path(mount, "metadata", path), body).await
    }

    pub async fn kv2_metadata_delete(&self, mount: &str, path: &str) -> Result<(), ClientError> {
        self.delete(&kv_path(mount, "metadata", path))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_kv_paths() {
        assert_eq!(kv_path("secret/", "data", "foo/bar"), "secret/data/foo/bar");
        assert_eq!(kv_path("/team/kv", "metadata", "/x"), "team/kv/metadata/x");
        assert_eq!(kv_path("kv1/", "", "a"), "kv1/a");
    }
}
