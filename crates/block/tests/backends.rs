//! Backends against real images made by qemu-img, and a loop device for `phy:`.
//!
//! Needs `qemu-img` (Debian: qemu-utils) and, for the block-device test, root and `losetup`
//! (util-linux). Missing tools fail the tests unless `RXEN_SKIP_MISSING_TOOLS=1`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rxen_block::{open, DiskBackend, DiskOptions, FormatChoice, IoBuf};

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
            eprintln!("skipping: {tool} is missing");
            return false;
        }
        panic!("{tool} is required for this test (apt-get install qemu-utils util-linux), or set RXEN_SKIP_MISSING_TOOLS=1");
    }
    true
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn qemu_img_check(p: &Path) {
    let o = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(p)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("No errors were found"),
        "qemu-img check {}: {out}{}",
        p.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read(d: &mut dyn DiskBackend, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0xAAu8; len];
    // Split in two iovecs to exercise vectored paths.
    let (a, b) = v.split_at_mut(len / 3);
    d.read(off, &[IoBuf::from_slice(a), IoBuf::from_slice(b)])
        .unwrap();
    v
}

fn write(d: &mut dyn DiskBackend, off: u64, data: &[u8]) {
    let mut v = data.to_vec();
    let (a, b) = v.split_at_mut(data.len() / 2);
    d.write(off, &[IoBuf::from_slice(a), IoBuf::from_slice(b)])
        .unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn host_reread_as_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("reread.raw");
    let _ = std::fs::remove_file(&out);
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

#[test]
fn raw_file_rw_flush_discard_and_sparseness() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(16 << 20).unwrap();
    drop(f);
    let mut d = open(&DiskOptions::new(&p)).unwrap();
    assert_eq!(d.info().size, 16 << 20);
    assert_eq!(
        std::fs::metadata(&p).unwrap().blocks(),
        0,
        "not preallocated"
    );
    let data = pattern(1 << 20, 7);
    write(d.as_mut(), 4096, &data);
    d.flush().unwrap();
    assert_eq!(read(d.as_mut(), 4096, 1 << 20), data);
    let allocated = std::fs::metadata(&p).unwrap().blocks();
    assert!(allocated >= 2048, "{allocated}");
    d.discard(4096, 1 << 20).unwrap();
    let after = std::fs::metadata(&p).unwrap().blocks();
    assert!(
        after < allocated / 2,
        "discard punched no hole: {allocated} -> {after}"
    );
    assert_eq!(read(d.as_mut(), 4096, 8192), vec![0; 8192]);
    write(d.as_mut(), 0, &[1; 4096]);
    d.write_zeroes(0, 4096, false).unwrap();
    assert_eq!(read(d.as_mut(), 0, 4096), vec![0; 4096]);
    // Out of range requests fail, and nothing is written past the end.
    let mut b = [0u8; 512];
    assert!(d
        .read((16 << 20) - 256, &[IoBuf::from_slice(&mut b)])
        .is_err());
    assert!(d
        .write(u64::MAX - 100, &[IoBuf::from_slice(&mut b)])
        .is_err());
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 16 << 20);
    drop(d);
    let on_host = std::fs::read(&p).unwrap();
    assert_eq!(&on_host[..4096], &[0; 4096][..]);

    let mut ro = open(&DiskOptions::new(&p).read_only(true)).unwrap();
    assert!(ro.info().read_only);
    let mut b = [0u8; 512];
    assert!(ro.write(0, &[IoBuf::from_slice(&mut b)]).is_err());
    assert!(ro.discard(0, 512).is_err());
}

/// Opens an image whose lock this process just released. Another test's child process may still
/// hold a copy of the closed descriptor for a moment (between its fork and its exec, where
/// `O_CLOEXEC` closes it), and with it the lock: a few retries within a second, no longer.
fn open_after_release(o: &DiskOptions) -> Box<dyn rxen_block::DiskBackend> {
    let mut last = None;
    for _ in 0..50 {
        match open(o) {
            Ok(d) => return d,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the released lock is still held: {:?}", last);
}

#[test]
fn locking_conflicts_name_the_image_and_holder() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.raw");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    let w = open(&DiskOptions::new(&p)).unwrap();
    let mut o = DiskOptions::new(&p);
    o.spec = Some("file:/a.raw,xvdb,w".into());
    let e = open(&o).err().expect("second writer must fail").to_string();
    assert!(e.contains("xvdb") && e.contains(p.to_str().unwrap()), "{e}");
    assert!(e.contains("locked") && e.contains("process"), "{e}");
    let e = open(&DiskOptions::new(&p).read_only(true))
        .err()
        .expect("reader of a written image must fail")
        .to_string();
    assert!(e.contains("locked"), "{e}");
    drop(w);
    let r1 = open_after_release(&DiskOptions::new(&p).read_only(true));
    let r2 = open(&DiskOptions::new(&p).read_only(true)).unwrap();
    assert!(open(&DiskOptions::new(&p)).is_err());
    drop((r1, r2));
    open_after_release(&DiskOptions::new(&p));

    // Another process (qemu-img, which uses byte-range OFD locks) sees our lock too.
    if have("qemu-img") {
        let q = dir.path().join("b.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1M"],
        );
        let _d = open(&DiskOptions::new(&q).format(FormatChoice::Qcow2)).unwrap();
        let o = Command::new("qemu-img")
            .args(["check", q.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success(), "qemu-img opened a locked image");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("lock"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn qcow2_written_image_stays_valid_and_reads_back_on_host() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "64M"],
    );
    let mut d = open(&DiskOptions::new(&p).format(FormatChoice::Qcow2)).unwrap();
    assert_eq!(d.info().size, 64 << 20);
    let a = pattern(300_000, 1);
    let b = pattern(4096, 2);
    write(d.as_mut(), 12_345 * 512, &a);
    write(d.as_mut(), (64 << 20) - 4096, &b);
    d.flush().unwrap();
    assert_eq!(read(d.as_mut(), 12_345 * 512, a.len()), a);
    assert_eq!(read(d.as_mut(), 0, 4096), vec![0; 4096]);
    d.write_zeroes(12_345 * 512, 4096, false).unwrap();
    d.discard(12_345 * 512 + 131_072, 65_536).unwrap();
    let mut expect = vec![0u8; 64 << 20];
    expect[12_345 * 512..12_345 * 512 + a.len()].copy_from_slice(&a);
    expect[12_345 * 512..12_345 * 512 + 4096].fill(0);
    // Discard reads back as zeros (partial clusters are zero-written).
    expect[12_345 * 512 + 131_072..12_345 * 512 + 131_072 + 65_536].fill(0);
    expect[(64 << 20) - 4096..].copy_from_slice(&b);
    d.flush().unwrap();
    drop(d);
    qemu_img_check(&p);
    let host = host_reread_as_raw(&p, dir.path());
    let first = host.iter().zip(&expect).position(|(a, b)| a != b);
    assert_eq!(first, None, "host reread differs from what was written");
    assert_eq!(host.len(), expect.len());
}

#[test]
fn qcow2_backing_chain_reads_through_and_locks_backing_shared() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let base_data = pattern(4 << 20, 9);
    std::fs::write(&base, &base_data).unwrap();
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            mid.to_str().unwrap(),
        ],
    );
    // Write something into the middle layer with qemu-io.
    if have("qemu-io") {
        run(
            "qemu-io",
            &["-c", "write -P 0x5a 1M 64k", mid.to_str().unwrap()],
        );
    }
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            top.to_str().unwrap(),
        ],
    );
    let mut d = open(&DiskOptions::new(&top).format(FormatChoice::Qcow2)).unwrap();
    assert_eq!(d.info().size, 4 << 20);
    assert_eq!(
        d.info().backing_chain.len(),
        2,
        "{:?}",
        d.info().backing_chain
    );
    assert_eq!(read(d.as_mut(), 0, 4096), base_data[..4096]);
    assert_eq!(read(d.as_mut(), 1 << 20, 4096), vec![0x5a; 4096]);
    // Backing files are shared-locked: another reader may open them, no writer.
    let e = open(&DiskOptions::new(&base))
        .err()
        .expect("backing file must not be writable by others")
        .to_string();
    assert!(e.contains("locked"), "{e}");
    drop(open(&DiskOptions::new(&base).read_only(true)).unwrap());
    // Writes go to the top only.
    write(d.as_mut(), 100, &[0xEE; 1000]);
    d.flush().unwrap();
    drop(d);
    assert_eq!(std::fs::read(&base).unwrap(), base_data);
    qemu_img_check(&top);
    qemu_img_check(&mid);
    let host = host_reread_as_raw(&top, dir.path());
    assert_eq!(&host[100..1100], &[0xEE; 1000][..]);
    assert_eq!(&host[..100], &base_data[..100]);
    assert_eq!(&host[1 << 20..(1 << 20) + 65536], &[0x5a; 65536][..]);
}

#[test]
fn qcow2_compressed_clusters_read() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = pattern(2 << 20, 3);
    data[..65536].fill(0x11);
    std::fs::write(&raw, &data).unwrap();
    let c = dir.path().join("c.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            c.to_str().unwrap(),
        ],
    );
    let out = run("qemu-img", &["map", "--output=json", c.to_str().unwrap()]);
    assert!(
        out.contains("\"compressed\": true"),
        "not compressed: {out}"
    );
    let mut d = open(&DiskOptions::new(&c).format(FormatChoice::Qcow2)).unwrap();
    assert_eq!(read(d.as_mut(), 0, 2 << 20), data);
    // Overwriting part of a compressed cluster keeps the rest and the image valid.
    write(d.as_mut(), 70_000, &[0x22; 100]);
    d.flush().unwrap();
    drop(d);
    qemu_img_check(&c);
    let host = host_reread_as_raw(&c, dir.path());
    data[70_000..70_100].fill(0x22);
    assert!(host == data);
}

#[test]
fn formats_are_detected_and_unsupported_ones_refused_by_name() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("x.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1M"],
    );
    let d = open(&DiskOptions::new(&q).format(FormatChoice::Auto)).unwrap();
    assert_eq!(d.info().format, rxen_block::ImageFormat::Qcow2);
    drop(d);
    for (fmt, name) in [
        ("vpc", "vhd"),
        ("vmdk", "vmdk"),
        ("qed", "qed"),
        ("vdi", "vdi"),
    ] {
        let p = dir.path().join(format!("x.{fmt}"));
        run(
            "qemu-img",
            &["create", "-q", "-f", fmt, p.to_str().unwrap(), "1M"],
        );
        let mut o = DiskOptions::new(&p).format(FormatChoice::Auto);
        o.spec = Some(format!("spec-of-{name}"));
        let e = open(&o).err().expect("must refuse").to_string();
        assert!(
            e.contains(&format!("format {name} is not supported")) && e.contains("spec-of-"),
            "{e}"
        );
    }
    // A raw image opened as qcow2 is refused with a hint.
    let r = dir.path().join("r.raw");
    std::fs::write(&r, vec![0u8; 65536]).unwrap();
    let e = open(&DiskOptions::new(&r).format(FormatChoice::Qcow2))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("format=raw"), "{e}");
}

fn make_qcow2(dir: &Path) -> PathBuf {
    let p = dir.join("v.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "4M"],
    );
    if have("qemu-io") {
        run(
            "qemu-io",
            &[
                "-c",
                "write -P 0x33 0 192k",
                "-c",
                "write -P 0x44 2M 64k",
                p.to_str().unwrap(),
            ],
        );
    }
    p
}

fn set_be(img: &mut [u8], off: usize, v: &[u8]) {
    img[off..off + v.len()].copy_from_slice(v);
}

#[test]
fn corrupt_qcow2_headers_are_refused_without_panic() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(make_qcow2(dir.path())).unwrap();
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("truncated header", Box::new(|i| i.truncate(40))),
        ("version 9", Box::new(|i| set_be(i, 4, &9u32.to_be_bytes()))),
        (
            "cluster_bits 40",
            Box::new(|i| set_be(i, 20, &40u32.to_be_bytes())),
        ),
        (
            "cluster_bits 0",
            Box::new(|i| set_be(i, 20, &0u32.to_be_bytes())),
        ),
        (
            "huge size",
            Box::new(|i| set_be(i, 24, &u64::MAX.to_be_bytes())),
        ),
        (
            "huge l1_size",
            Box::new(|i| set_be(i, 36, &u32::MAX.to_be_bytes())),
        ),
        (
            "l1 offset past EOF",
            Box::new(|i| set_be(i, 40, &(1u64 << 50).to_be_bytes())),
        ),
        (
            "unaligned l1",
            Box::new(|i| set_be(i, 40, &0x10001u64.to_be_bytes())),
        ),
        (
            "refcount table past EOF",
            Box::new(|i| set_be(i, 48, &(1u64 << 55).to_be_bytes())),
        ),
        (
            "unknown incompatible feature",
            Box::new(|i| set_be(i, 72, &(1u64 << 40).to_be_bytes())),
        ),
        (
            "backing file name out of file",
            Box::new(|i| {
                set_be(i, 8, &(1u64 << 40).to_be_bytes());
                set_be(i, 16, &100u32.to_be_bytes());
            }),
        ),
        (
            "encrypted",
            Box::new(|i| set_be(i, 32, &1u32.to_be_bytes())),
        ),
    ];
    for (name, mutate) in cases {
        let mut img = good.clone();
        mutate(&mut img);
        let p = dir.path().join("bad.qcow2");
        std::fs::write(&p, &img).unwrap();
        let r = std::panic::catch_unwind(|| {
            open(&DiskOptions::new(&p).format(FormatChoice::Qcow2)).map(|mut d| {
                // If it opened, I/O must still not panic.
                let mut b = vec![0u8; 65536];
                let _ = d.read(0, &[IoBuf::from_slice(&mut b)]);
            })
        });
        match r {
            Err(_) => panic!("{name}: panicked"),
            Ok(Err(e)) => {
                let e = e.to_string();
                assert!(e.contains("bad.qcow2"), "{name}: {e}");
            }
            Ok(Ok(())) => {
                // Only benign mutations may open.
                assert!(
                    matches!(name, "l1 offset past EOF" | "refcount table past EOF"),
                    "{name}: accepted"
                );
            }
        }
    }
}

struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn phy_block_device_via_loop() {
    if !have("losetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lo.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    let o = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    if !o.status.success() {
        let msg = String::from_utf8_lossy(&o.stderr);
        if std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
            eprintln!("skipping: cannot create a loop device: {msg}");
            return;
        }
        panic!("losetup failed (needs root and loop devices): {msg}");
    }
    let dev = Loop(String::from_utf8_lossy(&o.stdout).trim().to_string());
    let mut d = open(&DiskOptions::new(&dev.0)).unwrap();
    assert!(d.info().block_device);
    assert_eq!(d.info().size, 8 << 20);
    let data = pattern(128 * 1024, 5);
    write(d.as_mut(), 1 << 20, &data);
    d.flush().unwrap();
    assert_eq!(read(d.as_mut(), 1 << 20, data.len()), data);
    d.write_zeroes(1 << 20, 4096, false).unwrap();
    assert_eq!(read(d.as_mut(), 1 << 20, 4096), vec![0; 4096]);
    let _ = d.discard(2 << 20, 65536); // loop devices may not support discard
                                       // A second writer is refused (O_EXCL on the device, or our lock).
    let e = open(&DiskOptions::new(&dev.0)).err().unwrap().to_string();
    assert!(e.contains("locked") || e.contains("in use"), "{e}");
    drop(d);
    let host = std::fs::read(&img).unwrap();
    assert_eq!(
        &host[(1 << 20) + 4096..(1 << 20) + data.len()],
        &data[4096..]
    );
}

/// Fuzz: random byte and pointer corruption of the header, refcount structures, L1 and L2
/// tables of a small image with data. Opening, reading and writing must never panic (errors
/// are fine), and the work per case is bounded by the small image (reads are capped at 64 KiB
/// at a few offsets).
#[test]
fn fuzz_qcow2_metadata_corruption_never_panics() {
    use proptest::prelude::*;
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(make_qcow2(dir.path())).unwrap();
    let meta_end = good.len().min(6 * 65536);
    let p = dir.path().join("fuzz.qcow2");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec((0..meta_end, any::<u64>(), any::<bool>()), 1..8);
    runner
        .run(&strategy, |edits| {
            let mut img = good.clone();
            for (off, val, pointer) in edits {
                if pointer {
                    let o = off & !7;
                    let end = (o + 8).min(img.len());
                    img[o..end].copy_from_slice(&val.to_be_bytes()[..end - o]);
                } else {
                    img[off] = val as u8;
                }
            }
            std::fs::write(&p, &img).unwrap();
            let r = std::panic::catch_unwind(|| {
                if let Ok(mut d) = open(&DiskOptions::new(&p).format(FormatChoice::Qcow2)) {
                    let size = d.info().size;
                    let mut b = vec![0u8; 65536];
                    for off in [0u64, 2 << 20, size.saturating_sub(65536)] {
                        let _ = d.read(off, &[IoBuf::from_slice(&mut b)]);
                    }
                    let _ = d.write(4096, &[IoBuf::from_slice(&mut b[..4096])]);
                    let _ = d.flush();
                }
            });
            prop_assert!(r.is_ok(), "panicked");
            Ok(())
        })
        .unwrap();
}
