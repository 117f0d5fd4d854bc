//! The client library against the daemon: operations, transactions with retry, watches,
//! acting as a guest domain, fairness under a flooding client.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use rxen_xenstore::wire::{Message, MsgType};
use rxen_xenstore::{Access, Client, ClientError, Errno, Perm, Perms, XsOps};

#[test]
fn operations() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let c = Client::connect(&d.socket).unwrap();
    c.write("/x/y", "1").unwrap();
    assert_eq!(c.read_string("/x/y").unwrap(), "1");
    assert!(c.exists("/x").unwrap());
    assert!(!c.exists("/nope").unwrap());
    c.mkdir("/x/z").unwrap();
    assert_eq!(c.ls("/x").unwrap(), vec!["y", "z"]);
    let p = Perms::new(vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 3)]).unwrap();
    c.set_perms("/x/y", &p).unwrap();
    assert_eq!(c.get_perms("/x/y").unwrap(), p);
    c.rm("/x").unwrap();
    assert_eq!(c.read("/x/y").unwrap_err().errno(), Some(Errno::ENOENT));
    assert_eq!(c.get_domain_path(7).unwrap(), "/local/domain/7");
    for i in 0..700 {
        c.write(&format!("/big/entry-{i:04}"), "").unwrap();
    }
    let names = c.ls("/big").unwrap();
    assert_eq!(names.len(), 700);
    assert_eq!(names[699], "entry-0699");
    assert!(c.control(&["quota"]).unwrap().contains("Nodes per domain"));
}

#[test]
fn transactions_retry_under_contention() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let socket = Arc::new(d.socket.clone());
    Client::connect(&socket)
        .unwrap()
        .write("/counter", "0")
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = socket.clone();
            std::thread::spawn(move || {
                let c = Client::connect(&s).unwrap();
                for _ in 0..50 {
                    c.with_transaction(|t| {
                        let n: u64 = t.read_string("/counter")?.parse().unwrap();
                        t.write("/counter", (n + 1).to_string())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = Client::connect(&socket).unwrap();
    assert_eq!(c.read_string("/counter").unwrap(), "200");
    // Explicit conflict.
    let t = c.transaction().unwrap();
    t.read("/counter").unwrap();
    Client::connect(&socket)
        .unwrap()
        .write("/counter", "x")
        .unwrap();
    t.write("/counter", "y").unwrap();
    assert_eq!(t.commit().unwrap_err().errno(), Some(Errno::EAGAIN));
    assert_eq!(c.read_string("/counter").unwrap(), "x");
}

#[test]
fn watches_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let w = Client::connect(&d.socket).unwrap();
    let c = Client::connect(&d.socket).unwrap();
    w.watch("/dev", "tok").unwrap();
    let first = w.next_event_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((first.path.as_str(), first.token.as_str()), ("/dev", "tok"));
    c.write("/dev/vbd/1", "x").unwrap();
    let e = w.next_event_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(e.path, "/dev/vbd/1");
    // Events interleave with replies on the same connection.
    w.write("/dev/self", "1").unwrap();
    assert_eq!(w.read_string("/dev/self").unwrap(), "1");
    assert_eq!(
        w.next_event_timeout(Duration::from_secs(10)).unwrap().path,
        "/dev/self"
    );
    w.unwatch("/dev", "tok").unwrap();
    c.write("/dev/vbd/2", "x").unwrap();
    assert!(matches!(
        w.next_event_timeout(Duration::from_millis(200)),
        Err(ClientError::Timeout)
    ));
    // Special watches.
    w.watch("@introduceDomain", "i").unwrap();
    w.watch("@releaseDomain", "r").unwrap();
    let _ = w.next_event_timeout(Duration::from_secs(10)).unwrap();
    let _ = w.next_event_timeout(Duration::from_secs(10)).unwrap();
    c.introduce(4, 1234, 5).unwrap();
    assert_eq!(
        w.next_event_timeout(Duration::from_secs(10)).unwrap().path,
        "@introduceDomain"
    );
    assert!(c.is_domain_introduced(4).unwrap());
    c.release(4).unwrap();
    assert_eq!(
        w.next_event_timeout(Duration::from_secs(10)).unwrap().path,
        "@releaseDomain"
    );
    assert!(!c.is_domain_introduced(4).unwrap());
}

#[test]
fn connection_acting_as_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let dom0 = Client::connect(&d.socket).unwrap();
    assert_eq!(
        Client::connect_as_domain(&d.socket, 9).unwrap_err().errno(),
        Some(Errno::ENOENT)
    );
    dom0.introduce(9, 0, 1).unwrap();
    dom0.mkdir("/local/domain/9/device").unwrap();
    let home = Perms::new(vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 9)]).unwrap();
    dom0.set_perms("/local/domain/9", &home).unwrap();
    dom0.set_perms(
        "/local/domain/9/device",
        &Perms::new(vec![Perm::new(Access::None, 9)]).unwrap(),
    )
    .unwrap();
    let g = Client::connect_as_domain(&d.socket, 9).unwrap();
    // Relative paths are the guest's home; it can write where it owns.
    g.write("device/vif/0/state", "1").unwrap();
    assert_eq!(
        g.get_perms("device/vif/0/state").unwrap().owner(),
        9,
        "guest-created nodes are owned by the guest"
    );
    assert_eq!(
        g.write("name", "evil").unwrap_err().errno(),
        Some(Errno::EACCES)
    );
    assert_eq!(
        g.read("/tool/xenstored").unwrap_err().errno(),
        Some(Errno::EACCES)
    );
    assert_eq!(
        g.introduce(10, 0, 1).unwrap_err().errno(),
        Some(Errno::EACCES)
    );
    // Releasing the domain removes the nodes it owns and closes its connection.
    dom0.release(9).unwrap();
    assert!(g.read("device").is_err());
    assert!(!dom0.exists("/local/domain/9/device").unwrap());
    assert!(dom0.exists("/local/domain/9").unwrap());
}

#[test]
fn flooding_client_does_not_starve_others() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    // A client that writes requests as fast as it can and never reads replies.
    let mut flood = UnixStream::connect(&d.socket).unwrap();
    flood.set_nonblocking(true).unwrap();
    let frame = Message::new(MsgType::Read, 1, 0, b"/tool/xenstored\0".to_vec()).encode();
    let mut buf = Vec::new();
    for _ in 0..4096 {
        buf.extend_from_slice(&frame);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let flooder = std::thread::spawn(move || {
        let mut sent = 0usize;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            match flood.write(&buf) {
                Ok(n) => sent += n,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        sent
    });
    let c = Client::connect(&d.socket).unwrap();
    for i in 0..500 {
        c.write("/fair", i.to_string()).unwrap();
        assert_eq!(c.read_string("/fair").unwrap(), i.to_string());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    assert!(sent > 0);
    // The daemon's memory stays bounded: its RSS is well below what the flood sent.
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        rss_kb < 256 * 1024,
        "daemon RSS {rss_kb} kB after flood of {sent} bytes"
    );
}

/// One `Client` shared by several requesting threads and a thread waiting for watch events:
/// every caller gets its own replies (whoever happens to read the socket hands them over), the
/// event waiter sees every event, and timeouts never lose framing.
#[test]
fn shared_client_demultiplexes_replies_and_events() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let c = Arc::new(Client::connect(&d.socket).unwrap());
    let other = Client::connect(&d.socket).unwrap();
    c.watch("/shared/ev", "t").unwrap();
    assert_eq!(
        c.next_event_timeout(Duration::from_secs(10)).unwrap().path,
        "/shared/ev"
    );
    // The event waiter polls with short timeouts while requests fly.
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while seen.len() < 50 && std::time::Instant::now() < deadline {
                match c.next_event_timeout(Duration::from_millis(3)) {
                    Ok(e) => {
                        seen.insert(e.path);
                    }
                    Err(ClientError::Timeout) => {}
                    Err(e) => panic!("event wait failed: {e}"),
                }
            }
            seen
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let p = format!("/shared/t{t}/n{i}");
                    c.write(&p, format!("{t}:{i}")).unwrap();
                    assert_eq!(c.read_string(&p).unwrap(), format!("{t}:{i}"));
                    let batch: Vec<String> = (0..=i % 5)
                        .map(|k| format!("/shared/t{t}/n{}", i - k.min(i)))
                        .collect();
                    for (k, r) in c.read_many(&batch).into_iter().enumerate() {
                        let want = i - (k as u32).min(i);
                        assert_eq!(r.unwrap().as_deref(), Some(format!("{t}:{want}").as_str()));
                    }
                }
            })
        })
        .collect();
    for i in 0..50 {
        other.write(&format!("/shared/ev/{i}"), "x").unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }
    let seen = waiter.join().unwrap();
    assert_eq!(seen.len(), 50, "events seen: {seen:?}");
    assert!(matches!(
        c.read_many(&["/shared/none".to_string()]).pop().unwrap(),
        Ok(None)
    ));
}
