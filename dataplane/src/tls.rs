//! TLS for the tunnel: the identities the node presents, the trust bundle, and the
//! rustls configurations built from them, with the SPIFFE verifier on both ends.
//!
//! Decides: TLS 1.3 only, mutual, AES-128-GCM first (ring provider; the server picks
//! by its own order, so a client offering AES-256-GCM first still gets 128); the server picks the
//! destination identity's SVID by SNI (or, on a pod's address, that pod's: HBONE sends
//! no SNI), selects ALPN `h2` when offered (else configures none, as before), and accepts a client whose chain passes
//! `spiffe::verify` for the trust domain; the client presents the source identity's
//! SVID and accepts only the expected destination identity. New material (an SVID
//! issued or renewed, a bundle reloaded) applies to new handshakes; established
//! connections keep their sessions. Must never: fall back to TLS 1.2, accept a peer
//! without a certificate, or verify a name instead of the SPIFFE identity.

use crate::spiffe::{self, Reason};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The crypto provider: ring, TLS 1.3 suites with AES-GCM before ChaCha20.
pub fn crypto() -> Arc<CryptoProvider> {
    let mut p = provider::default_provider();
    p.cipher_suites = vec![
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
        provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// The trust bundle: roots (whole certificates: their validity, key usage and
/// pathLenConstraint are checked like any other on the path) and the trust domain peers
/// must belong to.
pub struct Trust {
    pub roots: Vec<CertificateDer<'static>>,
    pub trust_domain: String,
    algs: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Trust({} roots, {})",
            self.roots.len(),
            self.trust_domain
        )
    }
}

pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut rd = pem;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut rd).collect();
    let certs = certs.map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in PEM".into());
    }
    Ok(certs)
}

/// The bundle's roots, each one a certificate that parses.
pub fn parse_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let roots = parse_certs(pem)?;
    for r in &roots {
        spiffe::parses(r).map_err(|e| format!("bad root: {e}"))?;
    }
    Ok(roots)
}

impl Trust {
    pub fn new(bundle_pem: &[u8], trust_domain: &str) -> Result<Self, String> {
        Ok(Trust {
            roots: parse_roots(bundle_pem)?,
            trust_domain: trust_domain.to_string(),
            algs: crypto().signature_verification_algorithms,
        })
    }
}

fn reject(r: Reason) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

/// The signature methods both verifiers share: TLS 1.2 is never offered, TLS 1.3
/// signatures are checked with the provider's algorithms (`$t`: the field holding the
/// `Trust`).
macro_rules! signatures {
    ($t:tt) => {
        fn verify_tls12_signature(
            &self,
            _m: &[u8],
            _c: &CertificateDer<'_>,
            _d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.$t.algs)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$t.algs.supported_schemes()
        }
    };
}

/// The server side's check of a client chain.
#[derive(Debug)]
struct ClientVerifier(Arc<Trust>);

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let t = &self.0;
        spiffe::verify(&chain, &t.roots, &t.trust_domain, now, None).map_err(reject)?;
        Ok(ClientCertVerified::assertion())
    }
    signatures!(0);
}

/// The client side's check of the server chain: exactly the expected identity.
#[derive(Debug)]
struct ServerVerifier {
    trust: Arc<Trust>,
    expected: String,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let t = &self.trust;
        spiffe::verify(&chain, &t.roots, &t.trust_domain, now, Some(&self.expected))
            .map_err(reject)?;
        Ok(ServerCertVerified::assertion())
    }
    signatures!(trust);
}

/// One identity's SVID: chain (leaf first) and key, ready to present.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain = parse_certs(chain_pem)?;
    let mut rd = key_pem;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut rd)
        .map_err(|e| format!("bad key PEM: {e}"))?
        .ok_or("no private key in PEM")?;
    let signer = provider::sign::any_supported_type(&key).map_err(|e| format!("key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// The node's identities by SNI (server side) and by SPIFFE ID (client side).
#[derive(Debug, Default)]
pub struct Identities {
    by_sni: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    by_id: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Identities {
    pub fn set(&self, spiffe_id: &str, sni: &str, key: Arc<CertifiedKey>) {
        self.by_sni
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sni.to_string(), key.clone());
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spiffe_id.to_string(), key);
    }
    pub fn remove(&self, spiffe_id: &str, sni: &str) {
        self.by_sni
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sni);
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(spiffe_id);
    }
    pub fn get(&self, spiffe_id: &str) -> Option<Arc<CertifiedKey>> {
        self.by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(spiffe_id)
            .cloned()
    }
    pub fn len(&self) -> usize {
        self.by_id.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[derive(Debug)]
struct BySni(Arc<Identities>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.0
            .by_sni
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

/// The tunnel listener's configuration (rebuilt when the trust bundle changes).
pub fn server_config(ids: Arc<Identities>, trust: Arc<Trust>) -> Result<ServerConfigs, String> {
    build_server(Arc::new(BySni(ids)), trust)
}

/// A server configuration in two forms: for a ClientHello that offers ALPN `h2`
/// (selects it: HBONE) and for any other (no ALPN configured, so whatever else a client
/// offers is ignored, as before HBONE). Both share the ticketer and session cache.
#[derive(Clone)]
pub struct ServerConfigs {
    plain: Arc<ServerConfig>,
    h2: Arc<ServerConfig>,
}

impl ServerConfigs {
    pub fn pick(&self, offers_h2: bool) -> Arc<ServerConfig> {
        if offers_h2 {
            self.h2.clone()
        } else {
            self.plain.clone()
        }
    }
}

/// Whether a ClientHello offers ALPN `h2`.
pub fn offers_h2(hello: &ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut a| a.any(|p| p == ALPN_H2))
}

fn build_server(
    certs: Arc<dyn ResolvesServerCert>,
    trust: Arc<Trust>,
) -> Result<ServerConfigs, String> {
    let mut cfg = ServerConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(ClientVerifier(trust)))
        .with_cert_resolver(certs);
    // session tickets for resumption (SPEC.md): a resumed handshake skips the
    // certificate exchange and signatures
    cfg.ticketer = provider::Ticketer::new().map_err(|e| e.to_string())?;
    cfg.send_tls13_tickets = 2;
    // our order, not the client's: ztunnel offers AES-256-GCM first, and AES-128-GCM
    // (both acceptable) costs 10 AES rounds per block instead of 14
    cfg.ignore_client_order = true;
    let mut h2 = cfg.clone();
    h2.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(ServerConfigs {
        plain: Arc::new(cfg),
        h2: Arc::new(h2),
    })
}

pub const ALPN_H2: &[u8] = b"h2";

/// A server configuration that presents one SVID whatever the SNI: a pod's, on a
/// connection to that pod's address (HBONE: no SNI).
pub fn fixed_server_config(
    key: Arc<CertifiedKey>,
    trust: Arc<Trust>,
) -> Result<ServerConfigs, String> {
    build_server(Arc::new(FixedServer(key)), trust)
}

#[derive(Debug)]
struct FixedServer(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedServer {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A client configuration for one (source identity, expected destination identity);
/// it keeps its own session cache, so its handshakes resume. `hbone`: ALPN `h2`, no SNI.
pub fn client_config(
    key: Arc<CertifiedKey>,
    trust: Arc<Trust>,
    expected: &str,
    hbone: bool,
) -> Result<Arc<ClientConfig>, String> {
    let verifier = Arc::new(ServerVerifier {
        trust,
        expected: expected.to_string(),
    });
    let mut cfg = ClientConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Fixed(key)));
    if hbone {
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        cfg.enable_sni = false;
    }
    // tickets for as many concurrent handshakes to a peer as limits.rs allows
    cfg.resumption =
        rustls::client::Resumption::store(Arc::new(crate::sessions::Sessions::default()));
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The named reason of a failed handshake (docs/identity.md's list).
pub fn handshake_reason(e: &std::io::Error) -> &'static str {
    let Some(inner) = e.get_ref() else {
        return match e.kind() {
            std::io::ErrorKind::TimedOut => "handshake_timeout",
            _ => "handshake_failed",
        };
    };
    let Some(err) = inner.downcast_ref::<rustls::Error>() else {
        return "handshake_failed";
    };
    tls_error_reason(err)
}

pub fn tls_error_reason(err: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(CertificateError::Other(OtherError(o))) => o
            .downcast_ref::<Reason>()
            .map_or("untrusted", |r| r.as_str()),
        E::InvalidCertificate(CertificateError::Expired) => "expired",
        E::InvalidCertificate(CertificateError::NotValidYet) => "not_yet_valid",
        E::InvalidCertificate(_) => "untrusted",
        E::NoCertificatesPresented => "no_certificate",
        E::PeerIncompatible(_) => "tls_version",
        E::InvalidMessage(_) => "not_tls",
        E::AlertReceived(rustls::AlertDescription::CertificateRequired) => "no_certificate",
        E::AlertReceived(rustls::AlertDescription::ProtocolVersion) => "tls_version",
        E::AlertReceived(rustls::AlertDescription::BadCertificate)
        | E::AlertReceived(rustls::AlertDescription::UnknownCA) => "untrusted",
        _ => "handshake_failed",
    }
}

/// The SPIFFE ID of a verified peer's leaf.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    spiffe::uri_sans(leaf.as_ref()).into_iter().next()
}
