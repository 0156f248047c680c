//! Secrets engines.

pub mod aws;
pub mod cubbyhole;
pub mod database;
pub mod kv;
pub mod pki;
pub mod transit;
