//! Auth methods: approle, userpass, jwt/oidc, kubernetes, aws (IAM), cert.
//! The token method belongs to the core. Shared here: the `token_*` role
//! fields every method accepts, and the failed-login lockout.

pub mod approle;
pub mod aws;
pub mod cert;
pub mod jwt;
pub mod kubernetes;
pub mod lockout;
pub mod token_fields;
pub mod userpass;
