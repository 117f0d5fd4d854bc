//! End-to-end: the seeds' xl workflows on real Linux guests, on an isolated rxen host
//! (`$RXEN_ROOT`): `rxen host start`, `xl create -c`, detach with `^]`, `xl console` back,
//! `xl list`/`vm-list` output, pause/unpause, `on_reboot=restart` keeping domid/name/uuid,
//! `on_crash=preserve`, `xl destroy`, `xl shutdown -w`, `on_reboot=rename-restart` (old domain
//! preserved as `NAME-<time>`, new domain with the name and uuid), duplicate names refused,
//! `xl create -F`, `xl dump-core` and `on_crash=coredump-destroy`, `xl destroy` of a hung
//! (SIGSTOPped) domain, a VMM killed with SIGKILL
//! handled per `on_crash`, autostart, and `XENDOMAINS_SAVE` save/restore at host stop/start.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{count_in, state_of, step, text, wait_until, Host};
use rxen_testkit::{require_linux_kvm, Assets, Guest};

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_xl_lifecycle_workflows() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let host = Host::start();

    step("host started");
    // Domain-0 is listed; the header has Xen's TABs.
    let list = host.xl_ok(&["list"]);
    assert!(list.starts_with(
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    ));
    assert!(list.lines().nth(1).unwrap().starts_with("Domain-0 "));

    step("xl create -c");
    // xl create -c: the console is the guest's hvc0; the delegate answers on it.
    let cfg = host.write_cfg(
        "demo",
        "on_reboot = \"restart\"\non_crash = \"preserve\"",
        &assets,
    );
    let cfg_s = cfg.to_str().unwrap();
    let mut con =
        Guest::spawn(host.command("xl", &["create", "-c", cfg_s]), "xl create -c").unwrap();
    con.wait_ready(Duration::from_secs(300)).unwrap();
    assert_eq!(
        con.check("grep -c ^processor /proc/cpuinfo")
            .unwrap()
            .trim(),
        "2"
    );
    let mem_kib: u64 = con
        .check("sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (200_000..=262_144).contains(&mem_kib),
        "guest MemTotal {mem_kib} kB"
    );

    let row = host.list_row("demo").expect("demo listed");
    let f: Vec<&str> = row.split_whitespace().collect();
    let domid = f[1].to_string();
    assert_eq!((f[2], f[3]), ("256", "2"), "row: {row}");
    assert!(
        matches!(state_of(&row).as_str(), "r-----" | "-b----"),
        "row: {row}"
    );
    let vm_before = host.xl_ok(&["vm-list"]);
    assert!(vm_before.contains(" demo"));

    step("duplicate name");
    // Two domains with the same name are refused, and nothing changes.
    let dup = host.xl(&["create", cfg_s]);
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{}",
        text(&dup)
    );
    assert_eq!(host.xl_ok(&["list"]).lines().count(), 3);

    step("pause/unpause");
    // Pause / unpause are reflected in the state and in CPU time.
    host.xl_ok(&["pause", "demo"]);
    let paused = host.list_row("demo").unwrap();
    assert_eq!(state_of(&paused), "--p---", "row: {paused}");
    let t1 = paused.split_whitespace().nth(5).unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let t2 = host
        .list_row("demo")
        .unwrap()
        .split_whitespace()
        .nth(5)
        .unwrap()
        .to_string();
    assert_eq!(t1, t2, "CPU time moved while paused");
    host.xl_ok(&["unpause", "demo"]);
    assert_ne!(state_of(&host.list_row("demo").unwrap()), "--p---");
    assert_eq!(
        con.check("echo alive-after-unpause").unwrap(),
        "alive-after-unpause\n"
    );

    step("detach and reattach");
    // Detach with ^] — the domain keeps running — and come back with xl console.
    con.write_raw(&[0x1d]).unwrap();
    assert!(con.wait_exit(Duration::from_secs(20)).unwrap().success());
    drop(con);
    assert!(host.list_row("demo").is_some());
    let mut con = Guest::spawn(host.command("xl", &["console", "demo"]), "xl console").unwrap();
    assert_eq!(con.check("echo back-again").unwrap(), "back-again\n");

    step("reboot");
    // on_reboot=restart: same domid, name and uuid; the console closes and `xl console` ends.
    con.send("reboot -f").unwrap();
    assert!(con.wait_exit(Duration::from_secs(60)).unwrap().success());
    drop(con);
    let log = host.console_log("demo");
    wait_until("second boot", Duration::from_secs(300), || {
        count_in(&log, "RXEN-USERSPACE") >= 2
    });
    let row = host
        .list_row("demo")
        .expect("demo still listed after reboot");
    assert_eq!(row.split_whitespace().nth(1).unwrap(), domid);
    assert_eq!(host.xl_ok(&["vm-list"]), vm_before);
    let mut con = Guest::spawn(host.command("xl", &["console", "demo"]), "xl console").unwrap();
    assert_eq!(con.check("echo rebooted").unwrap(), "rebooted\n");

    step("crash");
    // on_crash=preserve: a kernel panic leaves the domain listed as shut down by a crash.
    con.send("echo c > /proc/sysrq-trigger").unwrap();
    let _ = con.wait_exit(Duration::from_secs(120));
    drop(con);
    wait_until("crashed state", Duration::from_secs(120), || {
        host.list_row("demo").map(|r| state_of(&r)) == Some("---sc-".into())
    });
    host.xl_ok(&["destroy", "demo"]);
    assert!(host.list_row("demo").is_none());

    step("shutdown -w");
    // xl shutdown -w: the ACPI power button, the guest powers off, the domain is gone.
    let cfg2 = host.write_cfg("demo2", "", &assets);
    host.xl_ok(&["create", cfg2.to_str().unwrap()]);
    let log2 = host.console_log("demo2");
    wait_until("demo2 boot", Duration::from_secs(300), || {
        count_in(&log2, "RXEN-READY") >= 1
    });
    host.xl_ok(&["shutdown", "-w", "demo2"]);
    assert!(host.list_row("demo2").is_none());

    step("on_reboot = rename-restart");
    // Xen: the rebooted domain is preserved as `<name>-<time>` (shut down, new uuid) and a new
    // domain with a new domid, the old name and the old uuid starts.
    let cfg_rr = host.write_cfg("demorr", "on_reboot = \"rename-restart\"", &assets);
    let mut con = Guest::spawn(
        host.command("xl", &["create", "-c", cfg_rr.to_str().unwrap()]),
        "xl create -c",
    )
    .unwrap();
    con.wait_ready(Duration::from_secs(300)).unwrap();
    let old_row = host.list_row("demorr").unwrap();
    let old_id = old_row.split_whitespace().nth(1).unwrap().to_string();
    let uuid_of = |name: &str| -> String {
        host.xl_ok(&["vm-list"])
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(name))
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_default()
    };
    let old_uuid = uuid_of("demorr");
    assert!(!old_uuid.is_empty(), "{}", host.xl_ok(&["vm-list"]));
    con.send("reboot -f").unwrap();
    let _ = con.wait_exit(Duration::from_secs(60));
    drop(con);
    let preserved = || {
        host.xl_ok(&["list"])
            .lines()
            .find(|l| l.starts_with("demorr-"))
            .map(str::to_string)
    };
    wait_until("the new demorr runs", Duration::from_secs(300), || {
        preserved().is_some()
            && host
                .list_row("demorr")
                .is_some_and(|r| r.split_whitespace().nth(1) != Some(old_id.as_str()))
    });
    let p = preserved().unwrap();
    let pf: Vec<&str> = p.split_whitespace().collect();
    assert_eq!(pf[1], old_id, "the preserved domain keeps its domid: {p}");
    // Shut down, reason reboot (xl list: s, then r in the reason column).
    assert_eq!(state_of(&p), "---sr-", "{p}");
    // -YYYYMMDDTHHMMZ
    let suffix = pf[0].strip_prefix("demorr-").unwrap();
    assert!(
        suffix.len() == 14 && suffix.ends_with('Z') && suffix.as_bytes()[8] == b'T',
        "{p}"
    );
    assert_eq!(
        uuid_of("demorr"),
        old_uuid,
        "the new domain has the old uuid"
    );
    let pu = uuid_of(pf[0]);
    assert!(!pu.is_empty() && pu != old_uuid, "preserved uuid {pu:?}");
    host.xl_ok(&["destroy", pf[0]]);
    host.xl_ok(&["destroy", "demorr"]);
    assert!(preserved().is_none() && host.list_row("demorr").is_none());

    step("xl create -F, xl dump-core, on_crash=coredump-destroy");
    // -F keeps xl in the foreground until the domain is gone; dump-core writes an ELF core of
    // the running domain; a kernel panic with coredump-destroy leaves a core in
    // /var/lib/xen/dump/<name> and frees the domain.
    let cfgc = host.write_cfg("democore", "on_crash = \"coredump-destroy\"", &assets);
    let mut fg = host
        .command("xl", &["create", "-F", cfgc.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let logc = host.console_log("democore");
    wait_until("democore boot", Duration::from_secs(300), || {
        count_in(&logc, "RXEN-READY") >= 1
    });
    assert!(
        fg.try_wait().unwrap().is_none(),
        "xl create -F returned early"
    );
    let core = host.root.join("democore.core");
    host.xl_ok(&["dump-core", "democore", core.to_str().unwrap()]);
    let bytes = std::fs::read(&core).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 4, "not ET_CORE");
    assert!(
        bytes.len() as u64 >= 256 << 20,
        "core of {} bytes",
        bytes.len()
    );
    drop(bytes);
    let mut con = Guest::spawn(host.command("xl", &["console", "democore"]), "xl console").unwrap();
    assert_eq!(con.check("echo after-dump").unwrap(), "after-dump\n");
    let bad = host.xl(&["dump-core", "democore", "/nonexistent-dir/core"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("core dump failed"),
        "{}",
        text(&bad)
    );
    con.send("echo c > /proc/sysrq-trigger").unwrap();
    let _ = con.wait_exit(Duration::from_secs(120));
    drop(con);
    wait_until("democore released", Duration::from_secs(120), || {
        host.list_row("democore").is_none()
    });
    let crash_core = host.root.join("var/lib/xen/dump/democore");
    let head = std::fs::read(&crash_core).expect("crash core written");
    assert_eq!(&head[..4], b"\x7fELF");
    drop(head);
    let sup =
        std::fs::read_to_string(host.root.join("var/log/xen/xl-democore.log")).unwrap_or_default();
    assert!(sup.contains("dumping core to"), "{sup}");
    let st = (0..300)
        .find_map(|_| {
            let r = fg.try_wait().unwrap();
            if r.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            r
        })
        .expect("xl create -F did not end with its domain");
    assert!(st.success(), "xl create -F: {st}");
    let _ = std::fs::remove_file(&core);
    let _ = std::fs::remove_file(&crash_core);

    step("xl destroy of a hung domain");
    // A domain whose VMM is frozen (SIGSTOP: no vCPU runs, its control socket does not answer)
    // ignores xl shutdown; xl destroy still frees it and the process is gone.
    let cfgh = host.write_cfg("hung", "", &assets);
    host.xl_ok(&["create", cfgh.to_str().unwrap()]);
    let hung_id = host
        .list_row("hung")
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let vmm_of = |domid: &str| -> String {
        let o = Command::new("pgrep")
            .args([
                "-f",
                &format!(
                    "rxen-vmm --config {}/var/run/xen/rxen/dom{domid}/",
                    host.root.display()
                ),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let hung_pid = vmm_of(&hung_id);
    assert!(!hung_pid.is_empty(), "no VMM for domain {hung_id}");
    assert!(Command::new("kill")
        .args(["-STOP", &hung_pid])
        .status()
        .unwrap()
        .success());
    // The power button is pressed, but nothing in the domain runs to see it.
    let _ = host.xl(&["shutdown", "hung"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        host.list_row("hung").is_some(),
        "a frozen domain cannot shut down"
    );
    host.xl_ok(&["destroy", "hung"]);
    assert!(
        host.list_row("hung").is_none(),
        "xl destroy left the hung domain"
    );
    wait_until("the frozen VMM is gone", Duration::from_secs(10), || {
        vmm_of(&hung_id).is_empty()
    });

    step("kill -9 of the VMM");
    // A VMM killed with SIGKILL is a crash; default on_crash=destroy frees the domain.
    let cfg3 = host.write_cfg("demo3", "", &assets);
    host.xl_ok(&["create", cfg3.to_str().unwrap()]);
    let pid = std::fs::read_to_string(host.root.join(format!(
        "var/run/xen/rxen/dom{}/vm.json",
        host.list_row("demo3").unwrap().split_whitespace().nth(1).unwrap()
    )))
    .map(|_| ())
    .ok();
    assert!(pid.is_some(), "runtime dir of demo3 exists");
    let vmm = Command::new("pgrep")
        .args(["-f", &format!("rxen-vmm --config {}", host.root.display())])
        .output()
        .unwrap();
    let vmm_pid = String::from_utf8_lossy(&vmm.stdout).trim().to_string();
    assert!(
        !vmm_pid.is_empty() && !vmm_pid.contains('\n'),
        "one VMM: {vmm_pid:?}"
    );
    assert!(Command::new("kill")
        .args(["-9", &vmm_pid])
        .status()
        .unwrap()
        .success());
    wait_until("demo3 released", Duration::from_secs(30), || {
        host.list_row("demo3").is_none()
    });
    assert_eq!(host.xl_ok(&["list"]).lines().count(), 2);

    // Host services like xendomains: /etc/xen/auto/* start with the host, and stopping the host
    // shuts the running domains down in order.
    step("autostart and orderly host stop");
    let stop = host.cmd("rxen", &["host", "stop", "--timeout", "60"]);
    assert!(stop.status.success(), "rxen host stop: {}", text(&stop));
    let down = host.xl(&["list"]);
    assert!(!down.status.success(), "xl must refuse without services");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("rxen host start"),
        "{}",
        text(&down)
    );
    let auto = host.root.join("etc/xen/auto");
    std::fs::create_dir_all(&auto).unwrap();
    std::fs::copy(host.write_cfg("auto1", "", &assets), auto.join("auto1.cfg")).unwrap();
    let start = host.cmd("rxen", &["host", "start"]);
    assert!(start.status.success(), "rxen host start: {}", text(&start));
    assert!(
        host.list_row("auto1").is_some(),
        "auto1 was not autostarted"
    );
    let log4 = host.console_log("auto1");
    wait_until("auto1 boot", Duration::from_secs(300), || {
        count_in(&log4, "RXEN-READY") >= 1
    });

    // xendomains' XENDOMAINS_SAVE: host stop saves the domain, host start restores it (it
    // continues where it was: a file in its RAM-backed /tmp is still there) and does not
    // autostart it a second time.
    step("XENDOMAINS_SAVE: save at host stop, restore at host start");
    let mut con = Guest::spawn(host.command("xl", &["console", "auto1"]), "xl console").unwrap();
    con.check("echo before-save > /tmp/marker").unwrap();
    con.write_raw(&[0x1d]).unwrap();
    let _ = con.wait_exit(Duration::from_secs(20));
    drop(con);
    let xd = host.root.join("etc/default/xendomains");
    std::fs::create_dir_all(xd.parent().unwrap()).unwrap();
    std::fs::write(
        &xd,
        "XENDOMAINS_SAVE=/var/lib/xen/save\nXENDOMAINS_RESTORE=true\n",
    )
    .unwrap();
    let stop = host.cmd("rxen", &["host", "stop", "--timeout", "120"]);
    assert!(stop.status.success(), "rxen host stop: {}", text(&stop));
    let image = host.root.join("var/lib/xen/save/auto1");
    assert!(image.is_file(), "no save image: {}", text(&stop));
    let start = host.cmd("rxen", &["host", "start"]);
    assert!(start.status.success(), "rxen host start: {}", text(&start));
    assert!(!image.exists(), "the restored image is removed");
    assert_eq!(
        host.xl_ok(&["list"]).matches("auto1").count(),
        1,
        "auto1 once: {}",
        text(&start)
    );
    let mut con = Guest::spawn(host.command("xl", &["console", "auto1"]), "xl console").unwrap();
    assert_eq!(con.check("cat /tmp/marker").unwrap(), "before-save\n");
    con.write_raw(&[0x1d]).unwrap();
    let _ = con.wait_exit(Duration::from_secs(20));
    drop(con);
    std::fs::remove_file(&xd).unwrap();
    let stop = host.cmd("rxen", &["host", "stop", "--timeout", "120"]);
    assert!(stop.status.success(), "rxen host stop: {}", text(&stop));
    // The supervisor's log tells how it ended: an ACPI power-button poweroff, not a destroy.
    let sup =
        std::fs::read_to_string(host.root.join("var/log/xen/xl-auto1.log")).unwrap_or_default();
    assert!(
        sup.contains("ACPI power button") && sup.contains("Poweroff"),
        "auto1 was not shut down in order:\n{sup}"
    );
}
