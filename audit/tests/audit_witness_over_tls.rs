//! A `tls://` witness: heads reach a TLS syslog receiver (RFC 5425) whose certificate chains to
//! the CA in `witness_ca`; a receiver that cannot prove that (another CA, another name) gets
//! nothing, and the heads wait in the spool with the reason in the status. A tls:// witness
//! without a CA, or a CA with tcp://, is refused when the log opens. A receiver that requires a
//! client certificate (mutual TLS) gets heads only from a box presenting one of its client CA's.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fixture, fill};
use govbox_audit::witness::{WitnessRecord, parse_witness_file};
use govbox_audit::{AuditLog, AuditOptions, WitnessTls};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA, and a certificate it issued for `sans` (a server's, or with [`client_pki`] a client's).
struct Pki {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    leaf_pem: String,
    key_pem: String,
}

fn pki(sans: Vec<SanType>) -> Pki {
    pki_for(sans, Vec::new())
}

/// A client CA and a client certificate it issued to the box.
fn client_pki() -> Pki {
    pki_for(
        vec![SanType::DnsName("box-17.agency.example".try_into().unwrap())],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )
}

fn pki_for(sans: Vec<SanType>, usages: Vec<ExtendedKeyUsagePurpose>) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "agency log CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = sans;
    leaf.extended_key_usages = usages;
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_chain: vec![cert.der().clone()],
        server_key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        leaf_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn ip_sans() -> Vec<SanType> {
    vec![SanType::IpAddress("127.0.0.1".parse().unwrap())]
}

/// A TLS syslog receiver on loopback that keeps whatever arrives in plaintext.
fn receiver(p: &Pki) -> (u16, Arc<Mutex<Vec<u8>>>) {
    receiver_requiring(p, None)
}

/// A receiver that, given `client_ca`, requires a client certificate that chains to it (as
/// rsyslog's `StreamDriverAuthMode="x509/certvalid"` does).
fn receiver_requiring(p: &Pki, client_ca: Option<&str>) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(p.server_chain.clone(), p.server_key.clone_key()).unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let (Ok(sock), sink, config) = (sock, sink.clone(), config.clone()) else { continue };
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, got)
}

fn ca_file(fx: &Fixture, pem: &str) -> PathBuf {
    let path = fx.audit_dir().with_file_name("witness-ca.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn open(fx: &Fixture, port: u16, tls: WitnessTls) -> AuditLog {
    let witness = Some(format!("tls://127.0.0.1:{port}").parse().unwrap());
    fx.open_with(AuditOptions { witness, witness_tls: tls, ..AuditOptions::default() })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn heads(got: &Mutex<Vec<u8>>) -> Vec<u64> {
    parse_witness_file(&got.lock().unwrap())
        .unwrap()
        .into_iter()
        .map(|r| match r {
            WitnessRecord::Head(h) => h.tree_size,
            WitnessRecord::Malformed(m) => panic!("malformed head at the receiver: {m}"),
        })
        .collect()
}

#[test]
fn heads_reach_a_tls_receiver_whose_certificate_chains_to_the_pinned_ca() {
    let fx = Fixture::new();
    let server = pki(ip_sans());
    let (port, got) = receiver(&server);
    let ca = ca_file(&fx, &server.ca_pem);
    let log = open(&fx, port, WitnessTls { ca: Some(ca), server_name: None, ..WitnessTls::default() });
    fill(&log, 4);
    log.checkpoint().unwrap();
    fill(&log, 2);
    log.checkpoint().unwrap();
    wait_until("both heads reached the receiver", || heads(&got).ends_with(&[4, 6]));
    wait_until("the status shows it", || log.witness_status().unwrap().pending == 0);
    let status = log.witness_status().unwrap();
    assert_eq!((status.address.as_str(), status.last_sent_size), (format!("tls://127.0.0.1:{port}").as_str(), Some(6)));
    // Nothing of the heads crossed the wire in the clear: the frames are only inside TLS.
    assert!(status.last_error.is_none(), "{status:?}");
}

#[test]
fn a_receiver_with_a_certificate_from_another_ca_or_for_another_name_gets_nothing() {
    // The receiver's certificate is genuine, but from a CA the box was not given.
    let fx = Fixture::new();
    let impostor = pki(ip_sans());
    let (port, got) = receiver(&impostor);
    let pinned = pki(ip_sans());
    let log = open(
        &fx,
        port,
        WitnessTls { ca: Some(ca_file(&fx, &pinned.ca_pem)), server_name: None, ..WitnessTls::default() },
    );
    fill(&log, 3);
    log.checkpoint().unwrap();
    wait_until("the sender has failed", || log.witness_status().unwrap().last_error.is_some());
    let status = log.witness_status().unwrap();
    let why = status.last_error.clone().unwrap();
    assert!(why.contains("TLS handshake") && why.contains("certificate"), "{why}");
    assert_eq!(status.pending, 1, "{status:?}");
    assert!(heads(&got).is_empty(), "the impostor received heads");
    drop(log);

    // The right CA, but the certificate names another host than the one configured.
    let fx = Fixture::new();
    let server = pki(vec![SanType::DnsName("logs.agency.example".try_into().unwrap())]);
    let (port, got) = receiver(&server);
    let tls = WitnessTls {
        ca: Some(ca_file(&fx, &server.ca_pem)),
        server_name: Some("siem.agency.example".into()),
        ..WitnessTls::default()
    };
    let log = open(&fx, port, tls);
    fill(&log, 2);
    log.checkpoint().unwrap();
    wait_until("the sender has failed", || log.witness_status().unwrap().last_error.is_some());
    let why = log.witness_status().unwrap().last_error.unwrap();
    assert!(why.contains("certificate"), "{why}");
    assert!(heads(&got).is_empty(), "a receiver for another name received heads");
    drop(log);

    // With the name it carries, the same receiver is accepted.
    let fx = Fixture::new();
    let (port, got) = receiver(&server);
    let tls = WitnessTls {
        ca: Some(ca_file(&fx, &server.ca_pem)),
        server_name: Some("logs.agency.example".into()),
        ..WitnessTls::default()
    };
    let log = open(&fx, port, tls);
    fill(&log, 2);
    log.checkpoint().unwrap();
    wait_until("the head reached the receiver", || heads(&got).ends_with(&[2]));
}

/// Why the log of `fx` refuses to open with `witness` and `tls`.
fn open_err(fx: &Fixture, witness: &str, tls: WitnessTls) -> String {
    let opts = AuditOptions { witness: Some(witness.parse().unwrap()), witness_tls: tls, ..AuditOptions::default() };
    match AuditLog::open(fx.audit_dir(), fx.keys(), opts) {
        Ok(_) => panic!("the log opened with {witness}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls_settings_that_protect_nothing_are_refused_when_the_log_opens() {
    let fx = Fixture::new();
    let open_err = |witness: &str, tls: WitnessTls| open_err(&fx, witness, tls);
    let e = open_err("tls://127.0.0.1:6514", WitnessTls::default());
    assert!(e.contains("witness_ca"), "{e}");
    let ca = ca_file(&fx, &pki(ip_sans()).ca_pem);
    let e = open_err(
        "tcp://127.0.0.1:6514",
        WitnessTls { ca: Some(ca.clone()), server_name: None, ..WitnessTls::default() },
    );
    assert!(e.contains("witness_ca") && e.contains("tcp://"), "{e}");
    let junk = fx.audit_dir().with_file_name("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = open_err(
        "tls://127.0.0.1:6514",
        WitnessTls { ca: Some(junk.clone()), server_name: None, ..WitnessTls::default() },
    );
    assert!(e.contains(&junk.display().to_string()) && e.contains("CERTIFICATE"), "{e}");
    let missing = fx.audit_dir().with_file_name("missing.pem");
    let e = open_err(
        "tls://127.0.0.1:6514",
        WitnessTls { ca: Some(missing.clone()), server_name: None, ..WitnessTls::default() },
    );
    assert!(e.contains(&missing.display().to_string()), "{e}");
}

/// Writes the box's client certificate and key; returns their paths.
fn client_files(fx: &Fixture, p: &Pki, name: &str) -> (PathBuf, PathBuf) {
    let cert = fx.audit_dir().with_file_name(format!("{name}.crt"));
    let key = fx.audit_dir().with_file_name(format!("{name}.key"));
    std::fs::write(&cert, &p.leaf_pem).unwrap();
    std::fs::write(&key, &p.key_pem).unwrap();
    (cert, key)
}

/// The settings for the receiver of `server` with the client certificate of `client`.
fn with_client(fx: &Fixture, server: &Pki, client: &Pki, name: &str) -> WitnessTls {
    let (cert, key) = client_files(fx, client, name);
    WitnessTls {
        ca: Some(ca_file(fx, &server.ca_pem)),
        client_cert: Some(cert),
        client_key: Some(key),
        ..WitnessTls::default()
    }
}

#[test]
fn a_receiver_that_requires_a_client_certificate_gets_heads_only_from_a_box_with_one() {
    let server = pki(ip_sans());
    let clients = client_pki();
    let (port, got) = receiver_requiring(&server, Some(&clients.ca_pem));

    // Without a client certificate the receiver ends the handshake: nothing arrives, the head
    // waits, and the status says why.
    let fx = Fixture::new();
    let log = open(&fx, port, WitnessTls { ca: Some(ca_file(&fx, &server.ca_pem)), ..WitnessTls::default() });
    fill(&log, 2);
    log.checkpoint().unwrap();
    wait_until("the sender has failed", || log.witness_status().unwrap().last_error.is_some());
    assert_eq!(log.witness_status().unwrap().pending, 1);
    drop(log);

    // A client certificate from a CA the receiver does not trust: refused the same way.
    let fx = Fixture::new();
    let log = open(&fx, port, with_client(&fx, &server, &client_pki(), "stranger"));
    fill(&log, 2);
    log.checkpoint().unwrap();
    wait_until("the sender has failed", || log.witness_status().unwrap().last_error.is_some());
    drop(log);
    std::thread::sleep(Duration::from_millis(200));
    assert!(heads(&got).is_empty(), "the receiver accepted heads without a client certificate it trusts");

    // The box's own certificate, from the client CA: the heads arrive.
    let fx = Fixture::new();
    let log = open(&fx, port, with_client(&fx, &server, &clients, "box"));
    fill(&log, 3);
    log.checkpoint().unwrap();
    wait_until("the head reached the receiver", || heads(&got).ends_with(&[3]));
    wait_until("the status shows it", || log.witness_status().unwrap().pending == 0);
}

#[test]
fn client_certificate_settings_are_checked_when_the_log_opens() {
    let fx = Fixture::new();
    let server = pki(ip_sans());
    let clients = client_pki();
    let ca = ca_file(&fx, &server.ca_pem);
    let (cert, key) = client_files(&fx, &clients, "box");
    let open_err = |witness: &str, tls: WitnessTls| open_err(&fx, witness, tls);
    let with = |cert: Option<PathBuf>, key: Option<PathBuf>| WitnessTls {
        ca: Some(ca.clone()),
        client_cert: cert,
        client_key: key,
        ..WitnessTls::default()
    };
    let e = open_err("tls://127.0.0.1:6514", with(Some(cert.clone()), None));
    assert!(e.contains("witness_client_key"), "{e}");
    let e = open_err("tcp://127.0.0.1:6514", WitnessTls { client_cert: Some(cert.clone()), ..WitnessTls::default() });
    assert!(e.contains("witness_client_cert") && e.contains("tcp://"), "{e}");
    // The key of another certificate.
    let (_, other_key) = client_files(&fx, &client_pki(), "other");
    let e = open_err("tls://127.0.0.1:6514", with(Some(cert.clone()), Some(other_key)));
    assert!(e.contains("witness_client_cert"), "{e}");
    // A key file that holds a certificate, a certificate file that holds a key.
    let e = open_err("tls://127.0.0.1:6514", with(Some(cert.clone()), Some(cert.clone())));
    assert!(e.contains("witness_client_key") && e.contains(&cert.display().to_string()), "{e}");
    let e = open_err("tls://127.0.0.1:6514", with(Some(key.clone()), Some(key.clone())));
    assert!(e.contains("witness_client_cert") && e.contains("CERTIFICATE"), "{e}");
}
