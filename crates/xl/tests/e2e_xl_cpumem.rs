//! End-to-end: CPU and memory management of a real Linux guest on an isolated rxen host:
//! `cpus=` / `cpus_soft=` per-vCPU lists applied to the vCPU threads, `xl vcpu-pin`,
//! `xl vcpu-list`'s format, `cpu_weight` / `cap` in the domain's cgroup v2 and `xl sched-credit`,
//! `xl cpupool-list`, the balloon (`maxmem` > `memory`, `xl mem-set`, `xl mem-max`: the guest's
//! MemTotal and the VMM's RSS follow) and `xl info`.

mod common;

use std::time::Duration;

use common::{step, text, wait_until, Host};
use rxen_testkit::{require_linux_kvm, Assets, Guest};
use rxen_xenstore::XsOps;

/// The VMM pid of a domain, from xenstore.
/// `xl create -c CFG` without the 300 s limit of `Host::command` (the console stays attached for
/// the whole test; the Guest kills its process group on drop).
fn console_command(host: &Host, cfg: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(host.bin.join("xl"));
    c.args(["create", "-c"])
        .arg(cfg)
        .env("RXEN_ROOT", &host.root)
        .env_remove("XENSTORED_PATH");
    c
}

fn vmm_pid(host: &Host, domid: &str) -> u32 {
    let xs = rxen_xenstore::Client::connect(&host.root.join("var/run/xenstored/socket"))
        .expect("connect to the test host's xenstored");
    let v = xs
        .read(&format!("/libxl/{domid}/rxen/vmm-pid"))
        .expect("vmm-pid");
    String::from_utf8_lossy(&v).trim().parse().unwrap()
}

fn xs_read(host: &Host, path: &str) -> String {
    let xs = rxen_xenstore::Client::connect(&host.root.join("var/run/xenstored/socket")).unwrap();
    String::from_utf8_lossy(&xs.read(path).unwrap()).into_owned()
}

/// `Cpus_allowed_list` of the thread named `vcpuN` of `pid`.
fn vcpu_allowed(pid: u32, vcpu: u32) -> String {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == format!("vcpu{vcpu}") {
            let st = std::fs::read_to_string(t.path().join("status")).unwrap();
            return st
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
        }
    }
    panic!("no thread vcpu{vcpu} in process {pid}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn mem_total(con: &mut Guest) -> u64 {
    con.check("sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The vcpu-list rows of `name`: (vcpu, cpu, state, hard, soft).
fn vcpu_rows(host: &Host, name: &str) -> Vec<(String, String, String, String, String)> {
    let out = host.xl_ok(&["vcpu-list", name]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)"
    );
    lines
        .map(|l| {
            assert_eq!(&l[..name.len()], name, "{l}");
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 9, "{l}");
            assert_eq!(f[7], "/", "{l}");
            (
                f[2].to_string(),
                f[3].to_string(),
                f[4].to_string(),
                f[6].to_string(),
                f[8].to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_cpumem_affinity_sched_balloon() {
    require_linux_kvm().unwrap();
    let ncpu = std::thread::available_parallelism().unwrap().get();
    assert!(ncpu >= 2, "this test needs a host with at least 2 CPUs");
    assert!(
        std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "the test host must mount cgroup v2 at /sys/fs/cgroup"
    );
    let assets = Assets::get().unwrap();
    let host = Host::start();

    step("xl info");
    let info = host.xl_ok(&["info"]);
    let get = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(&format!("{k:<23}: ")))
            .map(|l| l[25..].to_string())
            .unwrap_or_else(|| panic!("no {k} in xl info:\n{info}"))
    };
    assert_eq!(get("nr_cpus"), ncpu.to_string());
    assert!(get("virt_caps").split(' ').any(|c| c == "hvm"), "{info}");
    let memtotal_mib = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        / 1024;
    assert_eq!(get("total_memory"), memtotal_mib.to_string());
    assert_eq!(info.lines().last().unwrap(), "xend_config_format     : 4");

    step("create with cpus=, cpus_soft=, cpu_weight, cap, maxmem");
    let cfg = host.write_cfg(
        "cpumem",
        "cpus = [\"1\", \"0-1\"]\ncpus_soft = \"1\"\ncpu_weight = 512\ncap = 50\nmaxmem = 384",
        &assets,
    );
    let mut con = Guest::spawn(console_command(&host, &cfg), "xl create -c").unwrap();
    con.wait_ready(Duration::from_secs(300)).unwrap();
    let row = host.list_row("cpumem").expect("cpumem listed");
    let domid = row.split_whitespace().nth(1).unwrap().to_string();
    let pid = vmm_pid(&host, &domid);

    step("hard affinity of the vCPU threads");
    assert_eq!(vcpu_allowed(pid, 0), "1");
    assert_eq!(vcpu_allowed(pid, 1), "0-1");
    let rows = vcpu_rows(&host, "cpumem");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("0", "1"),
        "{rows:?}"
    );
    assert!(matches!(rows[0].2.as_str(), "r--" | "-b-"), "{rows:?}");
    assert_eq!((rows[0].3.as_str(), rows[0].4.as_str()), ("1", "1"));
    assert_eq!((rows[1].3.as_str(), rows[1].4.as_str()), ("all", "1"));
    // Domain-0: one row per host CPU.
    let all = host.xl_ok(&["vcpu-list"]);
    assert_eq!(
        all.lines().filter(|l| l.starts_with("Domain-0 ")).count(),
        ncpu
    );

    step("xl vcpu-pin");
    host.xl_ok(&["vcpu-pin", "cpumem", "1", "0"]);
    assert_eq!(vcpu_allowed(pid, 1), "0");
    host.xl_ok(&["vcpu-pin", "cpumem", "all", "all", "0"]);
    assert_eq!(vcpu_allowed(pid, 0), "0-1");
    assert_eq!(vcpu_allowed(pid, 1), "0-1");
    host.xl_ok(&["vcpu-pin", "cpumem", "0", "1", "-"]);
    assert_eq!(vcpu_allowed(pid, 0), "1");
    let rows = vcpu_rows(&host, "cpumem");
    assert_eq!((rows[0].3.as_str(), rows[0].4.as_str()), ("1", "0"));
    assert_eq!((rows[1].3.as_str(), rows[1].4.as_str()), ("all", "0"));
    let bad = host.xl(&["vcpu-pin", "cpumem", "5", "0"]);
    assert!(!bad.status.success(), "{}", text(&bad));
    assert_eq!(con.check("echo still-alive").unwrap(), "still-alive\n");

    step("cgroup v2: cpu_weight and cap");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    assert!(
        rel.starts_with("/rxen.slice/") && rel.ends_with(&format!("/dom{domid}")),
        "VMM cgroup {rel}"
    );
    let cgdir = std::path::PathBuf::from(format!("/sys/fs/cgroup{rel}"));
    let cgread = |f: &str| {
        std::fs::read_to_string(cgdir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(cgread("cpu.weight"), "200");
    assert_eq!(cgread("cpu.max"), "50000 100000");
    let sc = host.xl_ok(&["sched-credit", "-d", "cpumem"]);
    let line = sc.lines().nth(1).unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        vec!["cpumem", domid.as_str(), "512", "50"]
    );
    host.xl_ok(&["sched-credit", "-d", "cpumem", "-w", "128", "-c", "0"]);
    assert_eq!(cgread("cpu.weight"), "50");
    assert_eq!(cgread("cpu.max"), "max 100000");
    let sc2 = host.xl_ok(&["sched-credit2"]);
    assert!(
        sc2.starts_with("Cpupool Pool-0: ratelimit=1000us\nName "),
        "{sc2}"
    );
    assert!(
        sc2.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == vec!["cpumem", domid.as_str(), "128", "0"]),
        "{sc2}"
    );
    let pools = host.xl_ok(&["cpupool-list"]);
    let p: Vec<&str> = pools.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        p,
        vec!["Pool-0", &ncpu.to_string(), "credit2", "y", "2"],
        "{pools}"
    );

    step("balloon: boots with maxmem, holds maxmem - memory");
    wait_until(
        "balloon inflated to the target",
        Duration::from_secs(120),
        || {
            host.list_row("cpumem")
                .map(|r| r.split_whitespace().nth(2) == Some("256"))
                .unwrap_or(false)
        },
    );
    let mt0 = mem_total(&mut con);
    assert!(
        mt0 < 256 * 1024,
        "guest MemTotal {mt0} kB with the balloon holding 128 MiB"
    );
    // Dirty all but 24 MiB of the guest's free memory, then free it in the guest: whatever
    // pages the balloon takes next were resident on the host.
    con.check(
        "mkdir -p /mnt/fill && mount -t tmpfs -o size=95% tmpfs /mnt/fill && \
         n=$(awk '/MemFree/ {print int($2/1024) - 24}' /proc/meminfo) && \
         dd if=/dev/zero of=/mnt/fill/x bs=1M count=$n 2>/dev/null; \
         rm -f /mnt/fill/x; umount /mnt/fill; echo ok",
    )
    .unwrap();
    let rss0 = rss_kib(pid);

    step("xl mem-set shrinks the guest and the VMM's RSS");
    host.xl_ok(&["mem-set", "cpumem", "128m"]);
    assert_eq!(
        xs_read(&host, &format!("/local/domain/{domid}/memory/target")),
        "131072"
    );
    wait_until(
        "guest MemTotal shrinks by ~128 MiB",
        Duration::from_secs(120),
        || mem_total(&mut con) + 120 * 1024 <= mt0,
    );
    wait_until("xl list shows 128", Duration::from_secs(60), || {
        host.list_row("cpumem")
            .map(|r| r.split_whitespace().nth(2) == Some("128"))
            .unwrap_or(false)
    });
    let rss1 = rss_kib(pid);
    eprintln!("e2e_cpumem: VMM RSS {rss0} kB -> {rss1} kB after mem-set 128m");
    assert!(
        rss1 + 48 * 1024 <= rss0,
        "VMM RSS did not drop: {rss0} kB -> {rss1} kB"
    );

    step("xl mem-set back up (plain number = MiB)");
    host.xl_ok(&["mem-set", "cpumem", "256"]);
    wait_until(
        "guest MemTotal grows back",
        Duration::from_secs(120),
        || mem_total(&mut con) + 8 * 1024 >= mt0,
    );
    let over = host.xl(&["mem-set", "cpumem", "512m"]);
    assert!(!over.status.success(), "{}", text(&over));
    let bad = host.xl(&["mem-set", "cpumem", "12mb"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid memory size: 12mb"),
        "{}",
        text(&bad)
    );

    step("xl mem-max");
    host.xl_ok(&["mem-max", "cpumem", "300m"]);
    assert_eq!(
        xs_read(&host, &format!("/local/domain/{domid}/memory/static-max")),
        "307200"
    );
    let above = host.xl(&["mem-max", "cpumem", "1g"]);
    assert!(!above.status.success(), "{}", text(&above));
    let below = host.xl(&["mem-max", "cpumem", "100m"]);
    assert!(!below.status.success(), "{}", text(&below));

    step("xl top -b -i 2");
    let top = host.xl_ok(&["top", "-b", "-i", "2", "-d", "1"]);
    let headers = top
        .lines()
        .filter(|l| l.trim_start().starts_with("NAME  STATE"))
        .count();
    assert_eq!(headers, 2, "{top}");
    let rows: Vec<&str> = top
        .lines()
        .filter(|l| l.trim_start().starts_with("cpumem "))
        .collect();
    assert_eq!(rows.len(), 2, "{top}");
    let f: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(f.len(), 19, "{}", rows[1]);
    assert_eq!((f[4], f[6], f[8]), ("262144", "307200", "2"), "{}", rows[1]);

    step("pool= other than Pool-0 is refused");
    let cfg2 = host.write_cfg("pooled", "pool = \"fast\"", &assets);
    let o = host.xl(&["create", cfg2.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Pool-0"),
        "{}",
        text(&o)
    );

    step("destroy removes the cgroup");
    host.xl_ok(&["destroy", "cpumem"]);
    drop(con);
    wait_until("cgroup removed", Duration::from_secs(30), || {
        !cgdir.exists()
    });
}

/// `xl list`'s VCPUs column of `name`.
fn list_vcpus(host: &Host, name: &str) -> String {
    host.list_row(name)
        .and_then(|r| r.split_whitespace().nth(3).map(str::to_string))
        .unwrap_or_default()
}

/// The guest's online CPUs (`/sys/devices/system/cpu/online`).
fn guest_online(con: &mut Guest) -> String {
    con.check("cat /sys/devices/system/cpu/online")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_cpumem_vcpu_hotplug() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let host = Host::start();

    step("create with vcpus=1, maxvcpus=2");
    let cfg = host.write_cfg("cpuhp", "", &assets);
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("vcpus = 2\n", "vcpus = 1\nmaxvcpus = 2\n");
    std::fs::write(&cfg, text_cfg).unwrap();
    let mut con = Guest::spawn(console_command(&host, &cfg), "xl create -c").unwrap();
    con.wait_ready(Duration::from_secs(300)).unwrap();
    let row = host.list_row("cpuhp").expect("cpuhp listed");
    let domid = row.split_whitespace().nth(1).unwrap().to_string();
    // The second CPU is possible (MADT: online-capable) but not present.
    assert_eq!(guest_online(&mut con), "0");
    assert_eq!(
        con.check("cat /sys/devices/system/cpu/possible")
            .unwrap()
            .trim(),
        "0-1"
    );
    assert_eq!(list_vcpus(&host, "cpuhp"), "1");
    let rows = vcpu_rows(&host, "cpuhp");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[1].1.as_str(), rows[1].2.as_str()), ("-", "--p"));

    step("xl vcpu-set above maxvcpus is refused, naming the limit");
    // -i: like Xen, the host-overcommit check comes first; the test host may have 2 CPUs.
    let o = host.xl(&["vcpu-set", "-i", "cpuhp", "3"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Requested 3 VCPUs, however maxcpus is 2!"),
        "{}",
        text(&o)
    );

    for round in 0..2 {
        step(&format!("xl vcpu-set cpuhp 2 (round {round})"));
        host.xl_ok(&["vcpu-set", "cpuhp", "2"]);
        assert_eq!(
            xs_read(&host, &format!("/local/domain/{domid}/cpu/1/availability")),
            "online"
        );
        // The guest gets an ACPI device check and adds CPU 1; without udev, userspace onlines it.
        wait_until(
            "CPU 1 appears in the guest",
            Duration::from_secs(120),
            || {
                con.check("test -e /sys/devices/system/cpu/cpu1/online && echo yes || echo no")
                    .unwrap()
                    .trim()
                    == "yes"
            },
        );
        con.check(
            "[ \"$(cat /sys/devices/system/cpu/cpu1/online)\" = 1 ] || \
             echo 1 > /sys/devices/system/cpu/cpu1/online",
        )
        .unwrap();
        wait_until(
            "2 CPUs online in the guest",
            Duration::from_secs(120),
            || guest_online(&mut con) == "0-1",
        );
        assert_eq!(con.check("nproc").unwrap().trim(), "2");
        let rows = vcpu_rows(&host, "cpuhp");
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.iter().all(|r| r.2 != "--p"), "{rows:?}");
        assert_eq!(list_vcpus(&host, "cpuhp"), "2");

        step(&format!("xl vcpu-set cpuhp 1 (round {round})"));
        host.xl_ok(&["vcpu-set", "cpuhp", "1"]);
        assert_eq!(
            xs_read(&host, &format!("/local/domain/{domid}/cpu/1/availability")),
            "offline"
        );
        // The guest gets an eject request, offlines CPU 1 and calls _EJ0.
        wait_until(
            "1 CPU online in the guest",
            Duration::from_secs(120),
            || guest_online(&mut con) == "0",
        );
        wait_until(
            "xl vcpu-list shows vCPU 1 offline",
            Duration::from_secs(120),
            || {
                let rows = vcpu_rows(&host, "cpuhp");
                rows.len() == 2 && rows[0].2 != "--p" && rows[1].2 == "--p"
            },
        );
        assert_eq!(list_vcpus(&host, "cpuhp"), "1");
        assert_eq!(con.check("nproc").unwrap().trim(), "1");
    }
    let log = con
        .check("dmesg | grep -i -E 'cpu ?1|hotplug|eject' | tail -n 20")
        .unwrap();
    eprintln!("e2e_cpumem_vcpu_hotplug: guest kernel log:\n{log}");
    assert_eq!(con.check("echo still-alive").unwrap(), "still-alive\n");

    host.xl_ok(&["destroy", "cpuhp"]);
    drop(con);
}
