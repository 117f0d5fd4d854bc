//! Crash test: writes and transactions while the daemon is killed with SIGKILL at random
//! moments; after each restart every acknowledged change must be there and no transaction may be
//! half-applied.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{seed, Daemon, Rng};
use rxen_xenstore::{Client, ClientError, Errno, XsOps};

#[derive(Clone, Debug)]
enum InFlight {
    Key(u64, Option<u64>),
    Tx(u64),
}

#[derive(Default, Debug)]
struct Model {
    keys: BTreeMap<u64, Option<u64>>,
    next_key: u64,
    txs: BTreeSet<u64>,
    next_tx: u64,
    in_flight: Option<InFlight>,
}

fn key(id: u64) -> String {
    format!("/crash/k{id}")
}

fn read_opt(c: &Client, p: &str) -> Option<u64> {
    match c.read_string(p) {
        Ok(v) => Some(v.parse().expect("numeric value")),
        Err(ClientError::Xs(Errno::ENOENT)) => None,
        Err(e) => panic!("read {p}: {e}"),
    }
}

fn work(c: Client, mut m: Model, mut rng: Rng) -> Model {
    loop {
        let live: Vec<u64> = m
            .keys
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        let r = rng.below(10);
        let res = if r < 4 || live.is_empty() {
            let id = m.next_key;
            m.next_key += 1;
            let v = rng.below(1_000_000);
            m.in_flight = Some(InFlight::Key(id, Some(v)));
            c.write(&key(id), v.to_string()).map(|_| {
                m.keys.insert(id, Some(v));
            })
        } else if r < 6 {
            let id = live[rng.below(live.len() as u64) as usize];
            let v = rng.below(1_000_000);
            m.in_flight = Some(InFlight::Key(id, Some(v)));
            c.write(&key(id), v.to_string()).map(|_| {
                m.keys.insert(id, Some(v));
            })
        } else if r < 7 {
            let id = live[rng.below(live.len() as u64) as usize];
            m.in_flight = Some(InFlight::Key(id, None));
            c.rm(&key(id)).map(|_| {
                m.keys.insert(id, None);
            })
        } else {
            let j = m.next_tx;
            m.next_tx += 1;
            m.in_flight = Some(InFlight::Tx(j));
            c.with_transaction(|t| {
                t.write(&format!("/crash/t{j}/a"), j.to_string())?;
                t.mkdir(&format!("/crash/t{j}/dir"))?;
                t.write(&format!("/crash/t{j}/b"), j.to_string())
            })
            .map(|_| {
                m.txs.insert(j);
            })
        };
        if res.is_err() {
            return m;
        }
        m.in_flight = None;
    }
}

fn verify(c: &Client, m: &mut Model) {
    for (id, exp) in m.keys.clone() {
        let got = read_opt(c, &key(id));
        match &m.in_flight {
            Some(InFlight::Key(fid, v)) if *fid == id => {
                assert!(
                    got == exp || got == *v,
                    "key {id}: got {got:?}, acked {exp:?}, in flight {v:?}"
                );
                m.keys.insert(id, got);
            }
            _ => assert_eq!(got, exp, "acknowledged key {id} lost or wrong"),
        }
    }
    match m.in_flight.clone() {
        Some(InFlight::Key(fid, v)) => {
            if let std::collections::btree_map::Entry::Vacant(e) = m.keys.entry(fid) {
                let got = read_opt(c, &key(fid));
                assert!(got.is_none() || got == v);
                e.insert(got);
            }
        }
        Some(InFlight::Tx(j)) => assert!(j < m.next_tx),
        None => {}
    }
    for j in 0..m.next_tx {
        let a = read_opt(c, &format!("/crash/t{j}/a"));
        let b = read_opt(c, &format!("/crash/t{j}/b"));
        let dir = c.exists(&format!("/crash/t{j}/dir")).unwrap();
        let all = a == Some(j) && b == Some(j) && dir;
        let none = a.is_none() && b.is_none() && !dir;
        assert!(
            all || none,
            "transaction {j} half-applied: a={a:?} b={b:?} dir={dir}"
        );
        if m.txs.contains(&j) {
            assert!(all, "acknowledged transaction {j} lost");
        } else if all {
            m.txs.insert(j);
        }
    }
    m.in_flight = None;
    assert_eq!(c.control(&["check"]).unwrap().trim(), "OK");
}

#[test]
fn kill9_loses_no_acknowledged_write() {
    let cycles: u64 = std::env::var("RXEN_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let s = seed();
    eprintln!("crash test seed {s} (RXEN_TEST_SEED to replay), {cycles} cycles");
    let mut rng = Rng(s);
    let tmp = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let mut total_ops = 0;
    for cycle in 0..cycles {
        let mut d = Daemon::start_args(tmp.path(), &["--compact-bytes", "32768"]);
        let c = Client::connect(&d.socket).unwrap();
        verify(&c, &mut model);
        let before = model.next_key + model.next_tx;
        let w = std::thread::spawn({
            let m = std::mem::take(&mut model);
            let r = Rng(rng.next() | 1);
            move || work(c, m, r)
        });
        std::thread::sleep(Duration::from_millis(20 + rng.below(150)));
        d.kill9();
        model = w.join().unwrap();
        total_ops += model.next_key + model.next_tx - before;
        eprintln!(
            "cycle {cycle}: {} keys, {} txs committed so far",
            model.keys.len(),
            model.txs.len()
        );
    }
    let d = Daemon::start(tmp.path());
    let c = Client::connect(&d.socket).unwrap();
    verify(&c, &mut model);
    assert!(
        total_ops > cycles,
        "the workload made progress ({total_ops} ops)"
    );
    // Compaction happened at least once, so snapshot + journal recovery were both exercised.
    assert!(d.db.join("snapshot").exists());
}
