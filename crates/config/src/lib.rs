//! # rxen-config
//!
//! Xen's `xl` configuration language, read exactly like Xen 4.17's `xl` reads it, and the
//! typed domain configuration model built from it.
//!
//! * [`cfg`](mod@cfg) — the xl.cfg grammar (libxlu): strings, escapes, numbers, lists, `+=`, comments,
//!   error texts and error recovery identical to Xen.
//! * [`domain`] — from a parsed file to a [`model::DomainConfig`] (xl's `parse_config_data`):
//!   every key, default, warning and error of Xen 4.17; `key=value` overrides of `xl create`.
//! * [`model`] — the `libxl_domain_config` mirror, with [`model::DomainConfig::to_libxl_json`]
//!   (the JSON of `xl -N create` and of save files) and its inverse.
//! * [`disk`], [`vif`], [`cpumap`] — the sub-grammars (DISKSPEC, VIFSPEC, CPU lists).
//! * [`xlconf`] — `/etc/xen/xl.conf`.
//! * [`serialize`] — canonical xl.cfg text back from a parsed file.
//!
//! ```
//! use rxen_config::domain::{parse_domain_config, ParseEnv};
//! let cfg = b"name = 'web'\nmemory = 512\nkernel = '/boot/vmlinuz'\ndisk = [ 'phy:/dev/vg/web,xvda,w' ]\nvif = [ 'bridge=xenbr0' ]\n";
//! let parsed = parse_domain_config("web.cfg", cfg, &["vcpus=2"], &ParseEnv::default()).unwrap();
//! let d = &parsed.config;
//! assert_eq!(d.b_info.max_vcpus, 2);
//! assert_eq!(d.disks[0].vdev.as_deref(), Some("xvda"));
//! let json = d.to_libxl_json();
//! assert!(json.contains("\"bridge\": \"xenbr0\""));
//! ```
pub mod cfg;
pub mod cnum;
pub mod cpumap;
pub mod disk;
pub mod domain;
pub mod json;
pub mod model;
pub mod serialize;
pub mod vif;
pub mod xlconf;

pub use domain::{parse_domain_config, DomainConfigError, ParseEnv, ParsedDomain};
pub use model::DomainConfig;
