//! Certificates made at test time with rcgen, as PEM files in a temporary
//! directory, and syncd and clients that use them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use syncd::client::{ClientOptions, TlsOptions};

use super::Syncd;

/// PEM files in a temporary directory:
/// - ca.pem: a CA;
/// - server.pem, server.key: a certificate for localhost and 127.0.0.1
///   from it;
/// - client.pem, client.key: a client certificate from it;
/// - other-ca.pem: a second CA, and other-client.pem, other-client.key: a
///   client certificate from that one.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        let ca = new_ca("syncd test CA");
        write("ca.pem", ca.pem());

        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        server.distinguished_name.push(DnType::CommonName, "syncd");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        write("server.pem", server.signed_by(&key, &ca).unwrap().pem());
        write("server.key", key.serialize_pem());

        let (cert, key) = client_cert(&ca, "good client");
        write("client.pem", cert);
        write("client.key", key);

        let other = new_ca("some other CA");
        write("other-ca.pem", other.pem());
        let (cert, key) = client_cert(&other, "stranger");
        write("other-client.pem", cert);
        write("other-client.key", key);
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    pub fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// syncd with TLS, and with mutual TLS against ca.pem when `mutual`;
    /// and its address with `https://`.
    pub fn start_syncd(&self, mutual: bool) -> (Syncd, String) {
        self.start_syncd_with(mutual, &[])
    }

    /// The same with more `syncd serve` arguments.
    pub fn start_syncd_with(&self, mutual: bool, extra_args: &[&str]) -> (Syncd, String) {
        let (cert, key, ca) = (
            self.arg("server.pem"),
            self.arg("server.key"),
            self.arg("ca.pem"),
        );
        let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
        if mutual {
            args.extend(["--tls-client-ca", ca.as_str()]);
        }
        args.extend(extra_args);
        let syncd = Syncd::start_with(&args);
        let https = syncd.addr.replacen("http://", "https://", 1);
        (syncd, https)
    }

    /// Client options trusting `ca` and presenting `identity` (a
    /// certificate and key file name pair).
    pub fn options(&self, ca: Option<&str>, identity: Option<(&str, &str)>) -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            tls: TlsOptions {
                ca_certificate_pem: ca.map(|ca| self.pem(ca)),
                client_certificate_pem: identity.map(|(cert, _)| self.pem(cert)),
                client_key_pem: identity.map(|(_, key)| self.pem(key)),
                domain_name: None,
            },
            ..ClientOptions::default()
        }
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A client certificate and its key, PEM.
fn client_cert(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}
