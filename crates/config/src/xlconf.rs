//! `/etc/xen/xl.conf`: xl's global settings (same grammar as xl.cfg), with Xen 4.17's defaults.
//!
//! ```
//! let c = rxen_config::xlconf::XlConf::parse("xl.conf", b"autoballoon=\"off\"\nvif.default.bridge=\"br0\"\n").unwrap();
//! assert_eq!(c.autoballoon, rxen_config::xlconf::Autoballoon::Off);
//! assert_eq!(c.vif_default_bridge.as_deref(), Some("br0"));
//! assert!(c.run_hotplug_scripts);
//! ```

use crate::cfg::{CfgParseError, XlCfg};
use crate::model::DeviceNic;

/// `autoballoon=` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Autoballoon {
    /// `"off"` (or 0).
    Off,
    /// `"on"` (or 1).
    On,
    /// `"auto"` (default): on unless dom0_mem is set on the hypervisor command line.
    #[default]
    Auto,
}

/// `domid_policy=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DomidPolicy {
    /// Sequential ids chosen by the hypervisor (default).
    #[default]
    Xen,
    /// Random ids.
    Random,
}

/// `output_format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// JSON (default).
    #[default]
    Json,
    /// The xend S-expression format.
    Sxp,
}

/// The keys of xl.conf (xl.conf(5), Xen 4.17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlConf {
    pub autoballoon: Autoballoon,
    pub run_hotplug_scripts: bool,
    pub lockfile: String,
    pub max_grant_frames: Option<u32>,
    pub max_maptrack_frames: Option<u32>,
    pub max_grant_version: Option<i64>,
    pub vif_default_script: Option<String>,
    pub vif_default_bridge: Option<String>,
    pub vif_default_gatewaydev: Option<String>,
    pub vif_default_backend: Option<String>,
    pub remus_default_netbufscript: Option<String>,
    pub colo_default_proxyscript: Option<String>,
    pub output_format: OutputFormat,
    pub blkdev_start: Option<String>,
    pub claim_mode: bool,
    pub vm_cpumask: Option<String>,
    pub vm_hvm_cpumask: Option<String>,
    pub vm_pv_cpumask: Option<String>,
    pub domid_policy: DomidPolicy,
    /// Warnings produced while reading the file.
    pub warnings: Vec<String>,
}

impl Default for XlConf {
    fn default() -> Self {
        XlConf {
            autoballoon: Autoballoon::Auto,
            run_hotplug_scripts: true,
            lockfile: "/var/lock/xl".into(),
            max_grant_frames: None,
            max_maptrack_frames: None,
            max_grant_version: None,
            vif_default_script: None,
            vif_default_bridge: None,
            vif_default_gatewaydev: None,
            vif_default_backend: None,
            remus_default_netbufscript: None,
            colo_default_proxyscript: None,
            output_format: OutputFormat::Json,
            blkdev_start: None,
            claim_mode: true,
            vm_cpumask: None,
            vm_hvm_cpumask: None,
            vm_pv_cpumask: None,
            domid_policy: DomidPolicy::Xen,
            warnings: Vec::new(),
        }
    }
}

impl XlConf {
    /// Parse xl.conf text.
    pub fn parse(source: &str, data: &[u8]) -> Result<XlConf, CfgParseError> {
        let cfg = XlCfg::parse(source, data)?;
        Ok(Self::from_cfg(&cfg))
    }

    /// Read `/etc/xen/xl.conf` (or `path`); a missing file gives the defaults.
    pub fn load(path: &str) -> Result<XlConf, CfgParseError> {
        match std::fs::read(path) {
            Ok(d) => Self::parse(path, &d),
            Err(_) => Ok(XlConf::default()),
        }
    }

    /// Interpret a parsed file.
    pub fn from_cfg(cfg: &XlCfg) -> XlConf {
        let mut c = XlConf::default();
        let mut w = Vec::new();
        if let Ok(l) = cfg.get_long("autoballoon", &mut w, true) {
            w.push(
                "WARNING: using deprecated autoballoon option; use \"on\", \"off\" or \"auto\""
                    .into(),
            );
            c.autoballoon = if l != 0 {
                Autoballoon::On
            } else {
                Autoballoon::Off
            };
        } else if let Ok(s) = cfg.get_string("autoballoon", &mut w, false) {
            match s {
                "on" => c.autoballoon = Autoballoon::On,
                "off" => c.autoballoon = Autoballoon::Off,
                "auto" => c.autoballoon = Autoballoon::Auto,
                _ => w.push(format!("invalid autoballoon option {s}")),
            }
        }
        if let Ok(l) = cfg.get_long("run_hotplug_scripts", &mut w, false) {
            c.run_hotplug_scripts = l != 0;
        }
        let s = |k: &str, w: &mut Vec<String>| cfg.get_string(k, w, false).ok().map(str::to_string);
        if let Some(v) = s("lockfile", &mut w) {
            c.lockfile = v;
        }
        if let Ok(l) = cfg.get_long("max_grant_frames", &mut w, false) {
            c.max_grant_frames = Some(l as u32);
        }
        if let Ok(l) = cfg.get_long("max_maptrack_frames", &mut w, false) {
            c.max_maptrack_frames = Some(l as u32);
        }
        if let Ok(l) = cfg.get_long("max_grant_version", &mut w, false) {
            c.max_grant_version = Some(l);
        }
        c.vif_default_script = s("vif.default.script", &mut w);
        c.vif_default_bridge = s("vif.default.bridge", &mut w);
        c.vif_default_gatewaydev = s("vif.default.gatewaydev", &mut w);
        c.vif_default_backend = s("vif.default.backend", &mut w);
        c.remus_default_netbufscript = s("remus.default.netbufscript", &mut w);
        c.colo_default_proxyscript = s("colo.default.proxyscript", &mut w);
        if let Some(f) = s("output_format", &mut w) {
            match f.as_str() {
                "json" => c.output_format = OutputFormat::Json,
                "sxp" => c.output_format = OutputFormat::Sxp,
                _ => w.push(format!("invalid default output format \"{f}\"")),
            }
        }
        c.blkdev_start = s("blkdev_start", &mut w);
        if let Ok(l) = cfg.get_long("claim_mode", &mut w, false) {
            c.claim_mode = l != 0;
        }
        c.vm_cpumask = s("vm.cpumask", &mut w);
        c.vm_hvm_cpumask = s("vm.hvm.cpumask", &mut w);
        c.vm_pv_cpumask = s("vm.pv.cpumask", &mut w);
        if let Some(p) = s("domid_policy", &mut w) {
            match p.as_str() {
                "xen" => c.domid_policy = DomidPolicy::Xen,
                "random" => c.domid_policy = DomidPolicy::Random,
                _ => w.push(format!("invalid domid_policy option \"{p}\"")),
            }
        }
        c.warnings = w;
        c
    }

    /// xl's `set_default_nic_values`.
    pub fn apply_nic_defaults(&self, nic: &mut DeviceNic) {
        if let Some(s) = &self.vif_default_script {
            nic.script = Some(s.clone());
        }
        if let Some(s) = &self.vif_default_bridge {
            nic.bridge = Some(s.clone());
        }
        if let Some(s) = &self.vif_default_gatewaydev {
            nic.gatewaydev = Some(s.clone());
        }
        if let Some(s) = &self.vif_default_backend {
            nic.backend_domname = Some(s.clone());
        }
    }
}
