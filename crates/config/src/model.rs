//! The typed domain configuration: a Rust mirror of libxl's `libxl_domain_config` (Xen 4.17
//! IDL), with the same field names and order, so that its JSON form (see
//! [`DomainConfig::to_libxl_json`]) is the JSON Xen's `xl -N create` prints and the JSON embedded
//! in xl save files, and can be read back with [`DomainConfig::from_libxl_json`].
//!
//! Conventions (the IDL's "default" values are omitted from JSON, like libxl does):
//! * `Option<T>` = a field whose libxl default is a sentinel (`LIBXL_MEMKB_DEFAULT`, `-1`, NULL
//!   string, `libxl_defbool` "default"); `None` = default.
//! * plain integers/booleans/enums: omitted from JSON when zero / their IDL init value.
//! * memory is in KiB (`*_memkb`), like libxl.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// libxl_defbool as JSON: `"True"` / `"False"` (absent = default).
pub mod defbool {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize `Some(b)` as `"True"`/`"False"`.
    pub fn serialize<S: Serializer>(v: &Option<bool>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(true) => s.serialize_str("True"),
            Some(false) => s.serialize_str("False"),
            None => s.serialize_str("<default>"),
        }
    }
    /// Parse `"True"`/`"False"` (anything else = default).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "True" => Some(true),
            "False" => Some(false),
            _ => None,
        })
    }
}

macro_rules! libxl_enum {
    ($(#[$m:meta])* $name:ident default $def:ident { $($(#[$vm:meta])* $v:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
        pub enum $name {
            $(
                $(#[$vm])*
                #[serde(rename = $s)]
                $v,
            )*
        }
        impl $name {
            /// libxl's `*_to_string` name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
            /// libxl's `*_from_string` (case-insensitive, like libxl).
            pub fn from_libxl_str(s: &str) -> Option<Self> {
                $(if s.eq_ignore_ascii_case($s) { return Some($name::$v); })*
                None
            }
        }
    };
}

libxl_enum!(
    /// `libxl_domain_type`.
    DomainType default Invalid {
        #[default] Invalid = "invalid", Hvm = "hvm", Pv = "pv", Pvh = "pvh",
    }
);
libxl_enum!(
    /// `libxl_action_on_shutdown` (IDL init value: destroy).
    ActionOnShutdown default Destroy {
        #[default] Destroy = "destroy", Restart = "restart", RestartRename = "restart_rename",
        Preserve = "preserve", CoredumpDestroy = "coredump_destroy",
        CoredumpRestart = "coredump_restart", SoftReset = "soft_reset",
    }
);
libxl_enum!(
    /// `libxl_disk_format`.
    DiskFormat default Unknown {
        #[default] Unknown = "unknown", Qcow = "qcow", Qcow2 = "qcow2", Vhd = "vhd", Raw = "raw",
        Empty = "empty", Qed = "qed",
    }
);
libxl_enum!(
    /// `libxl_disk_backend`.
    DiskBackend default Unknown {
        #[default] Unknown = "unknown", Phy = "phy", Tap = "tap", Qdisk = "qdisk",
        Standalone = "standalone",
    }
);
libxl_enum!(
    /// `libxl_disk_specification`.
    DiskSpecification default Unknown {
        #[default] Unknown = "unknown", Xen = "xen", Virtio = "virtio",
    }
);
libxl_enum!(
    /// `libxl_disk_transport`.
    DiskTransport default Unknown { #[default] Unknown = "unknown", Mmio = "mmio" }
);
libxl_enum!(
    /// `libxl_nic_type`.
    NicType default Unknown { #[default] Unknown = "unknown", VifIoemu = "vif_ioemu", Vif = "vif" }
);
libxl_enum!(
    /// `libxl_tsc_mode`.
    TscMode default Default {
        #[default] Default = "default", AlwaysEmulate = "always_emulate", Native = "native",
        NativeParavirt = "native_paravirt",
    }
);
libxl_enum!(
    /// `libxl_timer_mode`.
    TimerMode default DelayForMissedTicks {
        #[default] DelayForMissedTicks = "delay_for_missed_ticks",
        NoDelayForMissedTicks = "no_delay_for_missed_ticks",
        NoMissedTicksPending = "no_missed_ticks_pending",
        OneMissedTickPending = "one_missed_tick_pending",
    }
);
libxl_enum!(
    /// `libxl_bios_type`.
    BiosType default Unknown {
        #[default] Unknown = "unknown", Rombios = "rombios", Seabios = "seabios", Ovmf = "ovmf",
    }
);
libxl_enum!(
    /// `libxl_vga_interface_type`.
    VgaInterfaceType default Unknown {
        #[default] Unknown = "unknown", Cirrus = "cirrus", Std = "std", None = "none", Qxl = "qxl",
    }
);
libxl_enum!(
    /// `libxl_hdtype` (IDL init value: ide).
    Hdtype default Ide { #[default] Ide = "ide", Ahci = "ahci" }
);
libxl_enum!(
    /// `libxl_device_model_version`.
    DeviceModelVersion default Unknown {
        #[default] Unknown = "unknown", QemuXenTraditional = "qemu_xen_traditional",
        QemuXen = "qemu_xen",
    }
);
libxl_enum!(
    /// `libxl_vendor_device`.
    VendorDevice default None { #[default] None = "none", Xenserver = "xenserver" }
);
libxl_enum!(
    /// `libxl_passthrough`.
    Passthrough default Default {
        #[default] Default = "default", Disabled = "disabled", Enabled = "enabled",
        SyncPt = "sync_pt", SharePt = "share_pt",
    }
);
libxl_enum!(
    /// `libxl_altp2m_mode`.
    Altp2mMode default Disabled {
        #[default] Disabled = "disabled", Mixed = "mixed", External = "external", Limited = "limited",
    }
);
libxl_enum!(
    /// `libxl_gic_version`.
    GicVersion default Default { #[default] Default = "default", V2 = "v2", V3 = "v3" }
);
libxl_enum!(
    /// `libxl_vuart_type`.
    VuartType default Unknown { #[default] Unknown = "unknown", SbsaUart = "sbsa_uart" }
);
libxl_enum!(
    /// `libxl_tee_type`.
    TeeType default None { #[default] None = "none", Optee = "optee" }
);
libxl_enum!(
    /// `libxl_rdm_reserve_strategy`.
    RdmReserveStrategy default Ignore { #[default] Ignore = "ignore", Host = "host" }
);
libxl_enum!(
    /// `libxl_rdm_reserve_policy` (IDL init value: invalid).
    RdmReservePolicy default Invalid { #[default] Invalid = "invalid", Strict = "strict", Relaxed = "relaxed" }
);
libxl_enum!(
    /// `libxl_gfx_passthru_kind`.
    GfxPassthruKind default Default { #[default] Default = "default", Igd = "igd" }
);
libxl_enum!(
    /// `libxl_vkb_backend`.
    VkbBackend default Unknown { #[default] Unknown = "unknown", Qemu = "qemu", Linux = "linux" }
);
libxl_enum!(
    /// `libxl_usbctrl_type`.
    UsbctrlType default Auto { #[default] Auto = "auto", Pv = "pv", Devicemodel = "devicemodel", Qusb = "qusb" }
);
libxl_enum!(
    /// `libxl_channel_connection`.
    ChannelConnection default Unknown { #[default] Unknown = "unknown", Pty = "pty", Socket = "socket" }
);

/// `libxl_bitmap`: JSON = array of the set bit numbers.
pub type Bitmap = Vec<u32>;

/// `libxl_domain_create_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateInfo {
    #[serde(rename = "type", skip_serializing_if = "is_default")]
    pub type_: DomainType,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub hap: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub oos: Option<bool>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ssidref: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssid_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub domid: u32,
    /// `libxl_uuid` as text (`xxxxxxxx-xxxx-...`), `None` = nil.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xsdata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub platformdata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub poolid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub run_hotplug_scripts: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub driver_domain: Option<bool>,
    #[serde(skip_serializing_if = "is_default")]
    pub passthrough: Passthrough,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub xend_suspend_evtchn_compat: Option<bool>,
}

/// `libxl_domain_sched_params` (all `-1` = default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sched: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extratime: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<i64>,
}

/// `libxl_ioport_range`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IoportRange {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub first: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub number: u32,
}

/// `libxl_iomem_range`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IomemRange {
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub start: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub number: u64,
    /// `LIBXL_INVALID_GFN` (= `u64::MAX`) is the default.
    #[serde(skip_serializing_if = "is_invalid_gfn")]
    pub gfn: u64,
}
impl Default for IomemRange {
    fn default() -> Self {
        IomemRange {
            start: 0,
            number: 0,
            gfn: u64::MAX,
        }
    }
}
fn is_invalid_gfn(v: &u64) -> bool {
    *v == u64::MAX
}

/// `libxl_vnode_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VnodeInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memkb: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distances: Vec<u32>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub pnode: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vcpus: Bitmap,
}

/// `libxl_vnc_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VncInfo {
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passwd: Option<String>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub display: i64,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub findunused: Option<bool>,
}

/// `libxl_sdl_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SdlInfo {
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub opengl: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xauthority: Option<String>,
}

/// `libxl_spice_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpiceInfo {
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub port: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub tls_port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub disable_ticketing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passwd: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub agent_mouse: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub vdagent: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub clipboard_sharing: Option<bool>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub usbredirection: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_compression: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming_video: Option<String>,
}

/// `libxl_vga_interface_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VgaInfo {
    #[serde(skip_serializing_if = "is_default")]
    pub kind: VgaInterfaceType,
}

/// `libxl_rdm_reserve`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RdmReserve {
    #[serde(skip_serializing_if = "is_default")]
    pub strategy: RdmReserveStrategy,
    #[serde(skip_serializing_if = "is_default")]
    pub policy: RdmReservePolicy,
}

/// The HVM arm of `libxl_domain_build_info.u`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HvmInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub bios: BiosType,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub pae: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub apic: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub acpi: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub acpi_s3: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub acpi_s4: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub acpi_laptop_slate: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub nx: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub viridian: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub viridian_enable: Bitmap,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub viridian_disable: Bitmap,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeoffset: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub hpet: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub vpt_align: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mmio_hole_memkb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timer_mode: Option<TimerMode>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub nested_hvm: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub altp2m: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_firmware: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smbios_firmware: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acpi_firmware: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub hdtype: Hdtype,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub nographic: Option<bool>,
    pub vga: VgaInfo,
    pub vnc: VncInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keymap: Option<String>,
    pub sdl: SdlInfo,
    pub spice: SpiceInfo,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub gfx_passthru: Option<bool>,
    #[serde(skip_serializing_if = "is_default")]
    pub gfx_passthru_kind: GfxPassthruKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub usb: Option<bool>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub usbversion: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usbdevice: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub vkb_device: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soundhw: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub xen_platform_pci: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usbdevice_list: Option<Vec<Option<String>>>,
    #[serde(skip_serializing_if = "is_default")]
    pub vendor_device: VendorDevice,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms_vm_genid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_list: Option<Vec<Option<String>>>,
    pub rdm: RdmReserve,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdm_mem_boundary_memkb: Option<u64>,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub mca_caps: u64,
}

/// The PV arm of `libxl_domain_build_info.u`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PvInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slack_memkb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader_args: Option<Vec<Option<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub e820_host: Option<bool>,
}

/// The PVH arm of `libxl_domain_build_info.u`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PvhInfo {
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub pvshim: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvshim_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvshim_cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvshim_extra: Option<String>,
}

/// `libxl_domain_build_info.arch_arm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchArm {
    #[serde(skip_serializing_if = "is_default")]
    pub gic_version: GicVersion,
    #[serde(skip_serializing_if = "is_default")]
    pub vuart: VuartType,
}

/// `libxl_domain_build_info.arch_x86`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchX86 {
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub msr_relaxed: Option<bool>,
}

/// `libxl_domain_build_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildInfo {
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_vcpus: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub avail_vcpus: Bitmap,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpumap: Bitmap,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodemap: Bitmap,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vcpu_hard_affinity: Vec<Bitmap>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vcpu_soft_affinity: Vec<Bitmap>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub numa_placement: Option<bool>,
    #[serde(skip_serializing_if = "is_default")]
    pub tsc_mode: TscMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memkb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_memkb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_memkb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_memkb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iommu_memkb: Option<u64>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub rtc_timeoffset: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub exec_ssidref: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_ssid_label: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub localtime: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub disable_migrate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blkdev_start: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vnuma_nodes: Vec<VnodeInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grant_frames: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_maptrack_frames: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grant_version: Option<i64>,
    #[serde(skip_serializing_if = "is_default")]
    pub device_model_version: DeviceModelVersion,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub device_model_stubdomain: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stubdomain_memkb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stubdomain_kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stubdomain_cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stubdomain_ramdisk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_model: Option<String>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub device_model_ssidref: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_model_ssid_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_model_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<Vec<Option<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_pv: Option<Vec<Option<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_hvm: Option<Vec<Option<String>>>,
    pub sched_params: SchedParams,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ioports: Vec<IoportRange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub irqs: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub iomem: Vec<IomemRange>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub claim_mode: Option<bool>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub event_channels: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_tree: Option<String>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub acpi: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader_args: Option<Vec<Option<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timer_mode: Option<TimerMode>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub nested_hvm: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub apic: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub dm_restrict: Option<bool>,
    #[serde(skip_serializing_if = "is_default")]
    pub tee: TeeType,
    #[serde(rename = "type.hvm", skip_serializing_if = "Option::is_none")]
    pub hvm: Option<HvmInfo>,
    #[serde(rename = "type.pv", skip_serializing_if = "Option::is_none")]
    pub pv: Option<PvInfo>,
    #[serde(rename = "type.pvh", skip_serializing_if = "Option::is_none")]
    pub pvh: Option<PvhInfo>,
    pub arch_arm: ArchArm,
    pub arch_x86: ArchX86,
    #[serde(skip_serializing_if = "is_default")]
    pub altp2m: Altp2mMode,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub vmtrace_buf_kb: i64,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub vpmu: Option<bool>,
}

/// `libxl_device_disk`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDisk {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdev_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdev: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub backend: DiskBackend,
    #[serde(skip_serializing_if = "is_default")]
    pub format: DiskFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub removable: i32,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub readwrite: i32,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub is_cdrom: i32,
    #[serde(skip_serializing_if = "is_false")]
    pub direct_io_safe: bool,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub discard_enable: Option<bool>,
    #[serde(skip_serializing_if = "is_default")]
    pub specification: DiskSpecification,
    #[serde(skip_serializing_if = "is_default")]
    pub transport: DiskTransport,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub irq: u32,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub base: u64,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub colo_enable: Option<bool>,
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub colo_restore_enable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo_host: Option<String>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub colo_port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo_export: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_disk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_disk: Option<String>,
}

/// `libxl_device_nic` (COLO fields kept as an ordered map of their libxl names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceNic {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devid: Option<i64>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub mtu: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// MAC as `xx:xx:xx:xx:xx:xx`; `None` = all zero (libxl picks a random 00:16:3e one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub nictype: NicType,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub rate_bytes_per_interval: u64,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub rate_interval_usecs: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gatewaydev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coloft_forwarddev: Option<String>,
    /// The `colo_*` string fields, in IDL order when produced by the parser.
    #[serde(flatten)]
    pub colo: BTreeMap<String, String>,
    /// `trusted` / `untrusted` vif flags.
    #[serde(with = "defbool", skip_serializing_if = "Option::is_none")]
    pub trusted: Option<bool>,
}

/// `libxl_device_vfb`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceVfb {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devid: Option<i64>,
    pub vnc: VncInfo,
    pub sdl: SdlInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keymap: Option<String>,
}

/// `libxl_device_vkb`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceVkb {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devid: Option<i64>,
    #[serde(skip_serializing_if = "is_default")]
    pub backend_type: VkbBackend,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_id: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub feature_disable_keyboard: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub feature_disable_pointer: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub feature_abs_pointer: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub feature_raw_pointer: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub feature_multi_touch: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub width: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub height: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub multi_touch_width: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub multi_touch_height: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub multi_touch_num_contacts: u32,
}

/// `libxl_device_vtpm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceVtpm {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// `libxl_device_p9`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceP9 {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devid: Option<i64>,
}

/// `libxl_device_pvcallsif`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DevicePvcallsif {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devid: Option<i64>,
}

/// The socket arm of a channel's connection union.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelSocket {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `libxl_device_channel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceChannel {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Present for `connection=pty` (an empty object in libxl JSON).
    #[serde(rename = "connection.pty", skip_serializing_if = "Option::is_none")]
    pub pty: Option<BTreeMap<String, String>>,
    /// Present for `connection=socket`.
    #[serde(rename = "connection.socket", skip_serializing_if = "Option::is_none")]
    pub socket: Option<ChannelSocket>,
}

/// `libxl_device_usbctrl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceUsbctrl {
    #[serde(rename = "type", skip_serializing_if = "is_default")]
    pub type_: UsbctrlType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devid: Option<i64>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub version: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub ports: i64,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub backend_domid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
}

/// `libxl_device_dtdev`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDtdev {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `libxl_device_pci`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DevicePci {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub func: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub dev: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub bus: u32,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub domain: i64,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub vdevfn: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub vfunc_mask: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub msitranslate: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub power_mgmt: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub permissive: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub seize: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub rdm_policy: RdmReservePolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `libxl_domain_config`: the whole domain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DomainConfig {
    pub c_info: CreateInfo,
    pub b_info: BuildInfo,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DeviceDisk>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<DeviceNic>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pcidevs: Vec<DevicePci>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dtdevs: Vec<DeviceDtdev>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vfbs: Vec<DeviceVfb>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vkbs: Vec<DeviceVkb>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vtpms: Vec<DeviceVtpm>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub p9s: Vec<DeviceP9>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pvcallsifs: Vec<DevicePvcallsif>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<DeviceChannel>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub usbctrls: Vec<DeviceUsbctrl>,
    #[serde(skip_serializing_if = "is_default")]
    pub on_poweroff: ActionOnShutdown,
    #[serde(skip_serializing_if = "is_default")]
    pub on_reboot: ActionOnShutdown,
    #[serde(skip_serializing_if = "is_default")]
    pub on_watchdog: ActionOnShutdown,
    #[serde(skip_serializing_if = "is_default")]
    pub on_crash: ActionOnShutdown,
    #[serde(skip_serializing_if = "is_default")]
    pub on_soft_reset: ActionOnShutdown,
}

impl DomainConfig {
    /// The configuration as libxl JSON, in the exact layout of `xl -N create`
    /// (no trailing newline).
    ///
    /// ```
    /// let mut d = rxen_config::model::DomainConfig::default();
    /// d.c_info.name = Some("g".into());
    /// let j = d.to_libxl_json();
    /// assert!(j.starts_with("{\n    \"c_info\": {\n        \"name\": \"g\"\n    },"));
    /// let back = rxen_config::model::DomainConfig::from_libxl_json(&j).unwrap();
    /// assert_eq!(back, d);
    /// ```
    pub fn to_libxl_json(&self) -> String {
        crate::json::to_yajl_string(self)
    }

    /// Read a libxl JSON domain configuration (as produced by [`Self::to_libxl_json`], by
    /// Xen's `xl -N create`, or found in an xl save file).
    pub fn from_libxl_json(s: &str) -> Result<DomainConfig, serde_json::Error> {
        serde_json::from_str(s)
    }
}
