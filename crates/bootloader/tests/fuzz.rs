//! proptest fuzzing of everything that reads guest data: boot-menu parsers (random text and
//! GRUB-like token soup), partition tables (random MBR/GPT sectors), and whole images (a real
//! ext4 image, partitioned or not, with random bytes overwritten in its metadata), through
//! the in-process engine and, for a sample, through the sandboxed helper. No case may panic
//! (panics inside third-party parsers are caught and counted; the count is printed).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rxen_bootloader::disk::{Disk, MemDisk};
use rxen_bootloader::menu::{self, MenuLimits};
use rxen_bootloader::{partition, run_engine, EngineRequest, Limits};

static SLOWEST_US: AtomicUsize = AtomicUsize::new(0);

fn timed<T>(f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    SLOWEST_US.fetch_max(t.elapsed().as_micros() as usize, Ordering::Relaxed);
    r
}

fn grubby_line() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "menuentry",
        "submenu",
        "}",
        "{",
        "linux",
        "initrd",
        "kernel",
        "title",
        "root",
        "set",
        "default=",
        "default",
        "saved",
        "${saved_entry}",
        "'a b'",
        "\"q\"",
        "--id",
        "x",
        "$menuentry_id_option",
        "function",
        "if",
        "fi",
        "(hd0,0)/k",
        "/boot/vmlinuz",
        "=",
        ">",
        "1>0",
        "blscfg",
        "timeout=5",
        "\\",
        "'",
        "\"",
        "\t",
        "ro",
        "$x",
        "${y",
        "rootnoverify",
    ]);
    prop::collection::vec(words, 0..8).prop_map(|w| w.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn menu_parsers_random_text(text in "\\PC{0,400}") {
        timed(|| {
            let env = HashMap::new();
            if let Ok(m) = menu::parse_grub2(&text, &env, &[], MenuLimits::default()) {
                let i = m.default_index();
                prop_assert!(m.entries.is_empty() || i < m.entries.len());
            }
            if let Ok(m) = menu::parse_legacy(&text, Some(3), MenuLimits::default()) {
                let _ = m.select(&text);
                let _ = m.default_index();
            }
            let b = menu::parse_bls_entry("x", &text);
            let _ = menu::bls_menu(vec![b], &env);
            let _ = menu::glob_match(&text, &text);
            Ok(())
        })?;
    }

    #[test]
    fn menu_parsers_grub_soup(lines in prop::collection::vec(grubby_line(), 0..60),
                              entry in grubby_line()) {
        let text = lines.join("\n");
        timed(|| {
            let mut env = HashMap::new();
            env.insert("saved_entry".to_string(), entry.clone());
            let bls = vec![menu::BootEntry { title: "b".into(), kernel: Some("/k".into()), position: vec![0], ..Default::default() }];
            let limits = MenuLimits { max_entries: 20, max_entry_lines: 20 };
            if let Ok(m) = menu::parse_grub2(&text, &env, &bls, limits) {
                prop_assert!(m.entries.len() <= 20);
                let i = m.default_index();
                prop_assert!(m.entries.is_empty() || i < m.entries.len());
                if let Some(j) = m.select(&entry) { prop_assert!(j < m.entries.len()); }
                let _ = rxen_bootloader::output::format_listing(&m.entries);
            }
            if let Ok(m) = menu::parse_legacy(&text, None, limits) {
                prop_assert!(m.entries.len() <= 20);
                let _ = m.default_index();
            }
            Ok(())
        })?;
    }

    #[test]
    fn partition_tables_random(mut sector0 in prop::collection::vec(any::<u8>(), 512),
                               gpt in prop::collection::vec(any::<u8>(), 512),
                               entries in prop::collection::vec(any::<u8>(), 2048),
                               kind in 0u8..4, size_kib in 1usize..256) {
        timed(|| {
            sector0[510] = 0x55;
            sector0[511] = 0xaa;
            if kind == 1 { sector0[446 + 4] = 0xee; }
            if kind == 2 { sector0[446 + 4] = 0x05; } // extended partition
            let mut img = vec![0u8; size_kib * 1024 + 4096];
            img[..512].copy_from_slice(&sector0);
            img[512..1024].copy_from_slice(&gpt);
            if kind == 1 || kind == 3 { img[512..520].copy_from_slice(b"EFI PART"); }
            img[1024..3072].copy_from_slice(&entries);
            let d: Arc<dyn Disk> = Arc::new(MemDisk(img));
            let (_, vols) = partition::find_volumes(&d);
            prop_assert!(!vols.is_empty());
            for v in vols {
                prop_assert!(v.offset < d.size() && v.offset + v.size <= d.size());
            }
            Ok(())
        })?;
    }
}

/// A small real ext4 image (with a GRUB 2 menu) and the same at 1 MiB inside an MBR.
fn base_images() -> Option<&'static (Vec<u8>, Vec<u8>)> {
    static IMGS: OnceLock<Option<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
    IMGS.get_or_init(|| {
        if !common::need("mkfs.ext4", "e2fsprogs") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let t = common::Tree::new(dir.path());
        t.file("/boot/vmlinuz", &common::pseudo("k", 50_000))
            .file("/boot/initrd", &common::pseudo("i", 20_000))
            .symlink("/vmlinuz", "boot/vmlinuz")
            .file(
                "/boot/grub/grub.cfg",
                b"set default=0\nmenuentry 'a' {\n linux /vmlinuz ro\n initrd /boot/initrd\n}\n",
            )
            .file("/loader/entries/a.conf", b"title t\nlinux /boot/vmlinuz\n");
        let p = dir.path().join("fs.img");
        t.mkfs(&p, 4);
        let fs = std::fs::read(&p).unwrap();
        let mut mbr = vec![0u8; (1 << 20) + fs.len()];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&((fs.len() / 512) as u32).to_le_bytes());
        mbr[1 << 20..].copy_from_slice(&fs);
        Some((fs, mbr))
    })
    .as_ref()
}

static CAUGHT_PANICS: AtomicUsize = AtomicUsize::new(0);

fn mutated_engine_run(img: Vec<u8>) {
    let d: Arc<dyn Disk> = Arc::new(MemDisk(img));
    let mut k = Vec::new();
    let mut r = Vec::new();
    let limits = Limits {
        max_file: 1 << 20,
        ..Limits::default()
    };
    let res = timed(|| {
        run_engine(
            d,
            &EngineRequest::default(),
            &limits,
            Some((&mut k, &mut r)),
        )
    });
    if let Err(rxen_bootloader::Error::Malformed(_)) = res {
        CAUGHT_PANICS.fetch_add(1, Ordering::Relaxed);
    }
    assert!(k.len() <= 1 << 20 && r.len() <= 1 << 20);
}

fn mutation() -> impl Strategy<Value = Vec<(usize, u8)>> {
    // Half the writes hit the superblock/group descriptors, the rest the first 1 MiB.
    let off = prop_oneof![0usize..8192, 0usize..(1 << 20)];
    prop::collection::vec((off, any::<u8>()), 1..48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_ext4_images(muts in mutation(), partitioned in any::<bool>()) {
        let Some((fs, mbr)) = base_images() else { return Ok(()); };
        let (mut img, base) = if partitioned { (mbr.clone(), 1usize << 20) } else { (fs.clone(), 0) };
        for (o, b) in muts {
            let o = base + o;
            if o < img.len() { img[o] = b; }
        }
        mutated_engine_run(img);
    }
}

#[test]
fn unmutated_base_image_boots() {
    let Some((fs, mbr)) = base_images() else {
        return;
    };
    for img in [fs.clone(), mbr.clone()] {
        let d: Arc<dyn Disk> = Arc::new(MemDisk(img));
        let mut k = Vec::new();
        let mut r = Vec::new();
        let rep = run_engine(
            d,
            &EngineRequest::default(),
            &Limits::default(),
            Some((&mut k, &mut r)),
        )
        .unwrap();
        assert_eq!(rep.kernel, "/vmlinuz");
        assert_eq!(k, common::pseudo("k", 50_000));
        assert_eq!(r, common::pseudo("i", 20_000));
    }
}

/// A sample of mutated images through the real sandboxed helper: it must answer (ok or a
/// clean error) and leave no output files behind on error.
#[test]
fn mutated_images_through_the_sandbox() {
    let Some((fs, _)) = base_images() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut ok = 0;
    for i in 0..40 {
        let mut img = fs.clone();
        for _ in 0..16 {
            let o = (next() % 8192) as usize;
            img[o] = next() as u8;
        }
        let p = dir.path().join(format!("m{i}.img"));
        std::fs::write(&p, &img).unwrap();
        let opts = rxen_bootloader::Options {
            output_dir: out.clone(),
            sandbox: rxen_bootloader::Sandbox::Helper(common::our_pygrub()),
            limits: Limits {
                timeout: Duration::from_secs(60),
                ..Limits::default()
            },
            ..rxen_bootloader::Options::default()
        };
        match rxen_bootloader::extract(&p, &opts) {
            Ok(sel) => {
                ok += 1;
                sel.remove_files();
            }
            Err(_) => {
                assert_eq!(
                    std::fs::read_dir(&out).unwrap().count(),
                    0,
                    "files left behind"
                );
            }
        }
    }
    eprintln!("sandboxed mutated images: {ok}/40 still bootable");
}

#[test]
fn zz_report() {
    // Informational: printed with --nocapture.
    eprintln!(
        "slowest single case so far: {} us; panics caught inside parsers: {}",
        SLOWEST_US.load(Ordering::Relaxed),
        CAUGHT_PANICS.load(Ordering::Relaxed)
    );
}
