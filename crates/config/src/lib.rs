//! rxen-config (placeholder; see ARCHITECTURE.md).
