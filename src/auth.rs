//! Auth: optional client authentication in front of Loki, as multi-tenant Loki gateways do.
//!
//! Each credential — a bearer token or a basic-auth user — maps to one tenant. When auth is on,
//! every push and proxied request must carry a known credential; logwarden then sets
//! `X-Scope-OrgID` to that credential's tenant (whatever the client sent) and does not forward
//! the `Authorization` header to Loki. Secrets are stored as SHA-256 digests only, looked up by
//! digest, and never logged. `/ready` and `/healthz` stay open for probes; `/metrics` is
//! protected only when `auth.protect_metrics` is set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use http::header::{self, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ConfigError;

/// The `auth:` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Credentials file (YAML, see docs/security.md); when unset, auth is off and clients are
    /// trusted as with Loki itself.
    pub file: Option<PathBuf>,
    /// Also require a valid credential (of any tenant) for `GET /metrics`. Default false.
    pub protect_metrics: bool,
}

/// The credentials file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CredentialsFile {
    /// Bearer tokens.
    tokens: Vec<TokenEntry>,
    /// Basic-auth users.
    users: Vec<UserEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    /// Lower-case hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    sha256: String,
    /// The tenant pushes with this token are written for.
    tenant: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    /// The user name.
    name: String,
    /// Lower-case hex SHA-256 of the password.
    password_sha256: String,
    /// The tenant this user's pushes are written for.
    tenant: String,
}

/// What a request's credential resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Auth is off: pass the request through as is.
    Open,
    /// A known credential of this tenant.
    Tenant(String),
    /// Missing, malformed or unknown credential: answer 401.
    Denied,
}

/// Compiled credentials: digest → tenant.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    enabled: bool,
    tokens: HashMap<[u8; 32], String>,
    /// user name → (password digest, tenant)
    users: HashMap<String, ([u8; 32], String)>,
    /// Whether `/metrics` needs a credential.
    pub protect_metrics: bool,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn parse_digest(field: &str, hex_digest: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut out).map_err(|_| {
        ConfigError::new(
            field,
            "is not a SHA-256 digest (expected 64 hex digits, e.g. from sha256sum)",
        )
    })?;
    Ok(out)
}

fn valid_tenant(field: &str, tenant: &str) -> Result<(), ConfigError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 150
        && tenant != "."
        && tenant != ".."
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{tenant:?} is not a Loki tenant id (expected 1-150 of letters, digits and !-_.*'())"),
        ))
    }
}

impl Authenticator {
    /// Reads and checks the credentials file named in `cfg` (auth off when none is named).
    ///
    /// # Errors
    /// An unreadable file, bad YAML, a malformed digest, an invalid tenant or a duplicate.
    pub fn try_new(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        let Some(path) = &cfg.file else {
            return Ok(Authenticator {
                protect_metrics: false,
                ..Default::default()
            });
        };
        let file = read_file(path)?;
        let mut auth = Authenticator {
            enabled: true,
            protect_metrics: cfg.protect_metrics,
            ..Default::default()
        };
        for (i, t) in file.tokens.iter().enumerate() {
            let at = format!("auth.file tokens[{i}]");
            let d = parse_digest(&format!("{at}.sha256"), &t.sha256)?;
            valid_tenant(&format!("{at}.tenant"), &t.tenant)?;
            if auth.tokens.insert(d, t.tenant.clone()).is_some() {
                return Err(ConfigError::new(
                    at,
                    "the same token digest is listed twice",
                ));
            }
        }
        for (i, u) in file.users.iter().enumerate() {
            let at = format!("auth.file users[{i}]");
            if u.name.is_empty() || u.name.contains(':') {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a user name (expected non-empty, no ':')",
                        u.name
                    ),
                ));
            }
            let d = parse_digest(&format!("{at}.password_sha256"), &u.password_sha256)?;
            valid_tenant(&format!("{at}.tenant"), &u.tenant)?;
            if auth
                .users
                .insert(u.name.clone(), (d, u.tenant.clone()))
                .is_some()
            {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("user {:?} is listed twice", u.name),
                ));
            }
        }
        if auth.tokens.is_empty() && auth.users.is_empty() {
            return Err(ConfigError::new(
                "auth.file",
                "lists no tokens and no users (expected at least one credential)",
            ));
        }
        Ok(auth)
    }

    /// Returns true when requests must carry a credential.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Resolves the request's `Authorization` header.
    pub fn check(&self, headers: &HeaderMap) -> Verdict {
        self.check_authorization(
            headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )
    }

    /// Resolves an `Authorization` value (`None`: the request has none).
    pub fn check_authorization(&self, value: Option<&[u8]>) -> Verdict {
        if !self.enabled {
            return Verdict::Open;
        }
        let Some(value) = value.and_then(crate::http::visible_ascii) else {
            return Verdict::Denied;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .tokens
                .get(&digest(rest.as_bytes()))
                .cloned()
                .map_or(Verdict::Denied, Verdict::Tenant);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine as _;
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                return Verdict::Denied;
            };
            let Some((user, password)) = std::str::from_utf8(&decoded)
                .ok()
                .and_then(|s| s.split_once(':'))
            else {
                return Verdict::Denied;
            };
            return match self.users.get(user) {
                Some((want, tenant)) if *want == digest(password.as_bytes()) => {
                    Verdict::Tenant(tenant.clone())
                }
                _ => Verdict::Denied,
            };
        }
        Verdict::Denied
    }

    /// Applies a verdict to the headers forwarded to Loki: the tenant replaces any
    /// `X-Scope-OrgID` the client sent, and the credential itself is not passed on.
    pub fn rewrite(headers: &mut HeaderMap, tenant: &str) {
        headers.remove(header::AUTHORIZATION);
        if let Ok(v) = HeaderValue::from_str(tenant) {
            headers.insert(crate::ingest::TENANT_HEADER, v);
        }
    }
}

fn read_file(path: &Path) -> Result<CredentialsFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("auth.file", format!("cannot read {}: {e}", path.display()))
    })?;
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        ConfigError::new(
            format!("auth.file {}", e.path()),
            e.into_inner().to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(yaml: &str) -> Result<Authenticator, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.yml");
        std::fs::write(&path, yaml).unwrap();
        Authenticator::try_new(&AuthConfig {
            file: Some(path),
            protect_metrics: false,
        })
    }

    fn hex_of(s: &str) -> String {
        hex::encode(digest(s.as_bytes()))
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn tokens_and_users_map_to_their_tenants() {
        let a = auth(&format!(
            "tokens:\n  - sha256: {}\n    tenant: acme\nusers:\n  - name: promtail\n    password_sha256: {}\n    tenant: beta\n",
            hex_of("t0k3n"),
            hex_of("s3cret:with:colons")
        ))
        .unwrap();
        assert_eq!(
            a.check(&with("Bearer t0k3n")),
            Verdict::Tenant("acme".into())
        );
        assert_eq!(
            a.check(&with("bearer   t0k3n ")),
            Verdict::Tenant("acme".into())
        );
        // promtail:s3cret:with:colons
        assert_eq!(
            a.check(&with("Basic cHJvbXRhaWw6czNjcmV0OndpdGg6Y29sb25z")),
            Verdict::Tenant("beta".into())
        );
        assert_eq!(a.check(&with("Bearer wrong")), Verdict::Denied);
        assert_eq!(
            a.check(&with("Basic cHJvbXRhaWw6d3Jvbmc=")),
            Verdict::Denied
        );
        assert_eq!(a.check(&with("Basic !!!")), Verdict::Denied);
        assert_eq!(a.check(&with("Digest x")), Verdict::Denied);
        assert_eq!(a.check(&HeaderMap::new()), Verdict::Denied);
    }

    #[test]
    fn off_without_a_file() {
        let a = Authenticator::try_new(&AuthConfig::default()).unwrap();
        assert!(!a.enabled());
        assert_eq!(a.check(&HeaderMap::new()), Verdict::Open);
    }

    #[test]
    fn bad_files_name_the_entry() {
        let e = auth("tokens:\n  - sha256: abc\n    tenant: acme\n").unwrap_err();
        assert_eq!(e.field, "auth.file tokens[0].sha256");
        let e = auth(&format!(
            "tokens:\n  - sha256: {}\n    tenant: \"a:b\"\n",
            hex_of("x")
        ))
        .unwrap_err();
        assert_eq!(e.field, "auth.file tokens[0].tenant");
        let e = auth("users: []\n").unwrap_err();
        assert_eq!(e.field, "auth.file");
        let e = auth("tokenz: []\n").unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn rewrite_sets_the_tenant_and_drops_the_credential() {
        let mut h = with("Bearer t");
        h.insert("x-scope-orgid", HeaderValue::from_static("spoofed"));
        Authenticator::rewrite(&mut h, "acme");
        assert_eq!(h.get("x-scope-orgid").unwrap(), "acme");
        assert!(h.get(header::AUTHORIZATION).is_none());
    }
}
