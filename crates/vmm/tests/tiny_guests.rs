//! The VMM binary on this machine's /dev/kvm with tiny hand-assembled guests.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn setup() -> Option<tempfile::TempDir> {
    if !can_run() {
        return None;
    }
    Some(tempfile::tempdir().unwrap())
}

#[test]
fn serial_output_then_acpi_poweroff_exits_0() {
    let Some(dir) = setup() else { return };
    let k = build_guest(
        dir.path(),
        "hello",
        &guest("PUTS msg\nPOWEROFF\nmsg: .asciz \"Hello from rxen\\n\"\n"),
    );
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--serial",
            "stdio",
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "Hello from rxen\n");
}

fn run_simple(name: &str, body: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), name, &guest(body));
    let mut args = vec![
        "--kernel",
        k.to_str().unwrap(),
        "--memory",
        "32",
        "--serial",
        "stdio",
    ];
    args.extend_from_slice(extra);
    run_vmm(&args, T)
}

#[test]
fn pvpanic_write_exits_with_crash_code() {
    if setup().is_none() {
        return;
    }
    let r = run_simple(
        "panic",
        "mov $0x505, %dx\nmov $1, %al\nout %al, (%dx)\n1: hlt\njmp 1b\n",
        &[],
    );
    assert_eq!(r.code, Some(4), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("pvpanic"), "{}", r.stderr);
}

#[test]
fn triple_fault_exits_with_reboot_code() {
    if setup().is_none() {
        return;
    }
    let r = run_simple(
        "triple",
        "lidt idt0(%rip)\nud2\nidt0: .word 0\n.quad 0\n",
        &[],
    );
    assert_eq!(r.code, Some(3), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("triple fault"), "{}", r.stderr);
}

#[test]
fn i8042_reset_and_acpi_reset_register_reboot() {
    if setup().is_none() {
        return;
    }
    let r = run_simple(
        "kbd",
        "mov $0xfe, %al\nout %al, $0x64\n1: hlt\njmp 1b\n",
        &[],
    );
    assert_eq!(r.code, Some(3), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("i8042"), "{}", r.stderr);
    let r = run_simple(
        "acpireset",
        "mov $0x60c, %dx\nmov $1, %al\nout %al, (%dx)\n1: hlt\njmp 1b\n",
        &[],
    );
    assert_eq!(r.code, Some(3), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("ACPI reset"), "{}", r.stderr);
}

#[test]
fn out_of_range_pio_and_mmio_are_harmless() {
    if setup().is_none() {
        return;
    }
    // Unclaimed ports and MMIO read as all-ones; writes are dropped; the guest carries on.
    let r = run_simple(
        "wild",
        r#"
    mov $0x1234, %dx
    in (%dx), %al
    cmp $0xff, %al
    jne 9f
    out %al, (%dx)
    mov $0xd0000000, %rbx
    movl (%rbx), %eax
    cmp $0xffffffff, %eax
    jne 9f
    movl $0x55, (%rbx)
    mov $0xcfc, %dx
    inl (%dx), %eax
    PUTS ok
    POWEROFF
9:  PUTS bad
    POWEROFF
ok: .asciz "OK\n"
bad: .asciz "BAD\n"
"#,
        &[],
    );
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "OK\n");
}

/// The BSP starts the AP with INIT-SIPI; the AP (real mode) prints and raises a flag.
#[test]
fn two_vcpus_both_run() {
    if setup().is_none() {
        return;
    }
    let body = r#"
    PUTS bsp
    // Copy the AP trampoline to 0x10000.
    lea ap_start(%rip), %rsi
    mov $0x10000, %rdi
    mov $(ap_end - ap_start), %rcx
    rep movsb
    movb $0, 0x11000
    mov $0xfee00000, %rbx
    movl $0x1ff, 0xf0(%rbx)  /* SVR: APIC software enable */
    movl $0x01000000, 0x310(%rbx)  /* ICR high: APIC ID 1 */
    movl $0x00004500, 0x300(%rbx)  /* INIT */
    movl $0x01000000, 0x310(%rbx)
    movl $0x00004610, 0x300(%rbx)  /* SIPI vector 0x10 -> 0x10000 */
    mov $20000000, %rcx
1:  cmpb $1, 0x11000
    je 2f
    pause
    dec %rcx
    jnz 1b
    PUTS timeout
    POWEROFF
2:  PUTS done
    POWEROFF
bsp: .asciz "BSP\n"
done: .asciz "AP ran\n"
timeout: .asciz "AP timeout\n"
.code16
ap_start:
    mov $0x3f8, %dx
    mov $'A', %al
    out %al, (%dx)
    mov $'\n', %al
    out %al, (%dx)
    mov $0x1000, %ax
    mov %ax, %ds
    movb $1, (0x1000)
3:  cli
    hlt
    jmp 3b
ap_end:
.code64
"#;
    let r = run_simple("smp", body, &["--vcpus", "2"]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "BSP\nA\nAP ran\n");
}

#[test]
fn reboot_in_place_restarts_the_guest_in_the_same_process() {
    let Some(dir) = setup() else { return };
    let k = build_guest(
        dir.path(),
        "reboots",
        &guest(
            "PUTS msg\nmov $0xfe, %al\nout %al, $0x64\n1: hlt\njmp 1b\nmsg: .asciz \"boot\\n\"\n",
        ),
    );
    let child = std::process::Command::new(vmm_bin())
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--serial",
            "stdio",
        ])
        .arg("--reboot-in-place")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = ChildGuard(Some(child));
    let mut out = g.0.as_mut().unwrap().stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    use std::io::Read;
    while seen.windows(5).filter(|w| w == b"boot\n").count() < 3 {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "VMM exited instead of restarting");
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = g.0.as_ref().unwrap().id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let r = wait_child(g.0.take().unwrap(), T);
    assert_eq!(r.code, Some(5), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains("restarting the domain in place"),
        "{}",
        r.stderr
    );
}

/// `rep insb` and `rep outsb` on the UART's byte-wide registers: KVM hands a string
/// instruction's elements to the VMM in batches (up to a page per exit for `ins`), and each
/// element is one access of the device. Reads from the scratch register fill a buffer that
/// spans three pages; the guest checks every byte, then echoes a string with `rep outsb`.
#[test]
fn string_port_io_is_one_device_access_per_element() {
    let r = run_simple(
        "stringio",
        r#"
    mov $0x3ff, %dx
    mov $0x5a, %al
    out %al, (%dx)
    lea buf(%rip), %rdi
    mov $9000, %rcx
    rep insb
    lea buf(%rip), %rdi
    mov $9000, %rcx
    mov $0x5a, %al
    repe scasb
    jne 1f
    lea msg(%rip), %rsi
    mov $0x3f8, %dx
    mov $(msgend - msg), %rcx
    rep outsb
    POWEROFF
1:  PUTS bad
    POWEROFF
msg: .ascii "all 9000 bytes read\n"
msgend:
bad: .asciz "mismatch\n"
.balign 4096
.skip 3000
buf: .skip 9000
"#,
        &[],
    );
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "all 9000 bytes read\n");
}
