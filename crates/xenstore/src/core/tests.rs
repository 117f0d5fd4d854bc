use super::*;

struct H {
    core: Core,
    events: Vec<(ConnId, String, String)>,
    closed: Vec<ConnId>,
}

impl H {
    fn new() -> H {
        let mut core = Core::new();
        core.connect(1, Who::DOM0);
        core.connect(2, Who::DOM0);
        H {
            core,
            events: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn raw(&mut self, c: ConnId, ty: MsgType, tx: u32, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let mut out = Outbox::default();
        let msg = Message::new(ty, 42, tx, payload.to_vec());
        self.core.handle(c, &msg, &mut out);
        let mut reply = None;
        for (to, m) in out.msgs {
            if m.ty == MsgType::WatchEvent as u32 {
                let s = split_strings(&m.payload).unwrap();
                self.events.push((to, s[0].to_string(), s[1].to_string()));
            } else {
                assert_eq!(to, c);
                assert_eq!(m.req_id, 42);
                assert!(reply.is_none());
                reply = Some(if m.ty == MsgType::Error as u32 {
                    Err(Errno::from_name(split_strings(&m.payload).unwrap()[0]))
                } else {
                    assert_eq!(m.ty, ty as u32);
                    Ok(m.payload)
                });
            }
        }
        self.closed.extend(out.close);
        reply.expect("one reply")
    }

    fn s(&mut self, c: ConnId, ty: MsgType, tx: u32, args: &[&str]) -> Result<Vec<u8>, Errno> {
        self.raw(c, ty, tx, &join_strings(args))
    }

    fn write(&mut self, c: ConnId, tx: u32, path: &str, v: &str) -> Result<(), Errno> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        self.raw(c, MsgType::Write, tx, &p).map(|_| ())
    }

    fn read(&mut self, c: ConnId, tx: u32, path: &str) -> Result<String, Errno> {
        self.s(c, MsgType::Read, tx, &[path])
            .map(|v| String::from_utf8(v).unwrap())
    }

    fn ls(&mut self, c: ConnId, path: &str) -> Result<Vec<String>, Errno> {
        self.s(c, MsgType::Directory, 0, &[path]).map(|v| {
            split_strings(&v)
                .unwrap()
                .into_iter()
                .map(String::from)
                .collect()
        })
    }

    fn tx_start(&mut self, c: ConnId) -> u32 {
        let v = self.s(c, MsgType::TransactionStart, 0, &[""]).unwrap();
        split_strings(&v).unwrap()[0].parse().unwrap()
    }

    fn tx_end(&mut self, c: ConnId, tx: u32, commit: bool) -> Result<Vec<u8>, Errno> {
        self.s(
            c,
            MsgType::TransactionEnd,
            tx,
            &[if commit { "T" } else { "F" }],
        )
    }

    fn introduce(&mut self, d: u32) {
        self.s(1, MsgType::Introduce, 0, &[&d.to_string(), "0", "1"])
            .unwrap();
    }

    fn guest(&mut self, conn: ConnId, d: u32) {
        self.core.connect(conn, Who::guest(d));
    }

    fn set_perms(&mut self, c: ConnId, path: &str, perms: &[&str]) -> Result<Vec<u8>, Errno> {
        let mut a = vec![path];
        a.extend_from_slice(perms);
        self.s(c, MsgType::SetPerms, 0, &a)
    }
}

#[test]
fn basic_tree_ops() {
    let mut h = H::new();
    h.write(1, 0, "/a/b/c", "v").unwrap();
    assert_eq!(h.read(1, 0, "/a/b/c").unwrap(), "v");
    assert_eq!(h.read(1, 0, "/a/b").unwrap(), "");
    assert_eq!(h.ls(1, "/a").unwrap(), vec!["b"]);
    assert_eq!(h.read(1, 0, "/nope"), Err(Errno::ENOENT));
    h.s(1, MsgType::Mkdir, 0, &["/a/d"]).unwrap();
    h.s(1, MsgType::Mkdir, 0, &["/a/d"]).unwrap();
    assert_eq!(h.ls(1, "/a").unwrap(), vec!["b", "d"]);
    h.s(1, MsgType::Rm, 0, &["/a/b"]).unwrap();
    assert_eq!(h.read(1, 0, "/a/b/c"), Err(Errno::ENOENT));
    // rm of missing node with existing parent is OK, missing parent ENOENT
    h.s(1, MsgType::Rm, 0, &["/a/zz"]).unwrap();
    assert_eq!(h.s(1, MsgType::Rm, 0, &["/q/zz"]), Err(Errno::ENOENT));
    assert_eq!(h.s(1, MsgType::Rm, 0, &["/"]), Err(Errno::EINVAL));
    assert_eq!(h.read(1, 0, "/a/"), Err(Errno::EINVAL));
    // relative path is under /local/domain/0
    h.write(1, 0, "rel", "x").unwrap();
    assert_eq!(h.read(1, 0, "/local/domain/0/rel").unwrap(), "x");
    // binary values round-trip
    h.raw(1, MsgType::Write, 0, b"/bin\0a\0b\xff").unwrap();
    assert_eq!(h.s(1, MsgType::Read, 0, &["/bin"]).unwrap(), b"a\0b\xff");
    // unterminated argument
    assert_eq!(h.raw(1, MsgType::Read, 0, b"/bin"), Err(Errno::EINVAL));
    h.core.store().check().unwrap();
}

impl H {
    fn rawty(&mut self, c: ConnId, ty: u32) -> Result<Vec<u8>, Errno> {
        let mut out = Outbox::default();
        let msg = Message {
            ty,
            req_id: 1,
            tx_id: 0,
            payload: vec![],
        };
        self.core.handle(c, &msg, &mut out);
        let m = &out.msgs[0].1;
        if m.ty == MsgType::Error as u32 {
            Err(Errno::from_name(split_strings(&m.payload).unwrap()[0]))
        } else {
            Ok(m.payload.clone())
        }
    }
}

#[test]
fn unknown_type() {
    let mut h = H::new();
    assert_eq!(h.rawty(1, 99), Err(Errno::ENOSYS));
    assert_eq!(h.rawty(1, 20), Err(Errno::ENOSYS));
    assert_eq!(h.rawty(1, 15), Err(Errno::ENOSYS));
}

#[test]
fn directory_large_and_part() {
    let mut h = H::new();
    for i in 0..1000 {
        h.write(1, 0, &format!("/big/k{i}"), "").unwrap();
    }
    assert_eq!(h.ls(1, "/big"), Err(Errno::E2BIG));
    // Reassemble with DIRECTORY_PART like libxenstore.
    let mut names = Vec::new();
    let mut off = 0usize;
    let mut gen = None;
    loop {
        let r = h
            .s(1, MsgType::DirectoryPart, 0, &["/big", &off.to_string()])
            .unwrap();
        assert!(r.len() <= PAYLOAD_MAX);
        let s = split_strings(&r).unwrap();
        match gen {
            None => gen = Some(s[0].to_string()),
            Some(ref g) => assert_eq!(g, s[0]),
        }
        let parts = &s[1..];
        let mut done = false;
        for p in parts {
            if p.is_empty() {
                done = true;
                break;
            }
            off += p.len() + 1;
            names.push(p.to_string());
        }
        if done {
            break;
        }
    }
    let want: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    assert_eq!(names, want);
    // Past the end: gen plus one empty string.
    let r = h
        .s(1, MsgType::DirectoryPart, 0, &["/big", "999999"])
        .unwrap();
    assert_eq!(split_strings(&r).unwrap()[1], "");
}

#[test]
fn transactions_conflict_and_isolation() {
    let mut h = H::new();
    h.write(1, 0, "/x", "0").unwrap();
    let t = h.tx_start(1);
    assert_eq!(t, 1);
    assert_eq!(h.read(1, t, "/x").unwrap(), "0");
    h.write(1, t, "/x", "1").unwrap();
    h.write(1, t, "/y/z", "new").unwrap();
    // Not visible outside.
    assert_eq!(h.read(2, 0, "/x").unwrap(), "0");
    assert_eq!(h.read(2, 0, "/y/z"), Err(Errno::ENOENT));
    assert_eq!(h.read(1, t, "/y/z").unwrap(), "new");
    h.tx_end(1, t, true).unwrap();
    assert_eq!(h.read(2, 0, "/x").unwrap(), "1");
    assert_eq!(h.read(2, 0, "/y/z").unwrap(), "new");
    // Ended tx is gone.
    assert_eq!(h.read(1, t, "/x"), Err(Errno::ENOENT));
    assert_eq!(h.tx_end(1, t, true), Err(Errno::ENOENT));

    // Conflict: another connection writes something the tx read.
    let t2 = h.tx_start(1);
    assert_eq!(t2, 2);
    h.read(1, t2, "/x").unwrap();
    h.write(1, t2, "/other", "a").unwrap();
    h.write(2, 0, "/x", "changed").unwrap();
    assert_eq!(h.tx_end(1, t2, true), Err(Errno::EAGAIN));
    assert_eq!(h.read(2, 0, "/other"), Err(Errno::ENOENT));

    // No conflict when the other write is unrelated.
    let t3 = h.tx_start(1);
    h.read(1, t3, "/x").unwrap();
    h.write(2, 0, "/unrelated", "u").unwrap();
    h.tx_end(1, t3, true).unwrap();

    // Abort discards.
    let t4 = h.tx_start(1);
    h.write(1, t4, "/aborted", "a").unwrap();
    h.tx_end(1, t4, false).unwrap();
    assert_eq!(h.read(1, 0, "/aborted"), Err(Errno::ENOENT));

    // Nested start is EBUSY; bad end arg EINVAL.
    let t5 = h.tx_start(1);
    assert_eq!(
        h.s(1, MsgType::TransactionStart, t5, &[""]),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        h.s(1, MsgType::TransactionEnd, t5, &["X"]),
        Err(Errno::EINVAL)
    );
    // rm inside a tx
    h.s(1, MsgType::Rm, t5, &["/y"]).unwrap();
    assert_eq!(h.read(1, t5, "/y/z"), Err(Errno::ENOENT));
    assert_eq!(h.read(1, 0, "/y/z").unwrap(), "new");
    h.tx_end(1, t5, true).unwrap();
    assert_eq!(h.read(1, 0, "/y/z"), Err(Errno::ENOENT));
    h.core.store().check().unwrap();
}

#[test]
fn watches_fire() {
    let mut h = H::new();
    h.s(2, MsgType::Watch, 0, &["/w", "tok"]).unwrap();
    assert_eq!(h.events, vec![(2, "/w".into(), "tok".into())]);
    h.events.clear();
    assert_eq!(
        h.s(2, MsgType::Watch, 0, &["/w", "tok"]),
        Err(Errno::EEXIST)
    );
    h.write(1, 0, "/w/a/b", "1").unwrap();
    assert_eq!(h.events, vec![(2, "/w/a/b".into(), "tok".into())]);
    h.events.clear();
    h.write(1, 0, "/wx", "1").unwrap();
    assert!(h.events.is_empty());
    // Transaction: fires at commit only.
    let t = h.tx_start(1);
    h.write(1, t, "/w/t", "1").unwrap();
    assert!(h.events.is_empty());
    h.tx_end(1, t, true).unwrap();
    assert_eq!(h.events, vec![(2, "/w/t".into(), "tok".into())]);
    h.events.clear();
    // rm of an ancestor fires descendants' watches with their own path.
    h.s(2, MsgType::Watch, 0, &["/w/a/b", "deep"]).unwrap();
    h.events.clear();
    h.s(1, MsgType::Rm, 0, &["/w"]).unwrap();
    h.events.sort();
    assert_eq!(
        h.events,
        vec![
            (2, "/w".into(), "tok".into()),
            (2, "/w/a/b".into(), "deep".into())
        ]
    );
    h.events.clear();
    h.s(2, MsgType::Unwatch, 0, &["/w", "tok"]).unwrap();
    assert_eq!(
        h.s(2, MsgType::Unwatch, 0, &["/w", "tok"]),
        Err(Errno::ENOENT)
    );
    h.write(1, 0, "/w", "1").unwrap();
    assert!(h.events.is_empty());
    // Relative watch gives relative events.
    h.s(2, MsgType::Watch, 0, &["rel", "r"]).unwrap();
    h.write(1, 0, "/local/domain/0/rel/x", "1").unwrap();
    assert_eq!(h.events.last().unwrap().1, "rel/x");
    // RESET_WATCHES drops them.
    h.events.clear();
    h.s(2, MsgType::ResetWatches, 0, &[""]).unwrap();
    h.write(1, 0, "/local/domain/0/rel/y", "1").unwrap();
    assert!(h.events.is_empty());
}

#[test]
fn domains_and_special_watches() {
    let mut h = H::new();
    h.s(2, MsgType::Watch, 0, &["@introduceDomain", "i"])
        .unwrap();
    h.s(2, MsgType::Watch, 0, &["@releaseDomain", "r"]).unwrap();
    h.events.clear();
    assert_eq!(
        h.s(1, MsgType::IsDomainIntroduced, 0, &["5"]).unwrap(),
        b"F\0"
    );
    h.introduce(5);
    assert_eq!(h.events, vec![(2, "@introduceDomain".into(), "i".into())]);
    assert_eq!(
        h.s(1, MsgType::IsDomainIntroduced, 0, &["5"]).unwrap(),
        b"T\0"
    );
    assert_eq!(
        h.s(1, MsgType::GetDomainPath, 0, &["5"]).unwrap(),
        b"/local/domain/5\0"
    );
    assert_eq!(
        h.s(1, MsgType::GetDomainPath, 0, &["abc"]).unwrap(),
        b"/local/domain/0\0"
    );
    // Domain 5 owns some nodes; dom0 owns its home.
    h.write(1, 0, "/local/domain/5/name", "g").unwrap();
    h.set_perms(1, "/local/domain/5", &["n0", "r5"]).unwrap();
    h.write(1, 0, "/local/domain/5/device/vif/0/state", "1")
        .unwrap();
    h.set_perms(1, "/local/domain/5/device", &["n5", "r0"])
        .unwrap();
    h.set_perms(1, "/local/domain/5/name", &["n0", "r5", "w7"])
        .unwrap();
    h.guest(10, 5);
    h.events.clear();
    assert_eq!(h.s(1, MsgType::Release, 0, &["6"]), Err(Errno::ENOENT));
    h.s(1, MsgType::Release, 0, &["5"]).unwrap();
    assert!(h.events.contains(&(2, "@releaseDomain".into(), "r".into())));
    assert_eq!(h.closed, vec![10]);
    // Nodes owned by 5 are gone, others stay but lose entries naming 5.
    assert_eq!(
        h.read(1, 0, "/local/domain/5/device/vif/0/state"),
        Err(Errno::ENOENT)
    );
    assert_eq!(h.read(1, 0, "/local/domain/5/name").unwrap(), "g");
    assert_eq!(
        h.s(1, MsgType::GetPerms, 0, &["/local/domain/5/name"])
            .unwrap(),
        b"n0\0w7\0"
    );
    assert_eq!(
        h.s(1, MsgType::IsDomainIntroduced, 0, &["5"]).unwrap(),
        b"F\0"
    );
    h.core.store().check().unwrap();
}

#[test]
fn permissions_enforced() {
    let mut h = H::new();
    h.introduce(3);
    h.introduce(4);
    h.guest(10, 3);
    h.guest(11, 4);
    h.write(1, 0, "/local/domain/3/x", "dom0").unwrap();
    h.set_perms(1, "/local/domain/3", &["n0", "r3"]).unwrap();
    // Guest 3 can read its home but not write nodes owned by dom0 without w.
    assert_eq!(h.read(10, 0, "x"), Err(Errno::EACCES));
    h.set_perms(1, "/local/domain/3/x", &["n0", "r3"]).unwrap();
    assert_eq!(h.read(10, 0, "x").unwrap(), "dom0");
    assert_eq!(h.write(10, 0, "x", "g"), Err(Errno::EACCES));
    assert_eq!(h.write(10, 0, "new", "g"), Err(Errno::EACCES));
    // Give guest 3 a writable data dir.
    h.s(1, MsgType::Mkdir, 0, &["/local/domain/3/data"])
        .unwrap();
    h.set_perms(1, "/local/domain/3/data", &["n3"]).unwrap();
    h.write(10, 0, "data/k", "v").unwrap();
    // Created node is owned by the creator (inherits n3 anyway).
    assert_eq!(h.s(10, MsgType::GetPerms, 0, &["data/k"]).unwrap(), b"n3\0");
    // Guest 4 can't see it; errors don't leak existence.
    assert_eq!(h.read(11, 0, "/local/domain/3/data/k"), Err(Errno::EACCES));
    assert_eq!(
        h.read(11, 0, "/local/domain/3/data/missing"),
        Err(Errno::EACCES)
    );
    assert_eq!(h.ls(11, "/local/domain/3/data"), Err(Errno::EACCES));
    // Owner can grant read to 4.
    h.set_perms(10, "data/k", &["n3", "r4"]).unwrap();
    assert_eq!(h.read(11, 0, "/local/domain/3/data/k").unwrap(), "v");
    assert_eq!(
        h.write(11, 0, "/local/domain/3/data/k", "x"),
        Err(Errno::EACCES)
    );
    // Unprivileged can't change owner.
    assert_eq!(h.set_perms(10, "data/k", &["n4"]), Err(Errno::EPERM));
    // Too many perms.
    assert_eq!(
        h.set_perms(10, "data/k", &["n3", "r1", "r2", "r4", "r5", "r6"]),
        Err(Errno::ENOSPC)
    );
    // Non-owner can't set perms.
    assert_eq!(
        h.set_perms(11, "/local/domain/3/data/k", &["n3"]),
        Err(Errno::EACCES)
    );
    // Guest can't introduce or control.
    assert_eq!(
        h.s(10, MsgType::Introduce, 0, &["9", "0", "1"]),
        Err(Errno::EACCES)
    );
    assert_eq!(h.s(10, MsgType::Control, 0, &["check"]), Err(Errno::EACCES));
    // Watches: guest 4 doesn't get events for nodes it can't read.
    h.s(11, MsgType::Watch, 0, &["/local/domain/3/data", "t"])
        .unwrap();
    h.events.clear();
    h.write(10, 0, "data/secret", "s").unwrap();
    assert!(h.events.is_empty());
    h.write(10, 0, "data/k", "v2").unwrap();
    assert_eq!(h.events.len(), 1);
    // SET_TARGET: stubdom 4 gets privilege over 3's nodes.
    h.s(1, MsgType::SetTarget, 0, &["4", "3"]).unwrap();
    assert_eq!(h.read(11, 0, "/local/domain/3/data/secret").unwrap(), "s");
    // Special node perms.
    assert_eq!(
        h.s(1, MsgType::GetPerms, 0, &["@releaseDomain"]).unwrap(),
        b"n0\0"
    );
    h.set_perms(1, "@releaseDomain", &["n0", "r3"]).unwrap();
    assert_eq!(
        h.s(1, MsgType::GetPerms, 0, &["@releaseDomain"]).unwrap(),
        b"n0\0r3\0"
    );
}

#[test]
fn quotas() {
    let mut h = H::new();
    h.introduce(3);
    h.guest(10, 3);
    h.s(1, MsgType::Mkdir, 0, &["/local/domain/3"]).unwrap();
    h.set_perms(1, "/local/domain/3", &["n3"]).unwrap();
    h.core.quotas.nodes = 5;
    // The home node itself counts (owned by 3).
    for i in 0..4 {
        h.write(10, 0, &format!("n{i}"), "").unwrap();
    }
    assert_eq!(h.write(10, 0, "n9", ""), Err(Errno::ENOSPC));
    h.s(10, MsgType::Rm, 0, &["n0"]).unwrap();
    h.write(10, 0, "n9", "").unwrap();
    // Node size.
    assert_eq!(h.write(10, 0, "n9", &"x".repeat(2048)), Err(Errno::E2BIG));
    h.write(1, 0, "/local/domain/3/n9", &"x".repeat(4000))
        .unwrap();
    // Transactions.
    for _ in 0..10 {
        h.s(10, MsgType::TransactionStart, 0, &[""]).unwrap();
    }
    assert_eq!(
        h.s(10, MsgType::TransactionStart, 0, &[""]),
        Err(Errno::ENOSPC)
    );
    // Watches.
    for i in 0..128 {
        h.s(10, MsgType::Watch, 0, &["n1", &format!("t{i}")])
            .unwrap();
    }
    assert_eq!(
        h.s(10, MsgType::Watch, 0, &["n1", "t999"]),
        Err(Errno::E2BIG)
    );
    // Control quota output.
    let q = h.s(1, MsgType::Control, 0, &["quota"]).unwrap();
    let q = String::from_utf8(q).unwrap();
    assert!(
        q.contains("nodes            :        5 Nodes per domain"),
        "{q}"
    );
    h.s(1, MsgType::Control, 0, &["quota", "set", "nodes", "1000"])
        .unwrap();
    assert_eq!(h.core.quotas.nodes, 1000);
    assert_eq!(h.s(1, MsgType::Control, 0, &["bogus"]), Err(Errno::EINVAL));
    assert_eq!(h.s(1, MsgType::Control, 0, &["check"]).unwrap(), b"OK\0");
}

#[test]
fn act_as_domain() {
    let mut h = H::new();
    assert_eq!(
        h.s(2, MsgType::Control, 0, &["rxen-act-as", "7"]),
        Err(Errno::ENOENT)
    );
    h.introduce(7);
    h.s(1, MsgType::Mkdir, 0, &["/local/domain/7"]).unwrap();
    h.set_perms(1, "/local/domain/7", &["n0", "r7"]).unwrap();
    h.s(2, MsgType::Control, 0, &["rxen-act-as", "7"]).unwrap();
    assert_eq!(h.core.who(2), Some(Who::guest(7)));
    assert_eq!(h.write(2, 0, "x", "1"), Err(Errno::EACCES));
    assert_eq!(h.ls(2, "").err(), Some(Errno::EINVAL));
    assert_eq!(h.ls(2, "/local/domain/7").unwrap(), Vec::<String>::new());
    // Can't go back.
    assert_eq!(
        h.s(2, MsgType::Control, 0, &["rxen-act-as", "7"]),
        Err(Errno::EACCES)
    );
}

#[test]
fn journal_replay_matches() {
    let mut h = H::new();
    h.introduce(3);
    h.guest(10, 3);
    h.write(1, 0, "/a/b", "1").unwrap();
    h.set_perms(1, "/a", &["n3", "r0"]).unwrap();
    h.write(10, 0, "/a/c", "guest").unwrap();
    let t = h.tx_start(1);
    h.write(1, t, "/t/1", "x").unwrap();
    h.s(1, MsgType::Rm, t, &["/a/b"]).unwrap();
    h.write(1, t, "/a/b", "again").unwrap();
    h.tx_end(1, t, true).unwrap();
    let t = h.tx_start(1);
    h.write(1, t, "/aborted", "x").unwrap();
    h.tx_end(1, t, false).unwrap();
    h.s(1, MsgType::SetTarget, 0, &["3", "0"]).unwrap();
    let groups = h.core.take_journal();
    let mut c2 = Core::new();
    for g in &groups {
        for op in g {
            c2.apply(op);
        }
    }
    assert_eq!(c2.image(), h.core.image());
    let c3 = Core::from_image(&h.core.image());
    assert_eq!(c3.image(), h.core.image());
    c3.store().check().unwrap();
}
