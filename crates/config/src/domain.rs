//! Building a [`DomainConfig`] from a parsed xl.cfg, the way Xen 4.17's `xl` does
//! (`parse_config_data` in `xl_parse.c`): same keys, same defaults, same warnings and error
//! messages, same exit statuses.
//!
//! ```
//! use rxen_config::domain::{parse_domain_config, ParseEnv};
//! let env = ParseEnv::default();
//! let out = parse_domain_config("g.cfg", b"name='g'\nmemory=256\nvcpus=2\nkernel='/k'\nroot='/dev/xvda1 ro'\nextra='quiet'\n", &[], &env).unwrap();
//! let d = out.config;
//! assert_eq!(d.b_info.target_memkb, Some(256 * 1024));
//! assert_eq!(d.b_info.cmdline.as_deref(), Some("root=/dev/xvda1 ro quiet"));
//! assert_eq!(d.b_info.avail_vcpus, vec![0, 1]);
//!
//! let err = parse_domain_config("g.cfg", b"memory=1\n", &[], &env).unwrap_err();
//! assert_eq!(err.diagnostics.last().unwrap(), "Domain name must be specified.");
//! assert_eq!(err.exit_code, 1);
//! ```

use crate::cfg::{list_item, GetError, Value, XlCfg};
use crate::cpumap::{parse_cpurange, HostInfo};
use crate::model::*;
use crate::vif::{parse_nic_token, NicTokenResult};
use crate::xlconf::XlConf;

/// Everything outside the file that influences parsing.
#[derive(Debug, Clone)]
pub struct ParseEnv {
    /// Global settings from `/etc/xen/xl.conf`.
    pub xlconf: XlConf,
    /// Host CPU topology (for `cpus=` bitmaps).
    pub host: HostInfo,
    /// Compose the kernel command line from the xm-era keys `ip`, `netmask`, `gateway`,
    /// `hostname`, `nfs_server`, `nfs_root`, `dhcp` like xm did (Xen 4.17's xl ignores them).
    pub xm_compat: bool,
    /// Use this UUID instead of a random one when the file has none (reproducible output).
    pub fixed_uuid: Option<String>,
}

impl Default for ParseEnv {
    fn default() -> Self {
        ParseEnv {
            xlconf: XlConf::default(),
            host: HostInfo::new(2, vec![vec![0, 1]]),
            xm_compat: false,
            fixed_uuid: None,
        }
    }
}

/// A successful parse: the configuration plus the warnings xl prints on stderr.
#[derive(Debug, Clone)]
pub struct ParsedDomain {
    /// The domain configuration (libxl model).
    pub config: DomainConfig,
    /// Warning lines, in order.
    pub diagnostics: Vec<String>,
    /// The raw parsed file (for unknown-key reporting and re-serialization).
    pub cfg: XlCfg,
}

/// A rejected configuration: what xl prints (in order) and its exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", diagnostics.join("\n"))]
pub struct DomainConfigError {
    /// stderr lines (warnings and the error itself).
    pub diagnostics: Vec<String>,
    /// Exit status xl uses.
    pub exit_code: i32,
}

/// Random (or fixed) UUID text.
pub fn generate_uuid() -> String {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b.copy_from_slice(&t.to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// `libxl_uuid_from_string`: 36 characters, `8-4-4-4-12` hex groups.
pub fn parse_uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut k = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hi = (b[i] as char).to_digit(16)?;
        let lo = (b[i + 1] as char).to_digit(16)?;
        out[k] = (hi * 16 + lo) as u8;
        k += 1;
        i += 2;
    }
    Some(format_uuid(&out))
}

struct P<'a> {
    cfg: &'a XlCfg,
    env: &'a ParseEnv,
    diag: Vec<String>,
}

type R<T> = Result<T, DomainConfigError>;

impl P<'_> {
    fn fail(&mut self, msg: impl Into<String>, code: i32) -> DomainConfigError {
        self.diag.push(msg.into());
        DomainConfigError {
            diagnostics: std::mem::take(&mut self.diag),
            exit_code: code,
        }
    }
    fn exit(&mut self, code: i32) -> DomainConfigError {
        DomainConfigError {
            diagnostics: std::mem::take(&mut self.diag),
            exit_code: code,
        }
    }
    fn string(&mut self, n: &str) -> Option<String> {
        let cfg = self.cfg;
        cfg.get_string(n, &mut self.diag, false)
            .ok()
            .map(str::to_string)
    }
    fn string_q(&mut self, n: &str) -> Option<String> {
        let cfg = self.cfg;
        cfg.get_string(n, &mut self.diag, true)
            .ok()
            .map(str::to_string)
    }
    fn long(&mut self, n: &str) -> Option<i64> {
        let cfg = self.cfg;
        cfg.get_long(n, &mut self.diag, false).ok()
    }
    fn long_q(&mut self, n: &str) -> Option<i64> {
        let cfg = self.cfg;
        cfg.get_long(n, &mut self.diag, true).ok()
    }
    fn defbool(&mut self, n: &str, slot: &mut Option<bool>) -> bool {
        let cfg = self.cfg;
        match cfg.get_defbool(n, &mut self.diag, false) {
            Ok(b) => {
                *slot = Some(b);
                true
            }
            Err(_) => false,
        }
    }
    fn replace(&mut self, n: &str, slot: &mut Option<String>) -> bool {
        match self.string(n) {
            Some(s) => {
                *slot = Some(s);
                true
            }
            None => false,
        }
    }
    fn list(&mut self, n: &str) -> Option<Vec<Value>> {
        let cfg = self.cfg;
        cfg.get_list(n, &mut self.diag, false)
            .ok()
            .map(<[Value]>::to_vec)
    }
    fn list_q(&mut self, n: &str) -> Result<Vec<Value>, GetError> {
        let cfg = self.cfg;
        cfg.get_list(n, &mut self.diag, true).map(<[Value]>::to_vec)
    }
    fn string_list(&mut self, n: &str, dont_warn: bool) -> Result<Vec<Option<String>>, GetError> {
        let cfg = self.cfg;
        cfg.get_string_list(n, &mut self.diag, dont_warn)
    }
}

fn memkb(l: i64) -> u64 {
    (l as u64).wrapping_mul(1024)
}

fn action_name(s: &str) -> Option<ActionOnShutdown> {
    Some(match s {
        "destroy" => ActionOnShutdown::Destroy,
        "restart" => ActionOnShutdown::Restart,
        "rename-restart" => ActionOnShutdown::RestartRename,
        "preserve" => ActionOnShutdown::Preserve,
        "coredump-destroy" => ActionOnShutdown::CoredumpDestroy,
        "coredump-restart" => ActionOnShutdown::CoredumpRestart,
        "soft-reset" => ActionOnShutdown::SoftReset,
        _ => return None,
    })
}

/// xl's `match` of a type name: `buf` is accepted when it is a prefix of `word`
/// (`strncmp(buf, word, strlen(buf))`, so the empty string matches everything).
fn prefix_of(buf: &str, word: &str) -> bool {
    word.as_bytes().starts_with(buf.as_bytes())
}

/// Split a string on any of `delims`, dropping empty pieces (`strtok`).
fn strtok<'s>(s: &'s str, delims: &'s [char]) -> impl Iterator<Item = &'s str> + 's {
    s.split(move |c| delims.contains(&c))
        .filter(|t| !t.is_empty())
}

/// `split_string_into_pair(str, '=', &k, &v, isspace)`: both sides trimmed.
fn split_pair(s: &str) -> Option<(String, String)> {
    let (k, v) = s.split_once('=')?;
    Some((k.trim().to_string(), v.trim().to_string()))
}

/// Parse an xl domain configuration file with optional `key=value` overrides (the trailing
/// arguments of `xl create`), exactly like Xen 4.17's xl.
pub fn parse_domain_config(
    source: &str,
    data: &[u8],
    overrides: &[&str],
    env: &ParseEnv,
) -> Result<ParsedDomain, DomainConfigError> {
    let mut buf = data.to_vec();
    let extra: String = overrides.iter().map(|o| format!("{o}\n")).collect();
    if !extra.is_empty() {
        buf.push(b'\n');
        buf.extend_from_slice(extra.as_bytes());
    }
    let cfg = match XlCfg::parse(source, &buf) {
        Ok(c) => c,
        Err(e) => {
            let mut d = e.stderr_lines();
            d.push("Failed to parse config: Invalid argument".into());
            return Err(DomainConfigError {
                diagnostics: d,
                exit_code: 1,
            });
        }
    };
    let mut p = P {
        cfg: &cfg,
        env,
        diag: Vec::new(),
    };
    let config = build(&mut p)?;
    let diagnostics = std::mem::take(&mut p.diag);
    Ok(ParsedDomain {
        config,
        diagnostics,
        cfg,
    })
}

fn build(p: &mut P<'_>) -> R<DomainConfig> {
    let mut d = DomainConfig::default();
    let env = p.env;
    let host = &env.host;

    if p.string("init_seclabel").is_some() {
        p.replace("init_seclabel", &mut d.c_info.ssid_label);
    }
    if p.string("seclabel").is_some() {
        if d.c_info.ssid_label.is_some() {
            p.replace("seclabel", &mut d.b_info.exec_ssid_label);
        } else {
            p.replace("seclabel", &mut d.c_info.ssid_label);
        }
    }
    d.c_info.run_hotplug_scripts = Some(env.xlconf.run_hotplug_scripts);

    if let Some(t) = p.string("type") {
        d.c_info.type_ = if prefix_of(&t, "hvm") {
            DomainType::Hvm
        } else if prefix_of(&t, "pv") {
            DomainType::Pv
        } else if prefix_of(&t, "pvh") {
            DomainType::Pvh
        } else {
            return Err(p.fail(format!("Invalid domain type {t}."), 1));
        };
    }
    if let Some(b) = p.string("builder") {
        let bt = if prefix_of(&b, "hvm") {
            DomainType::Hvm
        } else if prefix_of(&b, "generic") {
            DomainType::Pv
        } else {
            return Err(p.fail(format!("Invalid domain type {b}."), 1));
        };
        if d.c_info.type_ != DomainType::Invalid && d.c_info.type_ != bt {
            return Err(p.fail(
                "Contradicting \"builder\" and \"type\" options specified.",
                1,
            ));
        }
        d.c_info.type_ = bt;
    }
    if d.c_info.type_ == DomainType::Invalid {
        d.c_info.type_ = DomainType::Pv;
    }
    let ty = d.c_info.type_;
    p.defbool("hap", &mut d.c_info.hap);
    if !p.replace("name", &mut d.c_info.name) {
        return Err(p.fail("Domain name must be specified.", 1));
    }
    match p.string("uuid") {
        Some(u) => match parse_uuid(&u) {
            Some(u) => d.c_info.uuid = Some(u),
            None => return Err(p.fail(format!("Failed to parse UUID: {u}"), 1)),
        },
        None => d.c_info.uuid = Some(env.fixed_uuid.clone().unwrap_or_else(generate_uuid)),
    }
    p.defbool("oos", &mut d.c_info.oos);
    if p.string("pool").is_some() {
        p.replace("pool", &mut d.c_info.pool_name);
    }

    // libxl_domain_build_info_init_type
    let mut hvm = HvmInfo::default();
    let mut pv = PvInfo::default();
    let mut pvh = PvhInfo::default();
    if ty == DomainType::Pvh {
        p.defbool("pvshim", &mut pvh.pvshim);
        for (k, slot) in [
            ("pvshim_path", &mut pvh.pvshim_path),
            ("pvshim_cmdline", &mut pvh.pvshim_cmdline),
            ("pvshim_extra", &mut pvh.pvshim_extra),
        ] {
            if p.string(k).is_some() {
                p.replace(k, slot);
            }
        }
    }
    let b = &mut d.b_info;
    b.blkdev_start = env.xlconf.blkdev_start.clone();

    if let Some(l) = p.long("cpu_weight") {
        b.sched_params.weight = Some(l);
    }
    if let Some(l) = p.long("cap") {
        b.sched_params.cap = Some(l);
    }
    if let Some(l) = p.long("period") {
        b.sched_params.period = Some(l);
    }
    if let Some(l) = p.long("slice") {
        b.sched_params.slice = Some(l);
    }
    if let Some(l) = p.long("latency") {
        b.sched_params.latency = Some(l);
    }
    if let Some(l) = p.long("extratime") {
        b.sched_params.extratime = Some(l);
    }
    if let Some(l) = p.long("memory") {
        b.target_memkb = Some(memkb(l));
    }
    if let Some(l) = p.long("maxmem") {
        b.max_memkb = Some(memkb(l));
    }
    let mut vcpus: i64 = 0;
    if let Some(l) = p.long("vcpus") {
        vcpus = l;
        if !(0..=(1 << 20)).contains(&l) {
            return Err(p.fail("Unable to allocate cpumap", 1));
        }
        b.avail_vcpus = (0..l as u32).collect();
    }
    if let Some(l) = p.long("maxvcpus") {
        b.max_vcpus = l;
    }
    if let Some(v) = p.string("vuart") {
        match VuartType::from_libxl_str(&v) {
            Some(t) => b.arch_arm.vuart = t,
            None => return Err(p.fail(format!("ERROR: invalid value \"{v}\" for \"vuart\""), 1)),
        }
    }
    if p.cfg.contains("vnuma") {
        p.diag
            .push("rxen: warning: `vnuma' is not supported yet and is ignored".into());
    }
    if b.max_memkb.is_none() {
        b.max_memkb = b.target_memkb;
    }
    if b.max_vcpus == 0 {
        b.max_vcpus = vcpus;
    }
    if b.max_vcpus < vcpus {
        return Err(p.fail("xl: maxvcpus < vcpus", 1));
    }

    for (key, hard) in [("cpus", true), ("cpus_soft", false)] {
        let list = p.list_q(key).ok();
        let s = if list.is_none() { p.string(key) } else { None };
        if list.is_none() && s.is_none() {
            continue;
        }
        let maxv = usize::try_from(b.max_vcpus.max(0)).unwrap_or(0);
        let mut maps: Vec<Bitmap> = Vec::new();
        if let Some(l) = list {
            let n = l.len().min(maxv);
            let mut j = 0;
            while j < n {
                let Some(item) = list_item(&l, j) else { break };
                match parse_cpurange(item, host, &mut p.diag) {
                    Ok(m) => maps.push(m),
                    Err(_) => return Err(p.exit(1)),
                }
                j += 1;
            }
            b.numa_placement = Some(false);
        } else if let Some(s) = s {
            if maxv > 0 {
                let m = match parse_cpurange(&s, host, &mut p.diag) {
                    Ok(m) => m,
                    Err(_) => return Err(p.exit(1)),
                };
                maps = vec![m; maxv];
            }
            if !hard {
                b.numa_placement = Some(false);
            }
        }
        if hard {
            b.vcpu_hard_affinity = maps;
        } else {
            b.vcpu_soft_affinity = maps;
        }
    }

    for (key, global, slot) in [
        (
            "max_grant_frames",
            env.xlconf.max_grant_frames,
            &mut b.max_grant_frames,
        ),
        (
            "max_maptrack_frames",
            env.xlconf.max_maptrack_frames,
            &mut b.max_maptrack_frames,
        ),
    ] {
        let cfg = p.cfg;
        match cfg.get_bounded_long(key, 0, i64::from(i32::MAX), &mut p.diag, true) {
            Err(GetError::Missing) => *slot = global,
            Ok(l) => *slot = Some(l as u32),
            Err(_) => return Err(p.exit(1)),
        }
    }
    {
        let cfg = p.cfg;
        match cfg.get_bounded_long(
            "max_grant_version",
            0,
            i64::from(i32::MAX),
            &mut p.diag,
            true,
        ) {
            Err(GetError::Missing) => b.max_grant_version = env.xlconf.max_grant_version,
            Ok(l) => b.max_grant_version = Some(l),
            Err(_) => return Err(p.exit(1)),
        }
    }
    b.claim_mode = Some(env.xlconf.claim_mode);

    for (key, def, slot) in [
        ("on_poweroff", "destroy", &mut d.on_poweroff),
        ("on_reboot", "restart", &mut d.on_reboot),
        ("on_watchdog", "destroy", &mut d.on_watchdog),
        ("on_crash", "destroy", &mut d.on_crash),
        ("on_soft_reset", "soft-reset", &mut d.on_soft_reset),
    ] {
        let v = p.string(key).unwrap_or_else(|| def.to_string());
        match action_name(&v) {
            Some(a) => *slot = a,
            None => return Err(p.fail(format!("Unknown {key} action \"{v}\" specified"), 1)),
        }
    }

    if ty == DomainType::Pv {
        p.defbool("e820_host", &mut pv.e820_host);
    }
    let pci_msitranslate = p.long("pci_msitranslate").unwrap_or(0);
    let pci_power_mgmt = p.long("pci_power_mgmt").unwrap_or(0);
    let pci_permissive = p.long("pci_permissive").unwrap_or(0);
    let pci_seize = p.long("pci_seize").unwrap_or(0);
    // Xen 4.17's xl reads `rdm=` but the value never reaches the printed/used configuration
    // (the HVM build info is re-initialised afterwards); we match that.
    let _ = p.string("rdm");
    if let Some(pcis) = p.list("pci") {
        let mut i = 0;
        while let Some(spec) = list_item(&pcis, i) {
            match parse_pci_spec(spec) {
                Some(mut dev) => {
                    dev.msitranslate |= pci_msitranslate != 0;
                    dev.power_mgmt |= pci_power_mgmt != 0;
                    dev.permissive |= pci_permissive != 0;
                    dev.seize |= pci_seize != 0;
                    if dev.rdm_policy == RdmReservePolicy::Invalid {
                        // xl copies b_info->u.hvm.rdm.policy, which for PV/PVH guests reads
                        // the other union member's zeroed memory: "strict".
                        dev.rdm_policy = if ty == DomainType::Hvm {
                            hvm.rdm.policy
                        } else {
                            RdmReservePolicy::Strict
                        };
                    }
                    d.pcidevs.push(dev);
                }
                None => {
                    return Err(p.fail(
                        format!("unable to parse PCI_SPEC_STRING `{spec}' for passthrough"),
                        22,
                    ));
                }
            }
            i += 1;
        }
        if !d.pcidevs.is_empty() && ty == DomainType::Pv {
            pv.e820_host = Some(true);
        }
    }
    if let Some(dt) = p.list("dtdev") {
        let mut i = 0;
        while let Some(s) = list_item(&dt, i) {
            d.dtdevs.push(DeviceDtdev {
                path: Some(s.to_string()),
            });
            i += 1;
        }
    }
    if let Some(v) = p.string("passthrough") {
        match Passthrough::from_libxl_str(&v) {
            Some(t) => d.c_info.passthrough = t,
            None => return Err(p.fail(format!("ERROR: unknown passthrough option '{v}'"), 1)),
        }
    }
    let b = &mut d.b_info;
    if let Some(l) = p.long("shadow_memory") {
        b.shadow_memkb = Some(memkb(l));
    }
    p.defbool("nomigrate", &mut b.disable_migrate);
    if let Some(l) = p.long_q("tsc_mode") {
        let names = ["default", "always_emulate", "native", "native_paravirt"];
        let s = usize::try_from(l).ok().and_then(|i| names.get(i));
        p.diag.push(format!(
            "WARNING: specifying \"tsc_mode\" as an integer is deprecated. Please use the named parameter variant. {}",
            s.map_or(String::new(), |s| format!("e.g. tsc_mode=\"{s}\""))
        ));
        if !(0..=3).contains(&l) {
            return Err(p.fail(format!("ERROR: invalid value {l} for \"tsc_mode\""), 1));
        }
        b.tsc_mode = TscMode::from_libxl_str(names[l as usize]).unwrap_or_default();
    } else if let Some(v) = p.string("tsc_mode") {
        p.diag.push(format!("got a tsc mode string: \"{v}\""));
        match TscMode::from_libxl_str(&v) {
            Some(t) => b.tsc_mode = t,
            None => return Err(p.fail(format!("ERROR: invalid value \"{v}\" for \"tsc_mode\""), 1)),
        }
    }
    if let Some(l) = p.long("rtc_timeoffset") {
        b.rtc_timeoffset = l as u32;
    }
    if p.long("vncviewer").is_some() {
        p.diag.push("WARNING: ignoring \"vncviewer\" option. Use \"-V\" option of \"xl create\" to automatically spawn vncviewer.".into());
    }
    p.defbool("localtime", &mut b.localtime);
    if let Some(l) = p.long("videoram") {
        b.video_memkb = Some(memkb(l));
    }
    if let Some(l) = p.long("max_event_channels") {
        b.event_channels = l as u32;
    }
    p.replace("kernel", &mut b.kernel);
    p.replace("ramdisk", &mut b.ramdisk);
    p.replace("device_tree", &mut b.device_tree);
    b.cmdline = parse_cmdline(p);
    p.defbool("driver_domain", &mut d.c_info.driver_domain);
    let b = &mut d.b_info;
    p.defbool("acpi", &mut b.acpi);
    p.replace("bootloader", &mut b.bootloader);
    match p.string_list("bootloader_args", true) {
        Ok(l) => b.bootloader_args = Some(l),
        Err(GetError::Missing) => {}
        Err(_) => {
            if let Some(s) = p.string("bootloader_args") {
                p.diag.push(
                    "WARNING: Specifying \"bootloader_args\" as a string is deprecated. Please use a list of arguments."
                        .into(),
                );
                b.bootloader_args = Some(
                    strtok(&s, &[' ', '\t', '\n'])
                        .map(|t| Some(t.to_string()))
                        .collect(),
                );
            }
        }
    }
    let timer_names = [
        "delay_for_missed_ticks",
        "no_delay_for_missed_ticks",
        "no_missed_ticks_pending",
        "one_missed_tick_pending",
    ];
    if let Some(l) = p.long_q("timer_mode") {
        if ty == DomainType::Pv {
            return Err(p.fail(
                "ERROR: \"timer_mode\" option is not supported for PV guests.",
                3,
            ));
        }
        let s = usize::try_from(l).ok().and_then(|i| timer_names.get(i));
        p.diag.push(format!(
            "WARNING: specifying \"timer_mode\" as an integer is deprecated. Please use the named parameter variant. {}",
            s.map_or(String::new(), |s| format!("e.g. timer_mode=\"{s}\""))
        ));
        if !(0..=3).contains(&l) {
            return Err(p.fail(format!("ERROR: invalid value {l} for \"timer_mode\""), 1));
        }
        b.timer_mode = TimerMode::from_libxl_str(timer_names[l as usize]);
    } else if let Some(v) = p.string("timer_mode") {
        if ty == DomainType::Pv {
            return Err(p.fail(
                "ERROR: \"timer_mode\" option is not supported for PV guests.",
                3,
            ));
        }
        match TimerMode::from_libxl_str(&v) {
            Some(t) => b.timer_mode = Some(t),
            None => {
                return Err(p.fail(
                    format!("ERROR: invalid value \"{v}\" for \"timer_mode\""),
                    1,
                ))
            }
        }
    }
    p.defbool("nestedhvm", &mut b.nested_hvm);

    match ty {
        DomainType::Hvm => {
            if b.kernel
                .as_deref()
                .is_some_and(|k| k.rsplit('/').next() == Some("hvmloader"))
            {
                p.diag.push("WARNING: you seem to be using \"kernel\" directive to override HVM guest firmware. Ignore that. Use \"firmware_override\" instead if you really want a non-default firmware".into());
                b.kernel = None;
            }
            p.replace("firmware_override", &mut hvm.firmware);
            p.replace("bios_path_override", &mut hvm.system_firmware);
            if let Some(v) = p.string("bios") {
                match BiosType::from_libxl_str(&v) {
                    Some(t) => hvm.bios = t,
                    None => {
                        return Err(p.fail(format!("ERROR: invalid value \"{v}\" for \"bios\""), 1))
                    }
                }
            } else if hvm.system_firmware.is_some() {
                p.diag
                    .push("WARNING: bios_path_override given without specific bios name".into());
            }
            p.defbool("pae", &mut hvm.pae);
            p.defbool("acpi_s3", &mut hvm.acpi_s3);
            p.defbool("acpi_s4", &mut hvm.acpi_s4);
            p.defbool("acpi_laptop_slate", &mut hvm.acpi_laptop_slate);
            p.defbool("nx", &mut hvm.nx);
            p.defbool("hpet", &mut hvm.hpet);
            p.defbool("vpt_align", &mut hvm.vpt_align);
            p.defbool("apic", &mut b.apic);
            match p.list_q("viridian") {
                Ok(v) => {
                    let names = [
                        "base",
                        "freq",
                        "time_ref_count",
                        "reference_tsc",
                        "hcall_remote_tlb_flush",
                        "apic_assist",
                        "crash_ctl",
                        "synic",
                        "stimer",
                        "hcall_ipi",
                        "ex_processor_masks",
                        "no_vp_limit",
                        "cpu_hotplug",
                    ];
                    let mut en = vec![false; 64];
                    let mut dis = vec![false; 64];
                    for i in 0..v.len() {
                        let item = list_item(&v, i).unwrap_or("");
                        if item == "all" {
                            en.iter_mut().for_each(|b| *b = true);
                        } else if item == "defaults" {
                            hvm.viridian = Some(true);
                        } else {
                            let (neg, name) = match item.strip_prefix('!') {
                                Some(n) => (true, n),
                                None => (false, item),
                            };
                            let Some(idx) = names.iter().position(|n| n.eq_ignore_ascii_case(name))
                            else {
                                return Err(p.fail(
                                    format!("xl: unknown viridian enlightenment '{name}'"),
                                    3,
                                ));
                            };
                            let (s, r) = if neg {
                                (&mut dis, &mut en)
                            } else {
                                (&mut en, &mut dis)
                            };
                            s[idx] = true;
                            r[idx] = false;
                        }
                    }
                    let bits = |m: &Vec<bool>| -> Bitmap {
                        m.iter()
                            .enumerate()
                            .filter(|(_, b)| **b)
                            .map(|(i, _)| i as u32)
                            .collect()
                    };
                    hvm.viridian_enable = bits(&en);
                    hvm.viridian_disable = bits(&dis);
                }
                Err(GetError::Missing) => {}
                Err(_) => {
                    let cfg = p.cfg;
                    if let Ok(v) = cfg.get_defbool("viridian", &mut p.diag, true) {
                        hvm.viridian = Some(v);
                    }
                }
            }
            if let Some(l) = p.long("mmio_hole") {
                hvm.mmio_hole_memkb = Some(memkb(l));
                let size = (l as u64).wrapping_mul(1024 * 1024);
                if !(0x1000_0000..=0xF000_0000).contains(&size) {
                    return Err(p.fail(format!("ERROR: invalid value {l} for \"mmio_hole\""), 1));
                }
            }
            if p.defbool("altp2mhvm", &mut hvm.altp2m) {
                p.diag.push("WARNING: Specifying \"altp2mhvm\" is deprecated. Please use \"altp2m\" instead.".into());
            }
            p.replace("smbios_firmware", &mut hvm.smbios_firmware);
            p.replace("acpi_firmware", &mut hvm.acpi_firmware);
            if let Some(g) = p.string("ms_vm_genid") {
                if g == "generate" {
                    hvm.ms_vm_genid = Some("generate".into());
                } else if g != "none" {
                    return Err(p.fail(
                        "ERROR: \"ms_vm_genid\" option must be \"generate\" or \"none\"",
                        1,
                    ));
                }
            }
            if let Some(l) = p.long("rdm_mem_boundary") {
                hvm.rdm_mem_boundary_memkb = Some(memkb(l));
            }
            match p.list_q("mca_caps") {
                Ok(l) => {
                    for i in 0..l.len() {
                        let item = list_item(&l, i).unwrap_or("");
                        if item == "lmce" {
                            hvm.mca_caps |= 1;
                        } else {
                            return Err(
                                p.fail(format!("ERROR: unrecognized MCA capability '{item}'."), 3)
                            );
                        }
                    }
                }
                Err(GetError::Missing) => {}
                Err(_) => return Err(p.fail("ERROR: unable to parse mca_caps.", 3)),
            }
            if let Some(f) = p.string("firmware") {
                match BiosType::from_libxl_str(&f) {
                    Some(t) => hvm.bios = t,
                    None => {
                        if prefix_of(&f, "uefi") {
                            hvm.bios = BiosType::Ovmf;
                        } else if !prefix_of(&f, "bios") {
                            hvm.firmware = Some(f);
                        }
                    }
                }
            }
        }
        _ => {
            if let Some(f) = p.string("firmware") {
                if b.kernel.is_some() {
                    return Err(p.fail("ERROR: both kernel and firmware specified", 1));
                }
                if !prefix_of(&f, "pvgrub32") && !prefix_of(&f, "pvgrub64") {
                    return Err(
                        p.fail("ERROR: only pvgrub{32|64} supported as firmware options", 1)
                    );
                }
                b.kernel = Some(format!("/usr/lib/xen-4.17/boot/{f}.bin"));
            }
            if b.bootloader.is_none() && b.kernel.is_none() {
                return Err(p.fail("Neither kernel nor bootloader specified", 1));
            }
        }
    }

    if let Some(l) = p.long_q("altp2m") {
        if !(0..=3).contains(&l) {
            return Err(p.fail(format!("ERROR: invalid value {l} for \"altp2m\""), 1));
        }
        b.altp2m = [
            Altp2mMode::Disabled,
            Altp2mMode::Mixed,
            Altp2mMode::External,
            Altp2mMode::Limited,
        ][l as usize];
    } else if let Some(v) = p.string("altp2m") {
        match Altp2mMode::from_libxl_str(&v) {
            Some(m) => b.altp2m = m,
            None => return Err(p.fail(format!("ERROR: invalid value \"{v}\" for \"altp2m\""), 1)),
        }
    }
    if let Some(l) = p.long_q("vmtrace_buf_kb") {
        if l != 0 {
            b.vmtrace_buf_kb = l;
        }
    }
    if let Some(l) = p.list("ioports") {
        for i in 0..l.len() {
            let Some(s) = list_item(&l, i) else {
                return Err(p.fail(format!("xl: Unable to get element #{i} in ioport list"), 1));
            };
            let sb = s.as_bytes();
            let c = crate::cnum::strtoul(sb, 16);
            if c.end == 0 {
                return Err(p.fail(format!("xl: Invalid argument parsing ioport: {s}"), 1));
            }
            if c.value >= u64::from(u32::MAX) {
                return Err(p.fail(format!("xl: ioport {:x} too big", c.value), 1));
            }
            let start = c.value as u32;
            let mut end = start;
            if sb.get(c.end) == Some(&b'-') {
                let c2 = crate::cnum::strtoul(&sb[c.end + 1..], 16);
                if c2.end == 0 || c.end + 1 + c2.end != sb.len() {
                    return Err(p.fail(format!("xl: Invalid argument parsing ioport: {s}"), 1));
                }
                if c2.value >= u64::from(u32::MAX) {
                    return Err(p.fail(format!("xl: ioport {:x} too big", c2.value), 1));
                }
                end = c2.value as u32;
            } else if c.end != sb.len() {
                p.diag
                    .push(format!("xl: Invalid argument parsing ioport: {s}"));
            }
            b.ioports.push(IoportRange {
                first: start,
                number: end.wrapping_sub(start).wrapping_add(1),
            });
        }
    }
    if let Some(l) = p.list("irqs") {
        for i in 0..l.len() {
            let Some(s) = list_item(&l, i) else {
                return Err(p.fail(format!("xl: Unable to get element {i} in irq list"), 1));
            };
            let c = crate::cnum::strtoul(s.as_bytes(), 10);
            if c.end == 0 || c.end != s.len() {
                return Err(p.fail(format!("xl: Invalid argument parsing irq: {s}"), 1));
            }
            if c.value >= u64::from(u32::MAX) {
                return Err(p.fail(format!("xl: irq {:x} too big", c.value), 1));
            }
            b.irqs.push(c.value as u32);
        }
    }

    // Devices.
    let source = p.cfg.source.clone();
    if let Some(vbds) = p.list("disk") {
        let mut i = 0;
        while let Some(spec) = list_item(&vbds, i) {
            match crate::disk::parse_disk(&source, &[spec], &mut p.diag) {
                Ok(disk) => d.disks.push(disk),
                Err(_) => return Err(p.exit(1)),
            }
            i += 1;
        }
    }
    if let Some(l) = p.list("p9") {
        let mut i = 0;
        while let Some(spec) = list_item(&l, i) {
            let mut dev = DeviceP9::default();
            for tok in strtok(spec, &[',']) {
                let tok = tok.trim_start_matches(' ');
                let Some((k, v)) = tok.split_once('=') else {
                    break;
                };
                match k {
                    "security_model" => dev.security_model = Some(v.to_string()),
                    "path" => dev.path = Some(v.to_string()),
                    "tag" => dev.tag = Some(v.to_string()),
                    "backend" => dev.backend_domname = Some(v.to_string()),
                    _ => return Err(p.fail(format!("Unknown string `{k}' in 9pfs spec"), 1)),
                }
            }
            d.p9s.push(dev);
            i += 1;
        }
    }
    if let Some(l) = p.list("vtpm") {
        let mut i = 0;
        while let Some(spec) = list_item(&l, i) {
            let mut dev = DeviceVtpm {
                devid: Some(i as i64),
                ..Default::default()
            };
            let mut got_backend = false;
            for tok in strtok(spec, &[',']) {
                let tok = tok.trim_start_matches(' ');
                let Some((k, v)) = tok.split_once('=') else {
                    break;
                };
                if k == "backend" {
                    dev.backend_domname = Some(v.to_string());
                    got_backend = true;
                } else if k == "uuid" {
                    match parse_uuid(v) {
                        Some(u) => dev.uuid = Some(u),
                        None => return Err(p.fail(format!("Failed to parse vtpm UUID: {v}"), 1)),
                    }
                } else {
                    return Err(p.fail(format!("Unknown string `{k}' in vtpm spec"), 1));
                }
            }
            if !got_backend {
                return Err(p.fail("vtpm spec missing required backend field!", 1));
            }
            d.vtpms.push(dev);
            i += 1;
        }
    }
    if let Some(l) = p.list("pvcalls") {
        let mut i = 0;
        while let Some(spec) = list_item(&l, i) {
            let mut dev = DevicePvcallsif {
                devid: Some(i as i64),
                ..Default::default()
            };
            for tok in strtok(spec, &[',']) {
                let tok = tok.trim_start_matches(' ');
                let Some((k, v)) = tok.split_once('=') else {
                    break;
                };
                if k == "backend" {
                    dev.backend_domname = Some(v.to_string());
                } else {
                    return Err(p.fail(format!("Unknown string `{k}' in pvcalls spec"), 1));
                }
            }
            d.pvcallsifs.push(dev);
            i += 1;
        }
    }
    if let Some(l) = p.list("channel") {
        let mut i = 0;
        while let Some(spec) = list_item(&l, i) {
            let mut chn = DeviceChannel {
                devid: Some(i as i64),
                ..Default::default()
            };
            let mut path: Option<String> = None;
            let mut conn = ChannelConnection::Unknown;
            for pair in strtok(spec, &[',']) {
                let Some((k, v)) = split_pair(pair) else {
                    return Err(p.fail(format!("failed to parse channel configuration: {pair}"), 1));
                };
                match k.as_str() {
                    "backend" => chn.backend_domname = Some(v),
                    "name" => chn.name = Some(v),
                    "path" => path = Some(v),
                    "connection" => {
                        conn = match v.as_str() {
                            "pty" => ChannelConnection::Pty,
                            "socket" => ChannelConnection::Socket,
                            _ => return Err(p.fail(format!("unknown channel connection '{v}'"), 1)),
                        }
                    }
                    _ => p
                        .diag
                        .push(format!("unknown channel parameter '{k}', ignoring")),
                }
            }
            match conn {
                ChannelConnection::Unknown => {
                    return Err(p.fail("channel has unknown 'connection'", 1))
                }
                ChannelConnection::Socket => {
                    let Some(path) = path else {
                        return Err(p.fail("channel connection 'socket' requires path=..", 1));
                    };
                    chn.socket = Some(ChannelSocket { path: Some(path) });
                }
                ChannelConnection::Pty => chn.pty = Some(Default::default()),
            }
            d.channels.push(chn);
            i += 1;
        }
    }
    if let Some(nics) = p.list("vif") {
        let mut i = 0;
        while let Some(spec) = list_item(&nics, i) {
            let mut nic = DeviceNic {
                devid: Some(i as i64),
                ..Default::default()
            };
            env.xlconf.apply_nic_defaults(&mut nic);
            for tok in strtok(spec, &[',']) {
                let tok = tok.trim_start_matches(' ');
                if let NicTokenResult::Fatal(code) =
                    parse_nic_token(&mut nic, &source, tok, &mut p.diag)
                {
                    return Err(p.exit(code));
                }
            }
            d.nics.push(nic);
            i += 1;
        }
    }
    if p.list_q("vif2").is_ok() {
        p.diag
            .push("WARNING: vif2: netchannel2 is deprecated and not supported by xl".into());
    }
    if let Some(l) = p.list("vfb") {
        let mut i = 0;
        while let Some(spec) = list_item(&l, i) {
            let mut vfb = DeviceVfb {
                devid: Some(i as i64),
                ..Default::default()
            };
            for tok in strtok(spec, &[',']) {
                let tok = tok.trim_start_matches(' ');
                let Some((k, v)) = tok.split_once('=') else {
                    break;
                };
                let num = || crate::cnum::atoi(v.as_bytes());
                match k {
                    "vnc" => vfb.vnc.enable = Some(num() != 0),
                    "vnclisten" => vfb.vnc.listen = Some(v.into()),
                    "vncpasswd" => vfb.vnc.passwd = Some(v.into()),
                    "vncdisplay" => vfb.vnc.display = i64::from(num()),
                    "vncunused" => vfb.vnc.findunused = Some(num() != 0),
                    "keymap" => vfb.keymap = Some(v.into()),
                    "sdl" => vfb.sdl.enable = Some(num() != 0),
                    "opengl" => vfb.sdl.opengl = Some(num() != 0),
                    "display" => vfb.sdl.display = Some(v.into()),
                    "xauthority" => vfb.sdl.xauthority = Some(v.into()),
                    _ => {}
                }
            }
            d.vfbs.push(vfb);
            d.vkbs.push(DeviceVkb {
                devid: Some(i as i64),
                ..Default::default()
            });
            i += 1;
        }
    }
    if let Some(l) = p.list("usbctrl") {
        let mut i = 0;
        while let Some(spec) = list_item(&l, i) {
            let mut c = DeviceUsbctrl {
                devid: Some(i as i64),
                ..Default::default()
            };
            for tok in strtok(spec, &[',']) {
                let tok = tok.trim_start_matches(' ');
                if let Some(v) = tok.strip_prefix("type=") {
                    match UsbctrlType::from_libxl_str(v) {
                        Some(t) => c.type_ = t,
                        None => return Err(p.fail(format!("Invalid usb controller type '{v}'"), 1)),
                    }
                } else if let Some(v) = tok.strip_prefix("version=") {
                    c.version = i64::from(crate::cnum::atoi(v.as_bytes()));
                } else if let Some(v) = tok.strip_prefix("ports=") {
                    c.ports = i64::from(crate::cnum::atoi(v.as_bytes()));
                } else {
                    return Err(p.fail(format!("Unknown string `{tok}' in usbctrl spec"), 1));
                }
            }
            d.usbctrls.push(c);
            i += 1;
        }
    }
    if p.cfg.contains("usbdev")
        || p.cfg.contains("cpuid")
        || p.cfg.contains("vsnd")
        || p.cfg.contains("vdispl")
    {
        for k in ["usbdev", "cpuid", "vsnd", "vdispl"] {
            if p.cfg.contains(k) {
                p.diag.push(format!(
                    "rxen: warning: `{k}' is not supported yet and is ignored"
                ));
            }
        }
    }
    if let Some(dm) = p.string("device_model") {
        p.diag
            .push("WARNING: ignoring device_model directive.".into());
        p.diag.push(
            "WARNING: Use \"device_model_override\" instead if you really want a non-default device_model"
                .into(),
        );
        if dm.contains("stubdom-dm") {
            if ty == DomainType::Hvm {
                p.diag.push("WARNING: Or use \"device_model_stubdomain_override\" if you  want to enable stubdomains".into());
            } else {
                p.diag.push(
                    "WARNING: ignoring \"device_model_stubdomain_override\" directive for pv guest"
                        .into(),
                );
            }
        }
    }
    let b = &mut d.b_info;
    p.replace("device_model_override", &mut b.device_model);
    if let Some(v) = p.string("device_model_version") {
        b.device_model_version = match v.as_str() {
            "qemu-xen-traditional" => DeviceModelVersion::QemuXenTraditional,
            "qemu-xen" => DeviceModelVersion::QemuXen,
            _ => return Err(p.fail(format!("Unknown device_model_version \"{v}\" specified"), 1)),
        };
    } else if b.device_model.is_some() {
        p.diag
            .push("WARNING: device model override given without specific DM version".into());
    }
    p.defbool(
        "device_model_stubdomain_override",
        &mut b.device_model_stubdomain,
    );
    if p.string("device_model_stubdomain_seclabel").is_some() {
        p.replace(
            "device_model_stubdomain_seclabel",
            &mut b.device_model_ssid_label,
        );
    }
    p.replace("device_model_user", &mut b.device_model_user);
    p.replace("stubdomain_kernel", &mut b.stubdomain_kernel);
    p.replace("stubdomain_cmdline", &mut b.stubdomain_cmdline);
    p.replace("stubdomain_ramdisk", &mut b.stubdomain_ramdisk);
    if let Some(l) = p.long("stubdomain_memory") {
        b.stubdomain_memkb = Some(memkb(l));
    }
    for (k, slot) in [
        ("device_model_args", &mut b.extra),
        ("device_model_args_pv", &mut b.extra_pv),
        ("device_model_args_hvm", &mut b.extra_hvm),
    ] {
        match p.string_list(k, false) {
            Ok(l) => *slot = Some(l),
            Err(GetError::Missing) => {}
            Err(_) => return Err(p.fail(format!("xl: Unable to parse {k}."), 3)),
        }
    }
    if ty == DomainType::Pv && d.vfbs.is_empty() {
        if p.long("vnc").unwrap_or(0) != 0 {
            let mut vfb = DeviceVfb {
                devid: Some(0),
                ..Default::default()
            };
            top_level_vnc(p, &mut vfb.vnc);
            top_level_sdl(p, &mut vfb.sdl);
            p.replace("keymap", &mut vfb.keymap);
            d.vfbs.push(vfb);
            d.vkbs.push(DeviceVkb {
                devid: Some(0),
                ..Default::default()
            });
        }
    } else {
        top_level_vnc(p, &mut hvm.vnc);
        top_level_sdl(p, &mut hvm.sdl);
    }
    let b = &mut d.b_info;
    p.defbool("dm_restrict", &mut b.dm_restrict);
    if ty == DomainType::Hvm {
        if let Some(v) = p.string("vga") {
            hvm.vga.kind = match v.as_str() {
                "stdvga" => VgaInterfaceType::Std,
                "cirrus" => VgaInterfaceType::Cirrus,
                "none" => VgaInterfaceType::None,
                "qxl" => VgaInterfaceType::Qxl,
                _ => return Err(p.fail(format!("Unknown vga \"{v}\" specified"), 1)),
            };
        } else if let Some(l) = p.long("stdvga") {
            hvm.vga.kind = if l != 0 {
                VgaInterfaceType::Std
            } else {
                VgaInterfaceType::Cirrus
            };
        }
        if let Some(v) = p.string("hdtype") {
            match Hdtype::from_libxl_str(&v) {
                Some(h) => hvm.hdtype = h,
                None => {
                    return Err(p.fail(format!("ERROR: invalid value \"{v}\" for \"hdtype\""), 1))
                }
            }
        }
        p.replace("keymap", &mut hvm.keymap);
        p.defbool("spice", &mut hvm.spice.enable);
        if let Some(l) = p.long("spiceport") {
            hvm.spice.port = l;
        }
        if let Some(l) = p.long("spicetls_port") {
            hvm.spice.tls_port = l;
        }
        p.replace("spicehost", &mut hvm.spice.host);
        p.defbool("spicedisable_ticketing", &mut hvm.spice.disable_ticketing);
        p.replace("spicepasswd", &mut hvm.spice.passwd);
        p.defbool("spiceagent_mouse", &mut hvm.spice.agent_mouse);
        p.defbool("spicevdagent", &mut hvm.spice.vdagent);
        p.defbool("spice_clipboard_sharing", &mut hvm.spice.clipboard_sharing);
        if let Some(l) = p.long("spiceusbredirection") {
            hvm.spice.usbredirection = l;
        }
        p.replace("spice_image_compression", &mut hvm.spice.image_compression);
        p.replace("spice_streaming_video", &mut hvm.spice.streaming_video);
        p.defbool("nographic", &mut hvm.nographic);
        if let Some(l) = p.long_q("gfx_passthru") {
            hvm.gfx_passthru = Some(l != 0);
        } else if let Some(v) = p.string("gfx_passthru") {
            match GfxPassthruKind::from_libxl_str(&v) {
                Some(k) => hvm.gfx_passthru_kind = k,
                None => {
                    return Err(p.fail(
                        format!("ERROR: invalid value \"{v}\" for \"gfx_passthru\""),
                        1,
                    ))
                }
            }
            hvm.gfx_passthru = Some(true);
        }
        match p.string_list("serial", true) {
            Ok(l) => hvm.serial_list = Some(l),
            Err(GetError::Missing) => {}
            Err(_) => {
                if !p.replace("serial", &mut hvm.serial) {
                    return Err(p.fail("xl: Unable to parse serial.", 3));
                }
            }
        }
        p.replace("boot", &mut hvm.boot);
        p.defbool("usb", &mut hvm.usb);
        if let Some(l) = p.long("usbversion") {
            hvm.usbversion = l;
        }
        match p.string_list("usbdevice", true) {
            Ok(l) => hvm.usbdevice_list = Some(l),
            Err(GetError::Missing) => {}
            Err(_) => {
                if !p.replace("usbdevice", &mut hvm.usbdevice) {
                    return Err(p.fail("xl: Unable to parse usbdevice.", 3));
                }
            }
        }
        p.defbool("vkb_device", &mut hvm.vkb_device);
        p.replace("soundhw", &mut hvm.soundhw);
        p.defbool("xen_platform_pci", &mut hvm.xen_platform_pci);
        if hvm.vnc.listen.as_deref().is_some_and(|l| l.contains(':')) && hvm.vnc.display != 0 {
            return Err(p.fail(
                "ERROR: Display specified both in vnclisten and vncdisplay!",
                1,
            ));
        }
        if let Some(v) = p.string("vendor_device") {
            match VendorDevice::from_libxl_str(&v) {
                Some(x) => hvm.vendor_device = x,
                None => return Err(p.fail(format!("xl: unknown vendor_device '{v}'"), 3)),
            }
        }
    }
    if let Some(v) = p.string_q("gic_version") {
        match GicVersion::from_libxl_str(&v) {
            Some(g) => b.arch_arm.gic_version = g,
            None => return Err(p.fail(format!("Unknown gic_version \"{v}\" specified"), 3)),
        }
    }
    if let Some(v) = p.string_q("tee") {
        match TeeType::from_libxl_str(&v) {
            Some(t) => b.tee = t,
            None => return Err(p.fail(format!("Unknown tee \"{v}\" specified"), 3)),
        }
    }
    if let Some(l) = p.list("vkb") {
        let mut i = 0;
        while let Some(spec) = list_item(&l, i) {
            let mut vkb = DeviceVkb {
                devid: Some(d.vkbs.len() as i64),
                ..Default::default()
            };
            for tok in strtok(spec, &[',']) {
                let tok = tok.trim_start_matches(' ');
                let num = |v: &str| crate::cnum::strtoul(v.as_bytes(), 0).value;
                if let Some(v) = tok.strip_prefix("backend=") {
                    vkb.backend_domname = Some(v.into());
                } else if let Some(v) = tok.strip_prefix("backend-type=") {
                    match VkbBackend::from_libxl_str(v) {
                        Some(t) => vkb.backend_type = t,
                        None => {
                            return Err(
                                p.fail(format!("Unknown backend_type \"{v}\" in vkb spec"), 1)
                            )
                        }
                    }
                } else if let Some(v) = tok.strip_prefix("unique-id=") {
                    vkb.unique_id = Some(v.into());
                } else if let Some(v) = tok.strip_prefix("feature-disable-keyboard=") {
                    vkb.feature_disable_keyboard = num(v) != 0;
                } else if let Some(v) = tok.strip_prefix("feature-disable-pointer=") {
                    vkb.feature_disable_pointer = num(v) != 0;
                } else if let Some(v) = tok.strip_prefix("feature-abs-pointer=") {
                    vkb.feature_abs_pointer = num(v) != 0;
                } else if let Some(v) = tok.strip_prefix("feature-raw-pointer=") {
                    vkb.feature_raw_pointer = num(v) != 0;
                } else if let Some(v) = tok.strip_prefix("feature-multi-touch=") {
                    vkb.feature_multi_touch = num(v) != 0;
                } else if let Some(v) = tok.strip_prefix("multi-touch-width=") {
                    vkb.multi_touch_width = num(v) as u32;
                } else if let Some(v) = tok.strip_prefix("multi-touch-height=") {
                    vkb.multi_touch_height = num(v) as u32;
                } else if let Some(v) = tok.strip_prefix("multi-touch-num-contacts=") {
                    vkb.multi_touch_num_contacts = num(v) as u32;
                } else if let Some(v) = tok.strip_prefix("width=") {
                    vkb.width = num(v) as u32;
                } else if let Some(v) = tok.strip_prefix("height=") {
                    vkb.height = num(v) as u32;
                } else {
                    return Err(p.fail(format!("Unknown string \"{tok}\" in vkb spec"), 1));
                }
            }
            if vkb.backend_type == VkbBackend::Unknown {
                return Err(p.fail("backend-type should be set in vkb spec", 1));
            }
            if vkb.multi_touch_height != 0
                || vkb.multi_touch_width != 0
                || vkb.multi_touch_num_contacts != 0
            {
                vkb.feature_multi_touch = true;
            }
            if vkb.feature_multi_touch
                && vkb.multi_touch_height == 0
                && vkb.multi_touch_width == 0
                && vkb.multi_touch_num_contacts == 0
            {
                return Err(p.fail("multi-touch-width, multi-touch-height, multi-touch-num-contacts should be set for multi touch in vkb spec", 1));
            }
            d.vkbs.push(vkb);
            i += 1;
        }
    }
    p.defbool(
        "xend_suspend_evtchn_compat",
        &mut d.c_info.xend_suspend_evtchn_compat,
    );
    if p.defbool("msr_relaxed", &mut b.arch_x86.msr_relaxed) {
        p.diag
            .push("WARNING: msr_relaxed will be removed in future versions.".into());
        p.diag.push(
            "If it fixes an issue you are having please report to xen-devel@lists.xenproject.org."
                .into(),
        );
    }
    p.defbool("vpmu", &mut b.vpmu);

    match ty {
        DomainType::Hvm => b.hvm = Some(hvm),
        DomainType::Pv => b.pv = Some(pv),
        DomainType::Pvh => b.pvh = Some(pvh),
        DomainType::Invalid => {}
    }
    Ok(d)
}

fn top_level_vnc(p: &mut P<'_>, vnc: &mut VncInfo) {
    p.defbool("vnc", &mut vnc.enable);
    p.replace("vnclisten", &mut vnc.listen);
    p.replace("vncpasswd", &mut vnc.passwd);
    if let Some(l) = p.long("vncdisplay") {
        vnc.display = l;
    }
    p.defbool("vncunused", &mut vnc.findunused);
}

fn top_level_sdl(p: &mut P<'_>, sdl: &mut SdlInfo) {
    p.defbool("sdl", &mut sdl.enable);
    p.defbool("opengl", &mut sdl.opengl);
    p.replace("display", &mut sdl.display);
    p.replace("xauthority", &mut sdl.xauthority);
}

/// `cmdline`, or `root=<root> <extra>`; with `xm_compat`, the xm-era `ip=`/`nfsroot=` parts.
fn parse_cmdline(p: &mut P<'_>) -> Option<String> {
    let buf = p.string("cmdline");
    let root = p.string("root");
    let mut extra = p.string("extra");
    if buf.is_some() {
        if root.is_some() || extra.is_some() {
            p.diag
                .push("Warning: ignoring root= and extra= in favour of cmdline=".into());
        }
        return buf;
    }
    let mut ip_part: Option<String> = None;
    if p.env.xm_compat && (p.cfg.contains("ip") || p.cfg.contains("nfs_root")) {
        let get = |p: &mut P<'_>, k: &str| p.string_q(k).unwrap_or_default();
        let ip = get(p, "ip");
        let nfs_server = get(p, "nfs_server");
        let nfs_root = get(p, "nfs_root");
        let gateway = get(p, "gateway");
        let netmask = get(p, "netmask");
        let hostname = get(p, "hostname");
        let interface = p.string_q("interface").unwrap_or_else(|| "eth0".into());
        let dhcp = p.string_q("dhcp").unwrap_or_else(|| "off".into());
        if !ip.is_empty() || dhcp != "off" {
            let server = if nfs_server.is_empty() {
                "127.0.255.255".to_string()
            } else {
                nfs_server.clone()
            };
            ip_part = Some(format!(
                "ip={ip}:{server}:{gateway}:{netmask}:{hostname}:{interface}:{dhcp}"
            ));
        }
        if !nfs_root.is_empty() {
            let nfs = format!("nfsroot={nfs_server}:{nfs_root}");
            extra = Some(match extra {
                Some(e) => format!("{nfs} {e}"),
                None => nfs,
            });
        }
    }
    let base = match (root, extra) {
        (Some(r), Some(e)) => Some(format!("root={r} {e}")),
        (Some(r), None) => Some(format!("root={r}")),
        (None, Some(e)) => Some(e),
        (None, None) => None,
    };
    match (ip_part, base) {
        (Some(ip), Some(b)) => Some(format!("{ip} {b}")),
        (Some(ip), None) => Some(ip),
        (None, b) => b,
    }
}

/// A PCI passthrough spec `[DDDD:]BB:DD.F[@VSLOT][,key=value...]` (subset of
/// `xlu_pci_parse_spec_string`).
pub fn parse_pci_spec(spec: &str) -> Option<DevicePci> {
    let mut parts = spec.split(',');
    let bdf = parts.next()?;
    let (bdf, vslot) = match bdf.split_once('@') {
        Some((a, v)) => (a, Some(v)),
        None => (bdf, None),
    };
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let (dbb, df) = bdf.rsplit_once(':')?;
    let (domain, bus) = match dbb.split_once(':') {
        Some((d, b)) => (hex(d)?, hex(b)?),
        None => (0, hex(dbb)?),
    };
    let (dev, func) = df.split_once('.')?;
    let mut out = DevicePci {
        domain: i64::from(domain),
        bus: bus & 0xff,
        dev: hex(dev)? & 0x1f,
        func: hex(func)? & 7,
        vfunc_mask: 1,
        ..Default::default()
    };
    if let Some(v) = vslot {
        out.vdevfn = hex(v)? << 3;
    }
    for kv in parts {
        let (k, v) = kv.split_once('=')?;
        let flag = crate::cnum::atoi(v.as_bytes()) != 0;
        match k.trim() {
            "msitranslate" => out.msitranslate = flag,
            "power_mgmt" => out.power_mgmt = flag,
            "permissive" => out.permissive = flag,
            "seize" => out.seize = flag,
            "rdm_policy" => {
                out.rdm_policy = match v {
                    "strict" => RdmReservePolicy::Strict,
                    "relaxed" => RdmReservePolicy::Relaxed,
                    _ => return None,
                }
            }
            "name" => out.name = Some(v.to_string()),
            _ => return None,
        }
    }
    Some(out)
}

/// Keys Xen 4.17's xl reads from a domain config (plus the xm-era keys rxen understands).
pub const KNOWN_KEYS: &[&str] = &[
    "acpi",
    "acpi_firmware",
    "acpi_laptop_slate",
    "acpi_s3",
    "acpi_s4",
    "altp2m",
    "altp2mhvm",
    "apic",
    "bios",
    "bios_path_override",
    "blkdev_start",
    "boot",
    "bootloader",
    "bootloader_args",
    "builder",
    "cap",
    "channel",
    "cmdline",
    "cpu_weight",
    "cpuid",
    "cpus",
    "cpus_soft",
    "device_model",
    "device_model_args",
    "device_model_args_hvm",
    "device_model_args_pv",
    "device_model_override",
    "device_model_stubdomain_override",
    "device_model_stubdomain_seclabel",
    "device_model_user",
    "device_model_version",
    "device_tree",
    "disk",
    "display",
    "dm_restrict",
    "driver_domain",
    "dtdev",
    "e820_host",
    "extra",
    "extratime",
    "firmware",
    "firmware_override",
    "gfx_passthru",
    "gic_version",
    "hap",
    "hdtype",
    "hpet",
    "init_seclabel",
    "iomem",
    "ioports",
    "irqs",
    "kernel",
    "keymap",
    "latency",
    "localtime",
    "max_event_channels",
    "max_grant_frames",
    "max_grant_version",
    "max_maptrack_frames",
    "maxmem",
    "maxvcpus",
    "mca_caps",
    "memory",
    "mmio_hole",
    "ms_vm_genid",
    "msr_relaxed",
    "name",
    "nestedhvm",
    "nographic",
    "nomigrate",
    "nx",
    "on_crash",
    "on_poweroff",
    "on_reboot",
    "on_soft_reset",
    "on_watchdog",
    "oos",
    "opengl",
    "p9",
    "pae",
    "passthrough",
    "pci",
    "pci_msitranslate",
    "pci_permissive",
    "pci_power_mgmt",
    "pci_seize",
    "period",
    "pool",
    "pvcalls",
    "pvshim",
    "pvshim_cmdline",
    "pvshim_extra",
    "pvshim_path",
    "ramdisk",
    "rdm",
    "rdm_mem_boundary",
    "root",
    "rtc_timeoffset",
    "sdl",
    "seclabel",
    "serial",
    "shadow_memory",
    "slice",
    "smbios_firmware",
    "soundhw",
    "spice",
    "spice_clipboard_sharing",
    "spice_image_compression",
    "spice_streaming_video",
    "spiceagent_mouse",
    "spicedisable_ticketing",
    "spicehost",
    "spicepasswd",
    "spiceport",
    "spicetls_port",
    "spiceusbredirection",
    "spicevdagent",
    "stdvga",
    "stubdomain_cmdline",
    "stubdomain_kernel",
    "stubdomain_memory",
    "stubdomain_ramdisk",
    "tee",
    "timer_mode",
    "tsc_mode",
    "type",
    "usb",
    "usbctrl",
    "usbdev",
    "usbdevice",
    "usbversion",
    "uuid",
    "vcpus",
    "vdispl",
    "vendor_device",
    "vfb",
    "vga",
    "videoram",
    "vif",
    "vif2",
    "viridian",
    "vkb",
    "vkb_device",
    "vmtrace_buf_kb",
    "vnc",
    "vncdisplay",
    "vnclisten",
    "vncpasswd",
    "vncunused",
    "vncviewer",
    "vnuma",
    "vpmu",
    "vpt_align",
    "vsnd",
    "vtpm",
    "vuart",
    "xauthority",
    "xen_platform_pci",
    "xend_suspend_evtchn_compat",
    // xm-era keys composed into the kernel command line by rxen (xm_compat)
    "ip",
    "netmask",
    "gateway",
    "hostname",
    "nfs_server",
    "nfs_root",
    "dhcp",
    "interface",
];

/// Keys of a parsed file that xl does not read (name, line of last setting).
pub fn unknown_keys(cfg: &XlCfg) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for s in &cfg.settings {
        if !KNOWN_KEYS.contains(&s.name.as_str()) && !out.iter().any(|(n, _)| *n == s.name) {
            out.push((s.name.clone(), s.lineno));
        }
    }
    out
}
