//! TLS on both sides, with certificates made here (rcgen): agents push over HTTPS to logwarden,
//! and logwarden forwards over HTTPS to a Loki behind a private CA that demands a client
//! certificate. Real handshakes over loopback sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use logwarden::config::{parse_yaml, Config, Overrides};
use tokio::net::TcpListener;

use crate::support::{promtail_fixture, FakeLoki, Proxy};

/// A private CA and certificates it signed, written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "logwarden test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues `<name>.pem` and `<name>.key` for 127.0.0.1 and localhost.
    fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn config_error(yaml: &str) -> String {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        upstream: None,
    };
    Config::from_raw(parse_yaml(yaml).unwrap(), &overrides)
        .unwrap_err()
        .to_string()
}

fn https_client(ca: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    logwarden::http::client_builder()
        .no_proxy()
        .tls_certs_only([ca])
        .build()
        .unwrap()
}

#[tokio::test]
async fn agents_push_over_https_and_the_push_reaches_loki_unchanged() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server");
    let loki = FakeLoki::start().await;
    let yaml = format!(
        "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
        cert.display(),
        key.display()
    );
    let proxy = Proxy::start(&yaml, &loki.url(), Arc::new(logwarden::inspect::CountOnly)).await;
    let url = format!("https://{}/loki/api/v1/push", proxy.addr);
    let status = https_client(&pki.path("ca.pem"))
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(promtail_fixture())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let got = loki.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.as_ref(), promtail_fixture().as_slice());

    // Plain HTTP to the TLS port gets no HTTP answer, and nothing is forwarded.
    let plain = crate::support::client()
        .post(format!("http://{}/loki/api/v1/push", proxy.addr))
        .body(promtail_fixture())
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(loki.requests().len(), 1);
    proxy.stop().await;
}

#[test]
fn bad_certificates_are_configuration_errors_naming_the_field() {
    let pki = Pki::new();
    let (cert, _) = pki.issue("a");
    let (_, other_key) = pki.issue("b");
    let mismatched = config_error(&format!(
        "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
        cert.display(),
        other_key.display()
    ));
    assert!(
        mismatched.starts_with("server.tls.key_file: does not fit server.tls.cert_file"),
        "{mismatched}"
    );
    let missing = config_error(&format!(
        "server:\n  tls:\n    cert_file: /nonexistent/cert.pem\n    key_file: {}\n",
        other_key.display()
    ));
    assert!(
        missing.starts_with("server.tls.cert_file: cannot read /nonexistent/cert.pem"),
        "{missing}"
    );
    // A key where the certificate should be: no certificate in it, and no key material echoed.
    let swapped = config_error(&format!(
        "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
        other_key.display(),
        other_key.display()
    ));
    assert!(
        swapped.starts_with("server.tls.cert_file:") && swapped.contains("no certificate"),
        "{swapped}"
    );
    assert!(!swapped.contains("PRIVATE KEY"), "{swapped}");
    let half = config_error(&format!(
        "upstream:\n  tls:\n    cert_file: {}\n",
        cert.display()
    ));
    assert_eq!(
        half,
        "upstream.tls.key_file: required with upstream.tls.cert_file"
    );
}

/// What the HTTPS Loki saw: bodies, and whether each connection presented a client certificate.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(bool, Bytes)>>>);

/// A Loki push endpoint over TLS with the test CA's server certificate, requiring a client
/// certificate signed by the same CA.
async fn tls_loki(pki: &Pki) -> (SocketAddr, Seen) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let (cert, key) = pki.issue("loki");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.path("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&cert).unwrap()],
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return; // e.g. no client certificate: the handshake fails
                };
                let has_client_cert = tls.get_ref().1.peer_certificates().is_some();
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await?.to_bytes();
                            record.0.lock().unwrap().push((has_client_cert, body));
                            let mut resp =
                                hyper::Response::new(http_body_util::Full::new(Bytes::new()));
                            *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
                            Ok::<_, hyper::Error>(resp)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, seen)
}

async fn push_through(proxy: &Proxy) -> u16 {
    proxy.push_fixture().send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn loki_behind_a_private_ca_with_client_certificates() {
    let pki = Pki::new();
    let (loki_addr, seen) = tls_loki(&pki).await;
    let upstream = format!("https://{loki_addr}");
    let (client_cert, client_key) = pki.issue("logwarden");
    let count_only = || Arc::new(logwarden::inspect::CountOnly);

    // With the CA and the client certificate: forwarded, unchanged, over mutual TLS.
    let yaml = format!(
        "upstream:\n  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        pki.path("ca.pem").display(),
        client_cert.display(),
        client_key.display()
    );
    let proxy = Proxy::start(&yaml, &upstream, count_only()).await;
    assert_eq!(push_through(&proxy).await, 204);
    {
        let got = seen.0.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].0, "the client certificate was presented");
        assert_eq!(got[0].1.as_ref(), promtail_fixture().as_slice());
    }
    proxy.stop().await;

    // Without the client certificate Loki refuses the handshake: the agent gets 502 (and
    // retries), nothing arrives.
    let yaml = format!(
        "upstream:\n  tls:\n    ca_file: {}\n",
        pki.path("ca.pem").display()
    );
    let proxy = Proxy::start(&yaml, &upstream, count_only()).await;
    assert_eq!(push_through(&proxy).await, 502);
    proxy.stop().await;

    // Without the private CA, Loki's certificate is not trusted: 502 as well.
    let proxy = Proxy::start("{}", &upstream, count_only()).await;
    assert_eq!(push_through(&proxy).await, 502);
    proxy.stop().await;
    assert_eq!(seen.0.lock().unwrap().len(), 1);
}
