//! rxen-vmm (placeholder; see ARCHITECTURE.md).
