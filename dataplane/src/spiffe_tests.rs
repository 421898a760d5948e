//! The SPIFFE checks against chains minted here with rcgen: one test per reason.

use super::*;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::time::Duration;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

fn leaf(issuer: &Ca, uris: &[&str], is_ca: bool, years: (i32, i32)) -> CertificateDer<'static> {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    if is_ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = date_time_ymd(years.0, 1, 1);
    p.not_after = date_time_ymd(years.1, 1, 1);
    let key = KeyPair::generate().unwrap();
    let c = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    c.der().clone()
}

fn anchor(c: &Ca) -> CertificateDer<'static> {
    c.cert.der().clone()
}

fn at(year: u64) -> UnixTime {
    // roughly Jan 2nd of `year`, good enough for windows set on Jan 1st
    UnixTime::since_unix_epoch(Duration::from_secs((year - 1970) * 31_557_600 + 86_400))
}

const ID: &str = "spiffe://cluster.local/ns/a/sa/b";

fn check(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<String, Reason> {
    verify(chain, roots, "cluster.local", now, None)
}

#[test]
fn a_good_svid_gives_its_identity() {
    let root = ca("root");
    let l = leaf(&root, &[ID], false, (2021, 2035));
    assert_eq!(check(&[l], &[anchor(&root)], at(2026)), Ok(ID.to_string()));
}

#[test]
fn every_rejection_has_its_reason() {
    let root = ca("root");
    let other = ca("other");
    let roots = [anchor(&root)];
    let now = at(2026);
    let cases: Vec<(&str, Vec<CertificateDer<'static>>, Reason)> = vec![
        ("empty chain", vec![], Reason::NoCertificate),
        (
            "expired",
            vec![leaf(&root, &[ID], false, (2021, 2024))],
            Reason::Expired,
        ),
        (
            "not yet valid",
            vec![leaf(&root, &[ID], false, (2030, 2035))],
            Reason::NotYetValid,
        ),
        (
            "other root",
            vec![leaf(&other, &[ID], false, (2021, 2035))],
            Reason::Untrusted,
        ),
        (
            "no uri",
            vec![leaf(&root, &[], false, (2021, 2035))],
            Reason::NoUriSan,
        ),
        (
            "two uris",
            vec![leaf(
                &root,
                &[ID, "spiffe://cluster.local/ns/c/sa/d"],
                false,
                (2021, 2035),
            )],
            Reason::MultipleUriSans,
        ),
        (
            "leaf is ca",
            vec![leaf(&root, &[ID], true, (2021, 2035))],
            Reason::LeafIsCa,
        ),
        (
            "not spiffe",
            vec![leaf(
                &root,
                &["https://cluster.local/ns/a/sa/b"],
                false,
                (2021, 2035),
            )],
            Reason::BadSpiffeId,
        ),
        (
            "bad path",
            vec![leaf(
                &root,
                &["spiffe://cluster.local/ns/a"],
                false,
                (2021, 2035),
            )],
            Reason::BadSpiffeId,
        ),
        (
            "other domain",
            vec![leaf(
                &root,
                &["spiffe://evil.example/ns/a/sa/b"],
                false,
                (2021, 2035),
            )],
            Reason::TrustDomainMismatch,
        ),
    ];
    for (name, chain, want) in cases {
        assert_eq!(check(&chain, &roots, now), Err(want), "{name}");
    }
}

#[test]
fn the_server_must_be_the_expected_identity() {
    let root = ca("root");
    let l = leaf(&root, &[ID], false, (2021, 2035));
    let r = verify(
        std::slice::from_ref(&l),
        &[anchor(&root)],
        "cluster.local",
        at(2026),
        Some("spiffe://cluster.local/ns/a/sa/other"),
    );
    assert_eq!(r, Err(Reason::UnexpectedIdentity));
    let r = verify(&[l], &[anchor(&root)], "cluster.local", at(2026), Some(ID));
    assert_eq!(r, Ok(ID.to_string()));
}

#[test]
fn an_intermediate_in_the_chain_links_leaf_to_root() {
    let root = ca("root");
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "node");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2039, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &root.cert, &root.key).unwrap();
    let mid = Ca { cert, key };
    let l = leaf(&mid, &[ID], false, (2021, 2035));
    let chain = [l.clone(), mid.cert.der().clone()];
    assert_eq!(
        check(&chain, &[anchor(&root)], at(2026)),
        Ok(ID.to_string())
    );
    // without the intermediate the leaf does not reach the root
    assert_eq!(
        check(&[l], &[anchor(&root)], at(2026)),
        Err(Reason::Untrusted)
    );
}

#[test]
fn spiffe_ids_parse_strictly() {
    let good = [
        "spiffe://cluster.local/ns/a/sa/b",
        "spiffe://td-1_x.y/ns/A.b/sa/c-d",
    ];
    for g in good {
        assert!(trust_domain_of(g).is_some(), "{g}");
    }
    let bad = [
        "spiffe://Cluster.local/ns/a/sa/b",
        "spiffe:///ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b/c",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe://cluster.local/ns/../sa/b",
        "spiffe://cluster.local/ns/a%20/sa/b",
        "spiffe://cluster.local",
        "http://cluster.local/ns/a/sa/b",
    ];
    for b in bad {
        assert!(trust_domain_of(b).is_none(), "{b}");
    }
}

// ---- the rules validate.py has and the core gained (issue 16) ------------------------

/// A certificate minted from `p` (a fresh key) under `issuer`, or self-signed.
fn mint(p: CertificateParams, issuer: Option<&Ca>) -> Ca {
    let key = KeyPair::generate().unwrap();
    let cert = match issuer {
        Some(i) => p.signed_by(&key, &i.cert, &i.key).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    Ca { cert, key }
}

/// A signing certificate's parameters: CA, critical keyCertSign, valid 2020-2040.
fn ca_params(name: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, name);
    p.is_ca = IsCa::Ca(path_len.map_or(
        BasicConstraints::Unconstrained,
        BasicConstraints::Constrained,
    ));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    p
}

/// A good leaf's parameters: the ID, critical digitalSignature, both EKUs.
fn leaf_params() -> CertificateParams {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = date_time_ymd(2021, 1, 1);
    p.not_after = date_time_ymd(2035, 1, 1);
    p
}

fn der(c: &Ca) -> CertificateDer<'static> {
    c.cert.der().clone()
}

fn critical_private_extension() -> rcgen::CustomExtension {
    let mut e = rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
    e.set_criticality(true);
    e
}

/// A change to a good leaf's parameters.
type Tweak = dyn Fn(&mut CertificateParams);

#[test]
fn leaf_key_usage_and_eku_rules() {
    let root = ca("root");
    let roots = [anchor(&root)];
    let now = at(2026);
    let with = |f: &Tweak| {
        let mut p = leaf_params();
        f(&mut p);
        check(&[der(&mint(p, Some(&root)))], &roots, now)
    };
    use KeyUsagePurpose as K;
    let refused: [(&str, &Tweak); 5] = [
        ("keyCertSign", &|p| p.key_usages.push(K::KeyCertSign)),
        ("cRLSign", &|p| p.key_usages.push(K::CrlSign)),
        ("no digitalSignature", &|p| {
            p.key_usages = vec![K::KeyAgreement]
        }),
        ("no key usage", &|p| p.key_usages.clear()),
        ("EKU without clientAuth", &|p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
        }),
    ];
    for (name, f) in refused {
        assert_eq!(with(f), Err(Reason::LeafKeyUsage), "{name}");
    }
    let allowed: [(&str, &Tweak); 2] = [
        ("keyEncipherment and keyAgreement", &|p| {
            p.key_usages.extend([K::KeyEncipherment, K::KeyAgreement])
        }),
        ("no EKU", &|p| p.extended_key_usages.clear()),
    ];
    for (name, f) in allowed {
        assert_eq!(with(f), Ok(ID.to_string()), "{name}");
    }
}

#[test]
fn signing_certificates_are_cas_with_key_cert_sign_within_path_len() {
    let now = at(2026);
    let root = mint(ca_params("root", None), None);
    // an intermediate with cRLSign only cannot sign
    let mut p = ca_params("no cert sign", None);
    p.key_usages = vec![KeyUsagePurpose::CrlSign];
    let weak = mint(p, Some(&root));
    let l = der(&mint(leaf_params(), Some(&weak)));
    assert_eq!(
        check(&[l, der(&weak)], &[der(&root)], now),
        Err(Reason::Untrusted)
    );
    // the root's pathLenConstraint counts: 1 allows one intermediate, not two
    let short = mint(ca_params("short root", Some(1)), None);
    let s1 = mint(ca_params("s-1", None), Some(&short));
    let s2 = mint(ca_params("s-2", None), Some(&s1));
    let one = der(&mint(leaf_params(), Some(&s1)));
    assert_eq!(
        check(&[one, der(&s1)], &[der(&short)], now),
        Ok(ID.to_string())
    );
    let two = der(&mint(leaf_params(), Some(&s2)));
    assert_eq!(
        check(&[two, der(&s2), der(&s1)], &[der(&short)], now),
        Err(Reason::Untrusted)
    );
}

#[test]
fn only_the_path_used_must_be_valid() {
    let now = at(2026);
    let root = mint(ca_params("root", None), None);
    let d1 = mint(ca_params("deep-1", None), Some(&root));
    let mut old = ca_params("deep-1", None);
    old.not_after = date_time_ymd(2024, 1, 1);
    let old_d1 = mint(old, Some(&root));
    let d2 = mint(ca_params("deep-2", None), Some(&d1));
    let l = der(&mint(leaf_params(), Some(&d2)));
    // the expired deep-1 is presented first but the path goes through the valid one
    let chain = [l, der(&old_d1), der(&d2), der(&d1)];
    assert_eq!(check(&chain, &[der(&root)], now), Ok(ID.to_string()));
    // an expired root is on every path
    let mut p = ca_params("old root", None);
    p.not_after = date_time_ymd(2025, 1, 1);
    let old_root = mint(p, None);
    let under = mint(ca_params("under old root", None), Some(&old_root));
    let l = der(&mint(leaf_params(), Some(&under)));
    assert_eq!(
        check(&[l, der(&under)], &[der(&old_root)], now),
        Err(Reason::Expired)
    );
}

#[test]
fn unknown_critical_extensions_refuse_anywhere_on_the_path() {
    let now = at(2026);
    let root = ca("root");
    let mut p = leaf_params();
    p.custom_extensions.push(critical_private_extension());
    let l = der(&mint(p, Some(&root)));
    assert_eq!(
        check(&[l], &[anchor(&root)], now),
        Err(Reason::UnknownCriticalExtension)
    );
    let mut p = ca_params("crit", None);
    p.custom_extensions.push(critical_private_extension());
    let crit = mint(p, Some(&root));
    let l = der(&mint(leaf_params(), Some(&crit)));
    assert_eq!(
        check(&[l, der(&crit)], &[anchor(&root)], now),
        Err(Reason::UnknownCriticalExtension)
    );
    // not critical: ignored
    let mut p = leaf_params();
    let mut e = critical_private_extension();
    e.set_criticality(false);
    p.custom_extensions.push(e);
    let l = der(&mint(p, Some(&root)));
    assert_eq!(check(&[l], &[anchor(&root)], now), Ok(ID.to_string()));
}

#[test]
fn bounds_validity_and_order() {
    let now = at(2026);
    let root = ca("root");
    let roots = [anchor(&root)];
    let l = leaf(&root, &[ID], false, (2021, 2035));
    // more than MAX_CHAIN certificates: refused before any signature is checked
    let long = vec![l.clone(); MAX_CHAIN + 1];
    assert_eq!(check(&long, &roots, now), Err(Reason::Untrusted));
    // a window that ends before it starts is malformed, not expired
    let mut p = leaf_params();
    p.not_before = date_time_ymd(2030, 1, 1);
    p.not_after = date_time_ymd(2029, 1, 1);
    let inverted = der(&mint(p, Some(&root)));
    assert_eq!(check(&[inverted], &roots, now), Err(Reason::BadValidity));
    // bytes that are not a certificate
    let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert_eq!(
        check(&[junk], &roots, now),
        Err(Reason::MalformedCertificate)
    );
    // a bad leaf of an untrusted chain: the chain's reason first
    let mut p = leaf_params();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    let bad = der(&mint(p, Some(&ca("other"))));
    assert_eq!(check(&[bad], &roots, now), Err(Reason::Untrusted));
}

#[test]
fn spiffe_ids_longer_than_the_bound_are_refused() {
    let long = format!(
        "spiffe://cluster.local/ns/{}/sa/b",
        "a".repeat(MAX_ID_BYTES)
    );
    assert!(trust_domain_of(&long).is_none());
}

mod fuzz {
    use super::super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        // garbage DER never panics and never verifies
        #[test]
        fn garbage_chains_are_rejected(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..4)) {
            let chain: Vec<CertificateDer<'static>> = blobs.into_iter().map(CertificateDer::from).collect();
            let r = verify(&chain, &[], "cluster.local", UnixTime::now(), None);
            prop_assert!(r.is_err());
        }

        #[test]
        fn spiffe_parser_never_panics(s in "\\PC{0,80}") {
            let _ = trust_domain_of(&s);
        }
    }
}
