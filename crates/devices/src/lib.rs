//! rxen-devices (placeholder; see ARCHITECTURE.md).
