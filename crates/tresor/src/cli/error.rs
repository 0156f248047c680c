//! CLI errors: what went wrong, what to try, and vault's exit codes
//! (2 for usage errors and "not found", 1 for everything else).

use std::process::ExitCode;
use tresor_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The command line itself is wrong.
    #[error("{0}")]
    Usage(String),
    /// The server refused or failed; `context` says what we were doing.
    #[error("{context}: {source}")]
    Api {
        context: String,
        #[source]
        source: ClientError,
    },
    #[error("{0}")]
    Msg(String),
    /// Exit with this code after the command already printed its output
    /// (`status` on a sealed server, `read` of nothing).
    #[error("")]
    Exit(u8),
}

impl CliError {
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            Self::Exit(c) => ExitCode::from(*c),
            Self::Api { .. } | Self::Msg(_) => ExitCode::FAILURE,
        }
    }

    /// A follow-up line telling the user what to try, if we know one;
    /// `has_token` says whether the request carried a token at all.
    pub(crate) fn hint(&self, address: &str, has_token: bool) -> Option<String> {
        let Self::Api { source, .. } = self else {
            return None;
        };
        if source.is_connection() {
            return Some(format!(
                "Is the server running at {address}? Set TRESOR_ADDR (or --address) to the server's address."
            ));
        }
        let errors = source.errors().join(" ").to_ascii_lowercase();
        match source.status()? {
            403 if !has_token => Some(
                "no token was sent: set TRESOR_TOKEN (or VAULT_TOKEN), or run tresor login \
                 to save one in ~/.tresor-token"
                    .into(),
            ),
            403 if errors.contains("permission denied") || errors.is_empty() => Some(
                "permission denied: check the token's policies (tresor token capabilities PATH), \
                 or log in again (tresor login); the token comes from TRESOR_TOKEN or ~/.tresor-token"
                    .into(),
            ),
            503 if errors.contains("sealed") => {
                Some("the server is sealed: run tresor operator unseal".into())
            }
            400 if errors.contains("not initialized") => Some("the server is not initialized: run tresor operator init".into()),
            405 => Some("this path does not support that operation: check the path (tresor secrets list)".into()),
            _ => None,
        }
    }
}

/// Wrap a client error with what we were doing: `api("reading secret/foo")`.
pub(crate) fn api(context: impl Into<String>) -> impl FnOnce(ClientError) -> CliError {
    let context = context.into();
    move |source| CliError::Api { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_err(status: u16, msg: &str) -> CliError {
        CliError::Api {
            context: "Error reading x".into(),
            source: ClientError::Api {
                method: "GET".into(),
                url: "http://h/v1/x".into(),
                status,
                errors: vec![msg.into()],
            },
        }
    }

    #[test]
    fn hints_name_the_fix() {
        let h = api_err(403, "permission denied")
            .hint("http://h", true)
            .unwrap_or_default();
        assert!(h.contains("tresor token capabilities"));
        let h = api_err(403, "permission denied")
            .hint("http://h", false)
            .unwrap_or_default();
        assert!(h.contains("no token was sent"), "{h}");
        let h = api_err(503, "Vault is sealed")
            .hint("http://h", true)
            .unwrap_or_default();
        assert!(h.contains("tresor operator unseal"));
        assert!(api_err(400, "bad").hint("http://h", true).is_none());
    }
}
