//! tresor's core: everything that owns security.
//!
//! - [`barrier`]: AES-256-GCM encryption of every storage entry, keyring.
//! - [`seal`], [`shamir`]: the root key, its shares, init/unseal/rekey/generate-root.
//! - [`mount`]: the mount table and the router (longest prefix).
//! - [`token`]: the token store (`auth/token/`).
//! - [`policy`]: HCL/JSON policies compiled into cached ACLs.
//! - `password`: password policies and the generator behind `SystemView::generate_password`.
//! - [`expiration`]: leases for tokens and secrets.
//! - [`audit`]: the audit broker and its devices.
//! - [`sys`]: the `sys/` backend.
//! - [`core`]: [`Core::handle`], the one pipeline every request goes through.
//!
//! No HTTP crate is a dependency: tresor-http maps HTTP to [`CoreRequest`].

pub mod audit;
mod audit_glue;
pub mod barrier;
pub mod core;
pub mod error;
pub mod expiration;
pub mod mount;
mod password;
pub mod policy;
mod quota;
pub mod seal;
pub mod shamir;
mod sys;
pub mod token;
mod token_api;
mod wrapping;

pub use crate::core::{Core, CoreConfig, CoreRequest, CoreResponse, RequestHeaders};
pub use crate::error::CoreError;
