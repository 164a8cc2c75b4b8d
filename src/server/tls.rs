//! TLS for the gRPC listener: the server's certificate and key, and for
//! mutual TLS the CA whose certificates clients must present. Loaded and
//! checked before the server says `listening on`, so a bad file stops it
//! with one line that names the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::ServeError;

/// How long a client may take over its TLS handshake before the server
/// drops the connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's TLS material lives (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by this CA
    /// (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads and checks the files: each must hold what it should, and the
    /// key must fit the certificate.
    pub fn load(&self) -> Result<ServerTlsConfig, ServeError> {
        let cert = read(&self.cert, "--tls-cert")?;
        certificates(&cert, &self.cert, "--tls-cert")?;
        let key = read(&self.key, "--tls-key")?;
        PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            ServeError(format!(
                "--tls-key {}: no usable PEM private key ({e})",
                self.key.display()
            ))
        })?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(path) = &self.client_ca {
            let ca = read(path, "--tls-client-ca")?;
            certificates(&ca, path, "--tls-client-ca")?;
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        // Builds the acceptor once now, so that what rustls refuses (a key
        // that does not fit the certificate, a CA it cannot use) is
        // reported before serving.
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|e| {
                ServeError(format!(
                    "TLS cannot use --tls-cert {} with --tls-key {}{}: {}",
                    self.cert.display(),
                    self.key.display(),
                    match &self.client_ca {
                        Some(ca) => format!(" and --tls-client-ca {}", ca.display()),
                        None => String::new(),
                    },
                    error_chain(&e)
                ))
            })?;
        Ok(config)
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path)
        .map_err(|e| ServeError(format!("cannot read {flag} {}: {e}", path.display())))
}

/// Checks that `pem` holds at least one certificate and nothing broken.
fn certificates(pem: &[u8], path: &Path, flag: &str) -> Result<(), ServeError> {
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| {
            ServeError(format!(
                "{flag} {}: invalid PEM certificate ({e})",
                path.display()
            ))
        })?;
        found += 1;
    }
    if found == 0 {
        return Err(ServeError(format!(
            "{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        )));
    }
    Ok(())
}

/// An error and its sources on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        let error = tls.load().unwrap_err().0;
        assert!(error.starts_with("cannot read --tls-cert "), "{error}");
        assert!(error.contains("nope.pem"), "{error}");
    }

    #[test]
    fn a_file_without_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = files(dir.path(), "hello", "hello").load().unwrap_err().0;
        assert!(error.contains("cert.pem: no PEM certificate"), "{error}");
    }
}
