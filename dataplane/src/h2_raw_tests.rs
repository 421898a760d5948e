//! What a misbehaving HBONE peer sends, through h2's client API directly: requests
//! that are not CONNECT or name no IP, streams past the server's limit, a header block
//! over 64 KiB.

use super::*;
use h2::client::SendRequest;
use http::{Method, Request};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// An h2 client connection whose driver the caller spawns (so it can queue streams
/// before the server's SETTINGS are read).
async fn raw_unpolled(
    cli: &Arc<Shared>,
    addr: SocketAddr,
    initial_streams: usize,
) -> (SendRequest<Bytes>, h2::client::Connection<Tls, Bytes>) {
    let cfg = cli.client_config(CLIENT, SERVER, true).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    let (sr, conn) = h2::client::Builder::new()
        .initial_max_send_streams(initial_streams)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();
    (sr, conn)
}

async fn raw(cli: &Arc<Shared>, addr: SocketAddr, initial_streams: usize) -> SendRequest<Bytes> {
    let (sr, conn) = raw_unpolled(cli, addr, initial_streams).await;
    tokio::spawn(conn);
    sr
}

fn req(method: Method, uri: &str) -> Request<()> {
    Request::builder().method(method).uri(uri).body(()).unwrap()
}

async fn status(sr: &mut SendRequest<Bytes>, req: Request<()>) -> Result<u16, h2::Error> {
    let (resp, _send) = sr.send_request(req, false)?;
    Ok(resp.await?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_connect_to_an_ip_get_400() {
    let pki = pki();
    let (srv, addr, _) = server(&pki, 0).await;
    let cli = core(&pki, &[CLIENT]);
    let mut sr = raw(&cli, addr, 100).await;
    let get = req(Method::GET, "https://127.0.0.1:80/");
    assert_eq!(status(&mut sr, get).await.unwrap(), 400);
    let named = req(Method::CONNECT, "example.com:80");
    assert_eq!(status(&mut sr, named).await.unwrap(), 400);
    let c = srv.counters();
    assert_eq!(c.get("hbone_refused_not_connect"), Some(&1), "{c:?}");
    assert_eq!(c.get("hbone_refused_bad_authority"), Some(&1));
    assert_eq!(c.get("hbone_status_400"), Some(&2));
    // the connection survives its refused streams
    let up = reverser().await;
    let ok = req(Method::CONNECT, &up.to_string());
    assert_eq!(status(&mut sr, ok).await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_by_h2() {
    let pki = pki();
    let hold = 9;
    let (srv, addr, _) = server(&pki, hold).await;
    let cli = core(&pki, &[CLIENT]);
    // a peer that ignores the server's SETTINGS: 250 streams before reading them
    let (sr, conn) = raw_unpolled(&cli, addr, 1000).await;
    let target = format!("127.0.0.1:{hold}");
    let mut waits = Vec::new();
    for _ in 0..250 {
        let r = req(Method::CONNECT, &target);
        let mut sr = sr.clone();
        let (resp, send) = sr.send_request(r, false).unwrap();
        waits.push(tokio::spawn(async move {
            let _keep = send;
            tokio::time::timeout(Duration::from_secs(3), resp).await
        }));
    }
    tokio::spawn(conn);
    // the server's SETTINGS say 200, and it holds exactly 200
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sr.current_max_send_streams(), 200);
    let gauge = || srv.hbone_streams.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(gauge(), 200);
    assert_eq!(srv.counters().get("hbone_streams_opened"), Some(&200));
    let mut refused = 0;
    let mut held = 0;
    for w in waits {
        match w.await.unwrap() {
            Err(_) => held += 1, // waiting for a decision that never comes
            Ok(Err(_)) => refused += 1,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    // none past the limit was answered; h2 resets them (REFUSED_STREAM) or the peer's
    // h2 never gets them out, depending on when it read the SETTINGS
    assert_eq!(held + refused, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_over_64_kib_is_refused_and_the_connection_kept() {
    let pki = pki();
    let (srv, addr, _) = server(&pki, 0).await;
    let cli = core(&pki, &[CLIENT]);
    let mut sr = raw(&cli, addr, 100).await;
    let up = reverser().await;
    let big = Request::builder()
        .method(Method::CONNECT)
        .uri(up.to_string())
        .header("x-pad", "a".repeat(70 * 1024))
        .body(())
        .unwrap();
    match status(&mut sr, big).await {
        Ok(s) => assert_eq!(s, 431),
        Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e:?}"),
    }
    assert_eq!(srv.counters().get("hbone_streams_opened"), None);
    let ok = req(Method::CONNECT, &up.to_string());
    assert_eq!(status(&mut sr, ok).await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_other_alpn_gets_the_http1_path_as_before() {
    let pki = pki();
    let (_srv, addr, _) = server(&pki, 0).await;
    let cli = core(&pki, &[CLIENT]);
    let mut cfg = (*cli.client_config(CLIENT, SERVER, true).unwrap()).clone();
    cfg.alpn_protocols = vec![b"hostmesh-streams/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    // HTTP/1.1 CONNECT is what this connection speaks
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    tls.read_to_end(&mut head).await.ok();
    assert!(
        head.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
}

/// A client that trusts any server (only the negotiated suite is looked at).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::tls::crypto()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// ztunnel's client offers AES-256-GCM before AES-128-GCM; the server picks 128 anyway
/// (its own order: fewer AES rounds per byte on every tunnelled byte).
#[tokio::test]
async fn the_server_picks_aes_128_gcm_when_a_client_prefers_256() {
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let pki = pki();
    let (_srv, addr, _) = server(&pki, 0).await;
    let cli = core(&pki, &[CLIENT]);
    let ours = cli.client_config(CLIENT, SERVER, true).unwrap();
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256];
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_cert_resolver(ours.client_auth_cert_resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap();
    assert_eq!(suite.suite(), TLS13_AES_128_GCM_SHA256.suite());
}
