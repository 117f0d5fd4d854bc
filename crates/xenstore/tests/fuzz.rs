//! Property-based fuzzing of the frame decoder and the request handler, plus a replayed corpus
//! of hostile frames. Runs as ordinary `cargo test` (deterministic case counts).

use std::collections::BTreeMap;

use proptest::prelude::*;
use rxen_xenstore::core::{Core, Outbox, Who};
use rxen_xenstore::wire::{self, split_strings, Errno, Header, Message, MsgType, PAYLOAD_MAX};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any byte string: decode never panics, and what it decodes re-encodes to the same bytes.
    #[test]
    fn decoder_total(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        match wire::decode(&bytes) {
            Ok(Some((m, n))) => {
                prop_assert!(n <= bytes.len());
                prop_assert_eq!(m.encode(), bytes[..n].to_vec());
            }
            Ok(None) => {
                let incomplete = bytes.len() < 16 || {
                    let h = Header::decode(bytes[..16].try_into().unwrap());
                    (h.len as usize) + 16 > bytes.len()
                };
                prop_assert!(incomplete);
            }
            Err(_) => {
                let h = Header::decode(bytes[..16].try_into().unwrap());
                prop_assert!(h.len as usize > PAYLOAD_MAX);
            }
        }
    }

    /// A stream of valid frames split at arbitrary points decodes to the same frames.
    #[test]
    fn decoder_streaming(
        frames in proptest::collection::vec((0u32..30, any::<u32>(), 0u32..4,
            proptest::collection::vec(any::<u8>(), 0..200)), 1..8),
        cut in 0usize..2000,
    ) {
        let msgs: Vec<Message> = frames.into_iter()
            .map(|(ty, req_id, tx_id, payload)| Message { ty, req_id, tx_id, payload })
            .collect();
        let mut stream = Vec::new();
        for m in &msgs { m.encode_into(&mut stream); }
        let cut = cut % (stream.len() + 1);
        let mut buf = stream[..cut].to_vec();
        let mut got = Vec::new();
        let mut rest = &stream[cut..];
        loop {
            while let Some((m, n)) = wire::decode(&buf).unwrap() {
                got.push(m);
                buf.drain(..n);
            }
            if rest.is_empty() { break; }
            let k = rest.len().min(7);
            buf.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
        }
        prop_assert_eq!(got, msgs);
    }
}

fn path_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4)
            .prop_map(|v| format!("/m/{}", v.join("/"))),
        Just("/".to_string()),
        Just("rel/x".to_string()),
        Just("@introduceDomain".to_string()),
        Just("/bad//path".to_string()),
        Just("/trailing/".to_string()),
        "[a-z/@_ -]{0,12}",
    ]
}

fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        path_strategy().prop_map(|p| wire::join_strings(&[p])),
        (path_strategy(), "[a-z0-9]{0,8}").prop_map(|(p, v)| {
            let mut b = p.into_bytes();
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b
        }),
        (
            path_strategy(),
            prop_oneof![
                Just("n0"),
                Just("r1"),
                Just("b2"),
                Just("x"),
                Just("w99999")
            ]
        )
            .prop_map(|(p, q)| wire::join_strings(&[p.as_str(), q, "r0"])),
        proptest::collection::vec(
            prop_oneof![
                Just("1"),
                Just("0"),
                Just("T"),
                Just("F"),
                Just("check"),
                Just("quota"),
                Just("")
            ],
            0..4
        )
        .prop_map(|v| wire::join_strings(&v)),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(config(300))]

    /// Random requests from a privileged and an unprivileged connection: no panic, exactly one
    /// reply per request echoing req_id/tx_id, and the tree stays consistent.
    #[test]
    fn handler_never_breaks(reqs in proptest::collection::vec(
        (0u64..3, 0u32..27, 0u32..4, payload_strategy()), 1..60)) {
        let mut core = Core::new();
        core.connect(0, Who::DOM0);
        core.connect(1, Who::DOM0);
        let mut out = Outbox::default();
        core.handle(0, &Message::new(MsgType::Introduce, 0, 0, wire::join_strings(&["1", "0", "1"])), &mut out);
        core.connect(2, Who::guest(1));
        for (i, (conn, ty, tx, payload)) in reqs.into_iter().enumerate() {
            let mut out = Outbox::default();
            let msg = Message { ty, req_id: i as u32, tx_id: tx, payload };
            core.handle(conn, &msg, &mut out);
            if core.who(conn).is_none() {
                continue; // closed by a release
            }
            let replies: Vec<_> = out.msgs.iter()
                .filter(|(to, m)| *to == conn && m.ty != MsgType::WatchEvent as u32)
                .collect();
            prop_assert_eq!(replies.len(), 1);
            prop_assert_eq!(replies[0].1.req_id, i as u32);
            prop_assert_eq!(replies[0].1.tx_id, tx);
            for (_, m) in &out.msgs {
                prop_assert!(m.payload.len() <= PAYLOAD_MAX);
            }
            if let Err(e) = core.store().check() {
                prop_assert!(false, "inconsistent after {:?}: {}", msg, e);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write(String, String),
    Mkdir(String),
    Rm(String),
    Read(String),
    Ls(String),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4)
        .prop_map(|v| format!("/m/{}", v.join("/")));
    prop_oneof![
        (p.clone(), "[a-z]{0,4}").prop_map(|(p, v)| Op::Write(p, v)),
        p.clone().prop_map(Op::Mkdir),
        p.clone().prop_map(Op::Rm),
        p.clone().prop_map(Op::Read),
        p.prop_map(Op::Ls),
    ]
}

/// The simple model: path -> value, parents implicit.
#[derive(Default, Clone)]
struct Model(BTreeMap<String, String>);

impl Model {
    fn create(&mut self, path: &str) {
        let mut cur = String::new();
        for comp in path.trim_start_matches('/').split('/') {
            cur.push('/');
            cur.push_str(comp);
            self.0.entry(cur.clone()).or_default();
        }
    }
    fn parent(p: &str) -> String {
        let i = p.rfind('/').unwrap();
        if i == 0 {
            "/".into()
        } else {
            p[..i].into()
        }
    }
    fn exists(&self, p: &str) -> bool {
        p == "/" || self.0.contains_key(p)
    }
    fn apply(&mut self, op: &Op) -> Result<Vec<u8>, Errno> {
        match op {
            Op::Write(p, v) => {
                self.create(p);
                self.0.insert(p.clone(), v.clone());
                Ok(b"OK\0".to_vec())
            }
            Op::Mkdir(p) => {
                self.create(p);
                Ok(b"OK\0".to_vec())
            }
            Op::Rm(p) => {
                if !self.exists(p) {
                    return if self.exists(&Model::parent(p)) {
                        Ok(b"OK\0".to_vec())
                    } else {
                        Err(Errno::ENOENT)
                    };
                }
                let pre = format!("{p}/");
                self.0.retain(|k, _| k != p && !k.starts_with(&pre));
                Ok(b"OK\0".to_vec())
            }
            Op::Read(p) => self
                .0
                .get(p)
                .map(|v| v.clone().into_bytes())
                .ok_or(Errno::ENOENT),
            Op::Ls(p) => {
                if !self.exists(p) {
                    return Err(Errno::ENOENT);
                }
                let pre = format!("{p}/");
                let mut kids: Vec<String> = self
                    .0
                    .keys()
                    .filter_map(|k| k.strip_prefix(&pre))
                    .filter(|r| !r.contains('/'))
                    .map(String::from)
                    .collect();
                kids.sort();
                Ok(wire::join_strings(&kids))
            }
        }
    }
}

fn to_msg(op: &Op, tx: u32) -> Message {
    match op {
        Op::Write(p, v) => {
            let mut b = p.clone().into_bytes();
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            Message::new(MsgType::Write, 1, tx, b)
        }
        Op::Mkdir(p) => Message::new(MsgType::Mkdir, 1, tx, wire::join_strings(&[p])),
        Op::Rm(p) => Message::new(MsgType::Rm, 1, tx, wire::join_strings(&[p])),
        Op::Read(p) => Message::new(MsgType::Read, 1, tx, wire::join_strings(&[p])),
        Op::Ls(p) => Message::new(MsgType::Directory, 1, tx, wire::join_strings(&[p])),
    }
}

fn reply(core: &mut Core, conn: u64, m: &Message) -> Result<Vec<u8>, Errno> {
    let mut out = Outbox::default();
    core.handle(conn, m, &mut out);
    let r = &out
        .msgs
        .iter()
        .find(|(to, m)| *to == conn && m.ty != MsgType::WatchEvent as u32)
        .unwrap()
        .1;
    if r.ty == MsgType::Error as u32 {
        Err(Errno::from_name(split_strings(&r.payload).unwrap()[0]))
    } else {
        Ok(r.payload.clone())
    }
}

fn normalise(op: &Op, r: Result<Vec<u8>, Errno>) -> Result<Vec<u8>, Errno> {
    match (op, r) {
        (Op::Ls(_), Ok(v)) => {
            let mut k: Vec<&str> = split_strings(&v).unwrap();
            k.sort();
            Ok(wire::join_strings(&k))
        }
        (_, r) => r,
    }
}

proptest! {
    #![proptest_config(config(400))]

    /// Random operation sequences agree with the model, directly and inside a transaction
    /// (which must be invisible until committed, then equal to the model).
    #[test]
    fn handler_matches_model(ops in proptest::collection::vec(op_strategy(), 1..50),
                             split in 0usize..50, abort in any::<bool>()) {
        let mut core = Core::new();
        core.connect(1, Who::DOM0);
        core.connect(2, Who::DOM0);
        let mut model = Model::default();
        let split = split.min(ops.len());
        for op in &ops[..split] {
            let want = model.apply(op);
            let got = normalise(op, reply(&mut core, 1, &to_msg(op, 0)));
            prop_assert_eq!(got, want, "op {:?}", op);
        }
        // The rest in a transaction.
        let before = model.clone();
        let tx: u32 = {
            let v = reply(&mut core, 1, &Message::new(MsgType::TransactionStart, 1, 0, b"\0".to_vec())).unwrap();
            split_strings(&v).unwrap()[0].parse().unwrap()
        };
        for op in &ops[split..] {
            let want = model.apply(op);
            let got = normalise(op, reply(&mut core, 1, &to_msg(op, tx)));
            prop_assert_eq!(got, want, "tx op {:?}", op);
        }
        // Isolation: the other connection still sees the old state.
        for (p, v) in &before.0 {
            prop_assert_eq!(reply(&mut core, 2, &to_msg(&Op::Read(p.clone()), 0)).unwrap(), v.clone().into_bytes());
        }
        let end = if abort { b"F\0".to_vec() } else { b"T\0".to_vec() };
        reply(&mut core, 1, &Message::new(MsgType::TransactionEnd, 1, tx, end)).unwrap();
        let expect = if abort { before } else { model };
        // Whole tree under /m equals the model.
        let mut seen = BTreeMap::new();
        core.store().walk("/m", &mut |p, n| { seen.insert(p.to_string(), String::from_utf8(n.value.clone()).unwrap()); });
        seen.remove("/m");
        let mut exp = expect.0.clone();
        exp.remove("/m");
        prop_assert_eq!(seen, exp);
        core.store().check().unwrap();
    }
}

/// Hand-picked hostile frames, replayed on every run.
#[test]
fn corpus_replay() {
    let mut corpus: Vec<Vec<u8>> = vec![
        Header {
            ty: 2,
            req_id: 0,
            tx_id: 0,
            len: 4097,
        }
        .encode()
        .to_vec(),
        Header {
            ty: 2,
            req_id: 0,
            tx_id: 0,
            len: u32::MAX,
        }
        .encode()
        .to_vec(),
        Message {
            ty: 21,
            req_id: 1,
            tx_id: 0,
            payload: vec![],
        }
        .encode(),
        Message {
            ty: 65535,
            req_id: 1,
            tx_id: 0,
            payload: vec![0],
        }
        .encode(),
        Message {
            ty: 7,
            req_id: 1,
            tx_id: 99,
            payload: b"T\0".to_vec(),
        }
        .encode(),
        Message {
            ty: 14,
            req_id: 1,
            tx_id: 0,
            payload: b"/\0".to_vec(),
        }
        .encode(),
        Message {
            ty: 14,
            req_id: 1,
            tx_id: 0,
            payload: b"/\0\0".to_vec(),
        }
        .encode(),
        Message {
            ty: 11,
            req_id: 1,
            tx_id: 0,
            payload: b"/\xff\xfe\0v".to_vec(),
        }
        .encode(),
        Message {
            ty: 22,
            req_id: 1,
            tx_id: 0,
            payload: b"/\0-5\0".to_vec(),
        }
        .encode(),
        Message {
            ty: 0,
            req_id: 1,
            tx_id: 0,
            payload: b"quota\0set\0nodes\0-1\0".to_vec(),
        }
        .encode(),
        Message {
            ty: 8,
            req_id: 1,
            tx_id: 0,
            payload: b"99999999999999\0x\0-1\0".to_vec(),
        }
        .encode(),
        Message {
            ty: 4,
            req_id: 1,
            tx_id: 0,
            payload: b"@\0\0".to_vec(),
        }
        .encode(),
        Message {
            ty: 13,
            req_id: 1,
            tx_id: 0,
            payload: b"/\0".to_vec(),
        }
        .encode(),
    ];
    corpus.push(
        Message {
            ty: 11,
            req_id: 1,
            tx_id: 0,
            payload: {
                let mut p = format!("/{}", "a".repeat(3100)).into_bytes();
                p.push(0);
                p
            },
        }
        .encode(),
    );
    let mut core = Core::new();
    core.connect(1, Who::DOM0);
    for frame in &corpus {
        match wire::decode(frame) {
            Ok(Some((m, _))) => {
                let mut out = Outbox::default();
                core.handle(1, &m, &mut out);
                assert_eq!(
                    out.msgs
                        .iter()
                        .filter(|(_, m)| m.ty != MsgType::WatchEvent as u32)
                        .count(),
                    1
                );
            }
            Ok(None) => {}
            Err(e) => assert!(e.to_string().contains("exceeds")),
        }
    }
    core.store().check().unwrap();
    assert!(core.store().get("/").is_some());
}
