//! rxen-testkit (placeholder; see ARCHITECTURE.md).
