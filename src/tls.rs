//! TLS: serving HTTPS to agents (`server.tls`) and talking to a Loki behind a private CA or one
//! that wants a client certificate (`upstream.tls`).
//!
//! Reads PEM files once, when the configuration is validated, so `check-config` catches a bad
//! certificate or a key that does not match it; the running server keeps what it read (a
//! certificate change needs a restart). rustls with the ring provider, like every other TLS
//! connection the binary makes (see [`crate::http`]).

use std::fmt;
#[cfg(feature = "tls")]
use std::path::Path;
use std::path::PathBuf;
#[cfg(feature = "tls")]
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `server.tls`: serve HTTPS instead of plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM file with the server certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `upstream.tls`: trust and identity for an `https://` upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CA certificates that sign Loki's certificate. When set, only these are
    /// trusted for the upstream (not the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM file with a client certificate (and intermediates) to present to Loki.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the client certificate's private key.
    pub key_file: Option<PathBuf>,
}

/// A validated `server.tls`: what accepts TLS connections.
#[derive(Clone)]
pub struct ServerTls {
    #[cfg(feature = "tls")]
    config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// A validated `upstream.tls`: roots and identity applied to the upstream clients.
#[derive(Clone, Default)]
pub struct UpstreamTls {
    #[cfg(feature = "tls")]
    roots: Vec<reqwest::Certificate>,
    #[cfg(feature = "tls")]
    identity: Option<reqwest::Identity>,
    /// The same trust and identity for the forwarder's own connector; `None` when
    /// `upstream.tls` is not set (the platform's roots, as reqwest trusts by default).
    #[cfg(feature = "tls")]
    rustls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

#[cfg(feature = "tls")]
fn read(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))
}

#[cfg(not(feature = "tls"))]
fn not_built(field: &str) -> ConfigError {
    ConfigError::new(field, "this binary was built without the `tls` feature")
}

impl ServerTls {
    /// Loads the certificate chain and key of `server.tls`.
    ///
    /// # Errors
    /// `server.tls.cert_file` / `server.tls.key_file` when a file cannot be read, holds no
    /// certificate or key, or the key does not belong to the certificate.
    pub fn load(cfg: &ServerTlsConfig) -> Result<ServerTls, ConfigError> {
        #[cfg(feature = "tls")]
        {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};

            let pem = read("server.tls.cert_file", &cfg.cert_file)?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    ConfigError::new(
                        "server.tls.cert_file",
                        format!("{}: not a PEM certificate ({e})", cfg.cert_file.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(ConfigError::new(
                    "server.tls.cert_file",
                    format!("{} holds no certificate", cfg.cert_file.display()),
                ));
            }
            let key_pem = read("server.tls.key_file", &cfg.key_file)?;
            // Never echo the key file's content.
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                ConfigError::new(
                    "server.tls.key_file",
                    format!("{} holds no PEM private key", cfg.key_file.display()),
                )
            })?;
            crate::http::install_crypto_provider();
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("server.tls", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                ConfigError::new(
                    "server.tls.key_file",
                    format!("does not fit server.tls.cert_file: {e}"),
                )
            })?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(ServerTls {
                config: Arc::new(config),
            })
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = cfg;
            Err(not_built("server.tls"))
        }
    }

    /// Returns the acceptor for incoming connections.
    #[cfg(feature = "tls")]
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}

/// Builds a client configuration: only `ca` trusted when it is not empty (else the platform
/// verifier), presenting `identity` when given.
#[cfg(feature = "tls")]
fn client_config(
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    identity: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<rustls::ClientConfig, ConfigError> {
    use rustls_platform_verifier::BuilderVerifierExt;

    crate::http::install_crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError::new("upstream.tls", e.to_string()))?;
    let builder = if ca.is_empty() {
        builder
            .with_platform_verifier()
            .map_err(|e| ConfigError::new("upstream.tls", format!("system roots: {e}")))?
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| {
                ConfigError::new(
                    "upstream.tls.ca_file",
                    format!("unusable CA certificate: {e}"),
                )
            })?;
        }
        builder.with_root_certificates(roots)
    };
    match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            ConfigError::new(
                "upstream.tls.key_file",
                format!("does not fit upstream.tls.cert_file: {e}"),
            )
        }),
        None => Ok(builder.with_no_client_auth()),
    }
}

impl UpstreamTls {
    /// Loads the CA bundle and client identity of `upstream.tls`.
    ///
    /// # Errors
    /// The field at fault when a file cannot be read or parsed, or when only one of `cert_file`
    /// and `key_file` is set.
    pub fn load(cfg: &UpstreamTlsConfig) -> Result<UpstreamTls, ConfigError> {
        if *cfg == UpstreamTlsConfig::default() {
            return Ok(UpstreamTls::default());
        }
        #[cfg(feature = "tls")]
        {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};

            let mut out = UpstreamTls::default();
            let mut ca = Vec::new();
            let mut identity = None;
            if let Some(path) = &cfg.ca_file {
                let pem = read("upstream.tls.ca_file", path)?;
                ca = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ConfigError::new(
                            "upstream.tls.ca_file",
                            format!("{}: not a PEM certificate bundle ({e})", path.display()),
                        )
                    })?;
                out.roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    ConfigError::new(
                        "upstream.tls.ca_file",
                        format!("{}: not a PEM certificate bundle ({e})", path.display()),
                    )
                })?;
                if out.roots.is_empty() {
                    return Err(ConfigError::new(
                        "upstream.tls.ca_file",
                        format!("{} holds no certificate", path.display()),
                    ));
                }
            }
            match (&cfg.cert_file, &cfg.key_file) {
                (Some(cert), Some(key)) => {
                    let mut pem = read("upstream.tls.cert_file", cert)?;
                    pem.push(b'\n');
                    pem.extend(read("upstream.tls.key_file", key)?);
                    let mismatch = || {
                        ConfigError::new(
                            "upstream.tls.cert_file",
                            format!(
                                "{} and {} are not a PEM certificate and its private key",
                                cert.display(),
                                key.display()
                            ),
                        )
                    };
                    out.identity = Some(reqwest::Identity::from_pem(&pem).map_err(|_| mismatch())?);
                    // Never echo the key file's content.
                    let certs = CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| mismatch())?;
                    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| mismatch())?;
                    identity = Some((certs, key));
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        "upstream.tls.key_file",
                        "required with upstream.tls.cert_file",
                    ))
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        "upstream.tls.cert_file",
                        "required with upstream.tls.key_file",
                    ))
                }
            }
            out.rustls = Some(Arc::new(client_config(ca, identity)?));
            Ok(out)
        }
        #[cfg(not(feature = "tls"))]
        {
            Err(not_built("upstream.tls"))
        }
    }

    /// Returns the rustls client configuration for the forwarder's connector: `upstream.tls`'s
    /// roots and identity when set, else the platform verifier (what reqwest trusts by default).
    ///
    /// # Errors
    /// When the platform verifier cannot be initialised.
    #[cfg(feature = "tls")]
    pub fn rustls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        match &self.rustls {
            Some(c) => Ok(rustls::ClientConfig::clone(c)),
            None => Ok(client_config(Vec::new(), None)?),
        }
    }

    /// Applies the roots and identity to a client that talks to the upstream.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        #[cfg(feature = "tls")]
        {
            let mut builder = builder;
            if !self.roots.is_empty() {
                builder = builder.tls_certs_only(self.roots.iter().cloned());
            }
            if let Some(identity) = &self.identity {
                builder = builder.identity(identity.clone());
            }
            builder
        }
        #[cfg(not(feature = "tls"))]
        {
            builder
        }
    }
}
