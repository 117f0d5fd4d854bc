//! The capture/restore contract every stateful component implements.
//!
//! Save/restore and live migration arrive in a later issue; this module fixes the shape now so that
//! each device keeps its guest-visible state in a plain serde-able struct.

use serde::{de::DeserializeOwned, Serialize};

/// Error restoring a component from a captured state.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The captured state cannot be applied to this component.
    #[error("Invalid state for {component}: {reason}")]
    Invalid {
        /// Component name.
        component: &'static str,
        /// Why the state was rejected.
        reason: String,
    },
}

/// A component whose guest-visible state can be captured and restored.
///
/// `snapshot` is only called while the domain is paused; `restore` before it is resumed.
pub trait Snapshot {
    /// The serde-able state of the component.
    type State: Serialize + DeserializeOwned;

    /// Stable identifier of the component in a saved image.
    fn snapshot_id(&self) -> String;

    /// Captures the current state.
    fn snapshot(&self) -> Self::State;

    /// Replaces the current state with `state`.
    fn restore(&mut self, state: Self::State) -> Result<(), SnapshotError>;
}
