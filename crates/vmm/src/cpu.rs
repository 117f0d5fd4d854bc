//! vCPU configuration (CPUID, MSRs, registers, LAPIC) and the vCPU thread loop.

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use rxen_devices::{Bus, GuestEvent, GuestEventSink};

use crate::boot::{BootInfo, EntryMode, BOOT_CS, BOOT_DS, BOOT_TSS};
use crate::layout::*;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {id}: {op} failed")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Adjusts the host-supported CPUID for vCPU `id` of `count`.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    let shift = (u32::from(count)).next_power_of_two().trailing_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | u32::from(id) << 24 | u32::from(count) << 16;
                e.ecx |= 1 << 31; // hypervisor present
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the package has several logical processors
                }
            }
            4 => {
                e.eax = (e.eax & 0x03ff_ffff) | (u32::from(count) - 1) << 26;
            }
            0xb | 0x1f => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // SMT level
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = u32::from(count);
                        e.ecx = 2 << 8 | 1; // core level
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n & 0xff;
                    }
                }
            }
            6 => {
                e.ecx &= !(1 << 3); // no energy-performance bias
            }
            _ => {}
        }
    }
}

fn seg(selector: u16, type_: u8, s: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Configures vCPU `id` for the boot described by `boot`.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    cpuid: &CpuId,
    boot: &BootInfo,
) -> Result<(), CpuError> {
    let kvm = |op| move |source| CpuError::Kvm { id, op, source };
    let mut cpuid = cpuid.clone();
    patch_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;

    let entries = [
        (0x174, 0),             // SYSENTER_CS
        (0x175, 0),             // SYSENTER_ESP
        (0x176, 0),             // SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0082, 0),       // LSTAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0x10, 0),              // TSC
        (0x1a0, 1),             // MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ];
    let msr_entries: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|(index, data)| kvm_msr_entry {
            index: *index,
            data: *data,
            ..Default::default()
        })
        .collect();
    if let Ok(msrs) = Msrs::from_entries(&msr_entries) {
        match vcpu.set_msrs(&msrs) {
            Ok(n) if n == msr_entries.len() => {}
            Ok(n) => tracing::debug!(
                "vcpu{id}: only {n}/{} boot MSRs accepted",
                msr_entries.len()
            ),
            Err(e) => tracing::warn!("vcpu{id}: KVM_SET_MSRS failed: {e}"),
        }
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;

    // LAPIC: LINT0 = ExtINT (the PIC), LINT1 = NMI.
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let set = |regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32| {
        let mut v = [0u8; 4];
        for (i, b) in v.iter_mut().enumerate() {
            *b = regs[off + i] as u8;
        }
        let val = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            regs[off + i] = *b as std::os::raw::c_char;
        }
    };
    set(&mut lapic.regs, 0x350, 7);
    set(&mut lapic.regs, 0x360, 4);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;

    if id != 0 {
        // Application processors wait in the INIT state for the boot CPU's SIPI.
        return Ok(());
    }

    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (crate::boot::GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let mut tss = seg(BOOT_TSS, 0xb, 0, 0, 0);
    tss.limit = 0xfffff;
    sregs.tr = tss;
    let mut regs = kvm_regs {
        rflags: 2,
        rip: boot.entry,
        ..Default::default()
    };
    match boot.mode {
        EntryMode::Linux64 => {
            sregs.cs = seg(BOOT_CS, 0xb, 1, 1, 0);
            let ds = seg(BOOT_DS, 0x3, 1, 0, 1);
            sregs.ds = ds;
            sregs.es = ds;
            sregs.fs = ds;
            sregs.gs = ds;
            sregs.ss = ds;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= 0x20; // PAE
            sregs.cr0 |= 0x8000_0001 | 0x10; // PG | PE | ET
            sregs.efer |= 0x500; // LME | LMA
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryMode::Pvh => {
            sregs.cs = seg(BOOT_CS, 0xb, 1, 0, 1);
            let ds = seg(BOOT_DS, 0x3, 1, 0, 1);
            sregs.ds = ds;
            sregs.es = ds;
            sregs.fs = ds;
            sregs.gs = ds;
            sregs.ss = ds;
            sregs.cr0 = (sregs.cr0 & !0x8000_0000) | 0x11; // PE | ET, no paging
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = PVH_INFO_ADDR;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// Desired run state of all vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Run guest code.
    Running,
    /// Parked.
    Paused,
    /// Exit the thread.
    Stopping,
}

/// Work run by a parked vCPU thread on its own vCPU (state capture for save/migration).
pub type VcpuTask = Box<dyn FnOnce(&VcpuFd) + Send>;

/// Coordination between the VMM thread and the vCPU threads.
pub struct VcpuControl {
    state: Mutex<(RunState, usize)>,
    tasks: Mutex<std::collections::HashMap<u8, VcpuTask>>,
    cv: Condvar,
    /// Per-vCPU "is inside KVM_RUN or about to be" flags are not needed: kicks repeat until acked.
    pub kick_signal: i32,
    /// Bit n set: inject an NMI into vCPU n before its next KVM_RUN (`xl trigger dom nmi`).
    nmi_pending: std::sync::atomic::AtomicU64,
    /// vCPUs the guest ejected (CPU hot-unplug): their threads stay parked while the domain
    /// runs, until the vCPU is added again. Changed under the state lock.
    offline: [std::sync::atomic::AtomicU64; 4],
    /// When the first running vCPU parked after the last change to `Paused` (µs since the
    /// epoch, 0 = none yet): the guest stopped running there. Changed under the state lock.
    stopped_at_us: std::sync::atomic::AtomicU64,
}

/// Microseconds since the Unix epoch (wall clock: the two ends of a migration compare them).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl VcpuControl {
    /// Creates the controller.
    pub fn new(kick_signal: i32) -> Self {
        Self {
            state: Mutex::new((RunState::Running, 0)),
            tasks: Mutex::default(),
            cv: Condvar::new(),
            kick_signal,
            nmi_pending: std::sync::atomic::AtomicU64::new(0),
            offline: Default::default(),
            stopped_at_us: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether vCPU `id` is offline (ejected by the guest, its thread parked).
    pub fn is_offline(&self, id: u8) -> bool {
        let i = usize::from(id);
        self.offline[i / 64].load(std::sync::atomic::Ordering::SeqCst) & (1 << (i % 64)) != 0
    }

    /// Parks (`true`) or releases (`false`) vCPU `id`'s thread; the caller kicks the vCPU so a
    /// running one leaves KVM_RUN.
    pub fn set_offline(&self, id: u8, offline: bool) {
        let _g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let i = usize::from(id);
        let bit = 1u64 << (i % 64);
        if offline {
            self.offline[i / 64].fetch_or(bit, std::sync::atomic::Ordering::SeqCst);
        } else {
            self.offline[i / 64].fetch_and(!bit, std::sync::atomic::Ordering::SeqCst);
        }
        self.cv.notify_all();
    }

    /// Whether vCPU `id` must stay parked in state `s`.
    fn must_park(&self, s: RunState, id: u8) -> bool {
        s == RunState::Paused || (s == RunState::Running && self.is_offline(id))
    }

    /// Requests an NMI for vCPU `id`; the caller kicks the vCPUs so it is delivered promptly.
    pub fn request_nmi(&self, id: u8) {
        self.nmi_pending
            .fetch_or(1u64 << (id % 64), std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes vCPU `id`'s pending NMI request, if any.
    fn take_nmi(&self, id: u8) -> bool {
        let bit = 1u64 << (id % 64);
        self.nmi_pending
            .fetch_and(!bit, std::sync::atomic::Ordering::SeqCst)
            & bit
            != 0
    }

    /// Current desired state.
    pub fn state(&self) -> RunState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Sets the desired state and wakes parked vCPUs.
    pub fn set_state(&self, s: RunState) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s == RunState::Paused && g.0 != RunState::Paused {
            self.stopped_at_us
                .store(0, std::sync::atomic::Ordering::SeqCst);
        }
        g.0 = s;
        self.cv.notify_all();
    }

    /// When the first running vCPU parked since the domain was last paused (µs since the
    /// epoch): where the guest stopped running. None if no running vCPU parked since.
    pub fn stopped_at_unix_us(&self) -> Option<u64> {
        let _g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match self.stopped_at_us.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }

    /// Waits until `n` vCPUs are parked, calling `kick` between waits. Returns false on timeout.
    pub fn wait_parked(&self, n: usize, kick: impl Fn()) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..1000 {
            if g.1 >= n {
                return true;
            }
            drop(g);
            kick();
            g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // The count is checked again before waiting: a kicked vCPU usually parks (and
            // notifies) before this thread has the lock back, and a plain wait would miss that
            // notification and sleep the whole timeout (5 ms of every pause and migration).
            let (ng, _) = self
                .cv
                .wait_timeout_while(g, std::time::Duration::from_millis(5), |s| s.1 < n)
                .unwrap_or_else(|e| e.into_inner());
            g = ng;
        }
        g.1 >= n
    }

    /// Hands `task` to parked vCPU `id` (the caller has paused the vCPUs).
    pub fn post_task(&self, id: u8, task: VcpuTask) {
        let _g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, task);
        self.cv.notify_all();
    }

    /// Like `park_if_needed`, and runs tasks posted for vCPU `id` while parked. Before the first
    /// task, `settle` completes an I/O exit already handled in userspace so that the captured
    /// state is consistent (KVM's documented rule for saving state).
    fn park_and_serve(
        &self,
        vcpu: &mut VcpuFd,
        id: u8,
        settle: impl Fn(&mut VcpuFd) -> bool,
    ) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == RunState::Running && !self.is_offline(id) {
            return true;
        }
        g.1 += 1;
        if g.0 == RunState::Paused
            && self.stopped_at_us.load(std::sync::atomic::Ordering::SeqCst) == 0
        {
            self.stopped_at_us
                .store(unix_us(), std::sync::atomic::Ordering::SeqCst);
        }
        self.cv.notify_all();
        let mut settled = false;
        while self.must_park(g.0, id) {
            let task = self
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            match task {
                Some(t) => {
                    drop(g);
                    if !settled {
                        if !settle(vcpu) {
                            tracing::warn!(
                                "vcpu{id}: pending I/O did not settle; its state may be mid-instruction"
                            );
                        }
                        settled = true;
                    }
                    t(vcpu);
                    g = self.state.lock().unwrap_or_else(|e| e.into_inner());
                }
                None => g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
            }
        }
        g.1 -= 1;
        g.0 == RunState::Running
    }

    /// Called by a vCPU thread: parks while paused; returns false if it must exit.
    #[allow(dead_code)]
    fn park_if_needed(&self) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == RunState::Running {
            return true;
        }
        g.1 += 1;
        self.cv.notify_all();
        while g.0 == RunState::Paused {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.1 -= 1;
        g.0 == RunState::Running
    }
}

thread_local! {
    static KVM_RUN: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal handler for the vCPU kick: makes the pending or next KVM_RUN return immediately.
pub extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let ptr = p.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is this thread's mapped kvm_run structure (set by the vCPU
            // thread before it runs and valid while its VcpuFd lives); `immediate_exit` is a u8 at
            // offset 1, and a volatile byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(ptr.add(1), 1) };
        }
    });
}

/// Why a vCPU thread stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuExitReason {
    /// Asked to stop.
    Stopped,
    /// KVM_RUN failed in a way the guest cannot cause (VMM error).
    Error(String),
}

/// At most this many I/O exits are served while a paused vCPU's pending I/O settles (a
/// `rep ins`/`rep outs` exits once per batch; a larger count is a guest looping in I/O).
const SETTLE_EXITS: usize = 4096;

/// The access size of the port I/O exit in the kvm_run structure at `run` (1, 2 or 4 bytes; a
/// string instruction's exit carries `count` accesses of this size).
fn pio_size(run: *const u8) -> usize {
    // SAFETY: `run` is this vCPU's mapped kvm_run structure, valid while its VcpuFd lives; after
    // a KVM_EXIT_IO its union holds `io`, and only that plain byte is read (a raw read that
    // does not alias the data slice the exit hands out, which lies beyond the structure).
    let size = unsafe {
        std::ptr::addr_of!(
            (*(run as *const kvm_bindings::kvm_run))
                .__bindgen_anon_1
                .io
                .size
        )
        .read()
    };
    usize::from(size).max(1)
}

/// Serves a port or MMIO exit on the buses; false if `r` is not one. A port exit's data is
/// `size`-byte accesses, one per element of a string instruction (`rep outsb` to a UART is
/// `count` one-byte writes, not one wide write).
fn serve_io(
    pio: &Bus,
    mmio: &Bus,
    id: u8,
    size: usize,
    r: Result<VcpuExit<'_>, kvm_ioctls::Error>,
) -> bool {
    match r {
        Ok(VcpuExit::IoIn(port, data)) => {
            for d in data.chunks_mut(size) {
                if !pio.read(u64::from(port), d) {
                    d.fill(0xff);
                }
            }
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            for d in data.chunks(size) {
                if !pio.write(u64::from(port), d) && port != 0x80 {
                    tracing::trace!("vcpu{id}: unhandled out {port:#x}");
                }
            }
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            if !mmio.read(addr, data) {
                tracing::debug!("vcpu{id}: unhandled MMIO read at {addr:#x}");
                data.fill(0xff);
            }
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            if !mmio.write(addr, data) {
                tracing::debug!("vcpu{id}: unhandled MMIO write at {addr:#x}");
            }
        }
        _ => return false,
    }
    true
}

/// Logs where a vCPU was when the guest triple-faulted: what a guest kernel developer needs to
/// find the fault (Xen prints the same on a domain crash).
fn log_crash_state(vcpu: &VcpuFd, id: u8) {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => tracing::warn!(
            "vcpu{id}: triple fault at rip {:#x} rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} \
             cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} idt {:#x}/{:#x} gdt {:#x}/{:#x} \
             rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.idt.base,
            s.idt.limit,
            s.gdt.base,
            s.gdt.limit,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rbp
        ),
        (r, s) => tracing::warn!(
            "vcpu{id}: triple fault; registers unreadable: {:?} {:?}",
            r.err(),
            s.err()
        ),
    }
}

/// Runs vCPU `id` until told to stop or the guest ends the domain.
pub fn run_vcpu(
    mut vcpu: VcpuFd,
    id: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    control: Arc<VcpuControl>,
    events: Arc<dyn GuestEventSink>,
) -> VcpuExitReason {
    let run_ptr = vcpu.get_kvm_run() as *mut kvm_bindings::kvm_run as *mut u8;
    KVM_RUN.with(|p| p.set(run_ptr));
    // Completes the I/O exit handled last, and any exit that completing it causes (the next
    // batch of a `rep ins`/`rep outs`): KVM_RUN with `immediate_exit` returns EINTR only once
    // nothing is pending. Bounded: a guest cannot keep a paused vCPU here.
    let settle = |vcpu: &mut VcpuFd| {
        vcpu.set_kvm_immediate_exit(1);
        let mut done = false;
        for _ in 0..SETTLE_EXITS {
            let r = vcpu.run();
            match r {
                Err(ref e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    done = true;
                    break;
                }
                r => {
                    if !serve_io(&pio, &mmio, id, pio_size(run_ptr), r) {
                        break;
                    }
                }
            }
        }
        vcpu.set_kvm_immediate_exit(0);
        done
    };
    let reason = loop {
        if !control.park_and_serve(&mut vcpu, id, settle) {
            break VcpuExitReason::Stopped;
        }
        if control.take_nmi(id) {
            if let Err(e) = vcpu.nmi() {
                tracing::warn!("vcpu{id}: cannot inject NMI: {e}");
            }
        }
        let r = vcpu.run();
        match r {
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..) | VcpuExit::MmioRead(..))
            | Ok(VcpuExit::MmioWrite(..)) => {
                let handled = serve_io(&pio, &mmio, id, pio_size(run_ptr), r);
                debug_assert!(handled);
            }
            Ok(VcpuExit::Hlt) => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(VcpuExit::Shutdown) => {
                log_crash_state(&vcpu, id);
                events.guest_event(GuestEvent::Reboot, &format!("vcpu{id}: triple fault"));
                break VcpuExitReason::Stopped;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let ev = match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestEvent::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => GuestEvent::Reboot,
                    _ => GuestEvent::Crash,
                };
                events.guest_event(ev, &format!("vcpu{id}: KVM system event {kind}"));
                break VcpuExitReason::Stopped;
            }
            Ok(VcpuExit::InternalError) => {
                events.guest_event(
                    GuestEvent::Crash,
                    &format!("vcpu{id}: KVM internal error (emulation failure)"),
                );
                break VcpuExitReason::Stopped;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                events.guest_event(
                    GuestEvent::Crash,
                    &format!("vcpu{id}: VM entry failed (reason {reason:#x}, cpu {cpu})"),
                );
                break VcpuExitReason::Stopped;
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                tracing::debug!("vcpu{id}: ignored exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => break VcpuExitReason::Error(format!("vcpu{id}: KVM_RUN failed: {e}")),
        }
    };
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_topology_is_patched() {
        let mut c = CpuId::new(3).unwrap();
        c.as_mut_slice()[0].function = 1;
        c.as_mut_slice()[0].ebx = 0xffff_1234;
        c.as_mut_slice()[1].function = 0xb;
        c.as_mut_slice()[1].index = 1;
        c.as_mut_slice()[2].function = 4;
        patch_cpuid(&mut c, 1, 2);
        let e = c.as_slice();
        assert_eq!(e[0].ebx, 0x0102_1234);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (1, 2, 1));
        assert_eq!(e[2].eax >> 26, 1);
    }
}
