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
