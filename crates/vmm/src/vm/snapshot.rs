//! Save and restore of a whole domain: vCPU state, the in-kernel irqchip/PIT/clock, every device,
//! and guest memory, as an rxen stream (`rxen-migration`).
//!
//! Capture happens with every vCPU parked (each parked vCPU thread captures its own state) and
//! every virtio worker stopped, so neither guest code nor device backends change memory or ring
//! positions meanwhile. Restore runs in a freshly built VM before its vCPUs start.

use std::io::{Read, Write};
use std::time::Instant;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VcpuFd;
use rxen_devices::legacy::{acpi_pm::AcpiPmState, cmos::CmosState, serial::SerialState};
use rxen_devices::virtio::pci::VirtioPciState;
use rxen_devices::Snapshot;
use rxen_migration::stream::{Record, StreamReader, StreamWriter, MAX_PAGES_PER_RECORD, PAGE_SIZE};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use super::*;
pub(super) use crate::cpu::unix_us;

/// Errors saving or restoring a domain.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The stream could not be read or written.
    #[error(transparent)]
    Stream(#[from] rxen_migration::StreamError),
    /// The save file header is invalid.
    #[error(transparent)]
    XlFile(#[from] rxen_migration::XlFileError),
    /// A KVM ioctl failed.
    #[error("KVM: {op} failed: {source}")]
    Kvm {
        /// Operation.
        op: String,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// A state record could not be encoded or decoded.
    #[error("state record {what}: {source}")]
    Json {
        /// Which record.
        what: &'static str,
        /// Cause.
        source: serde_json::Error,
    },
    /// The saved state does not fit this domain or is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// Host I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// A live migration's round 0 sends what it found at least this often (bytes of RAM scanned).
const LIVE_FLUSH_BYTES: u64 = 32 << 20;

fn kerr(op: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    let op = op.into();
    move |source| SnapshotError::Kvm { op, source }
}

/// Metadata in the stream's info record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamMeta {
    /// rxen-vmm version that wrote the stream.
    pub vmm_version: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs the guest has (one vCPU record each; with CPU hot-plug their indices
    /// need not be `0..vcpus`).
    pub vcpus: u8,
    /// Number of virtio devices.
    pub virtio_devices: usize,
}

/// One vCPU's architectural state as KVM exposes it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index.
    pub id: u8,
    /// CPUID table the vCPU runs with.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: Option<kvm_xcrs>,
    /// Local APIC.
    pub lapic: kvm_lapic_state,
    /// MSRs (index, value), including TSC, kvmclock and TSC deadline.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMI, SMM.
    pub events: kvm_vcpu_events,
    /// Run state (running, halted, INIT-waiting, ...).
    pub mp_state: kvm_mp_state,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// TSC frequency in kHz.
    pub tsc_khz: Option<u32>,
}

/// Captured PCI configuration space of one slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PciSlotState {
    /// Slot (device number) on bus 0.
    pub slot: u8,
    /// The 64 configuration dwords.
    pub regs: Vec<u32>,
}

/// Everything but vCPUs and memory.
#[derive(Clone, Serialize, Deserialize)]
pub struct MachineState {
    /// PIC master.
    pub pic_master: kvm_irqchip,
    /// PIC slave.
    pub pic_slave: kvm_irqchip,
    /// IOAPIC.
    pub ioapic: kvm_irqchip,
    /// PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
    /// COM1.
    pub serial: SerialState,
    /// CMOS/RTC.
    pub cmos: CmosState,
    /// ACPI PM block.
    pub acpi_pm: AcpiPmState,
    /// Configuration address latch (0xCF8).
    pub pci_address: u32,
    /// PCI functions.
    pub pci: Vec<PciSlotState>,
    /// virtio-pci transports, in device order.
    pub virtio: Vec<VirtioPciState>,
    /// The GPE block (its enable bits are the guest's); absent in streams of older rxen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpe: Option<rxen_devices::pci::hotplug::GpeState>,
    /// The CPU hot-plug controller, for a domain that can change its vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_hotplug: Option<rxen_devices::cpu_hotplug::CpuHotplugState>,
}

/// What a save wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SaveSummary {
    /// Bytes of stream written.
    pub bytes: u64,
    /// Guest pages written (zero pages are skipped).
    pub pages: u64,
    /// Time spent, in milliseconds.
    pub millis: u64,
}

/// The MSRs KVM saves (asked once per process: the host's KVM does not change).
fn msr_indices() -> Arc<Vec<u32>> {
    static LIST: std::sync::OnceLock<Arc<Vec<u32>>> = std::sync::OnceLock::new();
    if let Some(l) = LIST.get() {
        return l.clone();
    }
    match Kvm::new().and_then(|k| k.get_msr_index_list()) {
        Ok(l) => LIST.get_or_init(|| Arc::new(l.as_slice().to_vec())).clone(),
        Err(e) => {
            tracing::warn!("KVM_GET_MSR_INDEX_LIST: {e}");
            Arc::new(vec![])
        }
    }
}

fn entries(idx: &[(u32, u64)]) -> Vec<kvm_msr_entry> {
    idx.iter()
        .map(|(index, data)| kvm_msr_entry {
            index: *index,
            data: *data,
            ..Default::default()
        })
        .collect()
}

/// Reads every MSR KVM can save; an MSR the vCPU refuses is skipped.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut rest: Vec<(u32, u64)> = indices.iter().map(|i| (*i, 0)).collect();
    while !rest.is_empty() {
        let chunk: Vec<(u32, u64)> = rest.iter().take(200).copied().collect();
        let Ok(mut msrs) = Msrs::from_entries(&entries(&chunk)) else {
            break;
        };
        let n = vcpu.get_msrs(&mut msrs).unwrap_or(0);
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        let skip = if n < chunk.len() { n + 1 } else { n };
        rest.drain(..skip.max(1).min(rest.len()));
    }
    out
}

fn write_msrs(vcpu: &VcpuFd, id: u8, msrs: &[(u32, u64)]) {
    let mut rest = msrs.to_vec();
    while !rest.is_empty() {
        let chunk: Vec<(u32, u64)> = rest.iter().take(200).copied().collect();
        let Ok(m) = Msrs::from_entries(&entries(&chunk)) else {
            break;
        };
        let n = vcpu.set_msrs(&m).unwrap_or(0);
        if n < chunk.len() {
            tracing::debug!("vcpu{id}: MSR {:#x} not restored", chunk[n].0);
        }
        let skip = if n < chunk.len() { n + 1 } else { n };
        rest.drain(..skip.max(1).min(rest.len()));
    }
}

fn capture_vcpu(vcpu: &VcpuFd, id: u8, msr_list: &[u32]) -> Result<VcpuState, SnapshotError> {
    let p = |op: &str| format!("vcpu{id}: {op}");
    Ok(VcpuState {
        id,
        cpuid: vcpu
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kerr(p("KVM_GET_CPUID2")))?
            .as_slice()
            .to_vec(),
        regs: vcpu.get_regs().map_err(kerr(p("KVM_GET_REGS")))?,
        sregs: vcpu.get_sregs().map_err(kerr(p("KVM_GET_SREGS")))?,
        xsave: vcpu.get_xsave().map_err(kerr(p("KVM_GET_XSAVE")))?,
        xcrs: vcpu.get_xcrs().ok(),
        lapic: vcpu.get_lapic().map_err(kerr(p("KVM_GET_LAPIC")))?,
        msrs: read_msrs(vcpu, msr_list),
        events: vcpu
            .get_vcpu_events()
            .map_err(kerr(p("KVM_GET_VCPU_EVENTS")))?,
        mp_state: vcpu.get_mp_state().map_err(kerr(p("KVM_GET_MP_STATE")))?,
        debugregs: vcpu
            .get_debug_regs()
            .map_err(kerr(p("KVM_GET_DEBUGREGS")))?,
        tsc_khz: vcpu.get_tsc_khz().ok(),
    })
}

/// The part of a vCPU's state that does not touch the interrupt controllers: applied as soon as
/// its record arrives (a migration's destination does it while the sender still collects the
/// last pages), before the irqchip state. [`apply_vcpu_late`] completes it.
fn apply_vcpu_early(vcpu: &VcpuFd, s: &VcpuState) -> Result<(), SnapshotError> {
    let id = s.id;
    let p = |op: &str| format!("vcpu{id}: {op}");
    // The vCPU was created with its CPUID already; setting an identical table again costs more
    // than all the other state together (KVM re-derives its MMU and feature state).
    let same = vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .is_ok_and(|c| c.as_slice() == s.cpuid.as_slice());
    if !same {
        let cpuid = CpuId::from_entries(&s.cpuid)
            .map_err(|_| SnapshotError::Invalid(format!("vcpu{id}: CPUID table too large")))?;
        vcpu.set_cpuid2(&cpuid).map_err(kerr(p("KVM_SET_CPUID2")))?;
    }
    if let Some(khz) = s.tsc_khz {
        if vcpu.get_tsc_khz().ok() != Some(khz) {
            if let Err(e) = vcpu.set_tsc_khz(khz) {
                tracing::warn!("vcpu{id}: cannot set TSC to {khz} kHz: {e}");
            }
        }
    }
    vcpu.set_regs(&s.regs).map_err(kerr(p("KVM_SET_REGS")))?;
    vcpu.set_sregs(&s.sregs).map_err(kerr(p("KVM_SET_SREGS")))?;
    // SAFETY: `s.xsave` is a complete kvm_xsave captured by KVM_GET_XSAVE; rxen never enables
    // dynamically sized XSAVE features (AMX), so the legacy 4 KiB buffer holds the whole state.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(kerr(p("KVM_SET_XSAVE")))?;
    if let Some(x) = &s.xcrs {
        vcpu.set_xcrs(x).map_err(kerr(p("KVM_SET_XCRS")))?;
    }
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(kerr(p("KVM_SET_DEBUGREGS")))?;
    Ok(())
}

/// The rest of a vCPU's state, after the irqchip's: run state, local APIC, then the MSRs (the
/// TSC-deadline MSR only takes in the APIC's TSC-deadline mode) and pending events.
fn apply_vcpu_late(vcpu: &VcpuFd, s: &VcpuState) -> Result<(), SnapshotError> {
    let id = s.id;
    let p = |op: &str| format!("vcpu{id}: {op}");
    vcpu.set_mp_state(s.mp_state)
        .map_err(kerr(p("KVM_SET_MP_STATE")))?;
    vcpu.set_lapic(&s.lapic).map_err(kerr(p("KVM_SET_LAPIC")))?;
    write_msrs(vcpu, id, &s.msrs);
    vcpu.set_vcpu_events(&s.events)
        .map_err(kerr(p("KVM_SET_VCPU_EVENTS")))?;
    Ok(())
}

const PCI_ADDR: u64 = 0xcf8;
const PCI_DATA: u64 = 0xcfc;

fn pci_read(pio: &Bus, slot: u8, reg: u8) -> u32 {
    let a = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(reg) << 2;
    pio.write(PCI_ADDR, &a.to_le_bytes());
    let mut d = [0u8; 4];
    pio.read(PCI_DATA, &mut d);
    u32::from_le_bytes(d)
}

fn pci_write(pio: &Bus, slot: u8, reg: u8, v: u32) {
    let a = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(reg) << 2;
    pio.write(PCI_ADDR, &a.to_le_bytes());
    pio.write(PCI_DATA, &v.to_le_bytes());
}

pub(super) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn json<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, SnapshotError> {
    serde_json::to_vec(v).map_err(|source| SnapshotError::Json { what, source })
}

fn unjson<T: serde::de::DeserializeOwned>(
    what: &'static str,
    b: &[u8],
) -> Result<T, SnapshotError> {
    serde_json::from_slice(b).map_err(|source| SnapshotError::Json { what, source })
}

impl Vm {
    /// Makes the vCPUs start parked (`rxen-vmm --paused`, `xl restore -p`).
    pub fn start_paused(&self) {
        self.control.set_state(RunState::Paused);
    }

    /// Parks every running vCPU; false if they did not stop.
    pub(super) fn park_all(&self) -> bool {
        self.control.set_state(RunState::Paused);
        let n = self.live_vcpus();
        self.control.wait_parked(n, || self.kick_all())
    }

    fn capture_vcpus(&self) -> Result<Vec<VcpuState>, SnapshotError> {
        self.capture_vcpus_of(&self.present_vcpus())
    }

    /// Captures the vCPUs `present` (ascending ids), each by its own parked thread.
    pub(super) fn capture_vcpus_of(&self, present: &[u8]) -> Result<Vec<VcpuState>, SnapshotError> {
        let msr_list = msr_indices();
        if !self.vcpu_fds.is_empty() {
            // Not started yet: capture directly.
            return self
                .vcpu_fds
                .iter()
                .filter(|(id, _)| present.contains(id))
                .map(|(id, v)| capture_vcpu(v, *id, &msr_list))
                .collect();
        }
        let (tx, rx) = mpsc::channel();
        let n = present.len();
        for &id in present {
            let tx = tx.clone();
            let list = msr_list.clone();
            self.control.post_task(
                id,
                Box::new(move |v: &VcpuFd| {
                    let _ = tx.send((id, capture_vcpu(v, id, &list)));
                }),
            );
        }
        let mut out: Vec<Option<VcpuState>> = (0..n).map(|_| None).collect();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let mut got = 0;
        while got < n {
            match rx.recv_timeout(std::time::Duration::from_secs(2)) {
                Ok((id, r)) => {
                    if let Some(pos) = present.iter().position(|p| *p == id) {
                        out[pos] = Some(r?);
                        got += 1;
                    }
                }
                Err(_) => {
                    // A vCPU whose thread ended (the guest reset or crashed it) never answers:
                    // fail now so the domain's own event is handled.
                    if let Some(&id) = present.iter().enumerate().find_map(|(i, id)| {
                        (out[i].is_none() && self.vcpu_thread_ended(*id)).then_some(id)
                    }) {
                        return Err(SnapshotError::Invalid(format!(
                            "vcpu{id} stopped running (the guest ended the domain) before it \
                             reported its state"
                        )));
                    }
                    let missing: Vec<String> = (0..n)
                        .filter(|&i| out[i].is_none())
                        .map(|i| self.vcpu_diagnosis(usize::from(present[i])))
                        .collect();
                    if Instant::now() > deadline {
                        return Err(SnapshotError::Invalid(format!(
                            "vCPUs did not report their state: {}",
                            missing.join("; ")
                        )));
                    }
                    tracing::warn!("waiting for vCPU state: {}", missing.join("; "));
                    self.kick_all();
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn capture_machine(&self) -> Result<MachineState, SnapshotError> {
        let vm = &self._vm_fd;
        let chip = |id| -> Result<kvm_irqchip, SnapshotError> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            vm.get_irqchip(&mut c).map_err(kerr("KVM_GET_IRQCHIP"))?;
            Ok(c)
        };
        let pio = &self.pio;
        let mut addr = [0u8; 4];
        pio.read(PCI_ADDR, &mut addr);
        let mut pci = Vec::new();
        for slot in 1..32u8 {
            if pci_read(pio, slot, 0) & 0xffff == 0xffff {
                continue;
            }
            pci.push(PciSlotState {
                slot,
                regs: (0..64u8).map(|r| pci_read(pio, slot, r)).collect(),
            });
        }
        pio.write(PCI_ADDR, &addr);
        Ok(MachineState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(kerr("KVM_GET_PIT2"))?,
            clock: vm.get_clock().map_err(kerr("KVM_GET_CLOCK"))?,
            serial: lock(&self.serial).snapshot(),
            cmos: lock(&self.cmos).snapshot(),
            acpi_pm: lock(&self.acpi_pm).snapshot(),
            pci_address: u32::from_le_bytes(addr),
            pci,
            virtio: self.virtio.iter().map(|d| lock(d).snapshot()).collect(),
            gpe: Some(lock(&self.gpe).snapshot()),
            cpu_hotplug: self.cpu_hotplug.as_ref().map(|c| lock(c).snapshot()),
        })
    }

    /// Writes every non-zero page of guest RAM. With `live`, what was found is sent on (written
    /// and flushed) at least every [`LIVE_FLUSH_BYTES`] of RAM scanned, so that a live
    /// migration's destination stores pages while the scan goes on rather than all at once.
    fn write_memory<W: Write>(
        &self,
        s: &mut StreamWriter<W>,
        live: bool,
    ) -> Result<u64, SnapshotError> {
        static ZERO: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
        let mut pages = 0u64;
        let mut gpas = Vec::with_capacity(1024);
        let mut data = Vec::with_capacity(1024 * PAGE_SIZE);
        let mut buf = vec![0u8; 256 * PAGE_SIZE];
        for region in self._mem.iter() {
            let start = region.start_addr().0;
            let len = region.len();
            let mut off = 0;
            while off < len {
                let n = ((len - off) as usize).min(buf.len());
                self._mem
                    .read_slice(&mut buf[..n], GuestAddress(start + off))
                    .map_err(|e| SnapshotError::Invalid(format!("reading guest memory: {e}")))?;
                for (i, page) in buf[..n].chunks_exact(PAGE_SIZE).enumerate() {
                    if page == &ZERO[..] {
                        continue;
                    }
                    gpas.push(start + off + (i * PAGE_SIZE) as u64);
                    data.extend_from_slice(page);
                    if gpas.len() == MAX_PAGES_PER_RECORD / 4 {
                        s.write_pages(&gpas, &data)?;
                        pages += gpas.len() as u64;
                        gpas.clear();
                        data.clear();
                    }
                }
                off += n as u64;
                if live && (start + off) % LIVE_FLUSH_BYTES == 0 {
                    if !gpas.is_empty() {
                        s.write_pages(&gpas, &data)?;
                        pages += gpas.len() as u64;
                        gpas.clear();
                        data.clear();
                    }
                    s.flush()?;
                }
            }
        }
        if !gpas.is_empty() {
            s.write_pages(&gpas, &data)?;
            pages += gpas.len() as u64;
        }
        Ok(pages)
    }

    fn meta(&self) -> StreamMeta {
        StreamMeta {
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            memory_mib: self.cfg.memory_mib,
            vcpus: self.present_vcpus().len() as u8,
            virtio_devices: self.virtio.len(),
        }
    }

    /// Saves the whole domain to `w`. The vCPUs are paused (and stay paused); device workers are
    /// stopped while state and memory are captured and restarted afterwards.
    pub fn save(&mut self, w: impl Write) -> Result<SaveSummary, SnapshotError> {
        let t0 = Instant::now();
        if !self.park_all() {
            return Err(SnapshotError::Invalid("vCPUs did not stop in time".into()));
        }
        let quiesced: Vec<bool> = self.virtio.iter().map(|d| lock(d).quiesce()).collect();
        let r = self.save_paused(w);
        for (d, q) in self.virtio.iter().zip(quiesced) {
            if q {
                lock(d).resume_worker();
            }
        }
        let (bytes, pages) = r?;
        Ok(SaveSummary {
            bytes,
            pages,
            millis: t0.elapsed().as_millis() as u64,
        })
    }

    fn save_paused(&self, w: impl Write) -> Result<(u64, u64), SnapshotError> {
        let vcpus = self.capture_vcpus()?;
        let machine = self.capture_machine()?;
        let mut s = StreamWriter::new(w, &json("info", &self.meta())?)?;
        let pages = self.write_memory(&mut s, false)?;
        for v in &vcpus {
            s.write_vcpu(&json("vcpu", v)?)?;
        }
        s.write_machine(&json("machine", &machine)?)?;
        let bytes = s.bytes_written() + 8;
        s.finish()?;
        Ok((bytes, pages))
    }

    /// Saves to the file at `path`, appending (the toolstack has written the xl header).
    pub fn save_to_path(&mut self, path: &std::path::Path) -> Result<SaveSummary, SnapshotError> {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| SnapshotError::Io {
                what: format!("open {}", path.display()),
                source,
            })?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let sum = self.save(&mut w)?;
        let f = w.into_inner().map_err(|e| SnapshotError::Io {
            what: format!("write {}", path.display()),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(|source| SnapshotError::Io {
            what: format!("sync {}", path.display()),
            source,
        })?;
        Ok(sum)
    }

    fn discard_memory(&self) {
        for region in self._mem.iter() {
            // SAFETY: the range is exactly one private anonymous guest RAM mapping owned by this
            // VM; no vCPU or device worker runs yet, and MADV_DONTNEED only turns its contents
            // into zero-fill-on-demand pages.
            unsafe {
                libc::madvise(
                    region.as_ptr() as *mut libc::c_void,
                    region.len() as usize,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }

    /// Restores the domain from a stream (or an xl save file), before the vCPUs start.
    pub fn restore(&mut self, r: impl Read) -> Result<(), SnapshotError> {
        if !self.vcpus.is_empty() {
            return Err(SnapshotError::Invalid(
                "restore must happen before the domain runs".into(),
            ));
        }
        let mut s = StreamReader::new(r)?;
        let meta: StreamMeta = unjson("info", s.meta())?;
        // With CPU hot-plug the saved domain may have had any number of its possible vCPUs.
        let vcpus_fit = match self.cpu_hotplug {
            Some(_) => meta.vcpus >= 1 && meta.vcpus <= self.max_vcpus,
            None => meta.vcpus == self.cfg.vcpus,
        };
        if meta.memory_mib != self.cfg.memory_mib
            || !vcpus_fit
            || meta.virtio_devices != self.virtio.len()
        {
            return Err(SnapshotError::Invalid(format!(
                "the saved domain has {} MiB, {} vCPUs and {} virtio devices; this configuration has {} MiB, {} vCPUs and {} virtio devices",
                meta.memory_mib, meta.vcpus, meta.virtio_devices,
                self.cfg.memory_mib, self.cfg.vcpus, self.virtio.len()
            )));
        }
        self.discard_memory();
        let mut times = RestoreTimes {
            started: unix_us(),
            ..Default::default()
        };
        let mut vcpus: Vec<VcpuState> = Vec::new();
        let mut early: Vec<u8> = Vec::new();
        let mut machine: Option<MachineState> = None;
        loop {
            match s.next_record()? {
                Record::Pages { gpas, data } => {
                    for (i, g) in gpas.iter().enumerate() {
                        self._mem
                            .write_slice(
                                &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
                                GuestAddress(*g),
                            )
                            .map_err(|e| {
                                SnapshotError::Invalid(format!(
                                    "page {g:#x} outside guest RAM: {e}"
                                ))
                            })?;
                    }
                }
                Record::Vcpu(b) => {
                    let v: VcpuState = unjson("vcpu", &b)?;
                    // A vCPU this VM has already: its registers go in now (the others once
                    // the whole stream is in and they are created).
                    if let Some((_, fd)) = self.vcpu_fds.iter().find(|(id, _)| *id == v.id) {
                        if !early.contains(&v.id) {
                            apply_vcpu_early(fd, &v)?;
                            early.push(v.id);
                        }
                    }
                    vcpus.push(v);
                    times.vcpus_read = unix_us();
                }
                Record::Machine(b) => {
                    machine = Some(unjson("machine", &b)?);
                    times.machine_read = unix_us();
                }
                Record::Round { .. } => times.last_round = unix_us(),
                Record::End => {
                    times.end = unix_us();
                    break;
                }
            }
        }
        let machine = machine
            .ok_or_else(|| SnapshotError::Invalid("the stream has no machine state".into()))?;
        // One record per present vCPU, ascending, CPU 0 first, all below the maximum.
        let ids_ok = vcpus.first().is_some_and(|v| v.id == 0)
            && vcpus.windows(2).all(|w| w[0].id < w[1].id)
            && vcpus.iter().all(|v| v.id < self.max_vcpus);
        if vcpus.len() != usize::from(meta.vcpus) || !ids_ok {
            return Err(SnapshotError::Invalid(format!(
                "the stream has {} vCPU records ({:?}) for {} vCPUs (at most {})",
                vcpus.len(),
                vcpus.iter().map(|v| v.id).collect::<Vec<_>>(),
                meta.vcpus,
                self.max_vcpus
            )));
        }
        self.match_vcpus(&vcpus)?;
        for st in vcpus.iter().filter(|v| !early.contains(&v.id)) {
            apply_vcpu_early(self.vcpu_fd(st.id)?, st)?;
        }
        self.apply_machine(&machine, &vcpus)?;
        times.applied = unix_us();
        // The sender released the image locks before it sent its final state.
        rxen_block::lock::resume_all().map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        times.locked = unix_us();
        self.restore_times = Some(times);
        Ok(())
    }

    fn apply_machine(
        &mut self,
        m: &MachineState,
        vcpus: &[VcpuState],
    ) -> Result<(), SnapshotError> {
        let vm = self._vm_fd.clone();
        vm.set_pit2(&m.pit).map_err(kerr("KVM_SET_PIT2"))?;
        for c in [&m.pic_master, &m.pic_slave, &m.ioapic] {
            vm.set_irqchip(c).map_err(kerr("KVM_SET_IRQCHIP"))?;
        }
        for st in vcpus {
            apply_vcpu_late(self.vcpu_fd(st.id)?, st)?;
        }
        let clock = kvm_clock_data {
            clock: m.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kerr("KVM_SET_CLOCK"))?;
        let inv = |e: rxen_devices::SnapshotError| SnapshotError::Invalid(e.to_string());
        lock(&self.serial).restore(m.serial.clone()).map_err(inv)?;
        lock(&self.cmos).restore(m.cmos.clone()).map_err(inv)?;
        lock(&self.acpi_pm).restore(m.acpi_pm).map_err(inv)?;
        if let Some(g) = m.gpe {
            lock(&self.gpe).restore(g).map_err(inv)?;
        }
        if let Some(c) = &self.cpu_hotplug {
            let mut c = lock(c);
            match m.cpu_hotplug {
                Some(st) => c.restore(st).map_err(inv)?,
                None => {
                    // A stream of a domain without hot-plug: its vCPUs are the records.
                    let mut st = rxen_devices::cpu_hotplug::CpuHotplugState::default();
                    for v in vcpus {
                        st.present.set(usize::from(v.id), true);
                    }
                    c.restore(st).map_err(inv)?;
                }
            }
            // The records are the vCPUs the guest has; the controller must agree.
            let present = c.present_ids();
            if present != vcpus.iter().map(|v| v.id).collect::<Vec<_>>() {
                return Err(SnapshotError::Invalid(format!(
                    "the CPU hot-plug state lists vCPUs {present:?}, the stream has records for {:?}",
                    vcpus.iter().map(|v| v.id).collect::<Vec<_>>()
                )));
            }
        }
        for p in &m.pci {
            if p.regs.len() != 64 || pci_read(&self.pio, p.slot, 0) != p.regs[0] {
                return Err(SnapshotError::Invalid(format!(
                    "PCI slot {} holds another device than the saved one",
                    p.slot
                )));
            }
            for reg in 1..64u8 {
                pci_write(&self.pio, p.slot, reg, p.regs[usize::from(reg)]);
            }
        }
        self.pio.write(PCI_ADDR, &m.pci_address.to_le_bytes());
        if m.virtio.len() != self.virtio.len() {
            return Err(SnapshotError::Invalid("virtio device count differs".into()));
        }
        for (d, st) in self.virtio.iter().zip(&m.virtio) {
            lock(d).restore(st.clone()).map_err(inv)?;
        }
        Ok(())
    }

    fn vcpu_fd(&self, id: u8) -> Result<&VcpuFd, SnapshotError> {
        self.vcpu_fds
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, fd)| fd)
            .ok_or_else(|| SnapshotError::Invalid(format!("no vCPU {id}")))
    }

    /// Creates the vCPUs of the saved domain this VM lacks and parks the ones it has beyond them
    /// (created at build time from `vcpus`; KVM cannot destroy them).
    fn match_vcpus(&mut self, saved: &[VcpuState]) -> Result<(), SnapshotError> {
        for v in saved {
            if !self.vcpu_fds.iter().any(|(id, _)| *id == v.id) {
                let fd = self
                    ._vm_fd
                    .create_vcpu(u64::from(v.id))
                    .map_err(kerr(format!("vcpu{}: KVM_CREATE_VCPU", v.id)))?;
                self.vcpu_fds.push((v.id, fd));
            }
        }
        self.vcpu_fds.sort_by_key(|(id, _)| *id);
        for (id, _) in &self.vcpu_fds {
            self.control
                .set_offline(*id, !saved.iter().any(|v| v.id == *id));
        }
        let n = saved.len() as u8;
        if self.cpu_hotplug.is_some() {
            self.cfg.vcpus = n;
        }
        Ok(())
    }

    /// Restores from `path`: an xl save file (header and config skipped) or a bare stream. The
    /// path may be a FIFO or socket (live migration feeds the stream while it is sent).
    pub fn restore_from_path(&mut self, path: &std::path::Path) -> Result<(), SnapshotError> {
        // The control socket is set up meanwhile; it appears when the domain runs.
        if let Some(p) = self.cfg.api_socket.clone() {
            match ApiServer::new_hidden(p) {
                Ok(s) => self.early_api = Some(s),
                Err(e) => tracing::debug!("control socket set up after the restore: {e}"),
            }
        }
        let r = self.restore_path_inner(path);
        if r.is_err() {
            if let Some(mut s) = self.early_api.take() {
                s.discard_hidden();
            }
        }
        r
    }

    fn restore_path_inner(&mut self, path: &std::path::Path) -> Result<(), SnapshotError> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| SnapshotError::Io { what, source }
        };
        let mut f = File::open(path).map_err(io("open"))?;
        let mut head = Vec::with_capacity(32);
        (&mut f)
            .take(32)
            .read_to_end(&mut head)
            .map_err(io("read"))?;
        let mut r =
            std::io::Cursor::new(head.clone()).chain(std::io::BufReader::with_capacity(1 << 20, f));
        if rxen_migration::xlfile::is_xl_file(&head) {
            rxen_migration::xlfile::read_header(&mut r)?;
        }
        self.restore(r)
    }

    fn set_dirty_log(&self, on: bool) -> Result<(), SnapshotError> {
        for (slot, region) in self._mem.iter().enumerate() {
            let r = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: if on {
                    kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
            };
            // SAFETY: the same live mapping registered at creation, only the flags change.
            unsafe { self._vm_fd.set_user_memory_region(r) }
                .map_err(kerr("KVM_SET_USER_MEMORY_REGION (dirty logging)"))?;
        }
        Ok(())
    }

    /// Pages written since the last call, by the guest (KVM's dirty log) or by the VMM itself
    /// (device backends, through guest memory's bitmap). Both logs are read and cleared.
    fn dirty_gpas(&self) -> Result<Vec<u64>, SnapshotError> {
        let mut out = Vec::new();
        for (slot, region) in self._mem.iter().enumerate() {
            let len = region.len() as usize;
            let kvm = self
                ._vm_fd
                .get_dirty_log(slot as u32, len)
                .map_err(kerr("KVM_GET_DIRTY_LOG"))?;
            let vmm = std::ops::Deref::deref(region).bitmap().get_and_reset();
            let start = region.start_addr().0;
            let pages = (len / PAGE_SIZE) as u64;
            for i in 0..kvm.len().max(vmm.len()) {
                let mut w = kvm.get(i).copied().unwrap_or(0) | vmm.get(i).copied().unwrap_or(0);
                while w != 0 {
                    let b = u64::from(w.trailing_zeros());
                    w &= w - 1;
                    let page = i as u64 * 64 + b;
                    if page < pages {
                        out.push(start + page * PAGE_SIZE as u64);
                    }
                }
            }
        }
        Ok(out)
    }

    fn send_pages<W: Write>(
        &self,
        s: &mut StreamWriter<W>,
        gpas: &[u64],
    ) -> Result<(), SnapshotError> {
        // Sized to what is sent: a switchover often has few or no pages, and a large buffer's
        // allocation and unmapping (a TLB shootdown) would be most of its cost.
        let mut data = vec![0u8; gpas.len().min(1024) * PAGE_SIZE];
        for chunk in gpas.chunks(1024) {
            for (i, g) in chunk.iter().enumerate() {
                self._mem
                    .read_slice(
                        &mut data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
                        GuestAddress(*g),
                    )
                    .map_err(|e| SnapshotError::Invalid(format!("reading guest memory: {e}")))?;
            }
            s.write_pages(chunk, &data[..chunk.len() * PAGE_SIZE])?;
        }
        Ok(())
    }

    /// Live migration, sending side: iterative pre-copy while the guest runs (KVM dirty log +
    /// the VMM's own dirty bitmap), until the next round fits the downtime target (or the round
    /// or time bound is hit); then pause, quiesce devices, send the final dirty set, vCPU and
    /// device state. On success the domain stays paused (the toolstack destroys it once the
    /// destination confirms); on failure it runs on as before.
    pub fn migrate_live(
        &mut self,
        w: impl Write,
        opts: &LiveOpts,
    ) -> Result<LiveSummary, SnapshotError> {
        let t0 = Instant::now();
        let was_running = self.control.state() == RunState::Running;
        let mut quiesced = Vec::new();
        self.dirty_log_on = true;
        let r = self
            .set_dirty_log(true)
            .and_then(|()| self.migrate_inner(w, opts, t0, &mut quiesced));
        self.migration_leftover = Some(quiesced);
        if r.is_err() {
            self.finish_migration();
            self.end_dirty_log();
            // Images whose locks were handed over are taken back before the guest writes again.
            match rxen_block::lock::resume_all() {
                Ok(()) if was_running => self.control.set_state(RunState::Running),
                Ok(()) => {}
                Err(e) => tracing::error!("the domain stays paused: {e}"),
            }
        }
        r
    }

    /// What a successful live migration leaves to do once its answer is out: the device workers
    /// are resumed (the API's `migrate_send` calls this right after answering: the toolstack
    /// waits for the sender's answer before it lets the destination run). Dirty logging stays on
    /// while the domain is paused (turning it off takes longer than the whole stop-and-copy of a
    /// large guest, and a migrated domain is destroyed next); [`Vm::end_dirty_log`] turns it off
    /// before the vCPUs run again. Does nothing if there is nothing left.
    pub fn finish_migration(&mut self) {
        let Some(quiesced) = self.migration_leftover.take() else {
            return;
        };
        for (d, q) in self.virtio.iter().zip(quiesced) {
            if q {
                lock(d).resume_worker();
            }
        }
    }

    /// Turns dirty logging off if a live migration left it on.
    pub(super) fn end_dirty_log(&mut self) {
        if std::mem::take(&mut self.dirty_log_on) {
            if let Err(e) = self.set_dirty_log(false) {
                tracing::warn!("disabling dirty logging: {e}");
            }
        }
    }

    fn migrate_inner(
        &mut self,
        w: impl Write,
        opts: &LiveOpts,
        t0: Instant,
        quiesced: &mut Vec<bool>,
    ) -> Result<LiveSummary, SnapshotError> {
        // Start both logs clean: everything is sent in round 0 anyway.
        self.dirty_gpas()?;
        let mut s = StreamWriter::new(w, &json("info", &self.meta())?)?;
        // The destination checks the info record and prepares while round 0 is scanned.
        s.flush()?;
        let t = Instant::now();
        let mut pages = self.write_memory(&mut s, true)?;
        let mut rate = s.bytes_written() as f64 / t.elapsed().as_secs_f64().max(1e-3);
        let mut rounds = 1u32;
        let target = opts.downtime_ms as f64 / 1000.0;
        let (pending, converged) = loop {
            let dirty = self.dirty_gpas()?;
            s.write_round(dirty.len() as u64)?;
            // The round's pages go out now, not with the switchover's (the writer buffers 1 MiB).
            s.flush()?;
            let est = (dirty.len() * PAGE_SIZE) as f64 / rate;
            tracing::info!(
                "migration round {rounds}: {} dirty pages, {:.1} MB/s, estimated stop-and-copy {:.1} ms",
                dirty.len(),
                rate / 1e6,
                est * 1000.0
            );
            if est <= target {
                break (dirty, true);
            }
            if rounds >= opts.max_rounds || t0.elapsed().as_secs() >= opts.max_secs {
                break (dirty, false);
            }
            let t = Instant::now();
            let before = s.bytes_written();
            self.send_pages(&mut s, &dirty)?;
            pages += dirty.len() as u64;
            let r = (s.bytes_written() - before) as f64 / t.elapsed().as_secs_f64().max(1e-3);
            rate = if r > 0.0 { (rate + r) / 2.0 } else { rate };
            rounds += 1;
        };
        let asked_at = unix_us();
        let tp = Instant::now();
        if !self.park_all() {
            return Err(SnapshotError::Invalid("vCPUs did not stop in time".into()));
        }
        // The guest runs until its first vCPU parks (a kicked vCPU has to be scheduled to
        // leave KVM_RUN): the downtime starts there, or at the request if it was paused.
        let paused_at = self
            .control
            .stopped_at_unix_us()
            .map_or(asked_at, |t| t.max(asked_at));
        let since = || unix_us().saturating_sub(paused_at);
        let mut st = SwitchoverTimes {
            stop_latency: paused_at - asked_at,
            parked: since(),
            ..Default::default()
        };
        *quiesced = self.virtio.iter().map(|d| lock(d).quiesce()).collect();
        // Stopped and drained: the destination may take the disks' locks from here on.
        let handed = rxen_block::lock::suspend_all();
        st.quiesced = since();
        // vCPU state first: before its first capture each vCPU completes a pending I/O exit
        // (KVM_RUN with immediate_exit), and string I/O writes guest memory there, which the
        // final dirty log must see.
        // Sent at once: the destination decodes them while the last pages are collected.
        let before = s.bytes_written();
        for v in self.capture_vcpus()? {
            s.write_vcpu(&json("vcpu", &v)?)?;
        }
        s.flush()?;
        st.vcpu_state = since();
        let mut last = self.dirty_gpas()?;
        last.extend(pending);
        last.sort_unstable();
        last.dedup();
        st.dirty_log = since();
        self.send_pages(&mut s, &last)?;
        pages += last.len() as u64;
        st.final_pages = since();
        s.write_machine(&json("machine", &self.capture_machine()?)?)?;
        st.machine_state = since();
        let bytes = s.bytes_written() + 8;
        st.bytes = bytes - before;
        s.finish()?;
        st.end = since();
        tracing::info!(
            "migration: stopped ({handed} image lock(s) released for the destination); \
             switchover (µs after the stop): {st:?}"
        );
        Ok(LiveSummary {
            rounds,
            bytes,
            pages,
            final_pages: last.len() as u64,
            total_ms: t0.elapsed().as_millis() as u64,
            paused_at_unix_ms: paused_at / 1000,
            paused_at_unix_us: paused_at,
            stop_copy_ms: tp.elapsed().as_millis() as u64,
            switchover_us: st,
            converged,
        })
    }

    /// [`Vm::migrate_live`] to the UNIX socket at `path` (the toolstack relays it onwards).
    pub fn migrate_to_socket(
        &mut self,
        path: &std::path::Path,
        opts: &LiveOpts,
    ) -> Result<LiveSummary, SnapshotError> {
        let sock = UnixStream::connect(path).map_err(|source| SnapshotError::Io {
            what: format!("connect {}", path.display()),
            source,
        })?;
        let w = std::io::BufWriter::with_capacity(1 << 20, sock);
        self.migrate_live(w, opts)
    }
}

fn default_downtime() -> u64 {
    50
}
fn default_rounds() -> u32 {
    30
}
fn default_secs() -> u64 {
    300
}

/// Live-migration tuning (`xl migrate --downtime MS --max-rounds N`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveOpts {
    /// Target downtime: pre-copy ends when the next round is estimated to take at most this long.
    #[serde(default = "default_downtime")]
    pub downtime_ms: u64,
    /// Bound on pre-copy rounds (then stop-and-copy regardless).
    #[serde(default = "default_rounds")]
    pub max_rounds: u32,
    /// Bound on pre-copy time in seconds.
    #[serde(default = "default_secs")]
    pub max_secs: u64,
}

impl Default for LiveOpts {
    fn default() -> Self {
        Self {
            downtime_ms: default_downtime(),
            max_rounds: default_rounds(),
            max_secs: default_secs(),
        }
    }
}

/// What a live migration sent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LiveSummary {
    /// Pre-copy rounds (round 0 = all memory).
    pub rounds: u32,
    /// Stream bytes.
    pub bytes: u64,
    /// Pages sent in total (a page may be sent in several rounds).
    pub pages: u64,
    /// Pages sent while paused.
    pub final_pages: u64,
    /// Total time in milliseconds.
    pub total_ms: u64,
    /// Wall-clock time the vCPUs stopped (ms since the epoch: the first running vCPU parked,
    /// or the pause request for a paused domain): the downtime starts here.
    pub paused_at_unix_ms: u64,
    /// The same instant in microseconds since the epoch.
    #[serde(default)]
    pub paused_at_unix_us: u64,
    /// Time from the pause to the end of the stream, in milliseconds.
    pub stop_copy_ms: u64,
    /// Where the stop-and-copy time went.
    #[serde(default)]
    pub switchover_us: SwitchoverTimes,
    /// Whether pre-copy met the downtime target (false: a bound forced the stop).
    pub converged: bool,
}

/// The sending side's stop-and-copy, stage by stage: microseconds from the stop (the first
/// running vCPU parked, `paused_at_unix_us`) to the end of each stage.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct SwitchoverTimes {
    /// From the pause request to the stop (the guest still ran; not downtime).
    pub stop_latency: u64,
    /// Every vCPU parked.
    pub parked: u64,
    /// Device workers drained and image locks released.
    pub quiesced: u64,
    /// vCPU state captured and sent.
    pub vcpu_state: u64,
    /// The last dirty set collected (KVM's dirty log and the VMM's bitmap).
    pub dirty_log: u64,
    /// The last dirty pages written to the stream.
    pub final_pages: u64,
    /// Machine state captured and written.
    pub machine_state: u64,
    /// END written and the stream flushed.
    pub end: u64,
    /// Stream bytes written after the stop.
    pub bytes: u64,
}

/// The receiving side of a restore, as wall-clock instants (µs since the epoch, 0 = not reached),
/// logged when the domain is first unpaused: with the sender's pause instant they show where a
/// migration's downtime went.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreTimes {
    /// The stream's header was read (the VM is built and reads the stream from here on).
    pub started: u64,
    /// The last ROUND record was read (a live migration's pre-copy ended after it).
    pub last_round: u64,
    /// The last vCPU record was read and decoded.
    pub vcpus_read: u64,
    /// The machine record was read and decoded.
    pub machine_read: u64,
    /// END was read.
    pub end: u64,
    /// vCPU and machine state applied.
    pub applied: u64,
    /// Image locks taken.
    pub locked: u64,
    /// The control socket listens.
    pub api_up: u64,
    /// vCPU threads started (parked).
    pub vcpus_started: u64,
    /// `unpause` handled: the vCPUs run.
    pub resumed: u64,
}
