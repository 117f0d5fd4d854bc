//! MSI-X table and pending-bit array.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::interrupt::MsiSender;

/// Size of one table entry in bytes.
pub const MSIX_ENTRY_SIZE: u64 = 16;
const ENTRY_MASKED: u32 = 1;
/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// One MSI-X table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixEntry {
    /// Message address, low.
    pub addr_lo: u32,
    /// Message address, high.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked).
    pub ctrl: u32,
}

/// Serde-able MSI-X state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    /// Table entries.
    pub entries: Vec<MsixEntry>,
    /// Pending bits.
    pub pending: Vec<bool>,
    /// MSI-X enable bit.
    pub enabled: bool,
    /// Function mask bit.
    pub masked: bool,
}

/// MSI-X table with delivery through an [`MsiSender`].
pub struct Msix {
    st: MsixState,
    sender: Arc<dyn MsiSender>,
}

impl Msix {
    /// Creates a table of `n` vectors, all masked.
    pub fn new(n: u16, sender: Arc<dyn MsiSender>) -> Self {
        let n = usize::from(n);
        Self {
            st: MsixState {
                entries: vec![
                    MsixEntry {
                        ctrl: ENTRY_MASKED,
                        ..Default::default()
                    };
                    n
                ],
                pending: vec![false; n],
                enabled: false,
                masked: false,
            },
            sender,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.st.entries.len()
    }

    /// True if the table has no vectors.
    pub fn is_empty(&self) -> bool {
        self.st.entries.is_empty()
    }

    /// True if the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.st.enabled
    }

    /// Applies a new message-control value.
    pub fn set_control(&mut self, ctrl: u16) {
        self.st.enabled = ctrl & MSIX_ENABLE != 0;
        self.st.masked = ctrl & MSIX_FUNCTION_MASK != 0;
        self.flush_pending();
    }

    /// Message-control bits this table contributes (enable, mask, table size - 1).
    pub fn control(&self) -> u16 {
        let mut c = (self.len() as u16).saturating_sub(1) & 0x7ff;
        if self.st.enabled {
            c |= MSIX_ENABLE;
        }
        if self.st.masked {
            c |= MSIX_FUNCTION_MASK;
        }
        c
    }

    fn entry_word(&self, idx: usize, word: usize) -> u32 {
        let e = &self.st.entries[idx];
        match word {
            0 => e.addr_lo,
            1 => e.addr_hi,
            2 => e.data,
            _ => e.ctrl,
        }
    }

    /// Guest read of the table region.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset + i as u64;
            let idx = (off / MSIX_ENTRY_SIZE) as usize;
            *b = if idx < self.len() {
                let word = ((off % MSIX_ENTRY_SIZE) / 4) as usize;
                (self.entry_word(idx, word) >> (8 * (off % 4))) as u8
            } else {
                0
            };
        }
    }

    /// Guest write of the table region.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let off = offset + i as u64;
            let idx = (off / MSIX_ENTRY_SIZE) as usize;
            if idx >= self.len() {
                continue;
            }
            let shift = 8 * (off % 4);
            let e = &mut self.st.entries[idx];
            let w = match (off % MSIX_ENTRY_SIZE) / 4 {
                0 => &mut e.addr_lo,
                1 => &mut e.addr_hi,
                2 => &mut e.data,
                _ => &mut e.ctrl,
            };
            *w = (*w & !(0xff << shift)) | u32::from(*v) << shift;
        }
        self.flush_pending();
    }

    /// Guest read of the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let base = ((offset + i as u64) * 8) as usize;
            let mut v = 0u8;
            for bit in 0..8 {
                if self.st.pending.get(base + bit).copied().unwrap_or(false) {
                    v |= 1 << bit;
                }
            }
            *b = v;
        }
    }

    fn deliver(&mut self, idx: usize) {
        let e = self.st.entries[idx];
        if self.st.masked || e.ctrl & ENTRY_MASKED != 0 {
            self.st.pending[idx] = true;
            return;
        }
        self.st.pending[idx] = false;
        let addr = u64::from(e.addr_hi) << 32 | u64::from(e.addr_lo);
        if !self.sender.send_msi(addr, e.data) {
            tracing::debug!("msix: vector {idx} refused by the host");
        }
    }

    fn flush_pending(&mut self) {
        if !self.st.enabled || self.st.masked {
            return;
        }
        for idx in 0..self.len() {
            if self.st.pending[idx] && self.st.entries[idx].ctrl & ENTRY_MASKED == 0 {
                self.deliver(idx);
            }
        }
    }

    /// Signals vector `idx`. Returns false if MSI-X is disabled or `idx` is out of range.
    pub fn notify(&mut self, idx: u16) -> bool {
        let idx = usize::from(idx);
        if !self.st.enabled || idx >= self.len() {
            return false;
        }
        self.deliver(idx);
        true
    }

    /// Captures the state.
    pub fn state(&self) -> MsixState {
        self.st.clone()
    }

    /// Replaces the state with a captured one (same number of vectors); pending unmasked vectors
    /// are not re-delivered here (the guest re-reads the PBA or the device signals again).
    pub fn set_state(&mut self, st: MsixState) -> Result<(), crate::SnapshotError> {
        if st.entries.len() != self.len() || st.pending.len() != self.len() {
            return Err(crate::SnapshotError::Invalid {
                component: "msix",
                reason: format!(
                    "{} vectors / {} pending bits captured, the device has {}",
                    st.entries.len(),
                    st.pending.len(),
                    self.len()
                ),
            });
        }
        self.st = st;
        Ok(())
    }

    /// Resets to power-on (all masked, disabled).
    pub fn reset(&mut self) {
        let n = self.len() as u16;
        let sender = self.sender.clone();
        *self = Self::new(n, sender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<(u64, u32)>>);
    impl MsiSender for Rec {
        fn send_msi(&self, a: u64, d: u32) -> bool {
            self.0.lock().unwrap().push((a, d));
            true
        }
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask() {
        let rec = Arc::new(Rec::default());
        let mut m = Msix::new(2, rec.clone());
        assert!(!m.notify(0), "disabled");
        m.set_control(MSIX_ENABLE);
        m.write_table(16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(24, &0x41u32.to_le_bytes());
        assert!(m.notify(1));
        assert!(rec.0.lock().unwrap().is_empty(), "still masked");
        let mut pba = [0u8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 2);
        m.write_table(28, &0u32.to_le_bytes());
        assert_eq!(*rec.0.lock().unwrap(), vec![(0xfee0_0000, 0x41)]);
        assert!(m.notify(1));
        assert_eq!(rec.0.lock().unwrap().len(), 2);
        assert!(!m.notify(7));
        let mut b = [0u8; 4];
        m.read_table(24, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x41);
    }
}
