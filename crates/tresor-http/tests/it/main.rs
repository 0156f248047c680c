//! Integration tests of tresor-http, linked into one binary: one link of the
//! whole dependency graph instead of one per file keeps CI's disk and time in bounds.
mod api;
mod auth_approle_userpass;
mod auth_aws_cert;
mod auth_jwt_k8s;
mod auth_refusals;
mod aws_secrets_http;
mod common;
mod crypto_interop;
mod database_http;
mod database_leases;
mod kv_token_http;
mod pki_http;
mod simple_api;
mod simple_login;
mod sys_compat;
mod transit_http;
mod vault_client;
