//! decisions.rs: keys, generations, the bound, the per-connection headers of a stored tunnel.
use super::*;

fn ev(peer: &str, identity: &str, target: &str) -> Event {
    Event::Conn {
        id: 7,
        kind: Kind::Tunnel,
        src: peer.parse().unwrap(),
        dst: "10.0.0.2:15008".parse().unwrap(),
        tunnel: Some(TunnelInfo {
            peer_identity: identity.into(),
            target: target.parse().unwrap(),
            forwarded_for: Some(peer.parse().unwrap()),
            traceparent: Some("00-aa-bb-01".into()),
            protocol: "hbone",
            baggage: None,
        }),
    }
}

fn answer(g: u64) -> Answer {
    Answer {
        entry: 3,
        generation: g,
        reply: Reply::Connect {
            upstream: "10.0.0.2:8080".parse().unwrap(),
            bind: Some("10.1.0.2".parse().unwrap()),
        },
    }
}

fn entry(a: Option<Answer>) -> Option<(u64, u64)> {
    a.map(|a| (a.entry, a.generation))
}

const ID: &str = "spiffe://cluster.local/ns/default/sa/a";

#[test]
fn a_repeat_flow_is_answered_whatever_its_ports_and_trace() {
    let c = Cache::default();
    c.set_generation(1);
    let k = FlowKey::of(&ev("10.1.0.2:40000", ID, "10.0.0.2:8080")).unwrap();
    assert_eq!(c.put(k, answer(1)), Stored::Yes);
    let again = FlowKey::of(&ev("10.1.0.2:40001", ID, "10.0.0.2:8080")).unwrap();
    assert_eq!(entry(c.get(&again)), Some((3, 1)));
}

#[test]
fn another_identity_address_or_target_is_not_the_same_flow() {
    let c = Cache::default();
    c.set_generation(1);
    c.put(
        FlowKey::of(&ev("10.1.0.2:1", ID, "10.0.0.2:8080")).unwrap(),
        answer(1),
    );
    for e in [
        ev(
            "10.1.0.2:1",
            "spiffe://cluster.local/ns/default/sa/b",
            "10.0.0.2:8080",
        ),
        ev("10.1.0.3:1", ID, "10.0.0.2:8080"),
        ev("10.1.0.2:1", ID, "10.0.0.2:8081"),
    ] {
        assert!(c.get(&FlowKey::of(&e).unwrap()).is_none());
    }
}

#[test]
fn a_generation_bump_invalidates_every_answer() {
    let c = Cache::default();
    c.set_generation(1);
    let k = FlowKey::of(&ev("10.1.0.2:1", ID, "10.0.0.2:8080")).unwrap();
    c.put(k.clone(), answer(1));
    c.set_generation(2);
    assert!(c.get(&k).is_none());
    assert_eq!(c.len(), 0);
}

#[test]
fn an_answer_decided_under_an_older_generation_is_never_stored() {
    let c = Cache::default();
    c.set_generation(5);
    let k = FlowKey::of(&ev("10.1.0.2:1", ID, "10.0.0.2:8080")).unwrap();
    assert_eq!(c.put(k.clone(), answer(4)), Stored::Stale);
    assert!(c.get(&k).is_none());
}

fn captured(kind: Kind, port: u16) -> Event {
    Event::Conn {
        id: 1,
        kind,
        src: format!("10.1.0.2:{port}").parse().unwrap(),
        dst: "10.0.0.2:80".parse().unwrap(),
        tunnel: None,
    }
}

#[test]
fn captured_connections_are_keyed_by_addresses_plaintext_never() {
    let a = FlowKey::of(&captured(Kind::Outbound, 1)).unwrap();
    assert_eq!(Some(a), FlowKey::of(&captured(Kind::Outbound, 2)));
    assert_eq!(FlowKey::of(&captured(Kind::Plaintext, 1)), None);
}

fn plan(headers: &[(&str, &str)]) -> Command {
    Command::Tunnel(TunnelPlan {
        hbone: true,
        bind: Some("10.1.0.2".parse().unwrap()),
        peer: "10.0.0.2:15008".parse().unwrap(),
        source_identity: ID.into(),
        expected_identity: "spiffe://cluster.local/ns/default/sa/b".into(),
        sni: "b.default".into(),
        authority: "10.0.0.2:80".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

#[test]
fn a_stored_tunnel_sends_each_connection_its_own_forwarded_and_trace() {
    let first = plan(&[
        ("forwarded", "for=\"10.1.0.2:1\""),
        ("traceparent", "00-1-2-01"),
        ("baggage", "k8s.namespace.name=default"),
    ]);
    let r = Reply::of(&first).unwrap();
    let (cmd, tp) = r.command("10.1.0.2:40000".parse().unwrap(), [0xab; 24]);
    let Command::Tunnel(p) = cmd else {
        panic!("not a tunnel")
    };
    let tp = tp.unwrap();
    assert_eq!(tp, format!("00-{}-{}-01", "ab".repeat(16), "ab".repeat(8)));
    let hs: Vec<(&str, &str)> = p.headers.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(
        hs,
        [
            ("forwarded", "for=\"10.1.0.2:40000\""),
            ("traceparent", tp.as_str()),
            ("baggage", "k8s.namespace.name=default")
        ]
    );
    assert_eq!((p.authority.as_str(), p.hbone), ("10.0.0.2:80", true));
    let (_, v6) = r.command("[fd00::2]:7".parse().unwrap(), [1; 24]);
    assert!(v6.is_some());
    let (Command::Tunnel(p6), _) = r.command("[fd00::2]:7".parse().unwrap(), [1; 24]) else {
        panic!("not a tunnel")
    };
    assert_eq!(p6.headers[0].1, "for=\"[fd00::2]:7\"");
}

#[test]
fn a_traceparent_never_has_an_all_zero_id() {
    assert_eq!(
        traceparent([0; 24]),
        format!("00-{}01-{}01-01", "0".repeat(30), "0".repeat(14))
    );
}

#[test]
fn a_traceparent_is_its_bytes_in_lowercase_hex() {
    let mut r = [0u8; 24];
    r[..16].copy_from_slice(&[
        0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31,
        0x9c,
    ]);
    r[16..].copy_from_slice(&[0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
    assert_eq!(
        traceparent(r),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
}

#[test]
fn the_table_is_bounded() {
    let c = Cache::default();
    c.set_generation(1);
    for i in 0..MAX_CACHED_DECISIONS as u32 + 1 {
        let ip = std::net::Ipv4Addr::from(0x0a01_0000 + i);
        let k = FlowKey::of(&ev(&format!("{ip}:1"), ID, "10.0.0.2:8080")).unwrap();
        let s = c.put(k, answer(1));
        assert_eq!(
            s,
            if i as usize == MAX_CACHED_DECISIONS {
                Stored::Evicted
            } else {
                Stored::Yes
            }
        );
    }
    assert_eq!(c.len(), 1);
}
