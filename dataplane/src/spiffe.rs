//! The SPIFFE X.509-SVID checks, implemented once: chain to a bundle root, validity,
//! exactly one SPIFFE URI SAN, trust domain, leaf not a CA, the expected identity.
//!
//! Decides: whether a peer's certificate chain is an acceptable SVID, and if not, the
//! named reason (the same names as docs/identity.md and agent/identity/validate.py).
//! Must never: do I/O, read the clock (callers pass `now`), or accept a chain on any
//! path that skipped a check.

use rustls::pki_types::TrustAnchor;
use rustls::pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Intermediates a chain may carry before we stop looking (node intermediate + spare).
pub const MAX_CHAIN: usize = 4;

/// Why a chain was rejected; `as_str` gives the name docs/identity.md uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoCertificate,
    Expired,
    NotYetValid,
    Untrusted,
    NoUriSan,
    MultipleUriSans,
    BadSpiffeId,
    TrustDomainMismatch,
    LeafIsCa,
    UnexpectedIdentity,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCertificate => "no_certificate",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Untrusted => "untrusted",
            Reason::NoUriSan => "no_uri_san",
            Reason::MultipleUriSans => "multiple_uri_sans",
            Reason::BadSpiffeId => "bad_spiffe_id",
            Reason::TrustDomainMismatch => "trust_domain_mismatch",
            Reason::LeafIsCa => "leaf_is_ca",
            Reason::UnexpectedIdentity => "unexpected_identity",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Reason {}

/// Which end of the handshake the chain belongs to (the key usage it must allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// A parsed SPIFFE workload ID: `spiffe://<td>/ns/<ns>/sa/<sa>`, strict per the spec
/// (agent/identity/spiffe.py's rules).
pub fn trust_domain_of(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    let td_ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !td_ok {
        return None;
    }
    let segs: Vec<&str> = path.split('/').collect();
    for s in &segs {
        let ok = !s.is_empty()
            && *s != "."
            && *s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return None;
        }
    }
    if segs.len() != 4 || segs[0] != "ns" || segs[2] != "sa" {
        return None;
    }
    Some(td)
}

/// The URI SANs of a certificate (empty when it has none or is unparsable).
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    uris_of(&cert)
}

fn uris_of(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Check `chain` (leaf first, DER) against `roots`; on success the peer's SPIFFE ID.
///
/// Order as validate.py: validity windows of the chain, then the path to a root, then
/// the leaf rules. A leaf that is a CA fails webpki's path building; its leaf rules
/// then decide the reason (so `no_uri_san` still wins over `leaf_is_ca`).
pub fn verify(
    chain: &[CertificateDer<'_>],
    roots: &[TrustAnchor<'_>],
    trust_domain: &str,
    now: UnixTime,
    expected: Option<&str>,
    role: Role,
) -> Result<String, Reason> {
    let Some(leaf_der) = chain.first() else {
        return Err(Reason::NoCertificate);
    };
    let now_s = now.as_secs() as i64;
    let mut parsed = Vec::with_capacity(chain.len().min(MAX_CHAIN));
    for der in chain.iter().take(MAX_CHAIN) {
        let (_, c) = X509Certificate::from_der(der.as_ref()).map_err(|_| Reason::Untrusted)?;
        if now_s < c.validity().not_before.timestamp() {
            return Err(Reason::NotYetValid);
        }
        if now_s > c.validity().not_after.timestamp() {
            return Err(Reason::Expired);
        }
        parsed.push(c);
    }
    let leaf = &parsed[0];
    let ee = EndEntityCert::try_from(leaf_der).map_err(|_| Reason::Untrusted)?;
    let usage = match role {
        Role::Client => KeyUsage::client_auth(),
        Role::Server => KeyUsage::server_auth(),
    };
    let intermediates = &chain[1..chain.len().min(MAX_CHAIN)];
    let path = ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        roots,
        intermediates,
        now,
        usage,
        None,
        None,
    );
    match path {
        Ok(_) => {}
        Err(webpki::Error::CaUsedAsEndEntity) => {}
        Err(webpki::Error::CertExpired { .. }) => return Err(Reason::Expired),
        Err(webpki::Error::CertNotValidYet { .. }) => return Err(Reason::NotYetValid),
        Err(_) => return Err(Reason::Untrusted),
    }
    leaf_rules(leaf, trust_domain, expected)
}

fn leaf_rules(
    leaf: &X509Certificate<'_>,
    trust_domain: &str,
    expected: Option<&str>,
) -> Result<String, Reason> {
    let uris = uris_of(leaf);
    match uris.len() {
        0 => return Err(Reason::NoUriSan),
        1 => {}
        _ => return Err(Reason::MultipleUriSans),
    }
    if is_ca(leaf) {
        return Err(Reason::LeafIsCa);
    }
    let uri = &uris[0];
    let td = trust_domain_of(uri).ok_or(Reason::BadSpiffeId)?;
    if td != trust_domain {
        return Err(Reason::TrustDomainMismatch);
    }
    if let Some(want) = expected {
        if uri != want {
            return Err(Reason::UnexpectedIdentity);
        }
    }
    Ok(uri.clone())
}

#[cfg(test)]
#[path = "spiffe_tests.rs"]
mod tests;
