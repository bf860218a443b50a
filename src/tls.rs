//! TLS settings built from PEM files: the server side of the one port, and the client side
//! that peer RPC, forwarding and joining use.
//!
//! With `--tls-ca`, the server asks every connection for a client certificate but lets a
//! connection without one through (clients of `/files` need none); the peer and membership
//! routes then refuse any connection that did not present a certificate chaining to that CA
//! (see `http::auth`). A presented certificate that does not verify fails the handshake.
//! Outbound, the node presents its own certificate and trusts only that CA. Without
//! `--tls-ca`, peers are verified against the system's trust store and present nothing.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::Tls;
use crate::error::{Error, Result};

/// Where Debian and most distributions keep the system's trusted CAs, as one PEM bundle.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {what}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| config_err(path, "not PEM certificates", e))?;
    if certs.is_empty() {
        return Err(config_err(
            path,
            "no certificate found",
            "expected -----BEGIN CERTIFICATE-----",
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| config_err(path, "not a PEM private key", e))?
        .ok_or_else(|| {
            config_err(
                path,
                "no private key found",
                "expected -----BEGIN PRIVATE KEY-----",
            )
        })
}

fn roots(path: &Path) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in read_certs(path)? {
        store
            .add(cert)
            .map_err(|e| config_err(path, "unusable CA certificate", e))?;
    }
    Ok(store)
}

fn system_roots() -> RootCertStore {
    let mut store = RootCertStore::empty();
    if let Ok(certs) = read_certs(Path::new(SYSTEM_ROOTS)) {
        store.add_parsable_certificates(certs);
    }
    store
}

/// The server side: this node's certificate, and client certificates checked against the CA
/// when one is given (optional at the handshake, required by the peer routes).
pub(crate) fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let builder = match &tls.ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| config_err(ca, "CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certs(&tls.cert)?, read_key(&tls.key)?)
        .map_err(|e| config_err(&tls.key, "does not match the certificate", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side: trust the CA (or the system's roots), present our certificate to peers
/// when mutual TLS is on.
pub(crate) fn client_config(tls: &Tls) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    match &tls.ca {
        Some(ca) => builder
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(read_certs(&tls.cert)?, read_key(&tls.key)?)
            .map_err(|e| config_err(&tls.key, "does not match the certificate", e)),
        None => Ok(builder
            .with_root_certificates(system_roots())
            .with_no_client_auth()),
    }
}

/// A client configuration for plain-HTTP clusters; the connector needs one, nothing uses it.
pub(crate) fn unused_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}
