//! rxen-xenstore (placeholder; see ARCHITECTURE.md).
