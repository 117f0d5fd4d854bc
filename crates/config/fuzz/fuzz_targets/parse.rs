//! cargo-fuzz target: every rxen-config parser on arbitrary bytes.
//! `cargo +nightly fuzz run parse` (from crates/config); the corpus in `corpus/parse/` is
//! replayed by `tests/fuzz_props.rs` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rxen_config::cfg::XlCfg::parse("f", data);
    let _ = rxen_config::domain::parse_domain_config("f", data, &[], &Default::default());
    if let Ok(s) = std::str::from_utf8(data) {
        let mut d = vec![];
        let _ = rxen_config::disk::parse_disk("f", &[s], &mut d);
        let mut nic = rxen_config::model::DeviceNic::default();
        let _ = rxen_config::vif::parse_nic_token(&mut nic, "f", s, &mut d);
        let host = rxen_config::cpumap::HostInfo::new(8, vec![(0..8).collect()]);
        let _ = rxen_config::cpumap::parse_cpurange(s, &host, &mut d);
    }
});
