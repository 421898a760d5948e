use super::*;

#[test]
fn addresses_split_as_grpc_targets_read() {
    assert_eq!(split_address("10.0.0.5:15012"), Ok(("10.0.0.5", 15012)));
    assert_eq!(split_address("[::1]:15012"), Ok(("::1", 15012)));
    assert_eq!(
        split_address("istiod.istio-system.svc:15012"),
        Ok(("istiod.istio-system.svc", 15012))
    );
    for bad in [
        "10.0.0.5",
        ":15012",
        "[::1:15012",
        "host:http",
        "host:70000",
    ] {
        assert!(split_address(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_message_is_one_length_prefixed_frame() {
    let f = frame(b"abc");
    assert_eq!(&f[..], b"\x00\x00\x00\x00\x03abc");
    assert_eq!(unframe(&f), Ok(&b"abc"[..]));
    assert_eq!(unframe(b"").unwrap_err().code, INTERNAL);
    assert_eq!(
        unframe(b"\x01\x00\x00\x00\x01x").unwrap_err().code,
        INTERNAL
    );
    let short = unframe(b"\x00\x00\x00\x00\x05ab").unwrap_err();
    assert_eq!(short.message, "response frame of 5 bytes in a body of 7");
    assert_eq!(unframe(b"\x00\x00\x00\x00\x00"), Ok(&b""[..]));
}

#[test]
fn grpc_status_and_message_are_read_from_headers() {
    let mut h = HeaderMap::new();
    assert_eq!(grpc_status(&h), None);
    h.insert("grpc-status", HeaderValue::from_static("0"));
    assert_eq!(grpc_status(&h), Some(Ok(())));
    h.insert("grpc-status", HeaderValue::from_static("7"));
    h.insert(
        "grpc-message",
        HeaderValue::from_static("identity_not_on_node: spiffe://td/ns/a/sa/b %E2%9C%93 100%"),
    );
    assert_eq!(
        grpc_status(&h),
        Some(Err(Status {
            code: PERMISSION_DENIED,
            message: "identity_not_on_node: spiffe://td/ns/a/sa/b \u{2713} 100%".into()
        }))
    );
    h.insert("grpc-status", HeaderValue::from_static("x"));
    assert_eq!(grpc_status(&h).unwrap().unwrap_err().code, UNKNOWN);
}

#[test]
fn http_statuses_without_grpc_status_map_as_grpc_documents() {
    for (http, code) in [
        (400, INTERNAL),
        (401, UNAUTHENTICATED),
        (403, PERMISSION_DENIED),
        (404, UNIMPLEMENTED),
        (429, UNAVAILABLE),
        (502, UNAVAILABLE),
        (503, UNAVAILABLE),
        (504, UNAVAILABLE),
        (500, UNKNOWN),
    ] {
        assert_eq!(
            http_status(StatusCode::from_u16(http).unwrap()).code,
            code,
            "{http}"
        );
    }
}

fn call<'a>(address: &'a str, roots: &'a [u8], timeout: Duration) -> Call<'a> {
    Call {
        address,
        server_name: None,
        roots_pem: roots,
        cert_pem: None,
        key_pem: None,
        path: "/istio.v1.auth.IstioCertificateService/CreateCertificate",
        metadata: &[],
        message: b"",
        timeout,
    }
}

fn root() -> String {
    rcgen::generate_simple_self_signed(vec!["ca.test".into()])
        .unwrap()
        .cert
        .pem()
}

#[test]
fn a_closed_port_is_unavailable_with_the_address() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let roots = root();
    let s = call_blocking(&call(&addr, roots.as_bytes(), Duration::from_secs(5))).unwrap_err();
    assert_eq!(s.code, UNAVAILABLE);
    assert!(
        s.message.starts_with(&format!("connect {addr}: ")),
        "{}",
        s.message
    );
}

#[test]
fn a_silent_server_is_deadline_exceeded_and_a_bad_root_invalid() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let roots = root();
    let s = call_blocking(&call(&addr, roots.as_bytes(), Duration::from_millis(200))).unwrap_err();
    assert_eq!(s.code, DEADLINE_EXCEEDED);
    assert!(
        s.message
            .starts_with(&format!("no answer from {addr} within")),
        "{}",
        s.message
    );
    let s = call_blocking(&call(&addr, b"not pem", Duration::from_millis(200))).unwrap_err();
    assert_eq!(s.code, INVALID_ARGUMENT);
    assert!(s.message.starts_with("CA root: "), "{}", s.message);
}
