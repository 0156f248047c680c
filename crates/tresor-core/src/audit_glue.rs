//! Fills audit records from the pipeline's state. Built only when a device
//! is enabled, so requests pay nothing for audit when nobody listens.

use serde_json::Value;
use tresor_sdk::Operation;

use crate::audit::{AuditAuth, AuditBroker, AuditRecord, AuditRequest, AuditResponse, AuditSecret};
use crate::core::{CoreRequest, CoreResponse, ResponseBody};
use crate::token::{now, TokenEntry};
use crate::CoreError;

pub(crate) struct Audit<'a> {
    broker: &'a AuditBroker,
    rec: Option<AuditRecord>,
}

fn auth_of(entry: Option<&TokenEntry>, token: &str) -> AuditAuth {
    match entry {
        Some(e) => AuditAuth {
            client_token: token.to_string(),
            accessor: e.accessor.clone(),
            display_name: e.display_name.clone(),
            policies: e.policies.clone(),
            token_policies: e.policies.clone(),
            metadata: e.meta.clone(),
            entity_id: e.entity_id.clone(),
            token_type: "service".into(),
            token_ttl: e.ttl(now()) as i64,
            token_issue_time: chrono::DateTime::from_timestamp(e.creation_time, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        },
        None => AuditAuth::default(),
    }
}

impl<'a> Audit<'a> {
    // Everything a record holds, handed over by the pipeline in one call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        broker: &'a AuditBroker,
        request_id: &str,
        req: &CoreRequest,
        data: &tresor_sdk::Map,
        path: &str,
        op: Operation,
        entry: Option<&TokenEntry>,
        mount_type: &str,
    ) -> Self {
        if !broker.is_enabled() {
            return Audit { broker, rec: None };
        }
        let token = if entry.is_some() {
            req.token.as_deref().unwrap_or("")
        } else {
            ""
        };
        let rec = AuditRecord {
            auth: auth_of(entry, token),
            request: AuditRequest {
                id: request_id.to_string(),
                operation: op.as_str().to_string(),
                mount_type: mount_type.to_string(),
                mount_accessor: String::new(),
                client_token: token.to_string(),
                client_token_accessor: entry.map(|e| e.accessor.clone()).unwrap_or_default(),
                path: path.to_string(),
                data: (!data.is_empty()).then(|| Value::Object(data.clone())),
                remote_address: req.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
                wrap_ttl: req.wrap_ttl.map(|d| d.as_secs() as i64).unwrap_or(0),
                headers: Default::default(),
            },
            response: None,
            error: String::new(),
        };
        Audit {
            broker,
            rec: Some(rec),
        }
    }

    /// Log the request; a refusal (`error`) is logged too.
    pub(crate) async fn request(&self, error: Option<&str>) -> Result<(), CoreError> {
        let Some(rec) = &self.rec else { return Ok(()) };
        match error {
            None => self.broker.log_request(rec).await,
            Some(e) => {
                let mut r = rec.clone();
                r.error = e.to_string();
                self.broker.log_request(&r).await
            }
        }
    }

    pub(crate) async fn response(
        &self,
        result: &Result<CoreResponse, CoreError>,
    ) -> Result<(), CoreError> {
        let Some(rec) = &self.rec else { return Ok(()) };
        let mut r = rec.clone();
        match result {
            Err(e) => r.error = e.to_string(),
            Ok(resp) => {
                let mut out = AuditResponse {
                    mount_type: rec.request.mount_type.clone(),
                    status: resp.status,
                    ..Default::default()
                };
                match &resp.body {
                    ResponseBody::Envelope(env) => {
                        out.data = env.data.clone();
                        out.warnings = env.warnings.clone().unwrap_or_default();
                        if !env.lease_id.is_empty() {
                            out.secret = Some(AuditSecret {
                                lease_id: env.lease_id.clone(),
                            });
                        }
                        if let Some(a) = &env.auth {
                            out.auth = Some(AuditAuth {
                                client_token: a.client_token.clone(),
                                accessor: a.accessor.clone(),
                                policies: a.policies.clone(),
                                token_policies: a.token_policies.clone(),
                                metadata: a.metadata.clone().unwrap_or_default(),
                                entity_id: a.entity_id.clone(),
                                token_type: a.token_type.clone(),
                                token_ttl: a.lease_duration as i64,
                                ..Default::default()
                            });
                        }
                    }
                    ResponseBody::Json(v) => out.data = Some(v.clone()),
                    ResponseBody::Empty | ResponseBody::Raw { .. } => {}
                }
                r.response = Some(out);
            }
        }
        self.broker.log_response(&r).await
    }
}
