//! HTTP clients: one place that builds every outgoing `reqwest` client.
//!
//! reqwest is built with rustls and the ring provider (no C build of aws-lc); such a client
//! needs the process-wide crypto provider installed before it is built, which
//! [`client_builder`] guarantees.

/// Installs rustls' ring crypto provider as the process default, once; later calls do nothing.
/// Without the `tls` feature it does nothing.
pub fn install_crypto_provider() {
    #[cfg(feature = "tls")]
    {
        // Err means a provider is installed already (ours or the embedder's): keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Returns a client builder with the crypto provider in place.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}
