//! rxen-toolstack: rxen's libxl.
//!
//! * [`registry`]: domains in xenstore, laid out like libxl (`/local/domain/<id>`, `/vm/<uuid>`,
//!   `/libxl/<id>`), domid allocation and name uniqueness.
//! * [`build`]: the libxl domain configuration (from `rxen-config`) → the VMM's `VmConfig`.
//! * [`supervisor`]: the per-domain daemon (Xen keeps a per-domain `xl` process): runs the VMM,
//!   publishes consoles, turns `control/shutdown` into ACPI events, applies `on_poweroff`,
//!   `on_reboot`, `on_crash`, and frees every host resource when the domain goes away.
//! * [`ops`]: what `xl` commands do (create, destroy, shutdown, reboot, pause, list…).
//! * [`host`]: host services (`rxen host start|stop|status`, Xen's xencommons/xendomains).
//! * [`console`]: attaching a terminal (or a pipe) to a domain console (`xl console`).
//! * [`hotplug`]: devices into running domains (`xl block-attach`, `network-attach`, …).
//! * [`relocation`]: `rxen relocation-server|connect|certs` (xend's relocation service over mutual TLS).
//! * [`migrate`]: `xl save`, `xl restore` (save files in Xen's xl format carrying rxen streams).

pub mod build;
pub mod console;
pub mod cpumem;
pub mod format;
pub mod host;
pub mod hotplug;
pub mod migrate;
pub mod ops;
pub mod paths;
pub mod registry;
pub mod relocation;
pub mod sched;
pub mod supervisor;

pub use paths::Paths;

/// Toolstack errors; each names the domain or resource that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// xenstored is not reachable.
    #[error("xenstored is not running at {path} (start the host services with `rxen host start`)")]
    NoXenstored {
        /// Socket tried.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: rxen_xenstore::ClientError,
    },
    /// A xenstore operation failed.
    #[error("xenstore")]
    Xenstore(#[source] rxen_xenstore::ClientError),
    /// No domain with this id or name.
    #[error("{0} is an invalid domain identifier")]
    NoSuchDomain(String),
    /// The name is taken.
    #[error("domain with name \"{0}\" already exists.")]
    NameInUse(String),
    /// No domid left.
    #[error("no free domain id")]
    NoFreeDomid,
    /// The domain configuration cannot be run by rxen.
    #[error("domain {domain}: {msg}")]
    Unsupported {
        /// Domain name.
        domain: String,
        /// What is not supported.
        msg: String,
    },
    /// Host I/O failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The domain's VMM control API failed.
    #[error("domain {domid}: VMM control socket")]
    Vmm {
        /// Domain id.
        domid: u32,
        /// Cause.
        #[source]
        source: rxen_vmm::api::ClientError,
    },
    /// Something timed out.
    #[error("{0}")]
    Timeout(String),
    /// Anything else, with its message.
    #[error("{0}")]
    Other(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Build an [`Error::Io`] with context.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Connect to this host's xenstored, with a clear error when it is not running.
pub fn connect_xenstore(paths: &Paths) -> Result<rxen_xenstore::Client> {
    rxen_xenstore::Client::connect(&paths.xenstored_socket).map_err(|source| Error::NoXenstored {
        path: paths.xenstored_socket.clone(),
        source,
    })
}
