//! Tiny guests driving virtio-pci devices directly: queue setup, notification, completion, and
//! hostile descriptors.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

/// Helpers: `vq_setup` (re)initialises the device at BAR %rbx with queue 0 (size 8) at
/// 0x200000/0x201000/0x202000; `wait_used` waits until the used index reaches %cx or the device
/// flags NEEDS_RESET (ZF=1 on completion).
const VIRTIO_LIB: &str = r#"
find_bar:
    mov $0x80000810, %eax       /* 00:01.0, BAR0 */
    mov $0xcf8, %dx
    out %eax, (%dx)
    mov $0xcfc, %dx
    in (%dx), %eax
    and $0xfffffff0, %eax
    mov %rax, %rbx
    ret

vq_setup:
    mov $0x200000, %rdi
    mov $0x3000, %rcx
    xor %eax, %eax
    rep stosb
    movb $0, 0x14(%rbx)
    movb $1, 0x14(%rbx)
    movb $3, 0x14(%rbx)
    movl $1, 0x08(%rbx)
    movl $1, 0x0c(%rbx)
    movl $0, 0x08(%rbx)
    movl $0, 0x0c(%rbx)
    movb $0xb, 0x14(%rbx)
    movb 0x14(%rbx), %al
    test $8, %al
    jz vq_fail
    movw $0, 0x16(%rbx)
    movw $8, 0x18(%rbx)
    movl $0x200000, 0x20(%rbx)
    movl $0, 0x24(%rbx)
    movl $0x201000, 0x28(%rbx)
    movl $0, 0x2c(%rbx)
    movl $0x202000, 0x30(%rbx)
    movl $0, 0x34(%rbx)
    movw $1, 0x1c(%rbx)
    movb $0xf, 0x14(%rbx)
    ret
vq_fail:
    PUTS features_msg
    POWEROFF
features_msg: .asciz "FEATURES_OK refused\n"

/* submit head %ax as avail entry %cx-1, then notify */
submit:
    movzwl %cx, %edx
    dec %edx
    and $7, %edx
    mov %ax, 0x201004(,%rdx,2)
    mov %cx, 0x201002
    movw $0, 0x3000(%rbx)
    ret

wait_used:
    mov $5000000, %r8
1:  cmp %cx, 0x202002
    je 2f
    testb $0x40, 0x14(%rbx)
    jnz 3f
    pause
    dec %r8
    jnz 1b
    PUTS timeout_msg
    POWEROFF
2:  xor %eax, %eax
    ret
3:  mov $1, %eax
    test %eax, %eax
    ret
timeout_msg: .asciz "TIMEOUT\n"
"#;

fn virtio_guest(body: &str) -> String {
    format!("{PRELUDE}\n_start:\n    call find_bar\n{body}\n{LIB}\n{VIRTIO_LIB}")
}

#[test]
fn virtio_rng_survives_hostile_descriptors_and_recovers_after_reset() {
    if !can_run() {
        return;
    }
    let body = r#"
    /* 1: buffer far outside guest RAM -> device must flag NEEDS_RESET */
    call vq_setup
    movq $0xfffffff000000000, %rax
    mov %rax, 0x200000
    movl $16, 0x200008
    movw $2, 0x20000c
    xor %ax, %ax
    mov $1, %cx
    call submit
    call wait_used
    jz 5f
    PUTS needs_reset
    jmp 6f
5:  PUTS no_reset
6:
    /* 2: a descriptor loop 0 -> 1 -> 0: must terminate (used or reset), not hang */
    call vq_setup
    movq $0x203000, 0x200000
    movl $16, 0x200008
    movw $3, 0x20000c
    movw $1, 0x20000e
    movq $0x203010, 0x200010
    movl $16, 0x200018
    movw $3, 0x20001c
    movw $0, 0x20001e
    xor %ax, %ax
    mov $1, %cx
    call submit
    call wait_used
    PUTS loop_done
    /* 3: a good request after reset */
    call vq_setup
    movq $0x203000, 0x200000
    movl $16, 0x200008
    movw $2, 0x20000c
    xor %ax, %ax
    mov $1, %cx
    call submit
    call wait_used
    jnz 8f
    cmpl $16, 0x202008
    jne 8f
    mov 0x203000, %rax
    or 0x203008, %rax
    jz 8f
    PUTS rng_ok
    POWEROFF
8:  PUTS rng_bad
    POWEROFF
needs_reset: .asciz "NEEDS_RESET\n"
no_reset: .asciz "NO_RESET\n"
loop_done: .asciz "LOOP DONE\n"
rng_ok: .asciz "RNG OK\n"
rng_bad: .asciz "RNG BAD\n"
"#;
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "rng", &virtio_guest(body));
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--serial",
            "stdio",
            "--rng",
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(
        r.stdout, "NEEDS_RESET\nLOOP DONE\nRNG OK\n",
        "stderr: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("virtio-rng") && r.stderr.contains("needs reset"),
        "{}",
        r.stderr
    );
}

#[test]
fn virtio_blk_write_then_read_from_a_tiny_guest() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let mut img = vec![0u8; 4096];
    img[..8].copy_from_slice(b"RXENDISK");
    std::fs::write(&disk, &img).unwrap();
    let body = r#"
    call vq_setup
    /* OUT sector 1 */
    movl $1, 0x204000
    movq $1, 0x204008
    lea payload(%rip), %rsi
    mov $0x205000, %rdi
    mov $16, %rcx
    rep movsb
    movb $0xff, 0x206000
    movq $0x204000, 0x200000
    movl $16, 0x200008
    movw $1, 0x20000c
    movw $1, 0x20000e
    movq $0x205000, 0x200010
    movl $512, 0x200018
    movw $1, 0x20001c
    movw $2, 0x20001e
    movq $0x206000, 0x200020
    movl $1, 0x200028
    movw $2, 0x20002c
    xor %ax, %ax
    mov $1, %cx
    call submit
    call wait_used
    jnz 8f
    cmpb $0, 0x206000
    jne 8f
    /* IN sector 0 into 0x207000 */
    movl $0, 0x204000
    movq $0, 0x204008
    movb $0xff, 0x206000
    movq $0x207000, 0x200010
    movw $3, 0x20001c
    xor %ax, %ax
    mov $2, %cx
    call submit
    call wait_used
    jnz 8f
    cmpb $0, 0x206000
    jne 8f
    movb $0, 0x207008
    mov $0x207000, %rsi
    call puts
    PUTS blk_ok
    POWEROFF
8:  PUTS blk_bad
    POWEROFF
payload: .ascii "written-by-guest"
blk_ok: .asciz "\nBLK OK\n"
blk_bad: .asciz "BLK BAD\n"
"#;
    let k = build_guest(dir.path(), "blk", &virtio_guest(body));
    let d = format!("path={}", disk.display());
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--serial",
            "stdio",
            "--disk",
            &d,
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "RXENDISK\nBLK OK\n", "stderr: {}", r.stderr);
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(&after[512..528], b"written-by-guest");
}
