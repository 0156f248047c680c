//! Integration tests of tresor-engines, linked into one binary: one link of the
//! whole dependency graph instead of one per file keeps CI's disk and time in bounds.
mod approle;
mod aws_auth;
mod aws_secrets;
mod cert_auth;
mod cubbyhole;
mod database;
mod jwt;
mod kubernetes;
mod kv_rotation;
mod kv_v1;
mod kv_v2;
mod pki;
mod transit;
mod userpass;
