//! Virtio devices and the virtio-pci (modern) transport.
//!
//! A device is split in two halves: the [`VirtioDevice`] object owned by the transport (feature
//! bits, config space, activation and reset, called on vCPU threads) and a worker thread started on
//! activation that does all the backend work (queue processing, disk and tap I/O) off the vCPU
//! threads. Workers only touch guest memory through vm-memory's checked accessors (via
//! virtio-queue); any malformed queue state makes the worker stop and flag the device
//! `DEVICE_NEEDS_RESET` instead of taking the VMM down.

pub mod balloon;
pub mod block;
pub mod console;
pub mod net;
pub mod pci;
pub mod rng;
pub mod tap;
mod worker;

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use worker::{Worker, WorkerContext, WorkerHandler};

use crate::GuestMemoryMmap;

/// Device type: network.
pub const TYPE_NET: u32 = 1;
/// Device type: block.
pub const TYPE_BLOCK: u32 = 2;
/// Device type: console.
pub const TYPE_CONSOLE: u32 = 3;
/// Device type: entropy source.
pub const TYPE_RNG: u32 = 4;

/// Feature bit: VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// Feature bit: VIRTIO_RING_F_EVENT_IDX.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit: VIRTIO_RING_F_INDIRECT_DESC.
pub const F_INDIRECT_DESC: u64 = 1 << 28;

/// Device status bits.
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u8 = 1;
    /// DRIVER.
    pub const DRIVER: u8 = 2;
    /// DRIVER_OK.
    pub const DRIVER_OK: u8 = 4;
    /// FEATURES_OK.
    pub const FEATURES_OK: u8 = 8;
    /// DEVICE_NEEDS_RESET.
    pub const NEEDS_RESET: u8 = 0x40;
    /// FAILED.
    pub const FAILED: u8 = 0x80;
}

/// Errors of device workers and activation.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The guest handed us a malformed queue or descriptor chain.
    #[error("Malformed virtqueue {queue}: {reason}")]
    BadQueue {
        /// Queue index.
        queue: usize,
        /// What was wrong.
        reason: String,
    },
    /// A virtqueue operation failed.
    #[error("Virtqueue {queue} failed")]
    Queue {
        /// Queue index.
        queue: usize,
        /// Cause.
        #[source]
        source: virtio_queue::Error,
    },
    /// The driver did not set up a queue the device needs.
    #[error("Queue {0} is not ready or not valid")]
    QueueNotReady(usize),
    /// Host I/O failed.
    #[error("Host I/O error in {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A disk backend could not be opened.
    #[error(transparent)]
    Disk(#[from] rxen_block::BlockError),
}

/// How a worker raises interrupts and flags the device broken.
pub trait VirtioInterrupt: Send + Sync {
    /// Signals "used buffers" on `queue`.
    fn notify_queue(&self, queue: usize);
    /// Signals a configuration change.
    fn notify_config(&self);
    /// Sets DEVICE_NEEDS_RESET and signals a configuration change.
    fn needs_reset(&self);
}

/// Everything a device needs to start its worker.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Queues as configured by the driver (index = queue index), with their notification events.
    pub queues: Vec<(Queue, EventFd)>,
    /// Interrupt delivery.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// Virtio device type.
    fn device_type(&self) -> u32;
    /// Short name for logs ("virtio-blk0").
    fn name(&self) -> String;
    /// Maximum size of each queue (the length is the number of queues).
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Device-specific feature bits offered (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts processing (spawns the worker).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError>;
    /// Stops processing (joins the worker) and returns to the pre-activation state.
    fn reset(&mut self);
}

/// Reads `data.len()` bytes at `offset` of `config`, padding with zeros out of range.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
