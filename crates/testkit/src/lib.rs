//! rxen's test harness (crosvm-style end-to-end testing).
//!
//! * [`Assets`]: the Debian-built guest kernel, initramfs and rootfs (`scripts/guest-assets`).
//! * [`Guest`]: a guest booted under a VMM (QEMU as the reference, rxen's own VMM, Cloud Hypervisor)
//!   or any process whose stdio is the guest's serial console (`xl create -c`), driven by the
//!   serial *delegate* in the guest's init: [`Guest::run`] sends a shell script and returns its
//!   framed output and exit status.
//! * Every process a [`Guest`] spawns is in its own process group, killed on drop, so a failing
//!   test never leaves a VMM behind.
//!
//! End-to-end tests need a KVM that can run a Linux kernel. On machines whose `/dev/kvm` cannot
//! (the software KVM of rxen's CI machines) they are `#[ignore]`d in plain `cargo test` and run by
//! `scripts/e2e`, which executes the ignored tests inside the nested test host (`scripts/testhost`).

mod assets;
mod guest;
mod qmp;
mod tools;
mod vmm;

pub use assets::{linux_kvm_available, repo_root, require_linux_kvm, Assets};
pub use guest::{CmdOutput, Guest};
pub use qmp::Qmp;
pub use tools::{host_sh, median, require_tool, static_tool_disk, Undo};
pub use vmm::{BootSpec, Vmm};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building or locating the guest assets failed.
    #[error("guest assets: {0}")]
    Assets(String),
    /// Spawning the VMM or process failed.
    #[error("cannot spawn {what}")]
    Spawn {
        /// What was spawned.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// I/O on the console failed.
    #[error("console I/O")]
    Io(#[from] std::io::Error),
    /// A wait timed out; the transcript tail helps diagnose.
    #[error("timed out after {secs:.1}s waiting for {what}; console tail:\n{tail}")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// Seconds waited.
        secs: f64,
        /// Last part of the console transcript.
        tail: String,
    },
    /// The process exited while we were waiting for output.
    #[error("process exited ({status}) while waiting for {what}; console tail:\n{tail}")]
    Exited {
        /// Exit status.
        status: String,
        /// What we were waiting for.
        what: String,
        /// Last part of the console transcript.
        tail: String,
    },
    /// The environment cannot run this test.
    #[error("{0}")]
    Unsupported(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;
