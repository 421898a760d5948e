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
