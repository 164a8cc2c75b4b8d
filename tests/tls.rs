//! TLS and mutual TLS: `syncd serve --tls-cert/--tls-key [--tls-client-ca]`,
//! the client library's TLS options and syncctl's --cacert/--cert/--key.
//! Certificates are made at test time with rcgen (`common::certs::Pki`): a CA, a server
//! certificate for localhost and 127.0.0.1, a client certificate from the
//! CA, and a second CA with a client certificate of its own.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::Pki;
use common::cli::{self, Ended};
use common::{run_bounded, syncd_bin};
use syncd::client::{Client, ClientOptions, Error};

/// `syncctl ARGS...` against `addr`, with TLS files from `pki`.
fn syncctl(addr: &str, args: &[&str]) -> Ended {
    cli::run(addr, args)
}

/// A failure reported as one line on stderr.
fn assert_one_line(ended: &Ended) {
    assert_eq!(ended.stderr.trim_end().lines().count(), 1, "{ended:?}");
}

async fn use_a_lock(client: &Client) {
    let guard = client.lock("tls-lock").acquire().await.expect("acquire");
    assert!(guard.fencing_token() > 0);
    guard.release().await.expect("release");
    client.ping().await.expect("ping");
}

#[tokio::test]
async fn the_client_library_works_over_tls() {
    let pki = Pki::new();
    let (_syncd, https) = pki.start_syncd(false);
    let client = Client::connect_with(https.as_str(), pki.options(Some("ca.pem"), None))
        .await
        .expect("connect over TLS");
    use_a_lock(&client).await;
    client.close().await.expect("close");

    // By IP, checking the certificate for a name given explicitly.
    let mut options = pki.options(Some("ca.pem"), None);
    options.tls.domain_name = Some("localhost".to_string());
    let client = Client::connect_with(https.as_str(), options)
        .await
        .expect("connect with a domain name");
    use_a_lock(&client).await;
    client.close().await.expect("close");
}

#[test]
fn syncctl_works_over_tls() {
    let pki = Pki::new();
    let (_syncd, https) = pki.start_syncd(false);
    let ca = pki.arg("ca.pem");
    let ping = syncctl(&https, &["--cacert", &ca, "ping"]);
    assert_eq!(ping.code, Some(0), "{ping:?}");
    let lock = syncctl(
        &https,
        &["--cacert", &ca, "lock", "acquire", "x", "--", "true"],
    );
    assert_eq!(lock.code, Some(0), "{lock:?}");
    // The same through the environment.
    let output = run_bounded(
        common::syncctl(&https)
            .env("SYNCD_CACERT", &ca)
            .arg("ping")
            .stdin(Stdio::null()),
    );
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test]
async fn a_plaintext_client_is_refused_quickly() {
    let pki = Pki::new();
    let (syncd, _https) = pki.start_syncd(false);
    let started = Instant::now();
    let ping = syncctl(&syncd.addr, &["ping"]);
    assert_eq!(ping.code, Some(4), "{ping:?}");
    assert_one_line(&ping);
    assert!(ping.stderr.contains("cannot reach syncd"), "{ping:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{ping:?}");

    let started = Instant::now();
    let error = Client::connect_with(syncd.addr.as_str(), ClientOptions::default())
        .await
        .expect_err("plaintext against TLS");
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{error}");
}

#[tokio::test]
async fn a_server_from_an_untrusted_ca_is_refused() {
    let pki = Pki::new();
    let (_syncd, https) = pki.start_syncd(false);
    // The public roots (the default) do not know the test CA.
    let error = Client::connect_with(https.as_str(), pki.options(None, None))
        .await
        .expect_err("untrusted server");
    let message = error.to_string();
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    assert!(message.contains("tls handshake failed"), "{message}");
    assert!(message.contains("certificate"), "{message}");
    assert!(!message.contains('\n'), "{message}");

    let ping = syncctl(&https, &["--cacert", &pki.arg("other-ca.pem"), "ping"]);
    assert_eq!(ping.code, Some(4), "{ping:?}");
    assert_one_line(&ping);
    assert!(ping.stderr.contains("tls handshake failed"), "{ping:?}");
}

#[tokio::test]
async fn mutual_tls_lets_in_only_clients_of_the_ca() {
    let pki = Pki::new();
    let (_syncd, https) = pki.start_syncd(true);
    let refused = |error: Error| {
        assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
        let message = error.to_string();
        assert!(!message.contains('\n'), "{message}");
        message
    };

    let none = Client::connect_with(https.as_str(), pki.options(Some("ca.pem"), None))
        .await
        .expect_err("no client certificate");
    eprintln!("without a certificate: {}", refused(none));

    let stranger = pki.options(
        Some("ca.pem"),
        Some(("other-client.pem", "other-client.key")),
    );
    let stranger = Client::connect_with(https.as_str(), stranger)
        .await
        .expect_err("a certificate from another CA");
    eprintln!("with another CA's certificate: {}", refused(stranger));

    let good = pki.options(Some("ca.pem"), Some(("client.pem", "client.key")));
    let client = Client::connect_with(https.as_str(), good)
        .await
        .expect("the right certificate");
    use_a_lock(&client).await;
    client.close().await.expect("close");

    let ca = pki.arg("ca.pem");
    let ping = syncctl(&https, &["--cacert", &ca, "ping"]);
    assert_eq!(ping.code, Some(4), "{ping:?}");
    assert_one_line(&ping);
    let (cert, key) = (pki.arg("other-client.pem"), pki.arg("other-client.key"));
    let ping = syncctl(
        &https,
        &["--cacert", &ca, "--cert", &cert, "--key", &key, "ping"],
    );
    assert_eq!(ping.code, Some(4), "{ping:?}");
    assert_one_line(&ping);
    let (cert, key) = (pki.arg("client.pem"), pki.arg("client.key"));
    let lock = syncctl(
        &https,
        &[
            "--cacert", &ca, "--cert", &cert, "--key", &key, "lock", "acquire", "x", "--", "true",
        ],
    );
    assert_eq!(lock.code, Some(0), "{lock:?}");
}

#[test]
fn syncctl_needs_both_cert_and_key() {
    let pki = Pki::new();
    let ended = syncctl(
        "https://127.0.0.1:1",
        &["--cert", &pki.arg("client.pem"), "ping"],
    );
    assert_eq!(ended.code, Some(2), "{ended:?}");
    assert!(ended.stderr.contains("--key"), "{ended:?}");
    let ended = syncctl(
        "https://127.0.0.1:1",
        &["--cacert", &pki.arg("missing.pem"), "ping"],
    );
    assert_eq!(ended.code, Some(1), "{ended:?}");
    assert!(ended.stderr.contains("missing.pem"), "{ended:?}");
    assert_one_line(&ended);
}

/// Runs `syncd serve ARGS...` in a fresh directory, which must fail.
fn serve_fails(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = run_bounded(
        Command::new(syncd_bin())
            .arg("serve")
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null()),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stdout.contains("listening on"), "{stdout}");
    (output.status.code(), stdout, stderr)
}

#[test]
fn bad_tls_files_stop_syncd_with_one_line() {
    let pki = Pki::new();
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let (code, _, stderr) = serve_fails(&["--tls-cert", &cert]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, stderr) = serve_fails(&["--tls-key", &key]);
    assert_eq!(code, Some(2), "{stderr}");

    let missing = pki.arg("missing.pem");
    let (code, _, stderr) = serve_fails(&["--tls-cert", &missing, "--tls-key", &key]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // A key file given as the certificate, and the reverse.
    let (code, _, stderr) = serve_fails(&["--tls-cert", &key, "--tls-key", &key]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("server.key"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let (code, _, stderr) = serve_fails(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--tls-key") && stderr.contains("server.pem"),
        "{stderr}"
    );

    // A key that does not belong to the certificate.
    let other_key = pki.arg("client.key");
    let (code, _, stderr) = serve_fails(&["--tls-cert", &cert, "--tls-key", &other_key]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("client.key"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    let bad_ca = pki.arg("server.key");
    let (code, _, stderr) = serve_fails(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &bad_ca,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--tls-client-ca"), "{stderr}");
}
