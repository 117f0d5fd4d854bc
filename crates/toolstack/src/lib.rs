//! rxen-toolstack (placeholder; see ARCHITECTURE.md).
