//! Property-based fuzzing of the parsers (run as ordinary tests): no panic, no hang, bounded
//! work on any input, including huge files, deep nesting and long strings; and a replay of the
//! cargo-fuzz corpus (`fuzz/corpus/`).

use proptest::prelude::*;
use rxen_config::cfg::XlCfg;
use rxen_config::domain::{parse_domain_config, ParseEnv};

fn all_parsers(data: &[u8]) {
    let _ = XlCfg::parse("f", data);
    let _ = parse_domain_config("f", data, &[], &ParseEnv::default());
    if let Ok(s) = std::str::from_utf8(data) {
        let mut d = vec![];
        let _ = rxen_config::disk::parse_disk("f", &[s], &mut d);
        let mut nic = rxen_config::model::DeviceNic::default();
        let _ = rxen_config::vif::parse_nic_token(&mut nic, "f", s, &mut d);
        let host = rxen_config::cpumap::HostInfo::new(8, vec![(0..8).collect()]);
        let _ = rxen_config::cpumap::parse_cpurange(s, &host, &mut d);
    }
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("name".to_string()),
        Just("memory".to_string()),
        Just("disk".to_string()),
        Just("vif".to_string()),
        Just("cpus".to_string()),
        Just("=".to_string()),
        Just("+=".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(";".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("# c\n".to_string()),
        Just(" ".to_string()),
        "[0-9][0-9a-fx]{0,4}",
        "'[^'\\\\\n]{0,8}'",
        "\"(\\\\[0-9xqn\"]|[a-z/,:=])*\"",
        "[a-z_.:^-]{1,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        all_parsers(&data);
    }

    #[test]
    fn token_soup_never_panics(toks in proptest::collection::vec(token(), 0..60)) {
        let s: String = toks.concat();
        all_parsers(s.as_bytes());
        let s2 = format!("name='x'\nkernel='/k'\n{s}");
        all_parsers(s2.as_bytes());
    }

    #[test]
    fn valid_settings_round_trip(
        kvs in proptest::collection::vec(("[a-z][a-z0-9_]{0,8}", "[ -~]{0,20}"), 1..20)
    ) {
        let mut text = String::new();
        for (k, v) in &kvs {
            text.push_str(&format!("{k} = {}\n", rxen_config::serialize::quote(v)));
        }
        let cfg = XlCfg::parse("p", text.as_bytes()).expect("valid input parses");
        for (k, _) in &kvs {
            let last = kvs.iter().rev().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
            prop_assert_eq!(cfg.find(k).and_then(|s| s.value.as_str().map(str::to_string)), last);
        }
        let again = XlCfg::parse("p", rxen_config::serialize::to_xl_cfg(&cfg).as_bytes()).expect("reparse");
        for (k, _) in &kvs {
            prop_assert_eq!(&again.find(k).expect("key").value, &cfg.find(k).expect("key").value);
        }
    }
}

#[test]
fn ten_megabyte_file_is_handled() {
    let mut s = String::with_capacity(10 << 20);
    s.push_str("name='big'\nkernel='/k'\n");
    let mut i = 0;
    while s.len() < 10 << 20 {
        s.push_str(&format!("key{i} = 'value number {i}' # comment\n"));
        i += 1;
    }
    let cfg = XlCfg::parse("big", s.as_bytes()).expect("parses");
    assert!(cfg.settings.len() > 100_000);
    let p = parse_domain_config("big", s.as_bytes(), &[], &ParseEnv::default()).expect("domain");
    assert_eq!(p.config.c_info.name.as_deref(), Some("big"));
}

#[test]
fn deep_nesting_and_long_strings_are_bounded() {
    let deep = format!("x = {}", "[".repeat(1_000_000));
    let e = XlCfg::parse("d", deep.as_bytes()).unwrap_err();
    assert!(
        e.messages[0].ends_with("memory exhausted"),
        "{:?}",
        e.messages
    );
    let ok = format!("x = {}{}\n", "[".repeat(3000), "]".repeat(3000));
    assert!(XlCfg::parse("d", ok.as_bytes()).is_ok());
    let long = format!("name = '{}'\nkernel='/k'\n", "a".repeat(5 << 20));
    let p =
        parse_domain_config("l", long.as_bytes(), &[], &ParseEnv::default()).expect("long string");
    assert_eq!(p.config.c_info.name.map(|n| n.len()), Some(5 << 20));
    let many_lines = "\n".repeat(3 << 20);
    let e = parse_domain_config("n", many_lines.as_bytes(), &[], &ParseEnv::default()).unwrap_err();
    assert_eq!(e.diagnostics, vec!["Domain name must be specified."]);
    // a huge vcpus count is refused instead of allocating a giant bitmap
    let e = parse_domain_config(
        "v",
        b"name='v'\nkernel='/k'\nvcpus=999999999999\n",
        &[],
        &ParseEnv::default(),
    )
    .unwrap_err();
    assert_eq!(e.diagnostics, vec!["Unable to allocate cpumap"]);
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz corpus directory") {
        let p = e.expect("entry").path();
        all_parsers(&std::fs::read(&p).expect("read corpus file"));
        n += 1;
    }
    assert!(n > 0, "empty corpus in {dir:?}");
}

/// One token of a CPU list and what it does to the bitmap (the model).
#[derive(Debug, Clone)]
enum CpuTok {
    Cpus { not: bool, a: u64, b: u64 },
    Nodes { not: bool, a: u64, b: u64 },
    All,
}

impl CpuTok {
    fn text(&self) -> String {
        let range = |a: u64, b: u64| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        };
        match self {
            CpuTok::Cpus { not, a, b } => {
                format!("{}{}", if *not { "^" } else { "" }, range(*a, *b))
            }
            CpuTok::Nodes { not, a, b } => {
                format!("{}nodes:{}", if *not { "^" } else { "" }, range(*a, *b))
            }
            CpuTok::All => "all".into(),
        }
    }
}

fn cpu_tok() -> impl Strategy<Value = CpuTok> {
    prop_oneof![
        4 => (any::<bool>(), 0u64..80, 0u64..20)
            .prop_map(|(not, a, d)| CpuTok::Cpus { not, a, b: a + d }),
        2 => (any::<bool>(), 0u64..2, 0u64..2)
            .prop_map(|(not, a, d)| CpuTok::Nodes { not, a, b: (a + d).min(1) }),
        1 => Just(CpuTok::All),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// `cpus=` / `xl vcpu-pin` lists against a model: tokens apply left to right, `^` clears,
    /// `nodes:` expands to the node's CPUs, bits beyond the host-sized bitmap are ignored; the
    /// result is the set bits, ascending.
    #[test]
    fn cpu_lists_match_the_model(
        max_cpus in 1u32..64,
        toks in proptest::collection::vec(cpu_tok(), 1..8),
    ) {
        use rxen_config::cpumap::{parse_cpurange, HostInfo};
        let half = max_cpus.div_ceil(2);
        let host = HostInfo::new(
            max_cpus,
            vec![(0..half).collect(), (half..max_cpus).collect()],
        );
        let nbits = host.cpu_bitmap_bits() as u64;
        let mut model = vec![false; nbits as usize];
        for t in &toks {
            match *t {
                CpuTok::All => model.iter_mut().for_each(|b| *b = true),
                CpuTok::Cpus { not, a, b } => {
                    for i in a..=b.min(nbits.saturating_sub(1)) {
                        model[i as usize] = !not;
                    }
                }
                CpuTok::Nodes { not, a, b } => {
                    for n in a..=b {
                        for &c in &host.node_cpus[n as usize] {
                            model[c as usize] = !not;
                        }
                    }
                }
            }
        }
        let want: Vec<u32> = (0..nbits as u32).filter(|&i| model[i as usize]).collect();
        let text = toks.iter().map(CpuTok::text).collect::<Vec<_>>().join(",");
        let mut diag = vec![];
        let got = parse_cpurange(&text, &host, &mut diag);
        prop_assert_eq!(got, Ok(want), "{} {:?}", text, diag);
    }

    /// A descending range, junk after a number, or `^all` is refused with xl's message.
    #[test]
    fn bad_cpu_lists_are_refused(a in 1u64..100, junk in "[a-z+]{1,3}") {
        use rxen_config::cpumap::{parse_cpurange, HostInfo};
        let host = HostInfo::new(8, vec![(0..8).collect()]);
        for (text, msg) in [
            (format!("{a}-{}", a - 1), format!("Invalid pcpu range: {a}-{}.", a - 1)),
            (format!("{a}{junk}"), format!("Invalid pcpu range: {a}{junk}.")),
            ("0,^all".to_string(), "Can't combine \"^\" and \"all\".".to_string()),
        ] {
            let mut diag = vec![];
            prop_assert!(parse_cpurange(&text, &host, &mut diag).is_err(), "{}", text);
            prop_assert_eq!(diag, vec![msg]);
        }
    }
}
