//! The contract between tresor's core and its backends (secrets engines and
//! auth methods).
//!
//! A backend sees a [`Request`] whose path is relative to its mount, a
//! [`Storage`] that is already its own encrypted prefix, and answers a
//! [`Response`] or a [`BackendError`]. It never sees tokens, the barrier or
//! HTTP: the core owns those. Engines depend only on this crate.

pub mod backend;
pub mod error;
pub mod fields;
pub mod paths;
pub mod request;
pub mod response;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use backend::{Backend, BackendConfig, BackendType, Factory, SpecialPaths, SystemView};
pub use error::BackendError;
pub use paths::{Captures, PathTable};
pub use request::{Operation, Request};
pub use response::{Auth, LeaseOptions, RawBody, Response, Secret};
pub use storage::{Storage, StorageError, StorageExt, StorageOp};

/// The JSON object a request body or a response `data` carries.
pub type Map = serde_json::Map<String, serde_json::Value>;
