//! Extraction time: rxen's pygrub (sandboxed child, and the in-process engine) against
//! Debian's pygrub, on the same images in the same run. Prints medians and ratios.
//!
//! `cargo bench -p rxen-bootloader --bench extract` (needs mkfs.ext4, sfdisk, qemu-img and
//! Debian's xen-utils-4.17).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn pseudo(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_cmd(bin: &Path, args: &[&str], image: &Path, out: &Path, n: usize) -> Duration {
    let mut v = Vec::new();
    for _ in 0..n {
        let _ = std::fs::remove_dir_all(out);
        std::fs::create_dir_all(out).unwrap();
        let t = Instant::now();
        let o = Command::new(bin)
            .args(args)
            .arg(format!("--output-directory={}", out.display()))
            .arg(image)
            .output()
            .unwrap();
        v.push(t.elapsed());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    median(v)
}

fn main() {
    let debian = PathBuf::from("/usr/lib/xen-4.17/bin/pygrub");
    if !debian.exists() {
        eprintln!("Debian's pygrub missing: apt-get install xen-utils-4.17");
        std::process::exit(1);
    }
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_pygrub"));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("boot/grub")).unwrap();
    std::fs::write(
        root.join("boot/vmlinuz-6.1.0-27-cloud-amd64"),
        pseudo(8 << 20, 1),
    )
    .unwrap();
    std::fs::write(
        root.join("boot/initrd.img-6.1.0-27-cloud-amd64"),
        pseudo(30 << 20, 2),
    )
    .unwrap();
    std::fs::write(
        root.join("boot/grub/grub.cfg"),
        "set default=0\nmenuentry 'Debian' {\n linux /boot/vmlinuz-6.1.0-27-cloud-amd64 root=/dev/xvda2 ro console=hvc0\n initrd /boot/initrd.img-6.1.0-27-cloud-amd64\n}\n",
    )
    .unwrap();
    let img = dir.path().join("fs.img");
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("128M")
        .status()
        .unwrap();
    assert!(ok.success());
    let qcow = dir.path().join("fs.qcow2");
    let _ = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&img)
        .arg(&qcow)
        .status();
    let out = dir.path().join("out");
    let n = 15;
    let args = ["-q", "--output-format=simple"];
    let list = ["-l"];
    println!(
        "extraction of an 8 MiB kernel + 30 MiB initrd from a 128 MiB ext4 image, median of {n}:"
    );
    let d = time_cmd(&debian, &args, &img, &out, n);
    let s = time_cmd(&ours, &args, &img, &out, n);
    let i = time_cmd(
        &ours,
        &["-q", "--output-format=simple", "--no-sandbox"],
        &img,
        &out,
        n,
    );
    let q = time_cmd(&ours, &args, &qcow, &out, n);
    println!(
        "  Debian pygrub (raw)           {:>8.1} ms",
        d.as_secs_f64() * 1e3
    );
    println!(
        "  rxen pygrub, sandboxed (raw)  {:>8.1} ms   ratio {:.2}x faster",
        s.as_secs_f64() * 1e3,
        d.as_secs_f64() / s.as_secs_f64()
    );
    println!(
        "  rxen pygrub, in-process (raw) {:>8.1} ms   ratio {:.2}x faster",
        i.as_secs_f64() * 1e3,
        d.as_secs_f64() / i.as_secs_f64()
    );
    println!(
        "  rxen pygrub, sandboxed (qcow2){:>8.1} ms",
        q.as_secs_f64() * 1e3
    );
    let dl = time_cmd(&debian, &list, &img, &out, n);
    let sl = time_cmd(&ours, &list, &img, &out, n);
    println!("listing (-l):");
    println!(
        "  Debian pygrub                 {:>8.1} ms",
        dl.as_secs_f64() * 1e3
    );
    println!(
        "  rxen pygrub, sandboxed        {:>8.1} ms   ratio {:.2}x faster",
        sl.as_secs_f64() * 1e3,
        dl.as_secs_f64() / sl.as_secs_f64()
    );
}
