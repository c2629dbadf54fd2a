//! The TLS listener: HTTPS with HTTP/2 and HTTP/1.1 by ALPN, the device client over
//! https with `--ca`, and a certificate replaced on disk taken up by new handshakes while
//! an established connection keeps working.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use reqwest::StatusCode;

/// A CA and a certificate for 127.0.0.1 and localhost signed by it: (ca, cert, key) PEM.
fn issue(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

fn https_client(ca_pem: &str, http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

struct TlsNode {
    node: TestNode,
    https: String,
}

async fn start_tls_node(dir: &Path, cert: &Path, key: &Path) -> TlsNode {
    let mut cfg = test_config(&dir.join("data"));
    cfg.server.tls_listen = "127.0.0.1:0".into();
    cfg.server.tls_cert = cert.to_path_buf();
    cfg.server.tls_key = key.to_path_buf();
    cfg.validate().unwrap();
    let node = open_node(cfg).await.unwrap();
    let certs = update_edge::tls::Certificates::open(cert, key).unwrap();
    let tls = update_edge::server::TlsListener {
        listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        acceptor: update_edge::tls::acceptor(certs.clone()).unwrap(),
        certs,
    };
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = update_edge::server::start_with_tls(&node, plain, Some(tls)).unwrap();
    let https = format!("https://{}", server.tls_addr.unwrap());
    let url = format!("http://{}", server.addr);
    TlsNode {
        node: TestNode {
            node,
            server: Some(server),
            url,
            dir: dir.join("data"),
        },
        https,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_h2_and_http1_serves_the_device_client_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = issue("first");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let t = start_tls_node(dir.path(), &cert_path, &key_path).await;
    let builds = gw_targeting_102(&t.node, 200_000).await;

    // ALPN: HTTP/2 when the client offers it, HTTP/1.1 otherwise; same answers.
    let h2 = https_client(&ca, false);
    let r = h2.get(format!("{}/healthz", t.https)).send().await.unwrap();
    assert_eq!(
        (r.status(), r.version()),
        (StatusCode::OK, reqwest::Version::HTTP_2)
    );
    let blob = update_edge::hash::Hash::of(&builds[1]).to_hex();
    let r = https_client(&ca, true)
        .get(format!("{}/v1/blobs/{blob}", t.https))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.version()),
        (StatusCode::PARTIAL_CONTENT, reqwest::Version::HTTP_11)
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &builds[1][10..20]);

    // The device client over https, trusting the CA it is given.
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let mut args = t.node.device_args(dir.path(), "gw", "d1", "1.0.1", None);
    args.server = t.https.clone();
    args.ca = Some(ca_path.clone());
    let got = update_edge::client::update(args).await.unwrap();
    assert_eq!(got.version.as_deref(), Some("1.0.2"));
    assert_eq!(
        std::fs::read(dir.path().join("out.img")).unwrap(),
        builds[1]
    );
    // Without it, the server is not trusted.
    let mut args = t.node.device_args(dir.path(), "gw", "d2", "1.0.1", None);
    args.server = t.https.clone();
    args.state = dir.path().join("state-untrusting");
    args.retry_for = std::time::Duration::from_secs(1);
    assert!(update_edge::client::update(args).await.is_err());

    // A new certificate from another CA replaces the files: new handshakes get it, the
    // established HTTP/2 connection keeps working.
    let (ca2, cert2, key2) = issue("second");
    std::fs::write(&key_path, &key2).unwrap();
    std::fs::write(&cert_path, &cert2).unwrap();
    let url = Arc::new(format!("{}/healthz", t.https));
    let taken = eventually(20, || {
        let url = url.clone();
        let ca2 = ca2.clone();
        async move {
            https_client(&ca2, false)
                .get(url.as_str())
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    assert!(taken, "the new certificate was never served");
    let r = h2.get(url.as_str()).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the established connection was dropped"
    );
    assert!(
        https_client(&ca, false)
            .get(url.as_str())
            .send()
            .await
            .is_err(),
        "a new handshake still got the old certificate"
    );
    t.node.stop().await;
}

#[test]
fn tls_needs_its_certificate_and_key_and_names_a_bad_file() {
    let mut c = update_edge::config::Config::default();
    c.server.tls_listen = "127.0.0.1:8443".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("tls_cert"), "{e}");
    c.server.tls_listen = "not an address".into();
    assert!(c.validate().unwrap_err().to_string().contains("tls_listen"));
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _) = issue("x");
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let e = update_edge::tls::Certificates::open(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("key.pem"), "{e}");
}
