//! TLS settings of a client: which CA to trust for the server's
//! certificate, the client's own certificate for mutual TLS, and the name
//! to check the server's certificate against. Used for `https://`
//! addresses only.

use std::path::Path;

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::Error;

/// How a client speaks TLS to an `https://` address (ignored for
/// `http://`). The default trusts the well-known public CAs (the Mozilla
/// list built into the library, `webpki-roots`) and presents no client
/// certificate.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// CA certificate(s), PEM, that signed the server's certificate (e.g. a
    /// private CA). When set, only these are trusted; when `None`, the
    /// built-in public roots are.
    pub ca_certificate_pem: Option<Vec<u8>>,
    /// The client's certificate chain, PEM, for servers that require mutual
    /// TLS (`syncd serve --tls-client-ca`). Needs `client_key_pem`.
    pub client_certificate_pem: Option<Vec<u8>>,
    /// The private key of `client_certificate_pem`, PEM.
    pub client_key_pem: Option<Vec<u8>>,
    /// The name the server's certificate must be valid for, when it is not
    /// the host of the address (e.g. connecting by IP to a certificate
    /// issued for a DNS name).
    pub domain_name: Option<String>,
}

/// Shows which parts are set, never the PEM bytes (the key is a secret).
impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |pem: &Option<Vec<u8>>| if pem.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("TlsOptions")
            .field("ca_certificate_pem", &set(&self.ca_certificate_pem))
            .field("client_certificate_pem", &set(&self.client_certificate_pem))
            .field("client_key_pem", &set(&self.client_key_pem))
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

impl TlsOptions {
    /// Reads the PEM files: the CA to trust, and the client certificate
    /// and key for mutual TLS (both or neither). An error names the file.
    pub fn from_files(
        ca_certificate: Option<&Path>,
        client_certificate: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<TlsOptions, Error> {
        let read = |path: Option<&Path>, what: &str| -> Result<Option<Vec<u8>>, Error> {
            path.map(|path| {
                std::fs::read(path).map_err(|e| {
                    Error::InvalidAddress(format!("cannot read the {what} {}: {e}", path.display()))
                })
            })
            .transpose()
        };
        Ok(TlsOptions {
            ca_certificate_pem: read(ca_certificate, "CA certificate")?,
            client_certificate_pem: read(client_certificate, "client certificate")?,
            client_key_pem: read(client_key, "client key")?,
            domain_name: None,
        })
    }

    /// Checks the PEM data and turns it into tonic's settings.
    pub(crate) fn client_config(&self) -> Result<ClientTlsConfig, Error> {
        let mut config = ClientTlsConfig::new();
        match &self.ca_certificate_pem {
            Some(pem) => {
                check_certificates(pem, "CA certificate")?;
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            None => config = config.with_webpki_roots(),
        }
        match (&self.client_certificate_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => {
                check_certificates(cert, "client certificate")?;
                PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    Error::InvalidAddress(format!(
                        "the client key is no usable PEM private key ({e})"
                    ))
                })?;
                config = config.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::InvalidAddress(
                    "a client certificate needs its private key too".to_string(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::InvalidAddress(
                    "a client key needs its certificate too".to_string(),
                ))
            }
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// Checks that `pem` holds at least one certificate and nothing broken.
fn check_certificates(pem: &[u8], what: &str) -> Result<(), Error> {
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| Error::InvalidAddress(format!("the {what} is no valid PEM ({e})")))?;
        found += 1;
    }
    if found == 0 {
        return Err(Error::InvalidAddress(format!(
            "the {what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_trusts_the_public_roots() {
        assert!(TlsOptions::default().client_config().is_ok());
    }

    #[test]
    fn broken_settings_are_refused_with_a_reason() {
        let options = TlsOptions {
            ca_certificate_pem: Some(b"not a certificate".to_vec()),
            ..TlsOptions::default()
        };
        let error = options.client_config().unwrap_err().to_string();
        assert!(error.contains("CA certificate holds no PEM"), "{error}");
        let options = TlsOptions {
            client_certificate_pem: Some(b"x".to_vec()),
            ..TlsOptions::default()
        };
        let error = options.client_config().unwrap_err().to_string();
        assert!(error.contains("needs its private key"), "{error}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let error = TlsOptions::from_files(Some(Path::new("/nonexistent/ca.pem")), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot read the CA certificate /nonexistent/ca.pem"),
            "{error}"
        );
    }
}
