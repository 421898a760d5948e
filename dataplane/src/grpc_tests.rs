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

/// The call fails with `code` and a message starting with `prefix`.
fn fails_with(c: &Call<'_>, code: u32, prefix: &str) {
    let s = call_blocking(c).unwrap_err();
    assert_eq!(s.code, code, "{}", s.message);
    assert!(s.message.starts_with(prefix), "{}", s.message);
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
    let c = call(&addr, roots.as_bytes(), Duration::from_secs(5));
    fails_with(&c, UNAVAILABLE, &format!("connect {addr}: "));
}

#[test]
fn a_silent_server_is_deadline_exceeded_and_a_bad_root_invalid() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let roots = root();
    let c = call(&addr, roots.as_bytes(), Duration::from_millis(200));
    fails_with(
        &c,
        DEADLINE_EXCEEDED,
        &format!("no answer from {addr} within"),
    );
    let c = call(&addr, b"not pem", Duration::from_millis(200));
    fails_with(&c, INVALID_ARGUMENT, "CA root: ");
}

/// What a test server answers: headers (with grpc-status for a trailers-only answer),
/// then the body and the trailers of a full answer.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    TrailersOnly,
    Http503,
}

/// A TLS + h2 server on loopback for one call: it records the request's headers and
/// body, then answers as told. Returns (address, root PEM, the recorded request).
fn server(
    answer: Answer,
) -> (
    String,
    String,
    std::sync::mpsc::Receiver<(http::HeaderMap, Vec<u8>)>,
) {
    let ck = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
    let root = ck.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(tls::crypto())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            l.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            let (tcp, _) = l.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
                .accept(tcp)
                .await
                .unwrap();
            let mut conn = h2::server::handshake(tls).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let (parts, mut body) = req.into_parts();
            let mut got = Vec::new();
            while let Some(c) = body.data().await {
                let c = c.unwrap();
                let _ = body.flow_control().release_capacity(c.len());
                got.extend_from_slice(&c);
            }
            tx.send((parts.headers, got)).unwrap();
            let grpc = || http::Response::builder().header("content-type", "application/grpc");
            match answer {
                Answer::Ok => {
                    let mut s = respond
                        .send_response(grpc().body(()).unwrap(), false)
                        .unwrap();
                    s.send_data(frame(b"chain"), false).unwrap();
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", HeaderValue::from_static("0"));
                    s.send_trailers(t).unwrap();
                }
                Answer::TrailersOnly => {
                    let r = grpc()
                        .header("grpc-status", "16")
                        .header("grpc-message", "token_invalid: audience%20istio-ca")
                        .body(())
                        .unwrap();
                    respond.send_response(r, true).unwrap();
                }
                Answer::Http503 => {
                    let r = http::Response::builder().status(503).body(()).unwrap();
                    respond.send_response(r, true).unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
    });
    (addr, root, rx)
}

#[test]
fn a_call_sends_grpcs_headers_and_the_framed_message_and_reads_the_answer() {
    let (addr, root, rx) = server(Answer::Ok);
    let md = vec![
        ("authorization".to_string(), "Bearer tok".to_string()),
        ("clusterid".to_string(), "Kubernetes".to_string()),
    ];
    let c = Call {
        server_name: Some("ca.test"),
        metadata: &md,
        message: b"csr",
        ..call(&addr, root.as_bytes(), Duration::from_secs(5))
    };
    assert_eq!(call_blocking(&c), Ok(b"chain".to_vec()));
    let (h, body) = rx.recv().unwrap();
    assert_eq!(body, b"\x00\x00\x00\x00\x03csr");
    for (k, v) in [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "5000m"),
        ("authorization", "Bearer tok"),
        ("clusterid", "Kubernetes"),
    ] {
        assert_eq!(h.get(k).and_then(|v| v.to_str().ok()), Some(v), "{k}");
    }
}

/// One call with no metadata to a test server answering `answer`, as `name`.
fn answered(answer: Answer, name: &str) -> (String, Result<Vec<u8>, Status>) {
    let (addr, root, _rx) = server(answer);
    let c = Call {
        server_name: Some(name),
        ..call(&addr, root.as_bytes(), Duration::from_secs(5))
    };
    let r = call_blocking(&c);
    (addr, r)
}

#[test]
fn a_trailers_only_refusal_and_a_bare_http_status_are_grpc_statuses() {
    let refused = Status {
        code: UNAUTHENTICATED,
        message: "token_invalid: audience istio-ca".into(),
    };
    assert_eq!(answered(Answer::TrailersOnly, "ca.test").1, Err(refused));
    let (_, r) = answered(Answer::Http503, "ca.test");
    assert_eq!(r.unwrap_err().code, UNAVAILABLE);
}

#[test]
fn a_server_certificate_for_another_name_fails_the_handshake() {
    let (addr, r) = answered(Answer::Ok, "other.test");
    let s = r.unwrap_err();
    assert_eq!(s.code, UNAVAILABLE);
    let prefix = format!("TLS handshake with {addr}: ");
    assert!(s.message.starts_with(&prefix), "{}", s.message);
}
