//! Building a domain from a [`VmConfig`] and running it: the VMM thread's event loop.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering as AtomicOrdering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_msi, kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use rxen_devices::cpu_hotplug::{CpuHotplugController, CPU_HOTPLUG_BASE, CPU_HOTPLUG_LEN};
use rxen_devices::interrupt::{IrqLine, MsiSender};
use rxen_devices::legacy::{
    acpi_pm, cmos, i8042, pvpanic, serial, AcpiPm, Cmos, PvPanic, Serial, I8042,
};
use rxen_devices::pci::hotplug::{
    GpeBlock, HotplugController, SharedLevelIrq, GPE0_BASE, GPE0_LEN, HOTPLUG_BASE, HOTPLUG_LEN,
};
use rxen_devices::pci::{PciRoot, PCI_CONFIG_PORT};
use rxen_devices::virtio::balloon::{Balloon, BalloonHandle, BALLOON_PAGE};
use rxen_devices::virtio::pci::{VirtioPciDevice, BAR_SIZE};
use rxen_devices::virtio::{block::Block, console::Console, net::Net, rng::Rng, tap, VirtioDevice};
use rxen_devices::{Bus, GuestEvent, GuestEventSink, GuestMemoryMmap};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{
    self, BalloonInfo, Command, ConsoleInfo, Event, EventKind, Info, Response, VcpuInfo,
};
use crate::config::{parse_mac, ConsoleMode, DiskConfig, NetConfig, VmConfig};
use crate::cpu::{self, RunState, VcpuControl, VcpuExitReason};
use crate::layout::*;
use crate::{acpi, boot, console, ExitCode};

mod coredump;
mod snapshot;
pub use coredump::CoreSummary;
pub use snapshot::{
    LiveOpts, LiveSummary, RestoreTimes, SaveSummary, SnapshotError, StreamMeta, SwitchoverTimes,
};

/// Errors building or running a domain.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("KVM: {op} failed")]
    Kvm {
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("Cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory {
        /// Size.
        mib: u64,
        /// Why.
        reason: String,
    },
    /// Loading the kernel failed.
    #[error("Boot setup failed")]
    Boot(#[from] boot::BootError),
    /// ACPI table generation failed.
    #[error("ACPI setup failed")]
    Acpi(#[from] acpi::AcpiError),
    /// vCPU setup failed.
    #[error("vCPU setup failed")]
    Cpu(#[from] cpu::CpuError),
    /// A console could not be connected.
    #[error("Console setup failed")]
    Console(#[from] console::ConsoleError),
    /// A device could not be created.
    #[error("Device {what} setup failed: {reason}")]
    Device {
        /// Device.
        what: String,
        /// Why.
        reason: String,
    },
    /// The config is invalid.
    #[error("Invalid configuration")]
    Config(#[from] crate::config::ConfigError),
    /// Host I/O failed.
    #[error("{what} failed")]
    Io {
        /// What.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

struct KvmIrq {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl IrqLine for KvmIrq {
    fn pulse(&self) {
        let _ = self.vm.set_irq_line(self.gsi, true);
        let _ = self.vm.set_irq_line(self.gsi, false);
    }
    fn set_level(&self, high: bool) {
        let _ = self.vm.set_irq_line(self.gsi, high);
    }
}

struct KvmMsi {
    vm: Arc<VmFd>,
}

impl MsiSender for KvmMsi {
    fn send_msi(&self, address: u64, data: u32) -> bool {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        matches!(self.vm.signal_msi(msi), Ok(n) if n > 0)
    }
}

enum Internal {
    Guest(GuestEvent, String),
    VmmError(String),
    /// The guest ejected the device in this PCI slot (ACPI `_EJ0`).
    Ejected(usize),
    /// The guest ejected this vCPU (ACPI `_EJ0` of its processor device).
    CpuEjected(u8),
}

struct ChannelSink {
    tx: Mutex<mpsc::Sender<Internal>>,
    evt: EventFd,
}

impl ChannelSink {
    fn send(&self, m: Internal) {
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(m);
        let _ = self.evt.write(1);
    }
}

impl GuestEventSink for ChannelSink {
    fn guest_event(&self, event: GuestEvent, why: &str) {
        self.send(Internal::Guest(event, why.to_string()));
    }
}

struct VcpuHandle {
    /// vCPU index (= APIC id).
    id: u8,
    thread: JoinHandle<VcpuExitReason>,
    /// Host thread id, published by the thread itself (0 until it runs).
    tid: Arc<AtomicI32>,
}

/// What a plugged virtio device is (the config entry it came from, for disks and NICs).
#[derive(Clone)]
enum PluggedKind {
    Console,
    Disk(DiskConfig),
    Net(NetConfig),
    Rng,
    Balloon,
}

/// A virtio-pci device on bus 0.
struct Plugged {
    id: String,
    kind: PluggedKind,
    slot: usize,
    dev: Arc<Mutex<VirtioPciDevice>>,
}

/// A `device_remove` waiting for the guest's eject.
struct PendingRemoval {
    token: u64,
    req: u64,
    id: String,
    deadline: std::time::Instant,
}

/// Default time the guest gets to eject a device before `device_remove` reports an error.
pub const DEFAULT_EJECT_TIMEOUT_MS: u64 = 10_000;

/// Plugs virtio devices into PCI bus 0 and unplugs them again: used at boot and for hot-plug, so
/// both paths build devices the same way.
struct PciPlugger {
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    msi: Arc<dyn MsiSender>,
    mmio: Arc<Bus>,
    pci_root: Arc<Mutex<PciRoot>>,
    ioevents: Arc<Mutex<HashMap<usize, Vec<EventFd>>>>,
}

impl PciPlugger {
    /// Wraps `d` in the virtio-pci transport, maps its BAR and plugs it into the next free slot.
    fn plug(
        &self,
        d: Box<dyn VirtioDevice>,
    ) -> Result<(usize, Arc<Mutex<VirtioPciDevice>>), VmError> {
        let name = d.name();
        let err = |reason: String| VmError::Device {
            what: name.clone(),
            reason,
        };
        let slot = self
            .pci_root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_free_slot()
            .ok_or_else(|| err("no free PCI slot".into()))?;
        // Boot devices get slot-ordered BARs; a hot-plugged one takes the first free range.
        let preferred = PCI_MMIO_START + (slot as u64 - 1) * BAR_SIZE;
        let candidates = std::iter::once(preferred).chain(
            (0..)
                .map(|k| PCI_MMIO_START + k * BAR_SIZE)
                .take_while(|a| a + BAR_SIZE <= PCI_MMIO_END),
        );
        let intx_lines = [5u32, 10, 11];
        let gsi = intx_lines[(slot - 1) % intx_lines.len()];
        let irq: Arc<dyn IrqLine> = Arc::new(KvmIrq {
            vm: self.vm.clone(),
            gsi,
        });
        let mut bar = None;
        let mut pending = Some(d);
        let mut dev = None;
        for addr in candidates {
            if self
                .mmio
                .ranges()
                .iter()
                .any(|(b, l)| *b < addr + BAR_SIZE && addr < b + l)
            {
                continue;
            }
            let Some(d) = pending.take() else { break };
            let v = VirtioPciDevice::new(
                d,
                self.mem.clone(),
                self.msi.clone(),
                addr,
                Some((irq.clone(), gsi as u8)),
            )
            .map_err(|e| err(e.to_string()))?;
            let v = Arc::new(Mutex::new(v));
            self.mmio
                .insert(v.clone(), addr, BAR_SIZE)
                .map_err(|e| err(e.to_string()))?;
            bar = Some(addr);
            dev = Some(v);
            break;
        }
        let (Some(bar), Some(dev)) = (bar, dev) else {
            return Err(err("no free MMIO space for the BAR".into()));
        };
        let got = self
            .pci_root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(dev.clone());
        if got != Some(slot) {
            let _ = self.mmio.remove(bar);
            return Err(err("no free PCI slot".into()));
        }
        tracing::debug!("{name} at 00:{slot:02x}.0, BAR0 {bar:#x}");
        // Queue notifications complete in the kernel (ioeventfd): a guest kick costs no exit
        // to this process. The transport's own notify handler stays as a fallback.
        let evts: Vec<EventFd> = dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue_evts()
            .iter()
            .filter_map(|e| e.try_clone().ok())
            .collect();
        register_ioevents(&self.vm, &evts, bar, true);
        self.ioevents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, evts);
        Ok((slot, dev))
    }

    /// Takes the device in `slot` off the bus and releases its BAR and ioeventfds. The device's
    /// backend (worker thread, image file, tap) goes away when the last handle is dropped.
    fn unplug(&self, slot: usize, dev: &Arc<Mutex<VirtioPciDevice>>) {
        self.pci_root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove_device(slot);
        let bar = dev.lock().unwrap_or_else(|e| e.into_inner()).bar_addr();
        if let Err(e) = self.mmio.remove(bar) {
            tracing::warn!("unplug slot {slot}: BAR {bar:#x}: {e}");
        }
        if let Some(evts) = self
            .ioevents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot)
        {
            register_ioevents(&self.vm, &evts, bar, false);
        }
    }
}

/// Opens a disk's image and builds its virtio-blk device (boot and hot-plug).
fn make_disk(d: &DiskConfig, index: usize) -> Result<Box<dyn VirtioDevice>, VmError> {
    let blk = Block::from_config(&d.block_config(), index).map_err(|e| VmError::Device {
        what: format!(
            "disk {}",
            d.vdev
                .clone()
                .unwrap_or_else(|| d.path.display().to_string())
        ),
        reason: e.to_string(),
    })?;
    Ok(Box::new(blk))
}

/// Opens a NIC's tap and builds its virtio-net device (boot and hot-plug); returns the MAC used.
fn make_net(n: &NetConfig, index: usize) -> Result<(Box<dyn VirtioDevice>, [u8; 6]), VmError> {
    let mac = match &n.mac {
        Some(m) => parse_mac(m)?,
        None => random_mac(),
    };
    let tap = tap::open_tap(&n.tap).map_err(|e| VmError::Device {
        what: format!("tap {}", n.tap),
        reason: format!("{e}: {}", e.source_chain()),
    })?;
    Ok((Box::new(Net::new(tap, mac, index)), mac))
}

fn format_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A built, not yet running domain.
pub struct Vm {
    cfg: VmConfig,
    _vm_fd: Arc<VmFd>,
    _mem: GuestMemoryMmap,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    acpi_pm: Arc<Mutex<AcpiPm>>,
    cmos: Arc<Mutex<Cmos>>,
    control: Arc<VcpuControl>,
    /// Created vCPUs whose threads have not started yet, with their index.
    vcpu_fds: Vec<(u8, kvm_ioctls::VcpuFd)>,
    /// vCPU threads (an ejected vCPU's thread stays, parked, and is reused when it is re-added:
    /// KVM cannot destroy a vCPU).
    vcpus: Vec<VcpuHandle>,
    /// Possible vCPUs (`max_vcpus`, or `vcpus` without hot-plug).
    max_vcpus: u8,
    /// The CPU hot-plug controller, when the domain can change its vCPUs.
    cpu_hotplug: Option<Arc<Mutex<CpuHotplugController>>>,
    /// The GPE block (saved with the machine: its enable bits are the guest's).
    gpe: Arc<Mutex<GpeBlock>>,
    /// What new vCPUs are configured with.
    cpuid: kvm_bindings::CpuId,
    boot_info: boot::BootInfo,
    sink: Arc<ChannelSink>,
    events_rx: mpsc::Receiver<Internal>,
    serial_input: Option<File>,
    serial_info: ConsoleInfo,
    console_info: ConsoleInfo,
    _serial_backend_keep: Vec<console::ConsoleBackend>,
    virtio: Vec<Arc<Mutex<VirtioPciDevice>>>,
    plugger: PciPlugger,
    plugged: Vec<Plugged>,
    hotplug: Arc<Mutex<HotplugController>>,
    removals: Vec<PendingRemoval>,
    _stdin_guard: Option<console::StdinRawGuard>,
    /// The virtio-balloon device's handle.
    balloon: Option<BalloonHandle>,
    /// Requested (hard, soft) affinity of each vCPU (empty = every CPU).
    affinity: Vec<(Vec<u32>, Vec<u32>)>,
    /// Device workers a successful live migration quiesced (with dirty logging still on), until
    /// [`Vm::finish_migration`].
    migration_leftover: Option<Vec<bool>>,
    /// KVM's dirty log is on (a live migration; turned off before the vCPUs run again).
    dirty_log_on: bool,
    /// The control socket a restoring VMM binds before the restore, published when it ends.
    early_api: Option<ApiServer>,
    /// When a restore's stages ended (logged at the first unpause).
    restore_times: Option<snapshot::RestoreTimes>,
    /// Host mappings of guest RAM: declared last so they are unmapped after everything else.
    ram: Option<boot::RamMappings>,
}

fn console_info(mode: &ConsoleMode, pty: Option<String>) -> ConsoleInfo {
    match mode {
        ConsoleMode::Stdio => ConsoleInfo {
            mode: "stdio".into(),
            path: None,
        },
        ConsoleMode::Pty => ConsoleInfo {
            mode: "pty".into(),
            path: pty,
        },
        ConsoleMode::File(p) => ConsoleInfo {
            mode: "file".into(),
            path: Some(p.display().to_string()),
        },
        ConsoleMode::None => ConsoleInfo {
            mode: "none".into(),
            path: None,
        },
    }
}

fn random_mac() -> [u8; 6] {
    let mut r = [0u8; 3];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut r);
    }
    [0x00, 0x16, 0x3e, r[0] & 0x7f, r[1], r[2]]
}

impl Vm {
    /// Builds the domain: KVM VM, memory, devices, boot state and (parked) vCPUs.
    pub fn new(cfg: VmConfig) -> Result<Self, VmError> {
        cfg.validate()?;
        let mem_bytes = cfg.ram_mib() << 20;
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        if let Err(e) = vm_fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR) {
            tracing::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e}");
        }
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let (mem, ram) = boot::create_memory(mem_bytes).map_err(|reason| VmError::Memory {
            mib: cfg.memory_mib,
            reason,
        })?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the Vm keeps for the
            // lifetime of the VM fd; slots do not overlap.
            unsafe { vm_fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        if cfg.balloon {
            // A ballooned 4 KiB page inside a transparent huge page would keep the other 511
            // resident (and khugepaged could collapse ballooned ranges back): a domain with a
            // balloon gets 4 KiB pages so that inflating returns memory to the host.
            for region in mem.iter() {
                // SAFETY: madvise on a live mapping owned by `mem`; NOHUGEPAGE only changes
                // how the kernel backs it.
                unsafe {
                    libc::madvise(
                        region.as_ptr().cast::<libc::c_void>(),
                        region.len() as usize,
                        libc::MADV_NOHUGEPAGE,
                    )
                };
            }
        }
        let (tx, events_rx) = mpsc::channel();
        let sink = Arc::new(ChannelSink {
            tx: Mutex::new(tx),
            evt: EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?,
        });
        let irq = |gsi| -> Arc<dyn IrqLine> {
            Arc::new(KvmIrq {
                vm: vm_fd.clone(),
                gsi,
            })
        };
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());

        // Consoles. stdin goes to the serial port when both are stdio.
        let mut stdin_guard = None;
        let serial_be = console::connect(&cfg.serial, true)?;
        let console_be = if cfg.console.mode != ConsoleMode::None {
            Some(console::connect(
                &cfg.console,
                cfg.serial.mode != ConsoleMode::Stdio,
            )?)
        } else {
            None
        };
        if cfg.serial.mode == ConsoleMode::Stdio || cfg.console.mode == ConsoleMode::Stdio {
            stdin_guard = Some(console::StdinRawGuard::new());
        }
        let serial_info = console_info(&cfg.serial.mode, serial_be.pty_path.clone());
        let console_info_v = console_info(
            &cfg.console.mode,
            console_be.as_ref().and_then(|c| c.pty_path.clone()),
        );
        if let Some(p) = &serial_info.path {
            tracing::info!("serial console on {p}");
        }
        if let Some(p) = &console_info_v.path {
            tracing::info!("virtio console on {p}");
        }

        let mut serial_be = serial_be;
        let serial_out = std::mem::replace(&mut serial_be.output, Box::new(std::io::sink()));
        let serial_input = serial_be.input.take();
        let serial = Arc::new(Mutex::new(Serial::new(irq(serial::COM1_IRQ), serial_out)));
        let ev: Arc<dyn GuestEventSink> = sink.clone();
        // The SCI is shared by the PM1 block (power button) and the GPE block (PCI hot-plug).
        let sci = SharedLevelIrq::new(irq(acpi_pm::SCI_IRQ));
        let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(sci.input(0), ev.clone())));
        let gpe = Arc::new(Mutex::new(GpeBlock::new(sci.input(1))));
        let hotplug = Arc::new(Mutex::new(HotplugController::new(gpe.clone())));
        {
            let sink = sink.clone();
            hotplug
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_eject_callback(Box::new(move |slot| sink.send(Internal::Ejected(slot))));
        }
        let max_vcpus = cfg.max_vcpus.unwrap_or(cfg.vcpus).max(cfg.vcpus);
        let cpu_hotplug = cfg.max_vcpus.map(|_| {
            let mut c = CpuHotplugController::new(usize::from(max_vcpus), gpe.clone());
            for id in 0..cfg.vcpus {
                c.set_present(usize::from(id));
            }
            let sink = sink.clone();
            c.set_eject_callback(Box::new(move |id| sink.send(Internal::CpuEjected(id))));
            Arc::new(Mutex::new(c))
        });
        let offset = cfg
            .rtc
            .timeoffset_secs
            .saturating_add(if cfg.rtc.localtime {
                local_utc_offset()
            } else {
                0
            });
        let low = mem_bytes.min(MMIO32_START);
        let cmos = Arc::new(Mutex::new(Cmos::new(offset, low, mem_bytes - low)));
        let dev_err = |what: &str| {
            let what = what.to_string();
            move |e: rxen_devices::bus::BusError| VmError::Device {
                what,
                reason: e.to_string(),
            }
        };
        pio.insert(serial.clone(), serial::COM1_BASE, 8)
            .map_err(dev_err("serial"))?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(ev.clone()))),
            i8042::I8042_DATA,
            5,
        )
        .map_err(dev_err("i8042"))?;
        pio.insert(cmos.clone(), cmos::CMOS_BASE, 2)
            .map_err(dev_err("cmos"))?;
        pio.insert(
            Arc::new(Mutex::new(PvPanic::new(ev.clone()))),
            pvpanic::PVPANIC_PORT,
            1,
        )
        .map_err(dev_err("pvpanic"))?;
        pio.insert(
            acpi_pm.clone(),
            u64::from(acpi_pm::PM_BASE),
            acpi_pm::PM_LEN,
        )
        .map_err(dev_err("acpi-pm"))?;
        let pci_root = Arc::new(Mutex::new(PciRoot::new(mmio.clone())));
        pio.insert(pci_root.clone(), PCI_CONFIG_PORT, 8)
            .map_err(dev_err("pci"))?;
        pio.insert(gpe.clone(), u64::from(GPE0_BASE), u64::from(GPE0_LEN))
            .map_err(dev_err("acpi-gpe"))?;
        if let Some(c) = &cpu_hotplug {
            pio.insert(
                c.clone(),
                u64::from(CPU_HOTPLUG_BASE),
                u64::from(CPU_HOTPLUG_LEN),
            )
            .map_err(dev_err("cpu-hotplug"))?;
        }
        pio.insert(
            hotplug.clone(),
            u64::from(HOTPLUG_BASE),
            u64::from(HOTPLUG_LEN),
        )
        .map_err(dev_err("pci-hotplug"))?;

        // virtio devices.
        let mut devices: Vec<(String, PluggedKind, Box<dyn VirtioDevice>)> = Vec::new();
        let mut keep = vec![serial_be];
        if let Some(mut be) = console_be {
            let out = std::mem::replace(&mut be.output, Box::new(std::io::sink()));
            devices.push((
                "console".into(),
                PluggedKind::Console,
                Box::new(Console::new(out, be.input.take())),
            ));
            keep.push(be);
        }
        for (i, d) in cfg.disks.iter().enumerate() {
            devices.push((
                format!("disk{i}"),
                PluggedKind::Disk(d.clone()),
                make_disk(d, i)?,
            ));
        }
        let mut cfg = cfg;
        for (i, n) in cfg.nets.iter_mut().enumerate() {
            let (dev, mac) = make_net(n, i)?;
            // Keep the MAC for the domain's life (an in-place reboot reuses the config).
            n.mac = Some(format_mac(mac));
            devices.push((format!("net{i}"), PluggedKind::Net(n.clone()), dev));
        }
        if cfg.rng {
            devices.push(("rng".into(), PluggedKind::Rng, Box::new(Rng::new())));
        }
        let mut balloon = None;
        if cfg.balloon {
            let held_mib = cfg.ram_mib() - cfg.memory_mib;
            let pages = u32::try_from((held_mib << 20) / BALLOON_PAGE).unwrap_or(u32::MAX);
            let (dev, handle) = Balloon::new(pages);
            devices.push(("balloon".into(), PluggedKind::Balloon, Box::new(dev)));
            balloon = Some(handle);
        }
        let msi: Arc<dyn MsiSender> = Arc::new(KvmMsi { vm: vm_fd.clone() });
        let ioevents: Arc<Mutex<HashMap<usize, Vec<EventFd>>>> = Arc::default();
        let plugger = PciPlugger {
            vm: vm_fd.clone(),
            mem: mem.clone(),
            msi,
            mmio: mmio.clone(),
            pci_root: pci_root.clone(),
            ioevents: ioevents.clone(),
        };
        let mut virtio = Vec::new();
        let mut plugged = Vec::new();
        for (id, kind, d) in devices {
            let (slot, dev) = plugger.plug(d)?;
            hotplug
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_present(slot);
            virtio.push(dev.clone());
            plugged.push(Plugged {
                id,
                kind,
                slot,
                dev,
            });
        }
        let (vm2, ioevents2) = (vm_fd.clone(), ioevents.clone());
        pci_root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_bar_listener(Arc::new(move |slot, m| {
                if let Some(evts) = ioevents2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&slot)
                {
                    register_ioevents(&vm2, evts, m.old, false);
                    register_ioevents(&vm2, evts, m.new, true);
                }
            }));

        // Guest image.
        let rsdp = acpi::write_tables(&mem, cfg.vcpus, cfg.max_vcpus.map(|_| max_vcpus))?;
        let cmdline = cfg
            .cmdline
            .clone()
            .unwrap_or_else(|| "console=ttyS0".to_string());
        let boot_info = boot::load(
            &mem,
            mem_bytes,
            &cfg.kernel,
            cfg.initrd.as_deref(),
            &cmdline,
            rsdp,
        )?;
        tracing::debug!("entry {:#x} ({:?})", boot_info.entry, boot_info.mode);

        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            // The in-kernel LAPIC emulates the TSC-deadline timer, but KVM does not report it in
            // the supported CPUID: advertise it so the guest need not calibrate the APIC timer.
            for e in cpuid.as_mut_slice() {
                if e.function == 1 {
                    e.ecx |= 1 << 24;
                }
            }
        }
        let mut vcpu_fds = Vec::new();
        for id in 0..cfg.vcpus {
            let v = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            cpu::configure_vcpu(&v, id, max_vcpus, &cpuid, &boot_info)?;
            vcpu_fds.push((id, v));
        }
        let kick_signal = vmm_sys_util::signal::SIGRTMIN();
        vmm_sys_util::signal::register_signal_handler(kick_signal, cpu::kick_handler).map_err(
            |e| VmError::Io {
                what: "register vCPU kick signal".into(),
                source: std::io::Error::from_raw_os_error(e.errno()),
            },
        )?;

        let affinity = (0..usize::from(max_vcpus))
            .map(|i| {
                (
                    cfg.cpu_affinity.get(i).cloned().unwrap_or_default(),
                    cfg.cpu_soft_affinity.get(i).cloned().unwrap_or_default(),
                )
            })
            .collect();
        Ok(Self {
            cfg,
            _vm_fd: vm_fd,
            _mem: mem,
            pio,
            mmio,
            serial,
            acpi_pm,
            cmos,
            control: Arc::new(VcpuControl::new(kick_signal)),
            vcpu_fds,
            vcpus: vec![],
            max_vcpus,
            cpu_hotplug,
            gpe,
            cpuid,
            boot_info,
            sink,
            events_rx,
            serial_input,
            serial_info,
            console_info: console_info_v,
            _serial_backend_keep: keep,
            virtio,
            plugger,
            plugged,
            hotplug,
            removals: vec![],
            _stdin_guard: stdin_guard,
            balloon,
            affinity,
            migration_leftover: None,
            dirty_log_on: false,
            early_api: None,
            restore_times: None,
            ram: Some(ram),
        })
    }

    fn start_vcpus(&mut self) -> Result<(), VmError> {
        for (id, fd) in std::mem::take(&mut self.vcpu_fds) {
            self.spawn_vcpu(id, fd)?;
        }
        Ok(())
    }

    fn spawn_vcpu(&mut self, id: u8, fd: kvm_ioctls::VcpuFd) -> Result<(), VmError> {
        {
            let pio = self.pio.clone();
            let mmio = self.mmio.clone();
            let control = self.control.clone();
            let sink = self.sink.clone();
            let tid = Arc::new(AtomicI32::new(0));
            let tid2 = tid.clone();
            let (hard, soft) = self
                .affinity
                .get(usize::from(id))
                .cloned()
                .unwrap_or_default();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .stack_size(rxen_devices::THREAD_STACK_SIZE)
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tid2.store(unsafe { libc::gettid() }, AtomicOrdering::SeqCst);
                    if let Err(e) = crate::affinity::apply_self(&hard, &soft) {
                        tracing::warn!("vcpu{id}: CPU affinity {hard:?}: {e}");
                    }
                    let ev: Arc<dyn GuestEventSink> = sink.clone();
                    let r = cpu::run_vcpu(fd, id, pio, mmio, control, ev);
                    if let VcpuExitReason::Error(m) = &r {
                        sink.send(Internal::VmmError(m.clone()));
                    }
                    r
                })
                .map_err(io_err("spawn vCPU thread"))?;
            self.vcpus.push(VcpuHandle { id, thread, tid });
        }
        Ok(())
    }

    fn vcpu_handle(&self, id: u8) -> Option<&VcpuHandle> {
        self.vcpus.iter().find(|v| v.id == id)
    }

    /// The vCPUs the guest has now (present in the CPU hot-plug controller; without hot-plug,
    /// every vCPU), ascending.
    fn present_vcpus(&self) -> Vec<u8> {
        match &self.cpu_hotplug {
            Some(c) => c.lock().unwrap_or_else(|e| e.into_inner()).present_ids(),
            None if self.vcpus.is_empty() => self.vcpu_fds.iter().map(|(id, _)| *id).collect(),
            None => self.vcpus.iter().map(|v| v.id).collect(),
        }
    }

    fn kick(&self, id: u8) {
        if let Some(v) = self.vcpu_handle(id) {
            if !v.thread.is_finished() {
                // SAFETY: pthread_kill on a live thread of this process with our kick signal,
                // whose handler is installed.
                unsafe { libc::pthread_kill(v.thread.as_pthread_t(), self.control.kick_signal) };
            }
        }
    }

    /// `xl vcpu-set`: makes vCPUs `0..count` present and asks the guest to eject the others.
    /// Adding creates the vCPU (or releases its parked thread) and announces it (ACPI device
    /// check); removing completes when the guest ejects the CPU.
    fn set_vcpus(&mut self, count: u32) -> Result<serde_json::Value, String> {
        let max = u32::from(self.max_vcpus);
        let Some(ctl) = self.cpu_hotplug.clone() else {
            return Err(format!(
                "this domain cannot change its vCPUs: it was started without vCPU hot-plug \
                 (maxvcpus = vcpus = {max})"
            ));
        };
        if count == 0 {
            return Err("a domain needs at least one vCPU".into());
        }
        if count > max {
            return Err(format!(
                "Requested {count} VCPUs, however maxcpus is {max}!"
            ));
        }
        let lock = |c: &Arc<Mutex<CpuHotplugController>>| {
            c.lock().unwrap_or_else(|e| e.into_inner()).state()
        };
        for id in 0..self.max_vcpus {
            let st = lock(&ctl);
            let (present, removing) = (
                st.present.contains(usize::from(id)),
                st.removing.contains(usize::from(id)),
            );
            if u32::from(id) < count {
                if present && !removing {
                    continue;
                }
                if !present {
                    self.bring_up_vcpu(id)?;
                }
                ctl.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .plug(usize::from(id));
                tracing::info!("vcpu{id}: added");
            } else if present && !removing {
                ctl.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .request_eject(usize::from(id));
                tracing::info!("vcpu{id}: eject requested");
            }
        }
        self.cfg.vcpus = count as u8;
        Ok(serde_json::json!({"vcpus": count, "present": self.present_vcpus()}))
    }

    /// Makes vCPU `id` runnable: releases its parked thread, or creates the vCPU.
    fn bring_up_vcpu(&mut self, id: u8) -> Result<(), String> {
        if self.vcpu_handle(id).is_some() {
            self.control.set_offline(id, false);
            return Ok(());
        }
        if self.vcpu_fds.iter().any(|(i, _)| *i == id) {
            // Created, not started yet: it starts with the others.
            self.control.set_offline(id, false);
            return Ok(());
        }
        let fd = self
            ._vm_fd
            .create_vcpu(u64::from(id))
            .map_err(|e| format!("vcpu{id}: KVM_CREATE_VCPU failed: {e}"))?;
        cpu::configure_vcpu(&fd, id, self.max_vcpus, &self.cpuid, &self.boot_info)
            .map_err(|e| format!("vcpu{id}: {e}"))?;
        if self.vcpus.is_empty() {
            self.vcpu_fds.push((id, fd));
            return Ok(());
        }
        self.spawn_vcpu(id, fd)
            .map_err(|e| format!("vcpu{id}: {e}"))
    }

    /// The guest ejected vCPU `id`: park its thread.
    fn cpu_ejected(&mut self, id: u8) {
        self.control.set_offline(id, true);
        self.kick(id);
        tracing::info!("vcpu{id}: ejected by the guest; its thread is parked");
    }

    fn kick_all(&self) {
        for v in &self.vcpus {
            if !v.thread.is_finished() {
                // SAFETY: pthread_kill on a live thread of this process with our kick signal,
                // whose handler is installed.
                unsafe { libc::pthread_kill(v.thread.as_pthread_t(), self.control.kick_signal) };
            }
        }
    }

    /// Whether vCPU `id` had a thread that has ended (its run loop returned).
    fn vcpu_thread_ended(&self, id: u8) -> bool {
        self.vcpu_handle(id).is_some_and(|v| v.thread.is_finished())
    }

    /// `vcpuN: thread state, kernel wait channel` (for a vCPU that does not answer).
    fn vcpu_diagnosis(&self, i: usize) -> String {
        let Some(v) = self.vcpu_handle(i as u8) else {
            return format!("vcpu{i}: no thread");
        };
        if v.thread.is_finished() {
            return format!("vcpu{i}: thread ended");
        }
        let tid = v.tid.load(AtomicOrdering::SeqCst);
        let task = format!("/proc/self/task/{tid}");
        let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let wchan = std::fs::read_to_string(format!("{task}/wchan")).unwrap_or_default();
        format!("vcpu{i} (tid {tid}): state {state}, waiting in {wchan:?}")
    }

    fn live_vcpus(&self) -> usize {
        self.vcpus
            .iter()
            .filter(|v| !v.thread.is_finished())
            .count()
    }

    fn stop_vcpus(&mut self) {
        self.control.set_state(RunState::Stopping);
        for _ in 0..2000 {
            if self.vcpus.iter().all(|v| v.thread.is_finished()) {
                break;
            }
            self.kick_all();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut stuck = false;
        for v in self.vcpus.drain(..) {
            if v.thread.is_finished() {
                let _ = v.thread.join();
            } else {
                stuck = true;
            }
        }
        if stuck {
            // A vCPU thread that never returned may still touch guest memory: keep it mapped.
            tracing::warn!("a vCPU thread did not stop; guest memory is leaked");
            std::mem::forget(self.ram.take());
        }
    }

    fn set_affinity(
        &mut self,
        vcpu: Option<u32>,
        hard: Option<Vec<u32>>,
        soft: Option<Vec<u32>>,
    ) -> Result<(), String> {
        let n = self.affinity.len();
        let ids: Vec<usize> = match vcpu {
            None => (0..n).collect(),
            Some(v) if (v as usize) < n => vec![v as usize],
            Some(v) => return Err(format!("vCPU {v} does not exist (the domain has {n})")),
        };
        for list in [&hard, &soft].into_iter().flatten() {
            if let Some(c) = list.iter().find(|c| **c >= crate::affinity::MAX_CPU) {
                return Err(format!("CPU {c} is out of range"));
            }
        }
        for i in ids {
            if let Some(h) = &hard {
                if let Some(v) = self.vcpu_handle(i as u8) {
                    let tid = v.tid.load(AtomicOrdering::SeqCst);
                    if tid > 0 && !v.thread.is_finished() {
                        crate::affinity::set(tid, h)
                            .map_err(|e| format!("vCPU {i}: setting hard affinity {h:?}: {e}"))?;
                    }
                }
                self.affinity[i].0 = h.clone();
            }
            if let Some(s) = &soft {
                self.affinity[i].1 = s.clone();
                // Soft affinity is a placement: move the thread onto hard ∩ soft now, then
                // allow it the whole hard mask again.
                let (h, s) = &self.affinity[i];
                if let (Some(p), Some(v)) =
                    (crate::affinity::placement(h, s), self.vcpu_handle(i as u8))
                {
                    let tid = v.tid.load(AtomicOrdering::SeqCst);
                    if tid > 0 && !v.thread.is_finished() {
                        let _ = crate::affinity::set(tid, &p);
                        crate::affinity::set(tid, h)
                            .map_err(|e| format!("vCPU {i}: restoring hard affinity: {e}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn set_balloon(&mut self, target_kib: u64) -> Result<(), String> {
        let Some(b) = &self.balloon else {
            return Err("this domain has no balloon device".into());
        };
        let ram_kib = self.cfg.ram_mib() << 10;
        if target_kib > ram_kib {
            return Err(format!(
                "target {target_kib} KiB is above the domain's maximum {ram_kib} KiB"
            ));
        }
        let pages = (ram_kib - target_kib) / (BALLOON_PAGE / 1024);
        b.set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX));
        Ok(())
    }

    fn info(&self) -> Info {
        let removing = |id: u8| {
            self.cpu_hotplug.as_ref().is_some_and(|c| {
                c.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_removing(usize::from(id))
            })
        };
        let vcpus = self
            .present_vcpus()
            .into_iter()
            .map(|id| {
                let (hard, soft) = self
                    .affinity
                    .get(usize::from(id))
                    .cloned()
                    .unwrap_or_default();
                let v = self.vcpu_handle(id);
                VcpuInfo {
                    id,
                    cpu_time_ns: v.map_or(0, |v| thread_cpu_time(v.thread.as_pthread_t())),
                    tid: v.map_or(0, |v| v.tid.load(AtomicOrdering::SeqCst)),
                    hard_affinity: hard,
                    soft_affinity: soft,
                    ejecting: removing(id),
                }
            })
            .collect();
        Info {
            name: self.cfg.name.clone(),
            state: match self.control.state() {
                RunState::Paused => "paused".into(),
                _ => "running".into(),
            },
            pid: std::process::id(),
            memory_mib: self.cfg.memory_mib,
            rss_kib: rss_kib(),
            vcpus,
            max_vcpus: self.max_vcpus,
            serial: self.serial_info.clone(),
            console: self.console_info.clone(),
            balloon: self.balloon.as_ref().map(|b| {
                let ram_kib = self.cfg.ram_mib() << 10;
                let st = b.stats();
                let page_kib = BALLOON_PAGE / 1024;
                BalloonInfo {
                    ram_kib,
                    target_kib: ram_kib.saturating_sub(u64::from(st.target_pages) * page_kib),
                    current_kib: ram_kib.saturating_sub(u64::from(st.actual_pages) * page_kib),
                    driver_active: b.driver_active(),
                }
            }),
            disks: rxen_devices::virtio::block::disk_stats()
                .into_iter()
                .map(|(name, st)| crate::api::DiskStatsInfo {
                    name,
                    rd_req: st.rd_req,
                    wr_req: st.wr_req,
                    rd_sect: st.rd_sect,
                    wr_sect: st.wr_sect,
                    oo_req: st.oo_req,
                })
                .collect(),
        }
    }

    /// Runs the domain until it ends; returns the process exit code.
    pub fn run(self) -> ExitCode {
        self.run_with_config().0
    }

    /// Runs the domain until it ends; returns the exit code and the configuration as it is now
    /// (hot-plugged devices included), for an in-place reboot.
    pub fn run_with_config(mut self) -> (ExitCode, VmConfig) {
        let code = self.run_inner();
        (code, self.cfg.clone())
    }

    fn run_inner(&mut self) -> ExitCode {
        let server = match self.early_api.take() {
            Some(mut s) => match s.publish() {
                Ok(()) => Ok(s),
                Err(e) => {
                    s.discard_hidden();
                    Err(e)
                }
            },
            None => ApiServer::new(self.cfg.api_socket.clone()),
        };
        let mut server = match server {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::Error;
            }
        };
        let signals = match SignalFd::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("signalfd: {e}");
                return ExitCode::Error;
            }
        };
        if let Some(t) = &mut self.restore_times {
            t.api_up = snapshot::unix_us();
        }
        if let Err(e) = self.start_vcpus() {
            tracing::error!("{e}");
            return ExitCode::Error;
        }
        if let Some(t) = &mut self.restore_times {
            t.vcpus_started = snapshot::unix_us();
        }
        let (code, kind, reason) = match self.event_loop(&mut server, &signals) {
            Ok(r) => r,
            Err(e) => (ExitCode::Error, EventKind::Error, e.to_string()),
        };
        match code {
            ExitCode::Error => tracing::error!("domain ended: {reason}"),
            _ => tracing::info!("domain ended: {reason}"),
        }
        self.stop_vcpus();
        self.plugged.clear();
        for d in self.virtio.drain(..) {
            drop(d);
        }
        server.broadcast(&Event {
            v: api::API_VERSION,
            event: kind,
            reason,
            exit_code: Some(code as i32),
        });
        server.cleanup();
        code
    }

    fn event_loop(
        &mut self,
        server: &mut ApiServer,
        signals: &SignalFd,
    ) -> Result<(ExitCode, EventKind, String), VmError> {
        const T_EVENTS: u64 = 0;
        const T_SIGNAL: u64 = 1;
        const T_LISTEN: u64 = 2;
        const T_SERIAL_IN: u64 = 3;
        const T_CLIENT: u64 = 100;
        let epoll = Epoll::new().map_err(io_err("epoll"))?;
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(io_err("epoll add"))
        };
        add(self.sink.evt.as_raw_fd(), T_EVENTS)?;
        add(signals.fd(), T_SIGNAL)?;
        if let Some(l) = &server.listener {
            add(l.as_raw_fd(), T_LISTEN)?;
        }
        if let Some(i) = &self.serial_input {
            add(i.as_raw_fd(), T_SERIAL_IN)?;
        }
        let mut serial_pending: VecDeque<u8> = VecDeque::new();
        let mut serial_armed = true;
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            // Feed pending serial input as the guest drains the FIFO.
            if !serial_pending.is_empty() {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                let chunk: Vec<u8> = serial_pending.iter().copied().take(64).collect();
                let n = s.enqueue_input(&chunk);
                serial_pending.drain(..n);
            }
            let want = serial_pending.len() < 4096;
            if let Some(i) = &self.serial_input {
                if want != serial_armed {
                    let set = if want {
                        EventSet::IN
                    } else {
                        EventSet::empty()
                    };
                    let _ = epoll.ctl(
                        ControlOperation::Modify,
                        i.as_raw_fd(),
                        EpollEvent::new(set, T_SERIAL_IN),
                    );
                    serial_armed = want;
                }
            }
            let mut timeout = if serial_pending.is_empty() { -1 } else { 10 };
            if let Some(d) = self.removals.iter().map(|r| r.deadline).min() {
                let ms = d
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis()
                    .min(60_000) as i32
                    + 1;
                timeout = if timeout < 0 { ms } else { timeout.min(ms) };
            }
            let n = match epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("epoll wait")(e)),
            };
            self.expire_removals(server);
            for ev in &events[..n] {
                match ev.data() {
                    T_EVENTS => {
                        let _ = self.sink.evt.read();
                        while let Ok(m) = self.events_rx.try_recv() {
                            if let Internal::Ejected(slot) = m {
                                self.ejected(server, slot);
                                continue;
                            }
                            if let Internal::CpuEjected(cpu) = m {
                                self.cpu_ejected(cpu);
                                continue;
                            }
                            return Ok(match m {
                                Internal::Guest(GuestEvent::PowerOff, r) => {
                                    (ExitCode::PowerOff, EventKind::PoweredOff, r)
                                }
                                Internal::Guest(GuestEvent::Reboot, r) => {
                                    (ExitCode::Reboot, EventKind::Rebooted, r)
                                }
                                Internal::Guest(GuestEvent::Crash, r) => {
                                    self.crash_core();
                                    (ExitCode::Crash, EventKind::Crashed, r)
                                }
                                Internal::VmmError(r) => (ExitCode::Error, EventKind::Error, r),
                                Internal::Ejected(_) | Internal::CpuEjected(_) => continue,
                            });
                        }
                    }
                    T_SIGNAL => {
                        let sig = signals.read();
                        return Ok((
                            ExitCode::Destroyed,
                            EventKind::Destroyed,
                            format!("signal {sig} received"),
                        ));
                    }
                    T_LISTEN => {
                        if let Some(token) = server.accept(T_CLIENT) {
                            if let Some(c) = server.clients.get(&token) {
                                add(c.stream.as_raw_fd(), token)?;
                            }
                        }
                    }
                    T_SERIAL_IN => {
                        let mut buf = [0u8; 1024];
                        let r = match &mut self.serial_input {
                            Some(f) => f.read(&mut buf),
                            None => Ok(0),
                        };
                        match r {
                            Ok(0) => {
                                if let Some(f) = self.serial_input.take() {
                                    let _ = epoll.ctl(
                                        ControlOperation::Delete,
                                        f.as_raw_fd(),
                                        EpollEvent::default(),
                                    );
                                }
                            }
                            Ok(n) => serial_pending.extend(&buf[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => {
                                tracing::warn!("serial input: {e}; detached");
                                if let Some(f) = self.serial_input.take() {
                                    let _ = epoll.ctl(
                                        ControlOperation::Delete,
                                        f.as_raw_fd(),
                                        EpollEvent::default(),
                                    );
                                }
                            }
                        }
                    }
                    token => {
                        let reqs = server.read_requests(token);
                        for r in reqs {
                            match r {
                                Err((id, msg)) => server.reply(token, id, Err(msg)),
                                Ok(req) => {
                                    if let Some(end) = self.handle(server, token, req) {
                                        return Ok(end);
                                    }
                                }
                            }
                        }
                        if server.is_closed(token) {
                            if let Some(c) = server.clients.remove(&token) {
                                let _ = epoll.ctl(
                                    ControlOperation::Delete,
                                    c.stream.as_raw_fd(),
                                    EpollEvent::default(),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn handle(
        &mut self,
        server: &mut ApiServer,
        token: u64,
        req: api::Request,
    ) -> Option<(ExitCode, EventKind, String)> {
        let id = req.id;
        let ok = serde_json::Value::Null;
        match req.command {
            Command::Version => server.reply(
                token,
                id,
                Ok(serde_json::json!({"api": api::API_VERSION, "vmm": env!("CARGO_PKG_VERSION")})),
            ),
            Command::Info => {
                let info = serde_json::to_value(self.info()).unwrap_or_default();
                server.reply(token, id, Ok(info));
            }
            Command::Pause => {
                self.control.set_state(RunState::Paused);
                let n = self.live_vcpus();
                if self.control.wait_parked(n, || self.kick_all()) {
                    server.reply(token, id, Ok(ok));
                    server.broadcast(&Event {
                        v: api::API_VERSION,
                        event: EventKind::Paused,
                        reason: "pause requested".into(),
                        exit_code: None,
                    });
                } else {
                    server.reply(token, id, Err("vCPUs did not stop in time".into()));
                }
            }
            Command::Unpause => {
                // Image locks released for a migration are taken back before the guest runs;
                // if another VMM has them now, this one stays paused.
                if let Err(e) = rxen_block::lock::resume_all() {
                    server.reply(token, id, Err(format!("cannot resume: {e}")));
                    return None;
                }
                self.end_dirty_log();
                self.control.set_state(RunState::Running);
                server.reply(token, id, Ok(ok));
                if let Some(mut t) = self.restore_times.take() {
                    t.resumed = snapshot::unix_us();
                    tracing::info!("restore timing (unix µs): {t:?}");
                }
                server.broadcast(&Event {
                    v: api::API_VERSION,
                    event: EventKind::Resumed,
                    reason: "unpause requested".into(),
                    exit_code: None,
                });
            }
            Command::Shutdown => {
                self.acpi_pm
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .power_button();
                server.reply(token, id, Ok(ok));
            }
            Command::Nmi { vcpu } => {
                if !self.present_vcpus().contains(&vcpu) {
                    server.reply(token, id, Err(format!("no vCPU {vcpu}")));
                } else {
                    self.control.request_nmi(vcpu);
                    self.kick_all();
                    server.reply(token, id, Ok(ok));
                }
            }
            Command::Reboot => {
                server.reply(token, id, Ok(ok));
                return Some((
                    ExitCode::Reboot,
                    EventKind::Rebooted,
                    "reboot requested via API".into(),
                ));
            }
            Command::Destroy => {
                server.reply(token, id, Ok(ok));
                return Some((
                    ExitCode::Destroyed,
                    EventKind::Destroyed,
                    "destroy requested via API".into(),
                ));
            }
            Command::Subscribe => {
                if let Some(c) = server.clients.get_mut(&token) {
                    c.subscribed = true;
                }
                server.reply(token, id, Ok(ok));
            }
            Command::SetAffinity { vcpu, hard, soft } => {
                let r = self.set_affinity(vcpu, hard, soft);
                server.reply(token, id, r.map(|()| ok));
            }
            Command::SetVcpus { count } => {
                let r = self.set_vcpus(count);
                server.reply(token, id, r);
            }
            Command::SetBalloon { target_kib } => {
                let r = self.set_balloon(target_kib);
                server.reply(token, id, r.map(|()| ok));
            }
            Command::ChangeMedia { disk, path, format } => {
                let r = self.change_media(&disk, path, format);
                server.reply(token, id, r);
            }
            Command::DeviceAdd(req) => {
                let r = self
                    .device_add(req)
                    .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()));
                server.reply(token, id, r);
            }
            Command::DeviceRemove(req) => self.device_remove(server, token, id, req),
            Command::Devices => {
                let list = self.devices();
                server.reply(
                    token,
                    id,
                    serde_json::to_value(list).map_err(|e| e.to_string()),
                );
            }
            Command::Save { path } => {
                // The domain stays paused afterwards: the toolstack destroys or unpauses it.
                let r = self.save_to_path(&path);
                server.broadcast(&Event {
                    v: api::API_VERSION,
                    event: EventKind::Paused,
                    reason: "saving".into(),
                    exit_code: None,
                });
                match r {
                    Ok(sum) => {
                        tracing::info!(
                            "saved to {}: {} bytes, {} pages, {} ms",
                            path.display(),
                            sum.bytes,
                            sum.pages,
                            sum.millis
                        );
                        server.reply(token, id, Ok(serde_json::to_value(sum).unwrap_or_default()))
                    }
                    Err(e) => server.reply(token, id, Err(format!("save failed: {e}"))),
                }
            }
            Command::DumpCore { path } => match self.dump_core(&path) {
                Ok(sum) => {
                    tracing::info!("core dumped to {}: {sum:?}", path.display());
                    server.reply(token, id, Ok(serde_json::to_value(sum).unwrap_or_default()))
                }
                Err(e) => server.reply(token, id, Err(format!("core dump failed: {e}"))),
            },
            Command::MigrateSend { path, opts } => {
                // Pre-copy runs while the guest runs; on success the domain stays paused.
                match self.migrate_to_socket(&path, &opts) {
                    Ok(sum) => {
                        server.reply(
                            token,
                            id,
                            Ok(serde_json::to_value(&sum).unwrap_or_default()),
                        );
                        self.finish_migration();
                        tracing::info!("migration stream sent: {sum:?}");
                    }
                    Err(e) => {
                        tracing::warn!("migration failed, the domain runs on: {e}");
                        server.reply(token, id, Err(format!("migration failed: {e}")))
                    }
                }
            }
        }
        None
    }

    fn device_info(&self, p: &Plugged) -> api::DeviceInfo {
        let removing = self
            .hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_removing(p.slot);
        let (kind, disk, net) = match &p.kind {
            PluggedKind::Console => ("console", None, None),
            PluggedKind::Rng => ("rng", None, None),
            PluggedKind::Balloon => ("balloon", None, None),
            PluggedKind::Disk(d) => ("disk", Some(d.clone()), None),
            PluggedKind::Net(n) => ("net", None, Some(n.clone())),
        };
        api::DeviceInfo {
            id: p.id.clone(),
            kind: kind.into(),
            slot: p.slot as u8,
            bdf: format!("0000:00:{:02x}.0", p.slot),
            state: if removing { "ejecting" } else { "attached" }.into(),
            disk,
            net,
        }
    }

    fn devices(&self) -> Vec<api::DeviceInfo> {
        self.plugged.iter().map(|p| self.device_info(p)).collect()
    }

    /// Hot-plugs a disk or NIC and announces it to the guest (ACPI device check).
    fn device_add(&mut self, req: api::DeviceAdd) -> Result<api::DeviceInfo, String> {
        if let Some(id) = &req.device {
            api::check_device_id(id)?;
            if self.plugged.iter().any(|p| &p.id == id) {
                return Err(format!("device id {id:?} is already in use"));
            }
        }
        let fresh_id = |prefix: &str, plugged: &[Plugged]| {
            (0..)
                .map(|i| format!("{prefix}{i}"))
                .find(|c| plugged.iter().all(|p| &p.id != c))
                .unwrap_or_default()
        };
        let chain = |e: VmError| {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cur = c.source();
            }
            msg
        };
        let (id, kind, dev) = match (req.disk, req.net) {
            (Some(d), None) => {
                if let Some(p) = self
                    .plugged
                    .iter()
                    .find(|p| matches!(&p.kind, PluggedKind::Disk(x) if x.path == d.path))
                {
                    return Err(format!(
                        "disk {} is already attached as {}",
                        d.path.display(),
                        p.id
                    ));
                }
                let index = self.cfg.disks.len();
                let dev = make_disk(&d, index).map_err(chain)?;
                let id = req
                    .device
                    .unwrap_or_else(|| fresh_id("disk", &self.plugged));
                (id, PluggedKind::Disk(d), dev)
            }
            (None, Some(mut n)) => {
                if let Some(m) = &n.mac {
                    parse_mac(m).map_err(|e| e.to_string())?;
                }
                if let Some(p) = self
                    .plugged
                    .iter()
                    .find(|p| matches!(&p.kind, PluggedKind::Net(x) if x.tap == n.tap))
                {
                    return Err(format!("tap {} is already attached as {}", n.tap, p.id));
                }
                let index = self.cfg.nets.len();
                let (dev, mac) = make_net(&n, index).map_err(chain)?;
                n.mac = Some(format_mac(mac));
                let id = req.device.unwrap_or_else(|| fresh_id("net", &self.plugged));
                (id, PluggedKind::Net(n), dev)
            }
            _ => return Err("device_add needs exactly one of \"disk\" or \"net\"".into()),
        };
        let (slot, dev) = self.plugger.plug(dev).map_err(chain)?;
        match &kind {
            PluggedKind::Disk(d) => self.cfg.disks.push(d.clone()),
            PluggedKind::Net(n) => self.cfg.nets.push(n.clone()),
            _ => {}
        }
        self.virtio.push(dev.clone());
        self.plugged.push(Plugged {
            id,
            kind,
            slot,
            dev,
        });
        self.hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plug(slot);
        let p = self.plugged.last().map(|p| self.device_info(p));
        if let Some(p) = &p {
            tracing::info!("hot-plugged {} ({}) at {}", p.id, p.kind, p.bdf);
        }
        p.ok_or_else(|| "internal error".into())
    }

    /// Asks the guest to eject a device; the reply is sent when it did (or at the timeout).
    fn device_remove(
        &mut self,
        server: &mut ApiServer,
        token: u64,
        id: u64,
        req: api::DeviceRemove,
    ) {
        let Some(p) = self.plugged.iter().find(|p| p.id == req.device) else {
            server.reply(token, id, Err(format!("no device {:?}", req.device)));
            return;
        };
        if !matches!(p.kind, PluggedKind::Disk(_) | PluggedKind::Net(_)) {
            server.reply(
                token,
                id,
                Err(format!("device {:?} cannot be removed", req.device)),
            );
            return;
        }
        let slot = p.slot;
        self.hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request_eject(slot);
        if req.force {
            tracing::info!(
                "{}: forced removal (the guest is told, not waited for)",
                req.device
            );
            self.unplug_slot(slot);
            server.reply(token, id, Ok(serde_json::json!({"forced": true})));
            return;
        }
        let ms = req.timeout_ms.unwrap_or(DEFAULT_EJECT_TIMEOUT_MS);
        self.removals.push(PendingRemoval {
            token,
            req: id,
            id: req.device,
            deadline: std::time::Instant::now() + std::time::Duration::from_millis(ms),
        });
    }

    /// Releases the device in `slot` and drops it from the configuration.
    fn unplug_slot(&mut self, slot: usize) -> Option<String> {
        let pos = self.plugged.iter().position(|p| p.slot == slot)?;
        let p = self.plugged.remove(pos);
        self.plugger.unplug(slot, &p.dev);
        self.hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unplugged(slot);
        self.virtio.retain(|d| !Arc::ptr_eq(d, &p.dev));
        match &p.kind {
            PluggedKind::Disk(d) => {
                if let Some(i) = self.cfg.disks.iter().position(|x| x.path == d.path) {
                    self.cfg.disks.remove(i);
                }
            }
            PluggedKind::Net(n) => {
                if let Some(i) = self.cfg.nets.iter().position(|x| x.tap == n.tap) {
                    self.cfg.nets.remove(i);
                }
            }
            _ => {}
        }
        let id = p.id.clone();
        // Dropping the last handle stops the worker and closes the image or tap.
        drop(p);
        tracing::info!("{id}: removed from slot {slot}");
        Some(id)
    }

    fn ejected(&mut self, server: &mut ApiServer, slot: usize) {
        let Some(id) = self.unplug_slot(slot) else {
            return;
        };
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.removals)
            .into_iter()
            .partition(|r| r.id == id);
        self.removals = rest;
        for r in done {
            server.reply(r.token, r.req, Ok(serde_json::json!({"ejected": true})));
        }
    }

    fn expire_removals(&mut self, server: &mut ApiServer) {
        let now = std::time::Instant::now();
        let (late, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.removals)
            .into_iter()
            .partition(|r| r.deadline <= now);
        self.removals = rest;
        for r in late {
            server.reply(
                r.token,
                r.req,
                Err(format!(
                    "the guest did not eject {} in time; it stays attached until the guest \
                     releases it (force removal does not wait)",
                    r.id
                )),
            );
        }
    }
}

impl Vm {
    /// Inserts (`path`) or ejects (`None`) the medium of the CD-ROM drive `disk` (its vdev or
    /// index); the guest gets a configuration-change interrupt and re-reads the capacity.
    fn change_media(
        &mut self,
        disk: &str,
        path: Option<PathBuf>,
        format: Option<crate::config::DiskFormat>,
    ) -> Result<serde_json::Value, String> {
        let idx = self
            .cfg
            .disks
            .iter()
            .position(|d| d.vdev.as_deref() == Some(disk))
            .or_else(|| {
                disk.parse::<usize>()
                    .ok()
                    .filter(|&i| i < self.cfg.disks.len())
            })
            .ok_or_else(|| format!("no disk {disk}"))?;
        if !self.cfg.disks[idx].cdrom {
            return Err(format!(
                "disk {disk} is not a CD-ROM drive (no removable medium)"
            ));
        }
        let key = self.cfg.disks[idx]
            .vdev
            .clone()
            .unwrap_or_else(|| format!("#{idx}"));
        let handle = rxen_devices::virtio::block::media_handle(&key)
            .ok_or_else(|| format!("disk {disk} has no device"))?;
        let mut d = self.cfg.disks[idx].clone();
        d.path = path.clone().unwrap_or_default();
        if let Some(f) = format {
            d.format = f;
        }
        match &path {
            None => handle.change(None),
            Some(_) => {
                let bc = d.block_config();
                let mut opts = rxen_devices::virtio::block::rxen_block::DiskOptions::new(&d.path)
                    .format(bc.format)
                    .read_only(true);
                opts.spec = Some(disk.to_string());
                // Eject first so the drive never holds two images (and a re-insert of the same
                // image does not conflict with its own lock).
                handle.change(None);
                let be = rxen_devices::virtio::block::rxen_block::open(&opts)
                    .map_err(|e| e.to_string())?;
                handle.change(Some(be));
            }
        }
        self.cfg.disks[idx] = d;
        let size = handle.info().map(|i| i.size).unwrap_or(0);
        Ok(serde_json::json!({"disk": disk, "path": path, "size": size}))
    }
}

fn register_ioevents(vm: &VmFd, evts: &[EventFd], bar: u64, add: bool) {
    for (q, evt) in evts.iter().enumerate() {
        let addr = kvm_ioctls::IoEventAddress::Mmio(bar + VirtioPciDevice::notify_offset(q));
        let r = if add {
            vm.register_ioevent(evt, &addr, kvm_ioctls::NoDatamatch)
        } else {
            vm.unregister_ioevent(evt, &addr, kvm_ioctls::NoDatamatch)
        };
        if let Err(e) = r {
            tracing::debug!("ioeventfd for queue {q} at {bar:#x}: {e}");
        }
    }
}

/// Seconds east of UTC of the host's local time zone.
fn local_utc_offset() -> i64 {
    // SAFETY: time/localtime_r fill the provided struct; no shared state is returned.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        }
    }
}

fn thread_cpu_time(t: libc::pthread_t) -> u64 {
    let mut clk: libc::clockid_t = 0;
    // SAFETY: pthread_getcpuclockid writes a clock id for a live thread; clock_gettime fills ts.
    unsafe {
        if libc::pthread_getcpuclockid(t, &mut clk) != 0 {
            return 0;
        }
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(clk, &mut ts) != 0 {
            return 0;
        }
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page / 1024
}

/// SIGTERM/SIGINT/SIGHUP as a file descriptor (the signals are blocked in every thread).
struct SignalFd(File);

impl SignalFd {
    fn new() -> std::io::Result<Self> {
        // SAFETY: sigset manipulation on a local set; signalfd returns a new fd or -1.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Self(File::from_raw_fd(fd)))
        }
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn read(&self) -> u32 {
        let mut info = [0u8; 128];
        match (&self.0).read(&mut info) {
            Ok(128) => u32::from_le_bytes([info[0], info[1], info[2], info[3]]),
            _ => 0,
        }
    }
}

/// Blocks the termination signals in the calling thread (call before spawning threads so they
/// inherit the mask and the signalfd sees them).
pub fn block_termination_signals() {
    // SAFETY: as in SignalFd::new.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    subscribed: bool,
    closed: bool,
}

struct ApiServer {
    path: Option<PathBuf>,
    listener: Option<UnixListener>,
    clients: HashMap<u64, Client>,
    next_token: u64,
}

const MAX_REQUEST_LINE: usize = 64 * 1024;

impl ApiServer {
    fn new(path: Option<PathBuf>) -> Result<Self, VmError> {
        let at = path.clone();
        Self::bind_at(path, at)
    }

    /// Where a restoring VMM binds its socket before the restore ends (no client looks there).
    fn hidden_path(p: &std::path::Path) -> PathBuf {
        let mut h = p.as_os_str().to_owned();
        h.push(".restoring");
        PathBuf::from(h)
    }

    /// Like [`ApiServer::new`], but bound and listening at [`ApiServer::hidden_path`]: the socket
    /// appears at its path only with [`ApiServer::publish`], when the domain is ready (a restore
    /// is complete), so that work is not done after the restore, inside a migration's downtime.
    fn new_hidden(path: PathBuf) -> Result<Self, VmError> {
        let at = Self::hidden_path(&path);
        Self::bind_at(Some(path), Some(at))
    }

    /// Moves a hidden socket to its path (atomically; a stale socket there is replaced, any other
    /// file is left and refused, as binding there would be).
    fn publish(&mut self) -> Result<(), VmError> {
        let Some(p) = &self.path else {
            return Ok(());
        };
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(p).is_ok_and(|md| !md.file_type().is_socket()) {
            return Err(io_err(format!("bind API socket {}", p.display()))(
                std::io::Error::from(std::io::ErrorKind::AddrInUse),
            ));
        }
        std::fs::rename(Self::hidden_path(p), p)
            .map_err(io_err(format!("bind API socket {}", p.display())))
    }

    /// Removes a hidden socket that was never published.
    fn discard_hidden(&mut self) {
        self.listener = None;
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(Self::hidden_path(p));
        }
    }

    fn bind_at(path: Option<PathBuf>, at: Option<PathBuf>) -> Result<Self, VmError> {
        let listener = match &at {
            None => None,
            Some(p) => {
                if let Ok(md) = std::fs::symlink_metadata(p) {
                    use std::os::unix::fs::FileTypeExt;
                    if md.file_type().is_socket() {
                        let _ = std::fs::remove_file(p);
                    }
                }
                // SAFETY: umask only changes this process's file-creation mask.
                let old = unsafe { libc::umask(0o177) };
                let l = UnixListener::bind(p);
                // SAFETY: as above, restoring the previous mask.
                unsafe { libc::umask(old) };
                let l = l.map_err(io_err(format!("bind API socket {}", p.display())))?;
                l.set_nonblocking(true).map_err(io_err("API socket"))?;
                Some(l)
            }
        };
        Ok(Self {
            path,
            listener,
            clients: HashMap::new(),
            next_token: 0,
        })
    }

    fn accept(&mut self, base: u64) -> Option<u64> {
        let l = self.listener.as_ref()?;
        let (s, _) = l.accept().ok()?;
        s.set_nonblocking(true).ok()?;
        let token = base + self.next_token;
        self.next_token += 1;
        self.clients.insert(
            token,
            Client {
                stream: s,
                buf: vec![],
                subscribed: false,
                closed: false,
            },
        );
        Some(token)
    }

    fn read_requests(&mut self, token: u64) -> Vec<Result<api::Request, (u64, String)>> {
        let Some(c) = self.clients.get_mut(&token) else {
            return vec![];
        };
        let mut tmp = [0u8; 4096];
        loop {
            match c.stream.read(&mut tmp) {
                Ok(0) => {
                    c.closed = true;
                    break;
                }
                Ok(n) => c.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.closed = true;
                    break;
                }
            }
            if c.buf.len() > MAX_REQUEST_LINE {
                break;
            }
        }
        let mut out = vec![];
        while let Some(pos) = c.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            out.push(api::parse_request(text.trim()));
        }
        if c.buf.len() > MAX_REQUEST_LINE {
            out.push(Err((0, "request line too long".into())));
            c.closed = true;
        }
        out
    }

    fn is_closed(&self, token: u64) -> bool {
        self.clients.get(&token).is_none_or(|c| c.closed)
    }

    fn send_line(c: &mut Client, line: &str) {
        let _ = c.stream.set_nonblocking(false);
        let _ = c
            .stream
            .set_write_timeout(Some(std::time::Duration::from_secs(1)));
        if c.stream.write_all(line.as_bytes()).is_err() {
            c.closed = true;
        }
        let _ = c.stream.set_nonblocking(true);
    }

    fn reply(&mut self, token: u64, id: u64, r: Result<serde_json::Value, String>) {
        let resp = match r {
            Ok(v) => Response {
                v: api::API_VERSION,
                id,
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response {
                v: api::API_VERSION,
                id,
                ok: false,
                result: None,
                error: Some(e),
            },
        };
        if let (Some(c), Ok(mut line)) =
            (self.clients.get_mut(&token), serde_json::to_string(&resp))
        {
            line.push('\n');
            Self::send_line(c, &line);
        }
    }

    fn broadcast(&mut self, ev: &Event) {
        let Ok(mut line) = serde_json::to_string(ev) else {
            return;
        };
        line.push('\n');
        for c in self.clients.values_mut().filter(|c| c.subscribed) {
            Self::send_line(c, &line);
        }
    }

    fn cleanup(&mut self) {
        self.clients.clear();
        self.listener = None;
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

trait SourceChain {
    fn source_chain(&self) -> String;
}

impl<E: std::error::Error> SourceChain for E {
    fn source_chain(&self) -> String {
        let mut s = vec![];
        let mut cur = self.source();
        while let Some(c) = cur {
            s.push(c.to_string());
            cur = c.source();
        }
        s.join(": ")
    }
}
