//! Guest core dumps (`xl dump-core`, `on_crash="coredump-*"`): an ELF64 core file of the whole
//! domain, the format QEMU's `dump-guest-memory` writes without paging.
//!
//! Layout: the ELF header, one `PT_NOTE` with an `NT_PRSTATUS` note per vCPU (its general
//! registers in the `user_regs_struct` order of x86-64 Linux cores, `pr_pid` = vCPU index + 1),
//! then one `PT_LOAD` per guest RAM region with `p_paddr` = `p_vaddr` = its guest-physical
//! address. Zero pages are left as holes, so the file is sparse on disk. `readelf`, `gdb -c` and
//! `crash` read it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};

use super::snapshot::{lock, VcpuState};
use super::*;

/// Size of the ELF64 header.
const EHDR: usize = 64;
/// Size of one ELF64 program header.
const PHDR: usize = 56;
/// Size of `struct elf_prstatus` on x86-64.
const PRSTATUS: usize = 336;
/// Offset of `pr_reg` in it.
const PR_REG: usize = 112;
/// File offset alignment of the memory segments.
const SEG_ALIGN: u64 = 4096;

/// What a core dump wrote.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CoreSummary {
    /// Size of the file (its holes included).
    pub bytes: u64,
    /// Guest pages with data written.
    pub pages: u64,
    /// vCPUs whose registers are in the file.
    pub vcpus: u32,
    /// Time spent, in milliseconds.
    pub millis: u64,
}

/// One `NT_PRSTATUS` note for `s`.
fn prstatus_note(s: &VcpuState) -> Vec<u8> {
    let mut desc = vec![0u8; PRSTATUS];
    // pr_pid (offset 32) and pr_ppid/pgrp/sid stay 0 except pid: gdb names threads by it.
    desc[32..36].copy_from_slice(&(u32::from(s.id) + 1).to_le_bytes());
    let r = &s.regs;
    let sr = &s.sregs;
    let regs: [u64; 27] = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rax, // orig_rax
        r.rip,
        u64::from(sr.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(sr.ss.selector),
        sr.fs.base,
        sr.gs.base,
        u64::from(sr.ds.selector),
        u64::from(sr.es.selector),
        u64::from(sr.fs.selector),
        u64::from(sr.gs.selector),
    ];
    for (i, v) in regs.iter().enumerate() {
        let o = PR_REG + i * 8;
        desc[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    let mut n = Vec::with_capacity(12 + 8 + PRSTATUS);
    n.extend_from_slice(&5u32.to_le_bytes()); // namesz: "CORE\0"
    n.extend_from_slice(&(PRSTATUS as u32).to_le_bytes());
    n.extend_from_slice(&1u32.to_le_bytes()); // NT_PRSTATUS
    n.extend_from_slice(b"CORE\0\0\0\0");
    n.extend_from_slice(&desc);
    n
}

fn phdr(kind: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64) -> [u8; PHDR] {
    let mut p = [0u8; PHDR];
    p[0..4].copy_from_slice(&kind.to_le_bytes());
    p[4..8].copy_from_slice(&flags.to_le_bytes());
    p[8..16].copy_from_slice(&offset.to_le_bytes());
    p[16..24].copy_from_slice(&addr.to_le_bytes()); // p_vaddr
    p[24..32].copy_from_slice(&addr.to_le_bytes()); // p_paddr
    p[32..40].copy_from_slice(&size.to_le_bytes()); // p_filesz
    p[40..48].copy_from_slice(&size.to_le_bytes()); // p_memsz
    p[48..56].copy_from_slice(&align.to_le_bytes());
    p
}

fn ehdr(phnum: u16) -> [u8; EHDR] {
    let mut h = [0u8; EHDR];
    h[0..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = 1; // ELFDATA2LSB
    h[6] = 1; // EV_CURRENT
    h[16..18].copy_from_slice(&4u16.to_le_bytes()); // ET_CORE
    h[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    h[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    h[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    h[56..58].copy_from_slice(&phnum.to_le_bytes());
    h
}

impl Vm {
    /// Writes an ELF core of the domain to `path` (created, mode 0600, replacing a file there).
    /// The vCPUs are parked and the device workers stopped meanwhile; a running domain runs on
    /// afterwards. vCPUs whose thread has ended (a guest that crashed them) have no registers in
    /// the file.
    pub fn dump_core(&mut self, path: &Path) -> Result<CoreSummary, SnapshotError> {
        let t0 = Instant::now();
        let was_running = self.control.state() == RunState::Running;
        if !self.park_all() {
            if was_running {
                self.control.set_state(RunState::Running);
            }
            return Err(SnapshotError::Invalid("vCPUs did not stop in time".into()));
        }
        let quiesced: Vec<bool> = self.virtio.iter().map(|d| lock(d).quiesce()).collect();
        let r = self.write_core(path);
        for (d, q) in self.virtio.iter().zip(quiesced) {
            if q {
                lock(d).resume_worker();
            }
        }
        if was_running {
            self.control.set_state(RunState::Running);
        }
        let mut sum = r?;
        sum.millis = t0.elapsed().as_millis() as u64;
        Ok(sum)
    }

    /// On a guest crash with `crash_core` configured: the core, before the VMM ends.
    pub(super) fn crash_core(&mut self) {
        let Some(path) = self.cfg.crash_core.clone() else {
            return;
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match self.dump_core(&path) {
            Ok(s) => tracing::info!(
                "guest crashed: core dumped to {} ({} pages, {} vCPUs, {} ms)",
                path.display(),
                s.pages,
                s.vcpus,
                s.millis
            ),
            Err(e) => tracing::error!("guest crashed: core dump to {} failed: {e}", path.display()),
        }
    }

    fn write_core(&self, path: &Path) -> Result<CoreSummary, SnapshotError> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| SnapshotError::Io { what, source }
        };
        let live: Vec<u8> = self
            .present_vcpus()
            .into_iter()
            .filter(|&id| !self.vcpu_thread_ended(id))
            .collect();
        let vcpus = self.capture_vcpus_of(&live)?;
        let notes: Vec<u8> = vcpus.iter().flat_map(prstatus_note).collect();
        let regions: Vec<(u64, u64)> = self
            ._mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect();
        let phnum = 1 + regions.len();
        let note_off = (EHDR + PHDR * phnum) as u64;
        let mut off = (note_off + notes.len() as u64).div_ceil(SEG_ALIGN) * SEG_ALIGN;
        let mut head = Vec::with_capacity(off as usize);
        head.extend_from_slice(&ehdr(phnum as u16));
        head.extend_from_slice(&phdr(4, 0, note_off, 0, notes.len() as u64, 0)); // PT_NOTE
        let mut placed = Vec::with_capacity(regions.len());
        for &(gpa, len) in &regions {
            // PT_LOAD, read/write/execute.
            head.extend_from_slice(&phdr(1, 7, off, gpa, len, SEG_ALIGN));
            placed.push((gpa, len, off));
            off += len;
        }
        head.extend_from_slice(&notes);
        let _ = std::fs::remove_file(path);
        let f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("create"))?;
        f.set_len(off).map_err(io("size"))?;
        (&f).write_all(&head).map_err(io("write"))?;
        let mut pages = 0u64;
        let mut buf = vec![0u8; 256 * PAGE];
        for (gpa, len, foff) in placed {
            let mut done = 0u64;
            while done < len {
                let n = ((len - done) as usize).min(buf.len());
                self._mem
                    .read_slice(&mut buf[..n], GuestAddress(gpa + done))
                    .map_err(|e| SnapshotError::Invalid(format!("reading guest memory: {e}")))?;
                // Runs of non-zero pages are written together; zero pages stay holes.
                let mut i = 0;
                while i < n {
                    if buf[i..i + PAGE].iter().all(|&b| b == 0) {
                        i += PAGE;
                        continue;
                    }
                    let start = i;
                    while i < n && buf[i..i + PAGE].iter().any(|&b| b != 0) {
                        i += PAGE;
                    }
                    pages += ((i - start) / PAGE) as u64;
                    f.write_all_at(&buf[start..i], foff + done + start as u64)
                        .map_err(io("write"))?;
                }
                done += n as u64;
            }
        }
        f.sync_all().map_err(io("sync"))?;
        Ok(CoreSummary {
            bytes: off,
            pages,
            vcpus: vcpus.len() as u32,
            millis: 0,
        })
    }
}

/// Guest page size.
const PAGE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_have_the_elf64_core_layout() {
        let h = ehdr(3);
        assert_eq!(&h[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([h[16], h[17]]), 4);
        assert_eq!(u16::from_le_bytes([h[56], h[57]]), 3);
        let p = phdr(1, 7, 8192, 0x10_0000, 4096, 4096);
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 8192);
        assert_eq!(u64::from_le_bytes(p[16..24].try_into().unwrap()), 0x10_0000);
        assert_eq!(u64::from_le_bytes(p[24..32].try_into().unwrap()), 0x10_0000);
    }
}
