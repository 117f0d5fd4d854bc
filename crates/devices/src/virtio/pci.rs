//! The virtio-pci modern transport (virtio 1.x, PCI device IDs 0x1040 + type) with MSI-X.
//!
//! BAR 0 (64-bit memory, [`BAR_SIZE`] bytes) layout:
//!
//! | offset | region |
//! |---|---|
//! | 0x0000 | common configuration |
//! | 0x1000 | ISR status |
//! | 0x2000 | device configuration |
//! | 0x3000 | queue notifications (4 bytes per queue) |
//! | 0x4000 | MSI-X table |
//! | 0x5000 | MSI-X pending-bit array |

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{status, ActivateContext, VirtioDevice, VirtioInterrupt, F_VERSION_1};
use crate::bus::BusDevice;
use crate::interrupt::{Irq, MsiSender};
use crate::pci::msix::{Msix, MSIX_CAP_ID};
use crate::pci::{BarMove, PciConfiguration, PciDevice, PciIds};
use crate::GuestMemoryMmap;

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
const REGION: u64 = 0x1000;
const NOTIFY_MULTIPLIER: u32 = 4;
const NO_VECTOR: u16 = 0xffff;

const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

/// Interrupt state shared between the transport and the device worker.
struct Interrupts {
    msix: Mutex<Msix>,
    vectors: Mutex<Vec<u16>>,
    config_vector: Mutex<u16>,
    isr: AtomicU8,
    needs_reset: AtomicBool,
    intx: Option<Irq>,
}

impl Interrupts {
    fn signal(&self, vector: u16, isr_bit: u8) {
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        if msix.enabled() {
            if vector != NO_VECTOR {
                msix.notify(vector);
            }
            return;
        }
        drop(msix);
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if let Some(irq) = &self.intx {
            irq.pulse();
        }
    }
}

impl VirtioInterrupt for Interrupts {
    fn notify_queue(&self, queue: usize) {
        let v = self
            .vectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .copied()
            .unwrap_or(NO_VECTOR);
        self.signal(v, 1);
    }

    fn notify_config(&self) {
        let v = *self.config_vector.lock().unwrap_or_else(|e| e.into_inner());
        self.signal(v, 2);
    }

    fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.notify_config();
    }
}

/// A virtio device behind the virtio-pci transport.
pub struct VirtioPciDevice {
    config: PciConfiguration,
    msix_cap: usize,
    device: Box<dyn VirtioDevice>,
    ints: Arc<Interrupts>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    activated: bool,
    mem: GuestMemoryMmap,
    name: String,
}

fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut v = vec![CAP_VENDOR, 0, len, cfg_type, 0, 0, 0, 0];
    v.extend_from_slice(&(offset as u32).to_le_bytes());
    v.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

impl VirtioPciDevice {
    /// Wraps `device`; BAR 0 is placed at `bar_addr`. `intx` is used when the guest does not enable
    /// MSI-X (best effort, edge-signalled).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        msi: Arc<dyn MsiSender>,
        bar_addr: u64,
        intx: Option<(Irq, u8)>,
    ) -> Result<Self, super::VirtioError> {
        let dtype = device.device_type();
        let mut config = PciConfiguration::new(PciIds {
            vendor: 0x1af4,
            device: 0x1040 + dtype as u16,
            class: match dtype {
                super::TYPE_NET => 0x02,
                super::TYPE_BLOCK => 0x01,
                super::TYPE_CONSOLE => 0x07,
                _ => 0xff,
            },
            subclass: 0x00,
            prog_if: 0,
            revision: 1,
            subsys_vendor: 0x1af4,
            subsys_id: 0x40,
        });
        config.add_mem_bar64(0, bar_addr, BAR_SIZE);
        let sizes = device.queue_max_sizes();
        let nvec = sizes.len() as u16 + 1;
        let mut msix_cap_bytes = vec![MSIX_CAP_ID, 0];
        msix_cap_bytes.extend_from_slice(&(nvec - 1).to_le_bytes());
        msix_cap_bytes.extend_from_slice(&(MSIX_TABLE as u32).to_le_bytes());
        msix_cap_bytes.extend_from_slice(&(MSIX_PBA as u32).to_le_bytes());
        let msix_cap = config.add_capability(&msix_cap_bytes, &[(0, 0xc000_0000)]);
        config.add_capability(&virtio_cap(CFG_COMMON, COMMON, REGION, None), &[]);
        config.add_capability(&virtio_cap(CFG_ISR, ISR, REGION, None), &[]);
        config.add_capability(&virtio_cap(CFG_DEVICE, DEVICE_CFG, REGION, None), &[]);
        config.add_capability(
            &virtio_cap(CFG_NOTIFY, NOTIFY, REGION, Some(NOTIFY_MULTIPLIER)),
            &[],
        );
        let intx_irq = intx.map(|(irq, line)| {
            config.set_interrupt(1, line);
            irq
        });
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for s in &sizes {
            queues.push(Queue::new(*s).map_err(|source| super::VirtioError::Queue {
                queue: queues.len(),
                source,
            })?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(|source| {
                super::VirtioError::Io {
                    what: "queue eventfd",
                    source,
                }
            })?);
        }
        let name = device.name();
        Ok(Self {
            config,
            msix_cap,
            ints: Arc::new(Interrupts {
                msix: Mutex::new(Msix::new(nvec, msi)),
                vectors: Mutex::new(vec![NO_VECTOR; sizes.len()]),
                config_vector: Mutex::new(NO_VECTOR),
                isr: AtomicU8::new(0),
                needs_reset: AtomicBool::new(false),
                intx: intx_irq,
            }),
            device,
            queues,
            queue_evts,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            activated: false,
            mem,
            name,
        })
    }

    /// Current guest-physical address of BAR 0.
    pub fn bar_addr(&self) -> u64 {
        self.config.bar_addr(0).unwrap_or(0)
    }

    /// Name of the wrapped device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue notification events (for ioeventfd registration).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Guest-physical address of the notify register of queue `q`, relative to BAR 0.
    pub fn notify_offset(q: usize) -> u64 {
        NOTIFY + q as u64 * u64::from(NOTIFY_MULTIPLIER)
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | F_VERSION_1
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        for e in &self.queue_evts {
            let _ = e.read();
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.status = 0;
        self.ints.isr.store(0, Ordering::SeqCst);
        self.ints.needs_reset.store(false, Ordering::SeqCst);
        *self
            .ints
            .config_vector
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = NO_VECTOR;
        self.ints
            .vectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill(NO_VECTOR);
    }

    fn activate(&mut self) {
        let mut queues = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                tracing::error!(
                    "{}: queue {i} has invalid addresses or size; device needs reset",
                    self.name
                );
                self.ints.needs_reset();
                return;
            }
            let evt = match self.queue_evts[i].try_clone() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!("{}: cannot clone queue event: {e}", self.name);
                    self.ints.needs_reset();
                    return;
                }
            };
            let mut q = match Queue::try_from(q.state()) {
                Ok(q) => q,
                Err(e) => {
                    tracing::error!(
                        "{}: queue {i} state rejected: {e}; device needs reset",
                        self.name
                    );
                    self.ints.needs_reset();
                    return;
                }
            };
            q.set_event_idx(self.driver_features & super::F_EVENT_IDX != 0);
            queues.push((q, evt));
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.ints.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::error!("{}: activation failed: {e}; device needs reset", self.name);
                self.ints.needs_reset();
            }
        }
    }

    fn set_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & status::FEATURES_OK != 0
            && self.status & status::FEATURES_OK == 0
            && self.driver_features & F_VERSION_1 == 0
        {
            tracing::warn!(
                "{}: driver did not accept VERSION_1; FEATURES_OK refused",
                self.name
            );
            v &= !status::FEATURES_OK;
        }
        self.status = v;
        if !self.activated
            && v & status::DRIVER_OK != 0
            && v & status::FEATURES_OK != 0
            && v & status::FAILED == 0
        {
            self.activate();
        }
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let q = self.queues.get(usize::from(self.queue_select));
        let vectors = self.ints.vectors.lock().unwrap_or_else(|e| e.into_inner());
        let val: u64 = match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.offered_features() & 0xffff_ffff,
                1 => self.offered_features() >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(
                *self
                    .ints
                    .config_vector
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            ),
            0x12 => self.queues.len() as u64,
            0x14 => {
                let mut s = self.status;
                if self.ints.needs_reset.load(Ordering::SeqCst) {
                    s |= status::NEEDS_RESET;
                }
                u64::from(s)
            }
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.size())),
            0x1a => vectors
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| u64::from(*v)),
            0x1c => q.map_or(0, |q| u64::from(q.ready())),
            0x1e => u64::from(self.queue_select),
            0x20 => q.map_or(0, |q| q.desc_table()),
            0x24 => q.map_or(0, |q| q.desc_table() >> 32),
            0x28 => q.map_or(0, |q| q.avail_ring()),
            0x2c => q.map_or(0, |q| q.avail_ring() >> 32),
            0x30 => q.map_or(0, |q| q.used_ring()),
            0x34 => q.map_or(0, |q| q.used_ring() >> 32),
            _ => 0,
        };
        let bytes = val.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        let sel = usize::from(self.queue_select);
        let live = self.activated;
        match offset {
            0x00 => self.device_feature_select = v as u32,
            0x08 => self.driver_feature_select = v as u32,
            0x0c if self.status & status::FEATURES_OK == 0 => {
                let offered = self.offered_features();
                let v = v & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | (v & offered);
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | ((v << 32) & offered);
                    }
                    _ => {}
                }
            }
            0x10 => {
                *self
                    .ints
                    .config_vector
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = v as u16;
            }
            0x14 => self.set_status(v as u8),
            0x16 => self.queue_select = v as u16,
            0x1a => {
                if let Some(slot) = self
                    .ints
                    .vectors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(sel)
                {
                    *slot = v as u16;
                }
            }
            _ if live => {
                tracing::debug!(
                    "{}: queue config write {offset:#x} after DRIVER_OK ignored",
                    self.name
                );
            }
            0x18 => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.set_size(v as u16);
                }
            }
            0x1c => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.set_ready(v & 1 == 1);
                }
            }
            0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 => {
                let Some(q) = self.queues.get_mut(sel) else {
                    return;
                };
                let lo = (offset & 4 == 0).then_some(v as u32);
                let hi = (offset & 4 != 0).then_some(v as u32);
                match offset & !4 {
                    0x20 => q.set_desc_table_address(lo, hi),
                    0x28 => q.set_avail_ring_address(lo, hi),
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (region, off) = (offset & !(REGION - 1), offset & (REGION - 1));
        if off + data.len() as u64 > REGION {
            return;
        }
        match region {
            COMMON => self.common_read(off, data),
            ISR => {
                if let Some(b) = data.first_mut() {
                    *b = self.ints.isr.swap(0, Ordering::SeqCst);
                }
            }
            DEVICE_CFG => self.device.read_config(off, data),
            MSIX_TABLE => self
                .ints
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_table(off, data),
            MSIX_PBA => self
                .ints
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_pba(off, data),
            _ => {}
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (region, off) = (offset & !(REGION - 1), offset & (REGION - 1));
        if off + data.len() as u64 > REGION {
            return;
        }
        match region {
            COMMON => self.common_write(off, data),
            DEVICE_CFG => self.device.write_config(off, data),
            NOTIFY => {
                let q = (off / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(evt) = self.queue_evts.get(q) {
                    let _ = evt.write(1);
                }
            }
            MSIX_TABLE => self
                .ints
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_table(off, data),
            _ => {}
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, reg: usize, offset: u64, data: &mut [u8]) {
        if reg == self.msix_cap / 4 {
            // Message control reflects the live MSI-X state.
            let ctrl = self
                .ints
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .control();
            let dword = (self.config.reg(reg) & 0xffff) | u32::from(ctrl) << 16;
            let bytes = dword.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
            }
            return;
        }
        self.config.read(reg, offset, data);
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let moved = self.config.write(reg, offset, data);
        if reg == self.msix_cap / 4 {
            let ctrl = (self.config.reg(reg) >> 16) as u16;
            self.ints
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_control(ctrl);
        }
        moved
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::rng::Rng;
    use vm_memory::{Bytes, GuestAddress};

    struct NoMsi;
    impl MsiSender for NoMsi {
        fn send_msi(&self, _a: u64, _d: u32) -> bool {
            true
        }
    }

    fn dev() -> (VirtioPciDevice, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let d = VirtioPciDevice::new(
            Box::new(Rng::new()),
            mem.clone(),
            Arc::new(NoMsi),
            0xc000_0000,
            None,
        )
        .unwrap();
        (d, mem)
    }

    fn w(d: &mut VirtioPciDevice, off: u64, v: &[u8]) {
        BusDevice::write(d, 0, off, v);
    }

    #[test]
    fn feature_negotiation_requires_version_1() {
        let (mut d, _) = dev();
        w(&mut d, 0x14, &[3]);
        w(&mut d, 0x14, &[0xb]);
        let mut s = [0u8];
        BusDevice::read(&mut d, 0, 0x14, &mut s);
        assert_eq!(s[0] & status::FEATURES_OK, 0, "refused without VERSION_1");
        w(&mut d, 0x14, &[0]);
        w(&mut d, 0x08, &1u32.to_le_bytes());
        w(&mut d, 0x0c, &1u32.to_le_bytes());
        w(&mut d, 0x14, &[0xb]);
        BusDevice::read(&mut d, 0, 0x14, &mut s);
        assert_ne!(s[0] & status::FEATURES_OK, 0);
        let mut n = [0u8; 2];
        BusDevice::read(&mut d, 0, 0x12, &mut n);
        assert_eq!(u16::from_le_bytes(n), 1);
    }

    #[test]
    fn rng_request_completes_through_the_transport() {
        let (mut d, mem) = dev();
        w(&mut d, 0x14, &[3]);
        w(&mut d, 0x08, &1u32.to_le_bytes());
        w(&mut d, 0x0c, &1u32.to_le_bytes());
        w(&mut d, 0x14, &[0xb]);
        w(&mut d, 0x18, &8u16.to_le_bytes());
        w(&mut d, 0x20, &0x1000u32.to_le_bytes());
        w(&mut d, 0x28, &0x2000u32.to_le_bytes());
        w(&mut d, 0x30, &0x3000u32.to_le_bytes());
        w(&mut d, 0x1c, &1u16.to_le_bytes());
        w(&mut d, 0x14, &[0xf]);
        // One 32-byte writable buffer.
        mem.write_obj(0x8000u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(32u32, GuestAddress(0x1008)).unwrap();
        mem.write_obj(2u16, GuestAddress(0x100c)).unwrap();
        mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        w(&mut d, NOTIFY, &0u16.to_le_bytes());
        let start = std::time::Instant::now();
        while mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap() != 1 {
            assert!(start.elapsed().as_secs() < 10, "request never completed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(), 32);
        w(&mut d, 0x14, &[0]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn transport_survives_arbitrary_register_traffic(
            ops in proptest::collection::vec(
                (0u64..0x6000, proptest::collection::vec(proptest::num::u8::ANY, 1..9), proptest::bool::ANY),
                0..200,
            )
        ) {
            let (mut d, _mem) = dev();
            for (off, data, cfg) in ops {
                if cfg {
                    let reg = (off as usize / 4) % 64;
                    let _ = PciDevice::config_write(&mut d, reg, off % 4, &data[..data.len().min(4)]);
                    let mut b = data.clone();
                    PciDevice::config_read(&mut d, reg, off % 4, &mut b);
                } else {
                    BusDevice::write(&mut d, 0, off, &data);
                    let mut b = data.clone();
                    BusDevice::read(&mut d, 0, off, &mut b);
                }
            }
        }
    }
}

/// Captured state of one virtqueue (the driver's configuration and the ring positions).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtqueueState {
    /// Size the driver selected.
    pub size: u16,
    /// Queue enabled.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
}

/// Captured state of a virtio-pci function: transport registers, queues, interrupt routing and
/// MSI-X. The PCI configuration space itself is captured through the host bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioPciState {
    /// Virtio device type (checked on restore).
    pub device_type: u32,
    /// Device feature select.
    pub device_feature_select: u32,
    /// Driver feature select.
    pub driver_feature_select: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Device status.
    pub status: u8,
    /// Configuration generation.
    pub config_generation: u8,
    /// Queue select.
    pub queue_select: u16,
    /// Queues.
    pub queues: Vec<VirtqueueState>,
    /// MSI-X vector of each queue.
    pub vectors: Vec<u16>,
    /// MSI-X vector of configuration changes.
    pub config_vector: u16,
    /// ISR status (INTx mode).
    pub isr: u8,
    /// DEVICE_NEEDS_RESET raised.
    pub needs_reset: bool,
    /// MSI-X table and pending bits.
    pub msix: crate::pci::msix::MsixState,
}

impl VirtioPciDevice {
    /// Stops the device's worker so that guest memory and ring positions stop changing (for a
    /// snapshot). Returns true if a worker was running; [`VirtioPciDevice::resume_worker`]
    /// restarts it.
    pub fn quiesce(&mut self) -> bool {
        if !self.activated {
            return false;
        }
        self.device.reset();
        self.activated = false;
        true
    }

    /// Restarts the worker stopped by [`VirtioPciDevice::quiesce`], continuing from the ring
    /// positions in guest memory.
    pub fn resume_worker(&mut self) {
        if self.activated {
            return;
        }
        self.sync_ring_positions();
        self.activate();
        for e in &self.queue_evts {
            let _ = e.write(1);
        }
    }

    /// Used index of queue `q` as published in guest memory.
    fn used_idx(&self, q: &Queue) -> u16 {
        use vm_memory::{Bytes, GuestAddress};
        if !q.ready() {
            return 0;
        }
        self.mem
            .read_obj::<u16>(GuestAddress(q.used_ring().wrapping_add(2)))
            .unwrap_or(0)
    }

    /// Sets every ready queue's positions to the used index in guest memory: with the worker
    /// stopped, every chain it took is completed (the devices complete chains in order), and the
    /// ones it held unfinished are taken again.
    fn sync_ring_positions(&mut self) {
        let idx: Vec<u16> = self.queues.iter().map(|q| self.used_idx(q)).collect();
        for (q, i) in self.queues.iter_mut().zip(idx) {
            if q.ready() {
                q.set_next_avail(i);
                q.set_next_used(i);
            }
        }
    }
}

impl crate::Snapshot for VirtioPciDevice {
    type State = VirtioPciState;

    fn snapshot_id(&self) -> String {
        self.name.clone()
    }

    fn snapshot(&self) -> VirtioPciState {
        let ints = &self.ints;
        VirtioPciState {
            device_type: self.device.device_type(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            queue_select: self.queue_select,
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let used = self.used_idx(q);
                    VirtqueueState {
                        size: q.size(),
                        ready: q.ready(),
                        desc_table: q.desc_table(),
                        avail_ring: q.avail_ring(),
                        used_ring: q.used_ring(),
                        next_avail: used,
                        next_used: used,
                    }
                })
                .collect(),
            vectors: ints
                .vectors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            config_vector: *ints.config_vector.lock().unwrap_or_else(|e| e.into_inner()),
            isr: ints.isr.load(Ordering::SeqCst),
            needs_reset: ints.needs_reset.load(Ordering::SeqCst),
            msix: ints.msix.lock().unwrap_or_else(|e| e.into_inner()).state(),
        }
    }

    fn restore(&mut self, st: VirtioPciState) -> Result<(), crate::SnapshotError> {
        let invalid = |reason: String| crate::SnapshotError::Invalid {
            component: "virtio-pci",
            reason,
        };
        if st.device_type != self.device.device_type() {
            return Err(invalid(format!(
                "{}: captured device type {}, this device is type {}",
                self.name,
                st.device_type,
                self.device.device_type()
            )));
        }
        if st.queues.len() != self.queues.len() || st.vectors.len() != self.queues.len() {
            return Err(invalid(format!(
                "{}: {} queues captured, the device has {}",
                self.name,
                st.queues.len(),
                self.queues.len()
            )));
        }
        self.reset();
        self.ints
            .msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_state(st.msix)?;
        for (q, s) in self.queues.iter_mut().zip(&st.queues) {
            q.set_size(s.size);
            q.set_desc_table_address(Some(s.desc_table as u32), Some((s.desc_table >> 32) as u32));
            q.set_avail_ring_address(Some(s.avail_ring as u32), Some((s.avail_ring >> 32) as u32));
            q.set_used_ring_address(Some(s.used_ring as u32), Some((s.used_ring >> 32) as u32));
            q.set_ready(s.ready);
            q.set_next_avail(s.next_avail);
            q.set_next_used(s.next_used);
        }
        *self.ints.vectors.lock().unwrap_or_else(|e| e.into_inner()) = st.vectors;
        *self
            .ints
            .config_vector
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = st.config_vector;
        self.ints.isr.store(st.isr, Ordering::SeqCst);
        self.ints
            .needs_reset
            .store(st.needs_reset, Ordering::SeqCst);
        self.device_feature_select = st.device_feature_select;
        self.driver_feature_select = st.driver_feature_select;
        self.driver_features = st.driver_features & self.offered_features();
        self.config_generation = st.config_generation;
        self.queue_select = st.queue_select;
        self.status = st.status;
        let live = status::DRIVER_OK | status::FEATURES_OK;
        if st.status & live == live && st.status & status::FAILED == 0 && !st.needs_reset {
            self.activate();
            for e in &self.queue_evts {
                let _ = e.write(1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use crate::virtio::rng::Rng;
    use crate::Snapshot;
    use vm_memory::{Bytes, GuestAddress};

    struct NoMsi;
    impl MsiSender for NoMsi {
        fn send_msi(&self, _a: u64, _d: u32) -> bool {
            true
        }
    }

    fn w(d: &mut VirtioPciDevice, off: u64, v: &[u8]) {
        BusDevice::write(d, 0, off, v);
    }

    fn request(d: &mut VirtioPciDevice, mem: &GuestMemoryMmap, n: u16) {
        // Descriptor n: one 32-byte writable buffer, put at avail slot n.
        let desc = 0x1000 + u64::from(n) * 16;
        mem.write_obj(0x8000u64 + u64::from(n) * 64, GuestAddress(desc))
            .unwrap();
        mem.write_obj(32u32, GuestAddress(desc + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(desc + 12)).unwrap();
        mem.write_obj(n, GuestAddress(0x2004 + u64::from(n) * 2))
            .unwrap();
        mem.write_obj(n + 1, GuestAddress(0x2002)).unwrap();
        w(d, NOTIFY, &0u16.to_le_bytes());
        let start = std::time::Instant::now();
        while mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap() != n + 1 {
            assert!(
                start.elapsed().as_secs() < 10,
                "request {n} never completed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn snapshot_restore_continues_the_ring() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mk = || {
            VirtioPciDevice::new(
                Box::new(Rng::new()),
                mem.clone(),
                Arc::new(NoMsi),
                0xc000_0000,
                None,
            )
            .unwrap()
        };
        let mut d = mk();
        w(&mut d, 0x14, &[3]);
        w(&mut d, 0x08, &1u32.to_le_bytes());
        w(&mut d, 0x0c, &1u32.to_le_bytes());
        w(&mut d, 0x14, &[0xb]);
        w(&mut d, 0x18, &8u16.to_le_bytes());
        w(&mut d, 0x20, &0x1000u32.to_le_bytes());
        w(&mut d, 0x28, &0x2000u32.to_le_bytes());
        w(&mut d, 0x30, &0x3000u32.to_le_bytes());
        w(&mut d, 0x1c, &1u16.to_le_bytes());
        w(&mut d, 0x14, &[0xf]);
        request(&mut d, &mem, 0);
        assert!(d.quiesce());
        let st = d.snapshot();
        assert_eq!(st.queues[0].next_used, 1);
        assert_eq!(st.status, 0xf);
        drop(d);
        let mut d2 = mk();
        d2.restore(st.clone()).unwrap();
        assert_eq!(d2.snapshot(), st);
        request(&mut d2, &mem, 1);
        // Restoring a state of another device type is refused.
        let mut bad = st;
        bad.device_type = 2;
        assert!(mk().restore(bad).is_err());
        // The original device resumes too.
        let mut d3 = mk();
        d3.restore(d2.snapshot()).unwrap();
        assert!(d3.quiesce());
        d3.resume_worker();
        request(&mut d3, &mem, 2);
    }

    /// Waits (up to 10 s) for a used ring's index, read by `used_idx`, to reach `n`.
    fn wait_used_idx(used_idx: impl Fn() -> u16, n: u16) {
        let start = std::time::Instant::now();
        while used_idx() != n {
            assert!(start.elapsed().as_secs() < 10, "used {} of {n}", used_idx());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// A virtio-blk device on a raw image, driven through the transport like a guest driver:
    /// descriptors 3i..3i+2 are request i's header, data (4 KiB) and status byte.
    struct BlkRig {
        d: VirtioPciDevice,
        mem: GuestMemoryMmap,
        avail: u16,
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    const QSIZE: u16 = 128;
    const HDR: u64 = 0x10000;
    const STATUS: u64 = 0x20000;
    const DATA: u64 = 0x100000;

    impl BlkRig {
        /// A disk served through io_uring (`aio`) or the synchronous path.
        fn new(spec: &str, aio: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.raw");
            let img: Vec<u8> = (0..256 * 4096u32).map(|i| (i / 4096) as u8).collect();
            std::fs::write(&path, img).unwrap();
            let mut blk = crate::virtio::block::Block::from_config(
                &crate::virtio::block::BlockConfig {
                    path: Some(path.clone()),
                    spec: Some(spec.into()),
                    ..Default::default()
                },
                0,
            )
            .unwrap();
            blk.set_async_io(aio);
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
            let mut d = VirtioPciDevice::new(
                Box::new(blk),
                mem.clone(),
                Arc::new(NoMsi),
                0xc000_0000,
                None,
            )
            .unwrap();
            w(&mut d, 0x14, &[3]);
            w(&mut d, 0x08, &1u32.to_le_bytes());
            w(&mut d, 0x0c, &1u32.to_le_bytes());
            w(&mut d, 0x14, &[0xb]);
            w(&mut d, 0x18, &QSIZE.to_le_bytes());
            w(&mut d, 0x20, &0x1000u32.to_le_bytes());
            w(&mut d, 0x28, &0x3000u32.to_le_bytes());
            w(&mut d, 0x30, &0x4000u32.to_le_bytes());
            w(&mut d, 0x1c, &1u16.to_le_bytes());
            w(&mut d, 0x14, &[0xf]);
            Self {
                d,
                mem,
                avail: 0,
                _dir: dir,
                path,
            }
        }

        fn desc(&self, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
            let a = 0x1000 + i * 16;
            self.mem.write_obj(addr, GuestAddress(a)).unwrap();
            self.mem.write_obj(len, GuestAddress(a + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(a + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(a + 14)).unwrap();
        }

        /// Queues request `slot` (0..42): type `t` at `sector`; `data` chooses whether it has a
        /// 4 KiB data buffer at a given guest address (`write`: readable by the device).
        fn post(&mut self, slot: u16, t: u32, sector: u64, data: Option<(u64, bool)>) {
            let base = u64::from(slot) * 3;
            let hdr = HDR + u64::from(slot) * 16;
            self.mem.write_obj(t, GuestAddress(hdr)).unwrap();
            self.mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
            let status = STATUS + u64::from(slot);
            self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
            match data {
                Some((addr, write)) => {
                    self.desc(base, hdr, 16, 1, base as u16 + 1);
                    self.desc(
                        base + 1,
                        addr,
                        4096,
                        if write { 1 } else { 3 },
                        base as u16 + 2,
                    );
                    self.desc(base + 2, status, 1, 2, 0);
                }
                None => {
                    self.desc(base, hdr, 16, 1, base as u16 + 2);
                    self.desc(base + 2, status, 1, 2, 0);
                }
            }
            let ring = 0x3004 + u64::from(self.avail % QSIZE) * 2;
            self.mem.write_obj(base as u16, GuestAddress(ring)).unwrap();
            self.avail = self.avail.wrapping_add(1);
        }

        fn kick(&mut self) {
            self.mem
                .write_obj(self.avail, GuestAddress(0x3002))
                .unwrap();
            w(&mut self.d, NOTIFY, &0u16.to_le_bytes());
        }

        fn used_idx(&self) -> u16 {
            self.mem.read_obj::<u16>(GuestAddress(0x4002)).unwrap()
        }

        fn wait_used(&self, n: u16) {
            wait_used_idx(|| self.used_idx(), n);
        }

        /// (head, len) of used entries `from..to`.
        fn used(&self, from: u16, to: u16) -> Vec<(u32, u32)> {
            (from..to)
                .map(|i| {
                    let e = 0x4004 + u64::from(i % QSIZE) * 8;
                    (
                        self.mem.read_obj(GuestAddress(e)).unwrap(),
                        self.mem.read_obj(GuestAddress(e + 4)).unwrap(),
                    )
                })
                .collect()
        }

        fn status(&self, slot: u16) -> u8 {
            self.mem
                .read_obj(GuestAddress(STATUS + u64::from(slot)))
                .unwrap()
        }
    }

    #[test]
    fn virtio_blk_serves_a_ring_of_requests_in_flight_and_drains_them_on_quiesce() {
        ring_of_requests(true);
    }

    #[test]
    fn virtio_blk_synchronous_path_serves_the_same_ring() {
        ring_of_requests(false);
    }

    fn ring_of_requests(aio: bool) {
        let mut r = BlkRig::new("aio-rig", aio);
        // 40 reads in one kick: block 2i+1 into data page i.
        for i in 0..40u16 {
            r.post(
                i,
                0,
                u64::from(2 * i + 1) * 8,
                Some((DATA + u64::from(i) * 4096, false)),
            );
        }
        r.kick();
        r.wait_used(40);
        let mut heads: Vec<u32> = r
            .used(0, 40)
            .iter()
            .map(|&(h, l)| {
                assert_eq!(l, 4097, "a read reports data + status");
                h
            })
            .collect();
        heads.sort();
        assert_eq!(heads, (0..40).map(|i| i * 3).collect::<Vec<u32>>());
        for i in 0..40u16 {
            assert_eq!(r.status(i), 0, "read {i}");
            let mut page = [0u8; 4096];
            r.mem
                .read_slice(&mut page, GuestAddress(DATA + u64::from(i) * 4096))
                .unwrap();
            assert!(
                page.iter().all(|&b| b == (2 * i + 1) as u8),
                "read {i} data"
            );
        }
        // 39 writes and a flush; then reads past the end and of a bad type fail cleanly.
        for i in 0..39u16 {
            let page = DATA + u64::from(i) * 4096;
            r.mem
                .write_slice(&[0xc0u8 + i as u8; 4096], GuestAddress(page))
                .unwrap();
            r.post(i, 1, u64::from(200 + i) * 8, Some((page, true)));
        }
        r.post(39, 4, 0, None);
        r.kick();
        r.wait_used(80);
        assert!((0..40).all(|i| r.status(i) == 0));
        let img = std::fs::read(&r.path).unwrap();
        for i in 0..39usize {
            let blk = &img[(200 + i) * 4096..(201 + i) * 4096];
            assert!(
                blk.iter().all(|&b| b == 0xc0 + i as u8),
                "write {i} on the host"
            );
        }
        r.post(0, 0, 256 * 8 - 1, Some((DATA, false)));
        r.post(1, 99, 0, None);
        r.kick();
        r.wait_used(82);
        assert_eq!(
            (r.status(0), r.status(1)),
            (1, 2),
            "IOERR past the end, UNSUPP type"
        );
        // A batch in flight when the device is quiesced is completed before quiesce returns.
        for i in 0..40u16 {
            r.post(
                i,
                0,
                u64::from(i) * 8,
                Some((DATA + u64::from(i) * 4096, false)),
            );
        }
        r.kick();
        let start = std::time::Instant::now();
        while r.used_idx() == 82 {
            assert!(start.elapsed().as_secs() < 10);
            std::hint::spin_loop();
        }
        assert!(r.d.quiesce());
        assert_eq!(
            r.used_idx(),
            122,
            "every request taken is completed by quiesce"
        );
        assert!((0..40).all(|i| r.status(i) == 0));
        r.d.resume_worker();
        r.post(0, 0, 5 * 8, Some((DATA, false)));
        r.kick();
        r.wait_used(123);
        assert_eq!(r.status(0), 0);
    }

    #[test]
    fn virtio_blk_request_with_a_buffer_outside_ram_resets_the_device_only() {
        hostile_buffer(true);
    }

    #[test]
    fn virtio_blk_synchronous_path_resets_the_device_only_on_a_buffer_outside_ram() {
        hostile_buffer(false);
    }

    fn hostile_buffer(aio: bool) {
        let mut r = BlkRig::new("aio-hostile", aio);
        r.post(0, 0, 0, Some((DATA, false)));
        r.post(1, 0, 8, Some(((4 << 20) - 100, false)));
        r.kick();
        let start = std::time::Instant::now();
        while !r.d.snapshot().needs_reset {
            assert!(
                start.elapsed().as_secs() < 10,
                "device never flagged needs-reset"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(r.status(0), 0, "the good request before it completed");
        // A guest reset brings it back.
        drop(r);
    }

    /// A virtio-net device on one end of a `SOCK_SEQPACKET` socket pair (one frame, virtio-net
    /// header first, per message), driven like a guest driver that acked mergeable receive
    /// buffers. Receive queue (size 8): descriptors at 0x1000, avail 0x2000, used 0x3000;
    /// transmit queue: 0x5000, 0x6000, 0x7000. Receive buffer i is at 0x10000 + i * 0x1000.
    struct NetRig {
        d: VirtioPciDevice,
        mem: GuestMemoryMmap,
        peer: std::os::unix::net::UnixDatagram,
        avail: u16,
        bufs: u16,
    }

    const NET_Q: u16 = 8;

    impl NetRig {
        fn new() -> Self {
            use std::os::fd::{FromRawFd, OwnedFd};
            let mut fds = [0i32; 2];
            // SAFETY: socketpair writes two descriptors into the array it is given.
            let rc = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            };
            assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
            // SAFETY: both descriptors were just created and are owned by nobody else.
            let (ours, theirs) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            let peer = std::os::unix::net::UnixDatagram::from(theirs);
            peer.set_nonblocking(false).unwrap();
            peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let net = crate::virtio::net::Net::new(
                std::fs::File::from(ours),
                [0, 0x16, 0x3e, 1, 2, 3],
                0,
            );
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
            let mut d = VirtioPciDevice::new(
                Box::new(net),
                mem.clone(),
                Arc::new(NoMsi),
                0xc000_0000,
                None,
            )
            .unwrap();
            w(&mut d, 0x14, &[3]);
            w(&mut d, 0x08, &0u32.to_le_bytes());
            w(&mut d, 0x0c, &(1u32 << 15).to_le_bytes()); // MRG_RXBUF
            w(&mut d, 0x08, &1u32.to_le_bytes());
            w(&mut d, 0x0c, &1u32.to_le_bytes()); // VERSION_1
            w(&mut d, 0x14, &[0xb]);
            for (q, base) in [(0u16, 0x1000u32), (1, 0x5000)] {
                w(&mut d, 0x16, &q.to_le_bytes());
                w(&mut d, 0x18, &NET_Q.to_le_bytes());
                w(&mut d, 0x20, &base.to_le_bytes());
                w(&mut d, 0x28, &(base + 0x1000).to_le_bytes());
                w(&mut d, 0x30, &(base + 0x2000).to_le_bytes());
                w(&mut d, 0x1c, &1u16.to_le_bytes());
            }
            w(&mut d, 0x14, &[0xf]);
            Self {
                d,
                mem,
                peer,
                avail: 0,
                bufs: 0,
            }
        }

        /// Posts `n` receive buffers of `len` bytes each and kicks the receive queue. Buffers of
        /// up to 4 KiB are 4 KiB apart from 0x10000; larger ones (up to 64 KiB) 64 KiB apart
        /// from 0x100000.
        fn post_rx(&mut self, n: u16, len: u32) {
            for _ in 0..n {
                let slot = self.avail % NET_Q;
                let a = 0x1000 + u64::from(slot) * 16;
                let addr = if len <= 0x1000 {
                    0x10000 + u64::from(self.bufs % 64) * 0x1000
                } else {
                    assert!(len <= 0x10000);
                    0x100000 + u64::from(self.bufs % 16) * 0x10000
                };
                self.mem.write_obj(addr, GuestAddress(a)).unwrap();
                self.mem.write_obj(len, GuestAddress(a + 8)).unwrap();
                self.mem.write_obj(2u16, GuestAddress(a + 12)).unwrap();
                self.mem
                    .write_obj(slot, GuestAddress(0x2004 + u64::from(slot) * 2))
                    .unwrap();
                self.avail = self.avail.wrapping_add(1);
                self.bufs += 1;
            }
            self.mem
                .write_obj(self.avail, GuestAddress(0x2002))
                .unwrap();
            w(&mut self.d, NOTIFY, &0u16.to_le_bytes());
        }

        fn used_idx(&self) -> u16 {
            self.mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap()
        }

        fn wait_used(&self, n: u16) {
            wait_used_idx(|| self.used_idx(), n);
        }

        /// Checks that used entries `from..to` hold `sent` (its data after the 12-byte header)
        /// with `num_buffers` in the header.
        fn expect_frame(&self, from: u16, to: u16, sent: &[u8], num_buffers: u16, what: &str) {
            let got = self.frame(from, to);
            assert_eq!(
                u16::from_le_bytes([got[10], got[11]]),
                num_buffers,
                "num_buffers"
            );
            assert_eq!(got[12..], sent[12..], "{what}");
        }

        /// The frame in used entries `from..to`: the bytes of each buffer, joined.
        fn frame(&self, from: u16, to: u16) -> Vec<u8> {
            let mut out = vec![];
            for i in from..to {
                let e = 0x3004 + u64::from(i % NET_Q) * 8;
                let head: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
                let addr: u64 = self
                    .mem
                    .read_obj(GuestAddress(0x1000 + u64::from(head) * 16))
                    .unwrap();
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                out.extend(b);
            }
            out
        }
    }

    /// A frame from the wire: the 12-byte virtio-net header, then `len` bytes counting up.
    fn wire_frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend((0..len).map(|i| (i as u8).wrapping_add(seed)));
        f
    }

    #[test]
    fn virtio_net_mergeable_rx_spreads_a_frame_over_buffers_and_waits_for_enough() {
        let mut r = NetRig::new();
        r.post_rx(4, 1000);
        // 12 + 2488 bytes: three buffers, num_buffers = 3 in the header.
        let f = wire_frame(2488, 7);
        r.peer.send(&f).unwrap();
        r.wait_used(3);
        r.expect_frame(0, 3, &f, 3, "frame data across the buffers");
        // 12 + 4988 bytes with one buffer left: nothing is published until the guest adds more.
        let f = wire_frame(4988, 9);
        r.peer.send(&f).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(r.used_idx(), 3, "a frame is not published in part");
        r.post_rx(4, 1000);
        r.wait_used(8);
        r.expect_frame(3, 8, &f, 5, "frame data");
    }

    /// The used entry `i`: (head, length).
    fn used_entry(r: &NetRig, i: u16) -> (u32, u32) {
        let e = 0x3004 + u64::from(i % NET_Q) * 8;
        (
            r.mem.read_obj(GuestAddress(e)).unwrap(),
            r.mem.read_obj(GuestAddress(e + 4)).unwrap(),
        )
    }

    #[test]
    fn virtio_net_mergeable_rx_fills_big_buffers_in_order_and_sets_num_buffers() {
        let mut r = NetRig::new();
        // 8 x 16 KiB buffers: frames take as many as they need, in ring order.
        r.post_rx(NET_Q, 16384);
        // The header's num_buffers comes from the device, whatever the tap left there.
        let mut f = wire_frame(2988, 4);
        f[10..12].copy_from_slice(&[0xaa, 0xbb]);
        r.peer.send(&f).unwrap();
        r.wait_used(1);
        assert_eq!(
            used_entry(&r, 0),
            (0, 3000),
            "one buffer, the frame's length"
        );
        r.expect_frame(0, 1, &f, 1, "frame data");
        // 12 + 39988 bytes over three buffers (16384, 16384, 7232); the rest stay available.
        let f = wire_frame(39988, 5);
        r.peer.send(&f).unwrap();
        r.wait_used(4);
        assert_eq!(
            [1, 2, 3].map(|i| used_entry(&r, i)),
            [(1, 16384), (2, 16384), (3, 7232)]
        );
        r.expect_frame(1, 4, &f, 3, "frame data");
        // Four buffers (64 KiB) left: the next frame goes into the next two.
        let f = wire_frame(19988, 6);
        r.peer.send(&f).unwrap();
        r.wait_used(6);
        assert_eq!([4, 5].map(|i| used_entry(&r, i)), [(4, 16384), (5, 3616)]);
        r.expect_frame(4, 6, &f, 2, "frame data");
        assert!(!r.d.snapshot().needs_reset);
    }

    #[test]
    fn virtio_net_rx_header_split_over_tiny_descriptors_gets_its_num_buffers() {
        let mut r = NetRig::new();
        // Two chains of three descriptors: 4 bytes, 7 bytes, 40000 bytes. num_buffers (header
        // bytes 10 and 11) straddles the second and third descriptors.
        for slot in 0..2u16 {
            let base = 0x100000 + u64::from(slot) * 0x10000;
            for (k, (addr, len)) in [(base, 4u32), (base + 0x100, 7), (base + 0x200, 40000)]
                .into_iter()
                .enumerate()
            {
                let idx = slot * 3 + k as u16;
                let a = 0x1000 + u64::from(idx) * 16;
                r.mem.write_obj(addr, GuestAddress(a)).unwrap();
                r.mem.write_obj(len, GuestAddress(a + 8)).unwrap();
                // WRITE, and NEXT on the first two.
                let flags: u16 = if k < 2 { 3 } else { 2 };
                r.mem.write_obj(flags, GuestAddress(a + 12)).unwrap();
                r.mem.write_obj(idx + 1, GuestAddress(a + 14)).unwrap();
            }
            r.mem
                .write_obj(slot * 3, GuestAddress(0x2004 + u64::from(slot) * 2))
                .unwrap();
        }
        r.mem.write_obj(2u16, GuestAddress(0x2002)).unwrap();
        w(&mut r.d, NOTIFY, &0u16.to_le_bytes());
        let mut f = wire_frame(100, 8);
        f[10..12].copy_from_slice(&[0xaa, 0xbb]);
        r.peer.send(&f).unwrap();
        r.wait_used(1);
        assert_eq!(used_entry(&r, 0), (0, 112));
        let lo: u8 = r.mem.read_obj(GuestAddress(0x100000 + 0x100 + 6)).unwrap();
        let hi: u8 = r.mem.read_obj(GuestAddress(0x100000 + 0x200)).unwrap();
        assert_eq!(
            u16::from_le_bytes([lo, hi]),
            1,
            "num_buffers across descriptors"
        );
        let mut data = vec![0u8; 100];
        r.mem
            .read_slice(&mut data, GuestAddress(0x100000 + 0x200 + 1))
            .unwrap();
        assert_eq!(data[..], f[12..]);
    }

    #[test]
    fn virtio_net_rx_buffer_outside_ram_resets_the_device_only() {
        let mut r = NetRig::new();
        r.post_rx(NET_Q, 16384);
        // The first buffer runs past the end of guest RAM (4 MiB).
        r.mem
            .write_obj((4u64 << 20) - 100, GuestAddress(0x1000))
            .unwrap();
        r.peer.send(&wire_frame(1000, 1)).unwrap();
        let start = std::time::Instant::now();
        while !r.d.snapshot().needs_reset {
            assert!(
                start.elapsed().as_secs() < 10,
                "device never flagged needs-reset"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            r.used_idx(),
            0,
            "nothing published from a ring it could not use"
        );
    }

    #[test]
    fn virtio_net_frame_larger_than_the_whole_ring_is_dropped_without_stalling_rx() {
        let mut r = NetRig::new();
        // The ring full of 16-byte buffers: 128 bytes in all.
        r.post_rx(NET_Q, 16);
        r.peer.send(&wire_frame(1000, 1)).unwrap();
        let small = wire_frame(60, 2); // 72 bytes: five buffers
        r.peer.send(&small).unwrap();
        r.wait_used(5);
        r.expect_frame(0, 5, &small, 5, "the frame after the dropped one arrives");
        // The device still transmits: a frame posted on the transmit queue reaches the peer.
        let tx = wire_frame(100, 3);
        r.mem.write_slice(&tx, GuestAddress(0x80000)).unwrap();
        r.mem.write_obj(0x80000u64, GuestAddress(0x5000)).unwrap();
        r.mem
            .write_obj(tx.len() as u32, GuestAddress(0x5008))
            .unwrap();
        r.mem.write_obj(0u16, GuestAddress(0x500c)).unwrap();
        r.mem.write_obj(0u16, GuestAddress(0x6004)).unwrap();
        r.mem.write_obj(1u16, GuestAddress(0x6002)).unwrap();
        w(
            &mut r.d,
            VirtioPciDevice::notify_offset(1),
            &1u16.to_le_bytes(),
        );
        let mut buf = vec![0u8; 4096];
        let n = r.peer.recv(&mut buf).unwrap();
        assert_eq!(buf[..n], tx[..]);
    }
}
