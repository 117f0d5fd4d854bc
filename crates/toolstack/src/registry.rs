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
    Ok(read_domains(xs, &[domid])?.pop().flatten())
}

/// The nodes of one domain that phase 1 of [`read_domains`] reads, in order.
const FIELDS: usize = 7;

fn phase1_paths(domid: u32) -> [String; FIELDS] {
    let d = dom_path(domid);
    let p = priv_path(domid);
    [
        format!("{d}/name"),
        format!("{d}/vm"),
        format!("{d}/memory/target"),
        format!("{d}/memory/static-max"),
        format!("{p}/state"),
        format!("{p}/vmm-pid"),
        format!("{p}/supervisor-pid"),
    ]
}

/// Read several domains' records with a constant number of (pipelined) round trips, whatever
/// the number of domains: `xl list` with 100 domains costs about what it costs with one.
/// `None` for a domain that does not exist (or vanished meanwhile).
pub fn read_domains(xs: &impl XsOps, ids: &[u32]) -> Result<Vec<Option<DomainRecord>>> {
    // Phase 1: the fixed nodes and the vCPU directory of every domain.
    let paths: Vec<String> = ids.iter().flat_map(|&id| phase1_paths(id)).collect();
    let mut vals = xs.read_many(&paths).into_iter();
    let cpu_dirs: Vec<String> = ids
        .iter()
        .map(|&id| format!("{}/cpu", dom_path(id)))
        .collect();
    let mut cpus = xs.ls_many(&cpu_dirs).into_iter();
    struct Partial {
        rec: DomainRecord,
        cpus: Vec<String>,
    }
    let mut partial: Vec<Option<Partial>> = Vec::with_capacity(ids.len());
    for &domid in ids {
        let mut f: Vec<Option<String>> = Vec::with_capacity(FIELDS);
        for _ in 0..FIELDS {
            f.push(vals.next().transpose()?.flatten());
        }
        let cpu_list = cpus.next().transpose()?.flatten().unwrap_or_default();
        let Some(name) = f[0].take() else {
            partial.push(None);
            continue;
        };
        let uuid = f[1]
            .as_deref()
            .and_then(|vm| vm.strip_prefix("/vm/"))
            .unwrap_or("")
            .to_string();
        let num = |v: &Option<String>| v.as_deref().and_then(|s| s.trim().parse().ok());
        partial.push(Some(Partial {
            rec: DomainRecord {
                domid,
                name,
                uuid,
                target_kib: num(&f[2]).unwrap_or(0),
                max_kib: num(&f[3]).unwrap_or(0),
                vcpus_online: 0,
                state: f[4]
                    .as_deref()
                    .and_then(DomState::parse)
                    .unwrap_or(DomState::Running),
                vmm_pid: num(&f[5]).map(|v: u64| v as u32),
                supervisor_pid: num(&f[6]).map(|v: u64| v as u32),
                start_time: None,
            },
            cpus: cpu_list,
        }));
    }
    // Phase 2: vCPU availability and start time.
    let mut paths2 = Vec::new();
    for p in partial.iter().flatten() {
        let d = dom_path(p.rec.domid);
        for c in &p.cpus {
            paths2.push(format!("{d}/cpu/{c}/availability"));
        }
        paths2.push(format!("/vm/{}/start_time", p.rec.uuid));
    }
    let mut vals2 = xs.read_many(&paths2).into_iter();
    let mut out = Vec::with_capacity(partial.len());
    for p in partial {
        let Some(mut p) = p else {
            out.push(None);
            continue;
        };
        for _ in &p.cpus {
            if vals2.next().transpose()?.flatten().as_deref() == Some("online") {
                p.rec.vcpus_online += 1;
            }
        }
        let st = vals2.next().transpose()?.flatten();
        if !p.rec.uuid.is_empty() {
            p.rec.start_time = st.and_then(|s| s.parse().ok());
        }
        out.push(Some(p.rec));
    }
    Ok(out)
}

/// Every domain in the registry.
pub fn all_domains(xs: &impl XsOps) -> Result<Vec<DomainRecord>> {
    let ids = list_domids(xs)?;
    Ok(read_domains(xs, &ids)?.into_iter().flatten().collect())
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

/// Whether a domain other than `domid` is named `name`.
fn name_taken(t: &impl XsOps, domid: u32, name: &str) -> XsResult<bool> {
    for id in domids(t)? {
        if id != domid && read_opt(t, &format!("{}/name", dom_path(id)))?.as_deref() == Some(name) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Rename a domain (`xl rename`), refusing a name in use.
pub fn rename(xs: &Client, domid: u32, new: &str) -> Result<()> {
    let r = xs.with_transaction(|t| {
        if name_taken(t, domid, new)? {
            return Ok(Err(Error::NameInUse(new.to_string())));
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

/// libxl_domain_preserve: give a dead domain a new name and a new uuid (its `/vm/<uuid>` node
/// moves), so that a new domain can be created with the old name and uuid (`rename-restart`).
pub fn preserve(xs: &Client, domid: u32, new_name: &str, new_uuid: &str) -> Result<()> {
    let r = xs.with_transaction(|t| {
        if name_taken(t, domid, new_name)? {
            return Ok(Err(Error::NameInUse(new_name.to_string())));
        }
        let d = dom_path(domid);
        let Some(vm) = read_opt(t, &format!("{d}/vm"))? else {
            return Ok(Err(Error::NoSuchDomain(domid.to_string())));
        };
        let new_vm = format!("/vm/{new_uuid}");
        let start = read_opt(t, &format!("{vm}/start_time"))?;
        let _ = t.rm(&vm);
        t.write(&format!("{new_vm}/uuid"), new_uuid)?;
        t.write(&format!("{new_vm}/name"), new_name)?;
        if let Some(st) = start {
            t.write(&format!("{new_vm}/start_time"), &st)?;
        }
        t.write(&format!("{d}/vm"), &new_vm)?;
        t.write(&format!("{d}/name"), new_name)?;
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
