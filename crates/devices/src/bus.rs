//! Port-I/O and MMIO buses.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices. Lookups take a read lock on the map only
//! long enough to clone the device handle, so a device may itself move ranges on the bus (PCI BAR
//! reprogramming) without lock-order problems.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device reachable through a bus.
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset` inside the range registered at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Handles a write at `offset` inside the range registered at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors from bus range management.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps around the address space.
    #[error("Invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Range start.
        base: u64,
        /// Range length.
        len: u64,
    },
    /// The new range overlaps an existing one.
    #[error("Bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Range start.
        base: u64,
        /// Range length.
        len: u64,
    },
    /// No device is registered at this base.
    #[error("No device at bus address {0:#x}")]
    NotFound(u64),
}

/// Shared, lockable device handle as stored on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// An address space routing accesses to devices.
#[derive(Default)]
pub struct Bus {
    map: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        f.debug_list()
            .entries(map.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn overlaps(map: &BTreeMap<u64, Entry>, base: u64, len: u64, ignore: Option<u64>) -> bool {
        let end = base + len; // caller checked no overflow
        map.iter()
            .any(|(b, e)| Some(*b) != ignore && *b < end && base < b + e.len)
    }

    /// Registers `dev` at `[base, base + len)`.
    pub fn insert(&self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if Self::overlaps(&map, base, len, None) {
            return Err(BusError::Overlap { base, len });
        }
        map.insert(base, Entry { len, dev });
        Ok(())
    }

    /// Removes the device registered at `base`.
    pub fn remove(&self, base: u64) -> Result<(), BusError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&base)
            .map(|_| ())
            .ok_or(BusError::NotFound(base))
    }

    /// Moves the range registered at `old_base` to `new_base` (same length).
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let len = map.get(&old_base).ok_or(BusError::NotFound(old_base))?.len;
        if new_base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange {
                base: new_base,
                len,
            });
        }
        if Self::overlaps(&map, new_base, len, Some(old_base)) {
            return Err(BusError::Overlap {
                base: new_base,
                len,
            });
        }
        let entry = map.remove(&old_base).ok_or(BusError::NotFound(old_base))?;
        map.insert(new_base, entry);
        Ok(())
    }

    fn lookup(&self, addr: u64, size: usize) -> Option<(u64, SharedDevice)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let (base, entry) = map.range(..=addr).next_back()?;
        let end = addr.checked_add(size as u64)?;
        if end <= base + entry.len {
            Some((*base, entry.dev.clone()))
        } else {
            None
        }
    }

    /// Dispatches a read. Returns false (and leaves `data` untouched) if no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((base, dev)) => {
                let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
                dev.read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write. Returns false if no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((base, dev)) => {
                let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
                dev.write(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Lists the registered ranges as `(base, len)`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(b, e)| (*b, e.len)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.0.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn bus_routes_reads_and_writes_by_range() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x104, &mut b));
        assert_eq!(b, [4, 4]);
        assert!(!bus.read(0x10f, &mut b), "straddles the end");
        assert!(!bus.read(0xff, &mut b));
        assert!(bus.write(0x10e, &[1, 2]));
        assert_eq!(dev.lock().unwrap().0, vec![(0x100, 0xe, vec![1, 2])]);
    }

    #[test]
    fn bus_rejects_overlaps_and_relocates() {
        let bus = Bus::new();
        let a = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(a.clone(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(a.clone(), 0x108, 0x10),
            Err(BusError::Overlap {
                base: 0x108,
                len: 0x10
            })
        );
        assert!(bus.insert(a.clone(), u64::MAX - 1, 4).is_err());
        bus.insert(a.clone(), 0x200, 0x10).unwrap();
        assert!(bus.relocate(0x100, 0x1f8).is_err());
        bus.relocate(0x100, 0x300).unwrap();
        assert_eq!(bus.ranges(), vec![(0x200, 0x10), (0x300, 0x10)]);
        bus.remove(0x200).unwrap();
        assert_eq!(bus.remove(0x200), Err(BusError::NotFound(0x200)));
    }

    proptest::proptest! {
        #[test]
        fn bus_never_panics_on_any_access(addr in proptest::num::u64::ANY, len in 1usize..9) {
            let bus = Bus::new();
            bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0xffff_ffff_ffff_ffe0, 0x10).unwrap();
            let mut b = vec![0u8; len];
            let _ = bus.read(addr, &mut b);
            let _ = bus.write(addr, &b);
        }
    }
}
