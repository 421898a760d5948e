//! The SPIFFE X.509-SVID checks, implemented once: the same rules, in the same order,
//! with the same named reasons as agent/identity/validate.py (docs/identity.md lists
//! each rule and its source).
//!
//! Decides: whether a peer's certificate chain is an acceptable SVID, and if not, the
//! named reason. Order as `validate_peer`: every presented certificate parses and has a
//! well-formed validity window; a path from the leaf through the presented
//! certificates to a bundle root is built (every path, bounded); the first path whose
//! certificates are all inside their windows, all signing certificates CA with a
//! critical keyCertSign within their pathLenConstraint, and none with an unknown
//! critical extension, is the chain; otherwise the first path's reason. Then the leaf
//! rules (URI SAN, not a CA, key usage, EKU, SPIFFE ID, trust domain, expected ID).
//! Must never: do I/O, read the clock (callers pass `now`), or accept a chain on any
//! path that skipped a check.

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    Oid, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Certificates a presented chain may carry (leaf, node intermediate, spares for a
/// rotation); a longer chain is refused before any signature is checked (bounded work).
/// validate.py's MAX_CHAIN.
pub const MAX_CHAIN: usize = 8;

/// Issuer lookups path building may make before it stops (validate.py's budget of 64):
/// bounds the work a chain of cross-signed certificates can cause.
const PATH_BUDGET: usize = 64;

/// The longest SPIFFE ID accepted (agent/identity/spiffe.py's MAX_ID_BYTES).
pub const MAX_ID_BYTES: usize = 2048;

/// Why a chain was rejected; `as_str` gives the name docs/identity.md uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoCertificate,
    MalformedCertificate,
    BadValidity,
    Expired,
    NotYetValid,
    Untrusted,
    UnknownCriticalExtension,
    NoUriSan,
    MultipleUriSans,
    BadSpiffeId,
    TrustDomainMismatch,
    LeafIsCa,
    LeafKeyUsage,
    UnexpectedIdentity,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCertificate => "no_certificate",
            Reason::MalformedCertificate => "malformed_certificate",
            Reason::BadValidity => "bad_validity",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Untrusted => "untrusted",
            Reason::UnknownCriticalExtension => "unknown_critical_extension",
            Reason::NoUriSan => "no_uri_san",
            Reason::MultipleUriSans => "multiple_uri_sans",
            Reason::BadSpiffeId => "bad_spiffe_id",
            Reason::TrustDomainMismatch => "trust_domain_mismatch",
            Reason::LeafIsCa => "leaf_is_ca",
            Reason::LeafKeyUsage => "leaf_key_usage",
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

/// A parsed SPIFFE workload ID: `spiffe://<td>/ns/<ns>/sa/<sa>`, strict per the spec
/// (agent/identity/spiffe.py's rules).
pub fn trust_domain_of(uri: &str) -> Option<&str> {
    // SPIFFE-ID.md 2.3: implementations must support 2048 bytes; hostmesh refuses longer
    if uri.len() > MAX_ID_BYTES {
        return None;
    }
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
    uris_of(&cert).unwrap_or_default()
}

fn uris_of(cert: &X509Certificate<'_>) -> Result<Vec<String>, Reason> {
    match cert.subject_alternative_name() {
        Ok(Some(ext)) => Ok(ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_string()),
                _ => None,
            })
            .collect()),
        Ok(None) => Ok(Vec::new()),
        Err(_) => Err(Reason::MalformedCertificate),
    }
}

/// DER -> certificate; a validity field that does not parse is `bad_validity`, any
/// other parse failure `malformed_certificate` (validate.py's `load_der_chain`).
fn parse(der: &[u8]) -> Result<X509Certificate<'_>, Reason> {
    match X509Certificate::from_der(der) {
        Ok((_, c)) => Ok(c),
        Err(x509_parser::nom::Err::Error(X509Error::InvalidDate))
        | Err(x509_parser::nom::Err::Failure(X509Error::InvalidDate)) => Err(Reason::BadValidity),
        Err(_) => Err(Reason::MalformedCertificate),
    }
}

/// Whether `der` is a certificate this module can read (the bundle's roots are checked
/// once when loaded).
pub fn parses(der: &CertificateDer<'_>) -> Result<(), Reason> {
    parse(der.as_ref()).map(|_| ())
}

/// RFC 5280 4.2: the critical extensions processed here. Name constraints are NOT
/// (X509-SVID 4.2: URI name constraints are rarely supported), so a critical one refuses.
fn known_critical(oid: &Oid<'_>) -> bool {
    [
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    ]
    .iter()
    .any(|k| k == oid)
}

/// A duplicate extension is malformed (RFC 5280 4.2); an unknown critical one refuses.
fn check_extensions(cert: &X509Certificate<'_>) -> Result<(), Reason> {
    let exts = cert.extensions();
    for (i, e) in exts.iter().enumerate() {
        if exts[..i].iter().any(|p| p.oid == e.oid) {
            return Err(Reason::MalformedCertificate);
        }
    }
    if exts.iter().any(|e| e.critical && !known_critical(&e.oid)) {
        return Err(Reason::UnknownCriticalExtension);
    }
    Ok(())
}

/// RFC 5280 4.1.2.5: (notBefore, notAfter); one that ends before it starts is malformed.
fn window(cert: &X509Certificate<'_>) -> Result<(i64, i64), Reason> {
    let v = cert.validity();
    let (nb, na) = (v.not_before.timestamp(), v.not_after.timestamp());
    if nb > na {
        return Err(Reason::BadValidity);
    }
    Ok((nb, na))
}

fn check_window(cert: &X509Certificate<'_>, now: i64) -> Result<(), Reason> {
    let (nb, na) = window(cert)?;
    if now < nb {
        return Err(Reason::NotYetValid);
    }
    if now > na {
        return Err(Reason::Expired);
    }
    Ok(())
}

fn basic_constraints(cert: &X509Certificate<'_>) -> Result<(bool, Option<u32>), Reason> {
    match cert.basic_constraints() {
        Ok(Some(bc)) => Ok((bc.value.ca, bc.value.path_len_constraint)),
        Ok(None) => Ok((false, None)),
        Err(_) => Err(Reason::MalformedCertificate),
    }
}

/// X509-SVID 3.2, 4.1, 4.3: a signing certificate is a CA with keyCertSign, its key
/// usage critical; anything else cannot vouch for what it signed. Returns its
/// pathLenConstraint. A trust anchor (the bundle's root ending the path) may carry its
/// key usage non-critical: RFC 5280 6.1.1 (d) takes an anchor's name and key as given,
/// and go-spiffe and ztunnel accept such roots (ztunnel's own test root is one).
fn check_signing(cert: &X509Certificate<'_>, anchor: bool) -> Result<Option<u32>, Reason> {
    check_extensions(cert)?;
    let (ca, path_len) = basic_constraints(cert)?;
    if !ca {
        return Err(Reason::Untrusted);
    }
    match cert.key_usage() {
        Ok(Some(ku)) if (ku.critical || anchor) && ku.value.key_cert_sign() => Ok(path_len),
        Ok(_) => Err(Reason::Untrusted),
        Err(_) => Err(Reason::MalformedCertificate),
    }
}

/// RFC 5280 6.1.3 (a)(1), (a)(4): the issuer's name and its signature.
fn issued_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn self_issued(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

/// A certificate on a candidate path: an index into the presented pool or the roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Pool(usize),
    Root(usize),
}

struct Paths<'c, 'a> {
    pool: &'c [X509Certificate<'a>],
    roots: &'c [X509Certificate<'a>],
    budget: usize,
    out: Vec<Vec<Link>>,
}

impl<'a> Paths<'_, 'a> {
    /// Every path from `cert` through the pool to a root (depth-first, bounded);
    /// `path` holds the pool certificates above the leaf so far.
    fn walk(&mut self, cert: &X509Certificate<'a>, path: &mut Vec<Link>) {
        if self.budget == 0 {
            return;
        }
        self.budget -= 1;
        for (i, r) in self.roots.iter().enumerate() {
            if issued_by(cert, r) {
                let mut p = path.clone();
                p.push(Link::Root(i));
                self.out.push(p);
            }
        }
        // validate.py counts the leaf in its path: stop past MAX_CHAIN certificates
        if path.len() + 1 > MAX_CHAIN {
            return;
        }
        let pool = self.pool;
        for (i, c) in pool.iter().enumerate() {
            if !path.contains(&Link::Pool(i)) && issued_by(cert, c) {
                path.push(Link::Pool(i));
                self.walk(c, path);
                path.pop();
            }
        }
    }

    fn cert(&self, l: Link) -> &X509Certificate<'a> {
        match l {
            Link::Pool(i) => &self.pool[i],
            Link::Root(i) => &self.roots[i],
        }
    }
}

/// Every certificate on the path (leaf, then `above`, root last) inside its window;
/// every certificate above the leaf a signing certificate whose pathLenConstraint
/// allows the non-self-issued intermediates below it (RFC 5280 4.2.1.9, 6.1.4 (l), (m)).
fn check_path(
    leaf: &X509Certificate<'_>,
    above: &[&X509Certificate<'_>],
    now: i64,
) -> Result<(), Reason> {
    check_window(leaf, now)?;
    for c in above {
        check_window(c, now)?;
    }
    check_extensions(leaf)?;
    let mut below: u32 = 0;
    for (i, c) in above.iter().enumerate() {
        if let Some(limit) = check_signing(c, i + 1 == above.len())? {
            if below > limit {
                return Err(Reason::Untrusted);
            }
        }
        if i + 1 < above.len() && !self_issued(c) {
            below += 1;
        }
    }
    Ok(())
}

/// Check `chain` (leaf first, DER, intermediates in any order) against the bundle's
/// `roots` (DER); on success the peer's SPIFFE ID. validate.py's `validate_der`.
pub fn verify(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    trust_domain: &str,
    now: UnixTime,
    expected: Option<&str>,
) -> Result<String, Reason> {
    let parsed = chain
        .iter()
        .map(|d| parse(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let anchors = roots
        .iter()
        .map(|d| parse(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((leaf, pool)) = parsed.split_first() else {
        return Err(Reason::NoCertificate);
    };
    if parsed.len() > MAX_CHAIN {
        return Err(Reason::Untrusted);
    }
    // the handshake's order (chain, then leaf rules), so one certificate gets one reason
    for c in &parsed {
        window(c)?;
    }
    let mut paths = Paths {
        pool,
        roots: &anchors,
        budget: PATH_BUDGET,
        out: Vec::new(),
    };
    paths.walk(leaf, &mut Vec::new());
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let mut first = None;
    for p in &paths.out {
        let above: Vec<&X509Certificate<'_>> = p.iter().map(|l| paths.cert(*l)).collect();
        match check_path(leaf, &above, now) {
            Ok(()) => return leaf_rules(leaf, trust_domain, expected),
            Err(r) => {
                first.get_or_insert(r);
            }
        }
    }
    Err(first.unwrap_or(Reason::Untrusted))
}

/// X509-SVID 2, 3.1, 4.1, 4.3, 4.4, 5.2 and the workload form, in validate.py's order.
fn leaf_rules(
    leaf: &X509Certificate<'_>,
    trust_domain: &str,
    expected: Option<&str>,
) -> Result<String, Reason> {
    check_extensions(leaf)?;
    let uris = uris_of(leaf)?;
    match uris.len() {
        0 => return Err(Reason::NoUriSan),
        1 => {}
        _ => return Err(Reason::MultipleUriSans),
    }
    if basic_constraints(leaf)?.0 {
        return Err(Reason::LeafIsCa);
    }
    let ku = match leaf.key_usage() {
        Ok(Some(ku)) if ku.critical => ku.value,
        Ok(_) => return Err(Reason::LeafKeyUsage),
        Err(_) => return Err(Reason::MalformedCertificate),
    };
    if !ku.digital_signature() || ku.key_cert_sign() || ku.crl_sign() {
        return Err(Reason::LeafKeyUsage);
    }
    match leaf.extended_key_usage() {
        Ok(Some(eku)) if !(eku.value.server_auth && eku.value.client_auth) => {
            return Err(Reason::LeafKeyUsage)
        }
        Ok(_) => {}
        Err(_) => return Err(Reason::MalformedCertificate),
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
