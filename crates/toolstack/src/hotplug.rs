//! Device hot-plug into running domains: `xl block-attach/-detach/-list` and
//! `xl network-attach/-detach/-list`.
//!
//! Like libxl, attaching a device
//! 1. turns the xl spec into the device (`rxen-config`), allocates its devid (a disk's is the
//!    number of its `vdev`, xen-vbd-interface(7); a NIC's the highest in use + 1),
//! 2. asks the domain's VMM to hot-plug it (ACPI PCI hot-plug, see docs/hotplug.md),
//! 3. writes the backend and frontend nodes (`/local/domain/0/backend/<kind>/<domid>/<devid>`,
//!    `/local/domain/<domid>/device/<kind>/<devid>`) and libxl's own record
//!    (`/libxl/<domid>/device/<kind>/<devid>`), with `state` 4 (connected),
//! 4. brings a NIC's tap up on the host (`rxen-net`: bridge, NAT, routed or the `script=`),
//! 5. records the device in the domain's stored configuration (the libxl JSON in
//!    `/var/lib/xen/userdata-d.<domid>.<uuid>.libxl-json` and the supervisor's job), so a
//!    restart of the domain keeps it.
//!
//! Detaching asks the VMM to remove the device, which waits for the guest to eject it (`-f`:
//! does not wait), then undoes the rest in reverse order.
//!
//! Guests have no Xen PV rings, so `evt-ch` and `ring-ref` in the lists are -1 (libxl's value
//! when the frontend has not published them).

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rxen_config::model::{DeviceDisk, DeviceNic, DomainConfig};
use rxen_vmm::api::{ApiClient, DeviceAdd};
use rxen_xenstore::{Access, Client, Perm, Perms, XsOps};

use crate::build::{build_job, random_xen_mac, DomainJob};
use crate::registry::{self, read_opt, DomState, DomainRecord};
use crate::supervisor::job_path;
use crate::{io_err, Error, Paths, Result};

/// How long a guest gets to release a device on detach (libxl waits 10 s; emulated test hosts
/// are slower). `RXEN_DETACH_TIMEOUT` (seconds) overrides it.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// xenbus state "Connected".
const XENBUS_CONNECTED: &str = "4";

fn detach_timeout() -> Duration {
    std::env::var("RXEN_DETACH_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DETACH_TIMEOUT)
}

/// The devid of a virtual disk name (xen-vbd-interface(7)): `xvdX[N]`, `hdX[N]`, `sdX[N]`,
/// `d<disk>[p<part>]`, or a plain number.
pub fn vdev_to_devid(vdev: &str) -> Option<u32> {
    if !vdev.is_empty() && vdev.bytes().all(|b| b.is_ascii_digit()) {
        return vdev.parse().ok();
    }
    let ext = |disk: u32, part: u32| -> Option<u32> {
        (disk < (1 << 20) && part < 256).then_some(1 << 28 | disk << 8 | part)
    };
    // Letters a..z, aa.. (bijective base 26), then an optional partition number.
    let letters = |s: &str| -> Option<(u32, u32)> {
        let n = s.bytes().take_while(u8::is_ascii_lowercase).count();
        if n == 0 || n > 4 {
            return None;
        }
        let disk = s[..n]
            .bytes()
            .fold(0u32, |a, b| a * 26 + u32::from(b - b'a') + 1)
            - 1;
        let rest = &s[n..];
        let part = if rest.is_empty() {
            0
        } else if rest.bytes().all(|b| b.is_ascii_digit()) && !rest.starts_with('0') {
            rest.parse().ok()?
        } else {
            return None;
        };
        Some((disk, part))
    };
    if let Some(r) = vdev.strip_prefix("xvd") {
        let (disk, part) = letters(r)?;
        return if disk < 16 && part < 16 {
            Some(202 << 8 | disk << 4 | part)
        } else {
            ext(disk, part)
        };
    }
    if let Some(r) = vdev.strip_prefix("hd") {
        let (disk, part) = letters(r)?;
        const MAJORS: [u32; 10] = [3, 22, 33, 34, 56, 57, 88, 89, 90, 91];
        let major = *MAJORS.get(disk as usize / 2)?;
        return (part < 64).then_some(major << 8 | (disk % 2) << 6 | part);
    }
    if let Some(r) = vdev.strip_prefix("sd") {
        let (disk, part) = letters(r)?;
        return if disk < 16 && part < 16 {
            Some(8 << 8 | disk << 4 | part)
        } else {
            ext(disk, part)
        };
    }
    if let Some(r) = vdev.strip_prefix('d') {
        let (d, p) = match r.split_once('p') {
            Some((d, p)) => (d, Some(p)),
            None => (r, None),
        };
        let num = |s: &str| -> Option<u32> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        return ext(num(d)?, p.map_or(Some(0), num)?);
    }
    None
}

fn vbd_backend(domid: u32, devid: u32) -> String {
    format!("/local/domain/0/backend/vbd/{domid}/{devid}")
}

fn vbd_frontend(domid: u32, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vbd/{devid}")
}

fn libxl_dev(domid: u32, kind: &str, devid: u32) -> String {
    format!("/libxl/{domid}/device/{kind}/{devid}")
}

/// Serialises hot-plug operations on one domain (stored config read-modify-write).
struct DomainLock {
    _file: std::fs::File,
}

impl DomainLock {
    fn take(paths: &Paths, domid: u32) -> Result<DomainLock> {
        let p = paths.domain_run_dir(domid).join("hotplug.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(format!("opening {}", p.display())))?;
        // SAFETY: flock on a file descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(format!("locking {}", p.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(DomainLock { _file: f })
    }
}

/// A running domain and its stored configuration (also used by `xl vcpu-set`).
pub(crate) struct Live {
    pub(crate) rec: DomainRecord,
    userdata: PathBuf,
    pub(crate) cfg: DomainConfig,
    pub(crate) job: DomainJob,
    _lock: DomainLock,
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-hotplug");
    let mut f =
        std::fs::File::create(&tmp).map_err(io_err(format!("writing {}", tmp.display())))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("replacing {}", path.display())))
}

fn load_job(paths: &Paths, domid: u32) -> Result<DomainJob> {
    let jp = job_path(paths, domid);
    serde_json::from_slice(
        &std::fs::read(&jp).map_err(io_err(format!("reading {}", jp.display())))?,
    )
    .map_err(|e| Error::Other(format!("{}: {e}", jp.display())))
}

impl Live {
    pub(crate) fn open(paths: &Paths, xs: &Client, dom: &str) -> Result<Live> {
        let rec = registry::resolve(xs, dom)?;
        if rec.domid == 0 {
            return Err(Error::Other(
                "Domain-0 is the host: devices cannot be attached to it".into(),
            ));
        }
        if !matches!(rec.state, DomState::Running | DomState::Paused) {
            return Err(Error::Other(format!("domain {} is not running", rec.domid)));
        }
        let lock = DomainLock::take(paths, rec.domid)?;
        let userdata = paths.userdata(rec.domid, &rec.uuid);
        let text = std::fs::read_to_string(&userdata)
            .map_err(io_err(format!("reading {}", userdata.display())))?;
        let cfg = DomainConfig::from_libxl_json(&text)
            .map_err(|e| Error::Other(format!("{}: {e}", userdata.display())))?;
        let job = load_job(paths, rec.domid)?;
        Ok(Live {
            rec,
            userdata,
            cfg,
            job,
            _lock: lock,
        })
    }

    pub(crate) fn api(&self, paths: &Paths) -> Result<ApiClient> {
        let domid = self.rec.domid;
        let sock = paths.domain_run_dir(domid).join("vmm.sock");
        let mut c = ApiClient::connect(&sock).map_err(|source| Error::Vmm { domid, source })?;
        c.set_timeout(Some(detach_timeout() + Duration::from_secs(10)))
            .map_err(|source| Error::Vmm { domid, source })?;
        Ok(c)
    }

    pub(crate) fn save(&self, paths: &Paths) -> Result<()> {
        write_atomic(&self.userdata, self.cfg.to_libxl_json().as_bytes())?;
        let job = serde_json::to_vec_pretty(&self.job).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&job_path(paths, self.rec.domid), &job)
    }

    /// The VMM's job for the configuration plus one more device (validated like `xl create`).
    fn job_with(&self, paths: &Paths, cfg: &DomainConfig) -> Result<DomainJob> {
        let dir = paths.domain_run_dir(self.rec.domid);
        build_job(cfg, self.rec.domid, &dir, None, false)
    }
}

fn dir_perms(owner: u32, reader: u32) -> Perms {
    Perms::new(vec![
        Perm::new(Access::None, owner),
        Perm::new(Access::Read, reader),
    ])
    .expect("non-empty perms")
}

/// Writes the xenstore nodes of disk `d` (host `path`) as domain `domid`'s vbd `devid`, state 4.
pub fn write_vbd_nodes(
    xs: &Client,
    domid: u32,
    devid: u32,
    d: &DeviceDisk,
    path: &Path,
) -> Result<()> {
    let be = vbd_backend(domid, devid);
    let fe = vbd_frontend(domid, devid);
    let lx = libxl_dev(domid, "vbd", devid);
    let vdev = d.vdev.clone().unwrap_or_default();
    let mode = if d.readwrite != 0 { "w" } else { "r" };
    let params = path.display().to_string();
    let is_blk = std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device()
    });
    let be_nodes: Vec<(&str, String)> = vec![
        ("frontend", fe.clone()),
        ("frontend-id", domid.to_string()),
        ("online", "1".into()),
        ("removable", d.removable.to_string()),
        ("bootable", "1".into()),
        ("state", XENBUS_CONNECTED.into()),
        ("dev", vdev.clone()),
        ("type", if is_blk { "phy" } else { "file" }.into()),
        ("mode", mode.into()),
        ("device-type", "disk".into()),
        ("params", params.clone()),
    ];
    let fe_nodes: Vec<(&str, String)> = vec![
        ("backend", be.clone()),
        ("backend-id", "0".into()),
        ("state", XENBUS_CONNECTED.into()),
        ("virtual-device", devid.to_string()),
        ("device-type", "disk".into()),
    ];
    let lx_nodes: Vec<(&str, String)> = vec![
        ("frontend", fe.clone()),
        ("backend", be.clone()),
        ("params", params),
        ("dev", vdev),
        ("mode", mode.into()),
        ("type", if is_blk { "phy" } else { "file" }.into()),
        ("removable", d.removable.to_string()),
        ("device-type", "disk".into()),
        ("frontend-id", domid.to_string()),
        ("online", "1".into()),
    ];
    xs.with_transaction(|t| {
        for (dir, nodes) in [(&be, &be_nodes), (&fe, &fe_nodes), (&lx, &lx_nodes)] {
            for (k, v) in nodes.iter() {
                t.write(&format!("{dir}/{k}"), v.as_str())?;
            }
        }
        t.set_perms(&be, &dir_perms(0, domid))?;
        t.set_perms(&fe, &dir_perms(domid, 0))?;
        Ok(())
    })
    .map_err(Error::from)
}

fn remove_nodes(xs: &Client, dirs: &[String]) {
    for d in dirs {
        let _ = xs.rm(d);
    }
}

fn vmm_err(domid: u32) -> impl FnOnce(rxen_vmm::api::ClientError) -> Error {
    move |source| Error::Vmm { domid, source }
}

/// `xl block-attach`: hot-plugs `disk` into the running domain `dom`; returns its devid.
pub fn block_attach(paths: &Paths, xs: &Client, dom: &str, disk: DeviceDisk) -> Result<u32> {
    let mut live = Live::open(paths, xs, dom)?;
    let domid = live.rec.domid;
    let vdev = disk
        .vdev
        .clone()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Other("the disk has no vdev".into()))?;
    let devid = vdev_to_devid(&vdev).ok_or_else(|| {
        Error::Other(format!(
            "Invalid or unsupported virtual disk identifier {vdev}"
        ))
    })?;
    if disk.is_cdrom != 0 {
        return Err(Error::Other(format!(
            "disk {vdev}: CD-ROM drives cannot be hot-plugged in rxen (configure the drive in \
             the domain config and use cd-insert)"
        )));
    }
    let in_use = live.cfg.disks.iter().any(|d| {
        d.vdev
            .as_deref()
            .and_then(vdev_to_devid)
            .is_some_and(|id| id == devid)
    }) || read_opt(xs, &libxl_dev(domid, "vbd", devid))?.is_some();
    if in_use {
        return Err(Error::Other(format!(
            "domain {domid} already has a disk {vdev} (devid {devid})"
        )));
    }
    let mut cfg = live.cfg.clone();
    cfg.disks.push(disk.clone());
    let job = live.job_with(paths, &cfg)?;
    let vmdisk = job
        .vm
        .disks
        .last()
        .cloned()
        .ok_or_else(|| Error::Other("internal: no disk built".into()))?;
    let mut api = live.api(paths)?;
    api.device_add(DeviceAdd {
        device: Some(format!("vbd-{devid}")),
        disk: Some(vmdisk.clone()),
        net: None,
    })
    .map_err(vmm_err(domid))?;
    if let Err(e) = write_vbd_nodes(xs, domid, devid, &disk, &vmdisk.path) {
        let _ = api.device_remove(&format!("vbd-{devid}"), true, None);
        remove_nodes(
            xs,
            &[
                vbd_backend(domid, devid),
                vbd_frontend(domid, devid),
                libxl_dev(domid, "vbd", devid),
            ],
        );
        return Err(e);
    }
    live.cfg = cfg;
    live.job.vm.disks.push(vmdisk);
    live.save(paths)?;
    Ok(devid)
}

/// The VMM's id for the device using `path` (disk) or `tap` (NIC).
fn vmm_device(
    api: &mut ApiClient,
    domid: u32,
    disk: Option<&Path>,
    tap: Option<&str>,
) -> Result<Option<String>> {
    let list = api.devices().map_err(vmm_err(domid))?;
    Ok(list
        .into_iter()
        .find(|d| {
            disk.is_some_and(|p| d.disk.as_ref().is_some_and(|x| x.path == p))
                || tap.is_some_and(|t| d.net.as_ref().is_some_and(|x| x.tap == t))
        })
        .map(|d| d.id))
}

/// `xl block-detach [-f] dom devid|vdev`. `Ok(false)`: no such device.
pub fn block_detach(
    paths: &Paths,
    xs: &Client,
    dom: &str,
    which: &str,
    force: bool,
) -> Result<bool> {
    let mut live = Live::open(paths, xs, dom)?;
    let domid = live.rec.domid;
    let Some(devid) = vdev_to_devid(which) else {
        return Ok(false);
    };
    let Some(pos) =
        live.cfg.disks.iter().position(|d| {
            d.is_cdrom == 0 && d.vdev.as_deref().and_then(vdev_to_devid) == Some(devid)
        })
    else {
        return Ok(false);
    };
    // The host path the VMM uses: the same translation as at creation.
    let job = live.job_with(paths, &live.cfg)?;
    let index = live.cfg.disks[..pos]
        .iter()
        .filter(|d| d.is_cdrom == 0)
        .count();
    let path = job
        .vm
        .disks
        .get(index)
        .map(|d| d.path.clone())
        .ok_or_else(|| Error::Other(format!("internal: disk {which} not in the VMM config")))?;
    let mut api = live.api(paths)?;
    if let Some(id) = vmm_device(&mut api, domid, Some(&path), None)? {
        let ms = detach_timeout().as_millis() as u64;
        api.device_remove(&id, force, Some(ms))
            .map_err(vmm_err(domid))?;
    }
    remove_nodes(
        xs,
        &[
            vbd_backend(domid, devid),
            vbd_frontend(domid, devid),
            libxl_dev(domid, "vbd", devid),
        ],
    );
    live.cfg.disks.remove(pos);
    if let Some(i) = live.job.vm.disks.iter().position(|d| d.path == path) {
        live.job.vm.disks.remove(i);
    }
    live.save(paths)?;
    Ok(true)
}

/// One line of `xl block-list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRow {
    /// Devid (`Vdev` column).
    pub devid: u32,
    /// Backend domain.
    pub backend_id: u32,
    /// Frontend domain (`handle` column, as libxl fills it).
    pub frontend_id: u32,
    /// Frontend state.
    pub state: i64,
    /// Event channel (-1: none).
    pub evtch: i64,
    /// Ring reference (-1: none).
    pub rref: i64,
    /// Backend path.
    pub backend: String,
}

/// One line of `xl network-list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRow {
    /// Devid.
    pub devid: u32,
    /// Backend domain.
    pub backend_id: u32,
    /// MAC address.
    pub mac: String,
    /// Frontend state.
    pub state: i64,
    /// Event channel (-1: none).
    pub evtch: i64,
    /// TX ring reference (-1: none).
    pub rref_tx: i64,
    /// RX ring reference (-1: none).
    pub rref_rx: i64,
    /// Backend path.
    pub backend: String,
}

fn num_or(xs: &Client, path: &str) -> Result<i64> {
    Ok(read_opt(xs, path)?
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1))
}

fn devids(xs: &Client, dir: &str) -> Result<Vec<u32>> {
    let mut v: Vec<u32> = match xs.ls(dir) {
        Ok(v) => v.iter().filter_map(|s| s.parse().ok()).collect(),
        Err(e) if e.errno() == Some(rxen_xenstore::Errno::ENOENT) => vec![],
        Err(e) => return Err(e.into()),
    };
    v.sort_unstable();
    Ok(v)
}

/// The disks of domain `dom` as `xl block-list` shows them.
pub fn block_list(xs: &Client, dom: &str) -> Result<Vec<BlockRow>> {
    let domid = registry::resolve(xs, dom)?.domid;
    let mut rows = vec![];
    for devid in devids(xs, &format!("/libxl/{domid}/device/vbd"))? {
        let lx = libxl_dev(domid, "vbd", devid);
        let fe =
            read_opt(xs, &format!("{lx}/frontend"))?.unwrap_or_else(|| vbd_frontend(domid, devid));
        let be =
            read_opt(xs, &format!("{lx}/backend"))?.unwrap_or_else(|| vbd_backend(domid, devid));
        rows.push(BlockRow {
            devid,
            backend_id: 0,
            frontend_id: domid,
            state: num_or(xs, &format!("{fe}/state"))?,
            evtch: num_or(xs, &format!("{fe}/event-channel"))?,
            rref: num_or(xs, &format!("{fe}/ring-ref"))?,
            backend: be,
        });
    }
    Ok(rows)
}

/// `xl block-list`'s header (Xen 4.17 `main_blocklist`).
pub fn block_list_header() -> String {
    format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}",
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"
    )
}

/// One `xl block-list` line.
pub fn format_block_row(r: &BlockRow) -> String {
    format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}",
        r.devid, r.backend_id, r.frontend_id, r.state, r.evtch, r.rref, r.backend
    )
}

/// `xl network-list`'s header (Xen 4.17 `main_networklist`).
pub fn network_list_header() -> String {
    format!(
        "{:<3} {:<2} {:<17} {:<6} {:<5} {:<6} {:>5}/{:<5} {:<30}",
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path"
    )
}

/// One `xl network-list` line.
pub fn format_nic_row(r: &NicRow) -> String {
    format!(
        "{:<3} {:<2} {}{:>6} {:>5} {:>6} {:>5}/{:<11} {:<30}",
        r.devid, r.backend_id, r.mac, r.devid, r.state, r.evtch, r.rref_tx, r.rref_rx, r.backend
    )
}

/// The NICs of domain `dom` as `xl network-list` shows them.
pub fn network_list(xs: &Client, dom: &str) -> Result<Vec<NicRow>> {
    let domid = registry::resolve(xs, dom)?.domid;
    let mut rows = vec![];
    for devid in devids(xs, &format!("/libxl/{domid}/device/vif"))? {
        let lx = libxl_dev(domid, "vif", devid);
        let fe = read_opt(xs, &format!("{lx}/frontend"))?
            .unwrap_or_else(|| rxen_net::hotplug::frontend_path(domid, devid));
        let be = read_opt(xs, &format!("{lx}/backend"))?
            .unwrap_or_else(|| rxen_net::hotplug::backend_path(domid, devid));
        let mac = read_opt(xs, &format!("{lx}/mac"))?.unwrap_or_else(|| "00:00:00:00:00:00".into());
        rows.push(NicRow {
            devid,
            backend_id: 0,
            mac,
            state: num_or(xs, &format!("{fe}/state"))?,
            evtch: num_or(xs, &format!("{fe}/event-channel"))?,
            rref_tx: num_or(xs, &format!("{fe}/tx-ring-ref"))?,
            rref_rx: num_or(xs, &format!("{fe}/rx-ring-ref"))?,
            backend: be,
        });
    }
    Ok(rows)
}

fn vif_spec(domid: u32, devid: u32, kv: &[(String, String)]) -> Result<rxen_net::VifSpec> {
    let pairs = kv.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    rxen_net::VifSpec::from_xl(domid, devid, pairs, &rxen_net::NetDefaults::default())
        .map_err(|e| Error::Other(format!("domain {domid}: vif {devid}: {e}")))
}

/// Writes a vif's xenstore nodes: backend and frontend for the built-in modes (a `script=` vif
/// gets them from `rxen-net` under the hotplug contract), and libxl's record.
fn publish_vif(xs: &Client, spec: &rxen_net::VifSpec) -> Result<()> {
    if !matches!(spec.mode, rxen_net::VifMode::Script(_)) {
        let other = |e: rxen_net::Error| Error::Other(format!("vif {}: {e}", spec.devid));
        rxen_net::hotplug::write_nodes(xs, spec, &spec.mode.script_name()).map_err(other)?;
        rxen_net::hotplug::mark_connected(xs, spec).map_err(other)?;
    }
    let lx = libxl_dev(spec.domid, "vif", spec.devid);
    let mut nodes = vec![
        (
            "frontend",
            rxen_net::hotplug::frontend_path(spec.domid, spec.devid),
        ),
        (
            "backend",
            rxen_net::hotplug::backend_path(spec.domid, spec.devid),
        ),
        ("handle", spec.devid.to_string()),
        ("type", "vif".to_string()),
        ("script", spec.mode.script_name()),
    ];
    if let Some(m) = &spec.mac {
        nodes.push(("mac", rxen_net::format_mac(m)));
    }
    if let Some(b) = spec.bridge_name() {
        nodes.push(("bridge", b.to_string()));
    }
    xs.with_transaction(|t| {
        for (k, v) in &nodes {
            t.write(&format!("{lx}/{k}"), v.as_str())?;
        }
        Ok(())
    })
    .map_err(Error::from)
}

/// Writes the xenstore nodes of domain `domid`'s vif `devid` described by xl's `key=value`
/// settings (as the supervisor's job holds them).
pub fn write_vif_nodes(xs: &Client, domid: u32, devid: u32, kv: &[(String, String)]) -> Result<()> {
    publish_vif(xs, &vif_spec(domid, devid, kv)?)
}

/// `xl network-attach`: hot-plugs `nic` into the running domain `dom`; returns its devid.
pub fn network_attach(paths: &Paths, xs: &Client, dom: &str, mut nic: DeviceNic) -> Result<u32> {
    let mut live = Live::open(paths, xs, dom)?;
    let domid = live.rec.domid;
    let used: Vec<u32> = live
        .job
        .vifs
        .iter()
        .map(|(d, _)| *d)
        .chain(devids(xs, &format!("/libxl/{domid}/device/vif"))?)
        .collect();
    let devid = match nic.devid {
        Some(d) if d >= 0 => {
            let d = d as u32;
            if used.contains(&d) {
                return Err(Error::Other(format!(
                    "domain {domid} already has a vif with devid {d}"
                )));
            }
            d
        }
        _ => used.iter().max().map_or(0, |m| m + 1),
    };
    nic.devid = Some(i64::from(devid));
    if nic.mac.is_none() {
        nic.mac = Some(random_xen_mac());
    }
    let mut cfg = live.cfg.clone();
    cfg.nics.push(nic);
    let job = live.job_with(paths, &cfg)?;
    let (Some(net), Some((_, kv))) = (job.vm.nets.last().cloned(), job.vifs.last().cloned()) else {
        return Err(Error::Other("internal: no NIC built".into()));
    };
    let spec = vif_spec(domid, devid, &kv)?;
    let mut api = live.api(paths)?;
    let added = api
        .device_add(DeviceAdd {
            device: Some(format!("vif-{devid}")),
            disk: None,
            net: Some(net.clone()),
        })
        .map_err(vmm_err(domid))?;
    let sock = paths.xenstored_socket.clone();
    let online = rxen_net::vif_online(
        &spec,
        Some(rxen_net::Xenstore {
            client: xs,
            socket: &sock,
        }),
    )
    .map_err(|e| {
        Error::Other(format!(
            "domain {domid}: vif {devid} ({}): {e}",
            spec.ifname
        ))
    })
    .and_then(|_| publish_vif(xs, &spec));
    if let Err(e) = online {
        let _ = api.device_remove(&added.id, true, None);
        let _ = rxen_net::hotplug::remove_nodes(xs, domid, devid);
        return Err(e);
    }
    live.cfg = cfg;
    live.job.vm.nets.push(net);
    live.job.vifs.push((devid, kv));
    live.save(paths)?;
    Ok(devid)
}

/// `xl network-detach dom devid|mac`. `Ok(false)`: no such device.
pub fn network_detach(paths: &Paths, xs: &Client, dom: &str, which: &str) -> Result<bool> {
    let mut live = Live::open(paths, xs, dom)?;
    let domid = live.rec.domid;
    let pos = live.job.vifs.iter().position(|(devid, kv)| {
        if which.contains(':') {
            kv.iter()
                .any(|(k, v)| k == "mac" && v.eq_ignore_ascii_case(which))
        } else {
            which.parse::<u32>().ok() == Some(*devid)
        }
    });
    let Some(pos) = pos else {
        return Ok(false);
    };
    let (devid, kv) = live.job.vifs[pos].clone();
    let spec = vif_spec(domid, devid, &kv)?;
    let mut api = live.api(paths)?;
    if let Some(id) = vmm_device(&mut api, domid, None, Some(&spec.ifname))? {
        let ms = detach_timeout().as_millis() as u64;
        api.device_remove(&id, false, Some(ms))
            .map_err(vmm_err(domid))?;
    }
    // The tap went away with the device (bridge port, addresses, routes, proxy ARP with it);
    // what outlives it: a script's own state, nftables rules and the rate limit.
    if let rxen_net::VifMode::Script(script) = &spec.mode {
        let sock = paths.xenstored_socket.clone();
        let r = rxen_net::hotplug::run_offline(
            rxen_net::Xenstore {
                client: xs,
                socket: &sock,
            },
            &spec,
            &rxen_net::hotplug::resolve_script(&script.display().to_string()),
            rxen_net::hotplug::SCRIPT_TIMEOUT,
        );
        if let Err(e) = r {
            eprintln!("libxl: warning: vif {devid}: {e}");
        }
    }
    let _ = rxen_net::nft::delete_rules(&rxen_net::nft::vif_comment(domid, devid), false);
    let _ = rxen_net::nft::delete_rate_limit(domid, devid);
    let _ = rxen_net::hotplug::remove_nodes(xs, domid, devid);
    let _ = xs.rm(&libxl_dev(domid, "vif", devid));
    live.job.vifs.remove(pos);
    if let Some(i) = live.job.vm.nets.iter().position(|n| n.tap == spec.ifname) {
        live.job.vm.nets.remove(i);
    }
    if let Some(i) = live
        .cfg
        .nics
        .iter()
        .enumerate()
        .position(|(i, n)| n.devid.unwrap_or(i as i64) == i64::from(devid))
    {
        live.cfg.nics.remove(i);
    }
    live.save(paths)?;
    Ok(true)
}

/// Publishes the xenstore nodes of the devices a domain was created with (called by the
/// supervisor once its VMM runs), so `block-list` / `network-list` show them like Xen.
pub fn publish_boot_devices(paths: &Paths, xs: &Client, job: &DomainJob) -> Result<()> {
    let domid = job.domid;
    let userdata = paths.userdata(domid, &job.uuid);
    if let Ok(text) = std::fs::read_to_string(&userdata) {
        if let Ok(cfg) = DomainConfig::from_libxl_json(&text) {
            let disks = cfg.disks.iter().filter(|d| d.is_cdrom == 0);
            for (d, vm) in disks.zip(&job.vm.disks) {
                if let Some(devid) = d.vdev.as_deref().and_then(vdev_to_devid) {
                    write_vbd_nodes(xs, domid, devid, d, &vm.path)?;
                }
            }
        }
    }
    for (devid, kv) in &job.vifs {
        let spec = vif_spec(domid, *devid, kv)?;
        publish_vif(xs, &spec)?;
    }
    Ok(())
}

/// Removes a dead domain's vbd backend directory (the vif one is `rxen-net`'s job).
pub fn remove_domain_nodes(xs: &Client, domid: u32) {
    let _ = xs.rm(&format!("/local/domain/0/backend/vbd/{domid}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdev_numbers_follow_xen_vbd_interface() {
        for (v, n) in [
            ("xvda", 51712),
            ("xvdb", 51728),
            ("xvda1", 51713),
            ("xvdp15", 51967),
            ("xvdq", 1 << 28 | 16 << 8),
            ("xvdaa", 1 << 28 | 26 << 8),
            ("hda", 768),
            ("hdb", 832),
            ("hdc", 5632),
            ("hdd1", 5697),
            ("sda", 2048),
            ("sdb2", 2066),
            ("d0p1", 1 << 28 | 1),
            ("d3", 1 << 28 | 3 << 8),
            ("51712", 51712),
        ] {
            assert_eq!(vdev_to_devid(v), Some(n), "{v}");
        }
        for v in [
            "", "xvd", "xvdA", "xvda01", "hdu", "vda", "dp1", "d1p", "xvda-1",
        ] {
            assert_eq!(vdev_to_devid(v), None, "{v}");
        }
    }

    #[test]
    fn list_formats_match_xen() {
        assert_eq!(
            block_list_header(),
            "Vdev  BE  handle state evt-ch ring-ref BE-path                       "
        );
        let r = BlockRow {
            devid: 51728,
            backend_id: 0,
            frontend_id: 3,
            state: 4,
            evtch: -1,
            rref: -1,
            backend: "/local/domain/0/backend/vbd/3/51728".into(),
        };
        assert_eq!(
            format_block_row(&r),
            "51728 0   3      4     -1     -1       /local/domain/0/backend/vbd/3/51728"
        );
        assert_eq!(
            network_list_header(),
            "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       "
        );
        let n = NicRow {
            devid: 1,
            backend_id: 0,
            mac: "00:16:3e:00:00:42".into(),
            state: 4,
            evtch: -1,
            rref_tx: -1,
            rref_rx: -1,
            backend: "/local/domain/0/backend/vif/3/1".into(),
        };
        assert_eq!(
            format_nic_row(&n),
            "1   0  00:16:3e:00:00:42     1     4     -1    -1/-1          /local/domain/0/backend/vif/3/1"
        );
    }

    proptest::proptest! {
        #[test]
        fn vdev_parser_never_panics(s in ".{0,16}") {
            let _ = vdev_to_devid(&s);
        }
    }
}
