//! The domain registry, kept in xenstore the way libxl lays it out:
//! `/local/domain/<id>/{name,domid,vm,memory/*,cpu/*,control/*,console/*}`, `/vm/<uuid>/…`, and
//! toolstack-private state under `/libxl/<id>/…` (ours in `/libxl/<id>/rxen/…`).

use rxen_xenstore::{Access, Client, Perm, Perms, XsOps};

use crate::{Error, Result};

/// Lifecycle state recorded by the supervisor in `/libxl/<id>/rxen/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomState {
    /// Being built.
    Creating,
    /// vCPUs running.
    Running,
    /// Paused (`xl pause`, `xl create -p`).
    Paused,
    /// Shut down and preserved (`on_*=preserve`), with the reason.
    Shutdown(ShutdownReason),
    /// Being torn down.
    Dying,
}

/// Why a domain shut down (Xen's `SHUTDOWN_*` codes, in `xl list`'s reason column order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff` (0).
    Poweroff,
    /// `SHUTDOWN_reboot` (1).
    Reboot,
    /// `SHUTDOWN_suspend` (2).
    Suspend,
    /// `SHUTDOWN_crash` (3).
    Crash,
    /// `SHUTDOWN_watchdog` (4).
    Watchdog,
}

impl ShutdownReason {
    /// Xen's numeric code.
    pub fn code(self) -> u32 {
        match self {
            ShutdownReason::Poweroff => 0,
            ShutdownReason::Reboot => 1,
            ShutdownReason::Suspend => 2,
            ShutdownReason::Crash => 3,
            ShutdownReason::Watchdog => 4,
        }
    }

    /// The letter of `xl list`'s fifth state column (`"-rscwS"`).
    pub fn letter(self) -> char {
        b"-rscw"[self.code() as usize] as char
    }

    fn word(self) -> &'static str {
        match self {
            ShutdownReason::Poweroff => "poweroff",
            ShutdownReason::Reboot => "reboot",
            ShutdownReason::Suspend => "suspend",
            ShutdownReason::Crash => "crash",
            ShutdownReason::Watchdog => "watchdog",
        }
    }

    fn from_word(s: &str) -> Option<ShutdownReason> {
        Some(match s {
            "poweroff" => ShutdownReason::Poweroff,
            "reboot" => ShutdownReason::Reboot,
            "suspend" => ShutdownReason::Suspend,
            "crash" => ShutdownReason::Crash,
            "watchdog" => ShutdownReason::Watchdog,
            _ => return None,
        })
    }
}

impl DomState {
    /// Encoding stored in xenstore.
    pub fn as_string(self) -> String {
        match self {
            DomState::Creating => "creating".into(),
            DomState::Running => "running".into(),
            DomState::Paused => "paused".into(),
            DomState::Shutdown(r) => format!("shutdown:{}", r.word()),
            DomState::Dying => "dying".into(),
        }
    }

    /// Parse the stored encoding.
    pub fn parse(s: &str) -> Option<DomState> {
        Some(match s {
            "creating" => DomState::Creating,
            "running" => DomState::Running,
            "paused" => DomState::Paused,
            "dying" => DomState::Dying,
            _ => DomState::Shutdown(ShutdownReason::from_word(s.strip_prefix("shutdown:")?)?),
        })
    }
}

/// What the registry knows about one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainRecord {
    /// Domain id.
    pub domid: u32,
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Balloon target (`memory/target`), KiB.
    pub target_kib: u64,
    /// `memory/static-max`, KiB.
    pub max_kib: u64,
    /// vCPUs online (`cpu/<n>/availability = online`).
    pub vcpus_online: u32,
    /// Lifecycle state.
    pub state: DomState,
    /// Pid of the VMM process, when running.
    pub vmm_pid: Option<u32>,
    /// Pid of the supervisor.
    pub supervisor_pid: Option<u32>,
    /// Creation time (seconds since the epoch).
    pub start_time: Option<f64>,
}

/// Static facts written when a domain is registered.
#[derive(Debug, Clone)]
pub struct NewDomain<'a> {
    /// Name (unique).
    pub name: &'a str,
    /// UUID.
    pub uuid: &'a str,
    /// Memory target KiB.
    pub target_kib: u64,
    /// Max memory KiB.
    pub max_kib: u64,
    /// vCPUs online at boot.
    pub vcpus: u32,
    /// vCPU ceiling.
    pub max_vcpus: u32,
    /// Domain type (`pv`, `pvh`, `hvm`), written to `/libxl/<id>/type`.
    pub dtype: &'a str,
}

/// Domain path.
pub fn dom_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Toolstack-private path.
pub fn priv_path(domid: u32) -> String {
    format!("/libxl/{domid}/rxen")
}

/// Ids of all domains in the registry (including 0 when the host wrote it), sorted.
pub fn list_domids(xs: &impl XsOps) -> Result<Vec<u32>> {
    Ok(domids(xs)?)
}

type XsResult<T> = rxen_xenstore::client::Result<T>;

fn domids(xs: &impl XsOps) -> XsResult<Vec<u32>> {
    let mut ids: Vec<u32> = match xs.ls("/local/domain") {
        Ok(v) => v.iter().filter_map(|s| s.parse().ok()).collect(),
        Err(e) if e.errno() == Some(rxen_xenstore::Errno::ENOENT) => Vec::new(),
        Err(e) => return Err(e),
    };
    ids.sort_unstable();
    Ok(ids)
}

/// Read a node, `None` if it does not exist.
pub fn read_opt(xs: &impl XsOps, path: &str) -> XsResult<Option<String>> {
    match xs.read_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.errno() == Some(rxen_xenstore::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read one domain's record; `None` if it does not exist (or vanished meanwhile).
pub fn read_domain(xs: &impl XsOps, domid: u32) -> Result<Option<DomainRecord>> {
    let d = dom_path(domid);
    let Some(name) = read_opt(xs, &format!("{d}/name"))? else {
        return Ok(None);
    };
    let vm = read_opt(xs, &format!("{d}/vm"))?.unwrap_or_default();
    let uuid = vm.strip_prefix("/vm/").unwrap_or("").to_string();
    let num = |p: &str| -> Result<u64> {
        Ok(read_opt(xs, &format!("{d}/{p}"))?
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0))
    };
    let target_kib = num("memory/target")?;
    let max_kib = num("memory/static-max")?;
    let mut vcpus_online = 0;
    if let Ok(cpus) = xs.ls(&format!("{d}/cpu")) {
        for c in cpus {
            if read_opt(xs, &format!("{d}/cpu/{c}/availability"))?.as_deref() == Some("online") {
                vcpus_online += 1;
            }
        }
    }
    let p = priv_path(domid);
    let state = read_opt(xs, &format!("{p}/state"))?
        .and_then(|s| DomState::parse(&s))
        .unwrap_or(DomState::Running);
    let pid = |k: &str| -> Result<Option<u32>> {
        Ok(read_opt(xs, &format!("{p}/{k}"))?.and_then(|s| s.parse().ok()))
    };
    Ok(Some(DomainRecord {
        domid,
        name,
        uuid: uuid.clone(),
        target_kib,
        max_kib,
        vcpus_online,
        state,
        vmm_pid: pid("vmm-pid")?,
        supervisor_pid: pid("supervisor-pid")?,
        start_time: if uuid.is_empty() {
            None
        } else {
            read_opt(xs, &format!("/vm/{uuid}/start_time"))?.and_then(|s| s.parse().ok())
        },
    }))
}

/// Every domain in the registry.
pub fn all_domains(xs: &impl XsOps) -> Result<Vec<DomainRecord>> {
    let mut v = Vec::new();
    for id in list_domids(xs)? {
        if let Some(r) = read_domain(xs, id)? {
            v.push(r);
        }
    }
    Ok(v)
}

/// Resolve a `domain-id` argument (numeric id or name) like xl does.
pub fn resolve(xs: &impl XsOps, arg: &str) -> Result<DomainRecord> {
    if let Ok(id) = arg.parse::<u32>() {
        if let Some(r) = read_domain(xs, id)? {
            return Ok(r);
        }
        return Err(Error::NoSuchDomain(arg.to_string()));
    }
    all_domains(xs)?
        .into_iter()
        .find(|r| r.name == arg)
        .ok_or_else(|| Error::NoSuchDomain(arg.to_string()))
}

/// Register a new domain atomically: checks the name is unique, allocates the next domid (Xen's
/// policy: increasing from the last one allocated, never reusing an id in use, wrapping below
/// `DOMID_FIRST_RESERVED`), writes the standard tree. Retries on transaction conflicts.
pub fn register(xs: &Client, nd: &NewDomain<'_>) -> Result<u32> {
    let r = xs.with_transaction(|t| {
        let ids = domids(t)?;
        for id in &ids {
            if read_opt(t, &format!("{}/name", dom_path(*id)))?.as_deref() == Some(nd.name) {
                return Ok(Err(Error::NameInUse(nd.name.to_string())));
            }
        }
        let last: u32 = read_opt(t, "/libxl/rxen/last-domid")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut id = last;
        let domid = loop {
            id = if id + 1 >= DOMID_FIRST_RESERVED {
                1
            } else {
                id + 1
            };
            if !ids.contains(&id) {
                break id;
            }
            if id == last {
                return Ok(Err(Error::NoFreeDomid));
            }
        };
        t.write("/libxl/rxen/last-domid", domid.to_string())?;
        write_tree(t, domid, nd)?;
        Ok(Ok(domid))
    })?;
    r
}

/// `DOMID_FIRST_RESERVED`.
pub const DOMID_FIRST_RESERVED: u32 = 0x7FF0;

fn write_tree(t: &impl XsOps, domid: u32, nd: &NewDomain<'_>) -> XsResult<()> {
    let d = dom_path(domid);
    let ro = Perms::new(vec![
        Perm::new(Access::None, 0),
        Perm::new(Access::Read, domid),
    ])
    .expect("non-empty perms");
    let rw = Perms::new(vec![Perm::new(Access::Both, domid)]).expect("non-empty perms");
    t.mkdir(&d)?;
    t.set_perms(&d, &ro)?;
    t.write(format!("{d}/name").as_str(), nd.name)?;
    t.write(format!("{d}/domid").as_str(), domid.to_string())?;
    t.write(format!("{d}/vm").as_str(), format!("/vm/{}", nd.uuid))?;
    t.write(
        format!("{d}/memory/static-max").as_str(),
        nd.max_kib.to_string(),
    )?;
    t.write(
        format!("{d}/memory/target").as_str(),
        nd.target_kib.to_string(),
    )?;
    t.write(format!("{d}/memory/videoram").as_str(), "-1")?;
    for c in 0..nd.max_vcpus {
        let a = if c < nd.vcpus { "online" } else { "offline" };
        t.write(format!("{d}/cpu/{c}/availability").as_str(), a)?;
    }
    for k in ["control", "data", "drivers", "device", "attr", "error"] {
        t.mkdir(&format!("{d}/{k}"))?;
    }
    t.write(&format!("{d}/control/shutdown"), "")?;
    t.write(&format!("{d}/control/sysrq"), "")?;
    for k in [
        "control/shutdown",
        "control/sysrq",
        "data",
        "drivers",
        "attr",
    ] {
        t.set_perms(&format!("{d}/{k}"), &rw)?;
    }
    t.write(
        format!("{d}/control/platform-feature-multiprocessor-suspend").as_str(),
        "1",
    )?;
    t.write(
        format!("{d}/control/platform-feature-xs_reset_watches").as_str(),
        "1",
    )?;
    let vm = format!("/vm/{}", nd.uuid);
    t.write(format!("{vm}/uuid").as_str(), nd.uuid)?;
    t.write(format!("{vm}/name").as_str(), nd.name)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    t.write(format!("{vm}/start_time").as_str(), format!("{now:.2}"))?;
    t.write(format!("/libxl/{domid}/type").as_str(), nd.dtype)?;
    t.write(
        format!("{}/state", priv_path(domid)).as_str(),
        DomState::Creating.as_string(),
    )?;
    Ok(())
}

/// Record the lifecycle state.
pub fn set_state(xs: &impl XsOps, domid: u32, st: DomState) -> Result<()> {
    xs.write(&format!("{}/state", priv_path(domid)), st.as_string())?;
    Ok(())
}

/// Rename a domain (`xl rename`), refusing a name in use.
pub fn rename(xs: &Client, domid: u32, new: &str) -> Result<()> {
    let r = xs.with_transaction(|t| {
        for id in domids(t)? {
            if id != domid
                && read_opt(t, &format!("{}/name", dom_path(id)))?.as_deref() == Some(new)
            {
                return Ok(Err(Error::NameInUse(new.to_string())));
            }
        }
        let d = dom_path(domid);
        let Some(vm) = read_opt(t, &format!("{d}/vm"))? else {
            return Ok(Err(Error::NoSuchDomain(domid.to_string())));
        };
        t.write(&format!("{d}/name"), new)?;
        t.write(&format!("{vm}/name"), new)?;
        Ok(Ok(()))
    })?;
    r
}

/// Remove every node of a domain (what libxl does on destroy), in one transaction.
pub fn unregister(xs: &Client, domid: u32) -> Result<()> {
    xs.with_transaction(|t| {
        let d = dom_path(domid);
        if let Some(vm) = read_opt(t, &format!("{d}/vm"))? {
            let _ = t.rm(&vm);
        }
        for p in [d, format!("/libxl/{domid}")] {
            match t.rm(&p) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(rxen_xenstore::Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })?;
    Ok(())
}

impl From<rxen_xenstore::ClientError> for Error {
    fn from(e: rxen_xenstore::ClientError) -> Self {
        Error::Xenstore(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_encoding_round_trips() {
        for s in [
            DomState::Creating,
            DomState::Running,
            DomState::Paused,
            DomState::Dying,
            DomState::Shutdown(ShutdownReason::Crash),
            DomState::Shutdown(ShutdownReason::Poweroff),
        ] {
            assert_eq!(DomState::parse(&s.as_string()), Some(s));
        }
        assert_eq!(DomState::parse("shutdown:bogus"), None);
        assert_eq!(ShutdownReason::Crash.letter(), 'c');
        assert_eq!(ShutdownReason::Reboot.letter(), 'r');
        assert_eq!(ShutdownReason::Poweroff.letter(), '-');
    }
}
