//! ACPI tables: RSDP, XSDT, FADT (PM1 block, power button, S5, reset register), FACS, DSDT (PCI
//! host bridge, COM1, pvpanic, \_S5, PCI hot-plug, and for a domain that can change its vCPUs the
//! processor devices of CPU hot-plug) and MADT (local APICs, IOAPIC, overrides).

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;
use rxen_devices::cpu_hotplug::{CMD_CLEAR_INSERT, CMD_CLEAR_REMOVE};
use rxen_devices::cpu_hotplug::{
    CMD_EJECT, CPU_HOTPLUG_BASE, CPU_HOTPLUG_LEN, GPE_CPU_HOTPLUG, REG_CMD, REG_MAX, REG_SEL,
    REG_STS, STS_INSERT, STS_PRESENT, STS_REMOVE,
};
use rxen_devices::legacy::acpi_pm::{
    PM1_CNT_OFFSET, PM1_EVT_OFFSET, PM_BASE, PM_TMR_OFFSET, RESET_OFFSET, RESET_VALUE, S5_SLP_TYP,
    SCI_IRQ,
};
use rxen_devices::legacy::pvpanic::PVPANIC_PORT;
use rxen_devices::pci::hotplug::{
    GPE0_BASE, GPE0_LEN, GPE_PCI_HOTPLUG, HOTPLUG_BASE, HOTPLUG_LEN, REG_DOWN, REG_EJECT,
    REG_PRESENT, REG_UP,
};
use rxen_devices::pci::PCI_SLOTS;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{ACPI_SIZE, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR, PCI_MMIO_END, PCI_MMIO_START};
use rxen_devices::GuestMemoryMmap;

const OEM_ID: [u8; 6] = *b"RXEN  ";
const OEM_TABLE: [u8; 8] = *b"RXENVMM ";

/// Error writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the reserved area.
    #[error("ACPI tables need {0} bytes, more than the reserved area")]
    TooLarge(u64),
    /// Guest memory write failed.
    #[error("Cannot write ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn gas_io(sdt: &mut Sdt, off: usize, port: u16, width_bits: u8, access: u8) {
    sdt.write_u8(off, 1); // system I/O
    sdt.write_u8(off + 1, width_bits);
    sdt.write_u8(off + 2, 0);
    sdt.write_u8(off + 3, access);
    sdt.write_u64(off + 4, u64::from(port));
}

fn fadt(dsdt: u64, facs: u64) -> Sdt {
    let mut f = Sdt::new(*b"FACP", 276, 6, OEM_ID, OEM_TABLE, 1);
    let pm1_evt = PM_BASE + PM1_EVT_OFFSET;
    let pm1_cnt = PM_BASE + PM1_CNT_OFFSET;
    let pm_tmr = PM_BASE + PM_TMR_OFFSET;
    f.write_u32(36, facs as u32);
    f.write_u32(40, dsdt as u32);
    f.write_u8(45, 0); // preferred PM profile: unspecified
    f.write_u16(46, SCI_IRQ as u16);
    f.write_u32(48, 0); // no SMI command port: always in ACPI mode
    f.write_u32(56, u32::from(pm1_evt));
    f.write_u32(64, u32::from(pm1_cnt));
    f.write_u32(76, u32::from(pm_tmr));
    f.write_u8(88, 4); // PM1_EVT_LEN
    f.write_u8(89, 2); // PM1_CNT_LEN
    f.write_u8(91, 4); // PM_TMR_LEN
    f.write_u32(80, u32::from(GPE0_BASE)); // GPE0_BLK (PCI hot-plug)
    f.write_u8(92, GPE0_LEN); // GPE0_BLK_LEN
    f.write_u16(96, 0x65); // C2 not supported
    f.write_u16(98, 0x3e9); // C3 not supported
    f.write_u8(108, 0x32); // CMOS century register
                           // IAPC_BOOT_ARCH: legacy devices, no VGA, no ASPM control. The 8042 bit stays clear: we only
                           // model its reset line, and a guest probing a keyboard controller that never answers spends
                           // seconds in timeouts (each poll is a VM exit).
    f.write_u16(109, 1 | 4 | 0x10);
    // Flags: WBINVD, PROC_C1, SLP_BUTTON (none), RESET_REG_SUP. PWR_BUTTON clear = fixed button.
    f.write_u32(112, 1 | (1 << 2) | (1 << 5) | (1 << 10));
    gas_io(&mut f, 116, PM_BASE + RESET_OFFSET, 8, 1);
    f.write_u8(128, RESET_VALUE);
    f.write_u8(131, 3); // FADT minor version
    f.write_u64(132, facs);
    f.write_u64(140, dsdt);
    gas_io(&mut f, 148, pm1_evt, 32, 0);
    gas_io(&mut f, 172, pm1_cnt, 16, 0);
    gas_io(&mut f, 208, pm_tmr, 32, 0);
    gas_io(&mut f, 220, GPE0_BASE, GPE0_LEN * 8, 0); // X_GPE0_BLK
    f.write_u64(268, u64::from_le_bytes(*b"RXENKVM\0"));
    f.update_checksum();
    f
}

fn dsdt(hotplug_cpus: Option<u8>) -> Sdt {
    let mut d = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    let mmio_max = (PCI_MMIO_END - 1) as u32;
    // Each object is serialised in one statement so its temporaries live long enough.
    aml::Device::new(
        "_SB_.PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &AddressSpace::new_bus_number(0u16, 0u16),
                    &aml::IO::new(0xcf8, 0xcf8, 1, 8),
                    &AddressSpace::new_io(0u16, 0xcf7u16, None),
                    &AddressSpace::new_io(0xd00u16, 0xffffu16, None),
                    &AddressSpace::new_memory(
                        AddressSpaceCacheable::NotCacheable,
                        true,
                        PCI_MMIO_START as u32,
                        mmio_max,
                        None,
                    ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut d);
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ONE),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(0x3f8, 0x3f8, 0, 8),
                    &aml::Interrupt::new(true, true, false, false, 4),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut d);
    aml::Device::new(
        "_SB_.PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new("_STA".into(), &0xfu8),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::IO::new(
                    PVPANIC_PORT as u16,
                    PVPANIC_PORT as u16,
                    1,
                    1,
                )]),
            ),
        ],
    )
    .to_aml_bytes(&mut d);
    pci_hotplug_aml(&mut d);
    if let Some(max) = hotplug_cpus {
        cpu_hotplug_aml(&mut d, max);
    }
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![
            &(S5_SLP_TYP as u8),
            &(S5_SLP_TYP as u8),
            &aml::ZERO,
            &aml::ZERO,
        ]),
    )
    .to_aml_bytes(&mut d);
    d.update_checksum();
    d
}

/// Already-serialised AML.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn to_raw(a: &dyn Aml) -> RawAml {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    RawAml(v)
}

/// ACPI PCI hot-plug (see `rxen_devices::pci::hotplug`): the controller's registers as fields, one
/// ejectable device per slot of bus 0, and the GPE handler that notifies the slots.
fn pci_hotplug_aml(d: &mut Sdt) {
    let slot_name = |s: usize| format!("S{s:02X}_");
    let mut body: Vec<RawAml> = vec![
        to_raw(&aml::OpRegion::new(
            "PHPR".into(),
            aml::OpRegionSpace::SystemIO,
            &(HOTPLUG_BASE as u32),
            &(HOTPLUG_LEN as u32),
        )),
        to_raw(&aml::Field::new(
            "PHPR".into(),
            aml::FieldAccessType::DWord,
            aml::FieldLockRule::NoLock,
            aml::FieldUpdateRule::WriteAsZeroes,
            vec![
                aml::FieldEntry::Named(*b"PCIU", 32),
                aml::FieldEntry::Named(*b"PCID", 32),
                aml::FieldEntry::Named(*b"PCEJ", 32),
                aml::FieldEntry::Named(*b"PCPR", 32),
            ],
        )),
        // PEJ0(slot): acknowledge the eject of `slot` (called by each slot's _EJ0).
        to_raw(&aml::Method::new(
            "PEJ0".into(),
            1,
            true,
            vec![&aml::ShiftLeft::new(
                &aml::Path::new("PCEJ"),
                &aml::ONE,
                &aml::Arg(0),
            )],
        )),
    ];
    debug_assert_eq!((REG_UP, REG_DOWN, REG_EJECT, REG_PRESENT), (0, 4, 8, 12));
    // PSCN: read UP and DOWN once, then notify every slot whose bit is set.
    let mut scan: Vec<RawAml> = vec![
        to_raw(&aml::Store::new(&aml::Local(0), &aml::Path::new("PCIU"))),
        to_raw(&aml::Store::new(&aml::Local(1), &aml::Path::new("PCID"))),
    ];
    for slot in 1..PCI_SLOTS {
        let name = slot_name(slot);
        let bit = 1u32 << slot;
        for (local, event) in [(0u8, 1u8), (1, 3)] {
            scan.push(to_raw(&aml::If::new(
                &aml::And::new(&aml::ZERO, &aml::Local(local), &bit),
                vec![&aml::Notify::new(&aml::Path::new(&name), &event)],
            )));
        }
    }
    body.push(to_raw(&aml::Method::new(
        "PSCN".into(),
        0,
        true,
        scan.iter().map(|a| a as &dyn Aml).collect(),
    )));
    for slot in 1..PCI_SLOTS {
        let sun = slot as u8;
        body.push(to_raw(&aml::Device::new(
            slot_name(slot).as_str().into(),
            vec![
                &aml::Name::new("_ADR".into(), &((slot as u32) << 16)),
                &aml::Name::new("_SUN".into(), &sun),
                &aml::Method::new(
                    "_EJ0".into(),
                    1,
                    false,
                    vec![&aml::MethodCall::new("PEJ0".into(), vec![&sun])],
                ),
            ],
        )));
    }
    aml::Scope::new(
        "\\_SB_.PCI0".into(),
        body.iter().map(|a| a as &dyn Aml).collect(),
    )
    .to_aml_bytes(d);
    let gpe_method = format!("_E{GPE_PCI_HOTPLUG:02X}");
    aml::Scope::new(
        "\\_GPE".into(),
        vec![&aml::Method::new(
            gpe_method.as_str().into(),
            0,
            false,
            vec![&aml::MethodCall::new("\\_SB_.PCI0.PSCN".into(), vec![])],
        )],
    )
    .to_aml_bytes(d);
}

/// Name of CPU `id`'s processor device.
fn cpu_name(id: u8) -> String {
    format!("CP{id:02X}")
}

/// ACPI CPU hot-plug (see `rxen_devices::cpu_hotplug`): the controller's registers as fields
/// under a mutex, one `ACPI0007` processor device per possible CPU (`_STA` from the controller,
/// `_MAT` = its enabled local-APIC entry, `_EJ0` for all but CPU 0), and the GPE handler that
/// acknowledges each CPU's events and notifies it.
fn cpu_hotplug_aml(d: &mut Sdt, max: u8) {
    debug_assert_eq!((REG_SEL, REG_STS, REG_CMD, REG_MAX), (0, 4, 8, 12));
    let lock = || aml::Acquire::new("CPLK".into(), 0xffff);
    let unlock = || aml::Release::new("CPLK".into());
    let mut body: Vec<RawAml> = vec![
        to_raw(&aml::OpRegion::new(
            "CPHR".into(),
            aml::OpRegionSpace::SystemIO,
            &u32::from(CPU_HOTPLUG_BASE),
            &u32::from(CPU_HOTPLUG_LEN),
        )),
        to_raw(&aml::Field::new(
            "CPHR".into(),
            aml::FieldAccessType::DWord,
            aml::FieldLockRule::NoLock,
            aml::FieldUpdateRule::WriteAsZeroes,
            vec![
                aml::FieldEntry::Named(*b"CSEL", 32),
                aml::FieldEntry::Named(*b"CSTS", 32),
                aml::FieldEntry::Named(*b"CCMD", 32),
                aml::FieldEntry::Named(*b"CMAX", 32),
            ],
        )),
        to_raw(&aml::Mutex::new("CPLK".into(), 0)),
        // CSTA(cpu): 0xF when present, else 0.
        to_raw(&aml::Method::new(
            "CSTA".into(),
            1,
            true,
            vec![
                &lock(),
                &aml::Store::new(&aml::Path::new("CSEL"), &aml::Arg(0)),
                &aml::Store::new(&aml::Local(0), &aml::ZERO),
                &aml::If::new(
                    &aml::And::new(&aml::ZERO, &aml::Path::new("CSTS"), &STS_PRESENT),
                    vec![&aml::Store::new(&aml::Local(0), &0xfu8)],
                ),
                &unlock(),
                &aml::Return::new(&aml::Local(0)),
            ],
        )),
        // CEJ0(cpu): the guest released the CPU.
        to_raw(&aml::Method::new(
            "CEJ0".into(),
            1,
            true,
            vec![
                &lock(),
                &aml::Store::new(&aml::Path::new("CSEL"), &aml::Arg(0)),
                &aml::Store::new(&aml::Path::new("CCMD"), &CMD_EJECT),
                &unlock(),
            ],
        )),
    ];
    // CSCN: for every CPU but the boot CPU, acknowledge and notify its events.
    let mut scan: Vec<RawAml> = vec![to_raw(&lock())];
    for id in 1..max {
        let name = cpu_name(id);
        scan.push(to_raw(&aml::Store::new(
            &aml::Path::new("CSEL"),
            &u32::from(id),
        )));
        scan.push(to_raw(&aml::Store::new(
            &aml::Local(0),
            &aml::Path::new("CSTS"),
        )));
        for (bit, ack, event) in [
            (STS_INSERT, CMD_CLEAR_INSERT, 1u8),
            (STS_REMOVE, CMD_CLEAR_REMOVE, 3u8),
        ] {
            scan.push(to_raw(&aml::If::new(
                &aml::And::new(&aml::ZERO, &aml::Local(0), &bit),
                vec![
                    &aml::Store::new(&aml::Path::new("CCMD"), &ack),
                    &aml::Notify::new(&aml::Path::new(&name), &event),
                ],
            )));
        }
    }
    scan.push(to_raw(&unlock()));
    body.push(to_raw(&aml::Method::new(
        "CSCN".into(),
        0,
        true,
        scan.iter().map(|a| a as &dyn Aml).collect(),
    )));
    for id in 0..max {
        let mat = aml::BufferData::new(vec![0, 8, id, id, 1, 0, 0, 0]);
        let call_sta = aml::MethodCall::new("CSTA".into(), vec![&id]);
        let ret = aml::Return::new(&call_sta);
        let sta = aml::Method::new("_STA".into(), 0, false, vec![&ret]);
        let call_ej0 = aml::MethodCall::new("CEJ0".into(), vec![&id]);
        let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&call_ej0]);
        let hid = aml::Name::new("_HID".into(), &"ACPI0007");
        let uid = aml::Name::new("_UID".into(), &id);
        let mat = aml::Name::new("_MAT".into(), &mat);
        let mut children: Vec<&dyn Aml> = vec![&hid, &uid, &mat, &sta];
        if id != 0 {
            children.push(&ej0);
        }
        body.push(to_raw(&aml::Device::new(
            cpu_name(id).as_str().into(),
            children,
        )));
    }
    aml::Scope::new(
        "\\_SB_".into(),
        body.iter().map(|a| a as &dyn Aml).collect(),
    )
    .to_aml_bytes(d);
    let gpe_method = format!("_E{GPE_CPU_HOTPLUG:02X}");
    aml::Scope::new(
        "\\_GPE".into(),
        vec![&aml::Method::new(
            gpe_method.as_str().into(),
            0,
            false,
            vec![&aml::MethodCall::new("\\_SB_.CSCN".into(), vec![])],
        )],
    )
    .to_aml_bytes(d);
}

/// The MADT: `vcpus` enabled local APICs, and up to `max` the others as disabled but
/// online-capable (MADT revision 5), so the guest reserves them for hot-plug.
fn madt(vcpus: u8, max: u8) -> Sdt {
    let mut m = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE, 1);
    m.write_u32(36, LAPIC_ADDR as u32);
    m.write_u32(40, 1); // PCAT_COMPAT: dual 8259s present
    for id in 0..max.max(vcpus) {
        // Flags: bit 0 enabled, bit 1 online capable (only meaningful when not enabled).
        let flags = if id < vcpus { 1 } else { 2 };
        m.append_slice(&[0, 8, id, id, flags, 0, 0, 0]);
    }
    let mut ioapic = vec![1u8, 12, 0, 0];
    ioapic.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    m.append_slice(&ioapic);
    // IRQ0 -> GSI2 (PIT), edge/high.
    let mut iso0 = vec![2u8, 10, 0, 0];
    iso0.extend_from_slice(&2u32.to_le_bytes());
    iso0.extend_from_slice(&0u16.to_le_bytes());
    m.append_slice(&iso0);
    // SCI: level triggered, active high.
    let mut iso9 = vec![2u8, 10, 0, SCI_IRQ as u8];
    iso9.extend_from_slice(&SCI_IRQ.to_le_bytes());
    iso9.extend_from_slice(&0x000du16.to_le_bytes());
    m.append_slice(&iso9);
    // LINT1 of every processor is NMI.
    m.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    m.update_checksum();
    m
}

fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = vec![0u8; 36];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = 2;
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    r[8] = 0u8.wrapping_sub(sum(&r[0..20]));
    r[32] = 0u8.wrapping_sub(sum(&r));
    r
}

/// Writes all tables into the reserved ACPI area; returns the RSDP address. With `max_vcpus`
/// the domain can change its vCPUs at run time: the MADT lists `max_vcpus` local APICs and the
/// DSDT holds the CPU hot-plug objects.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    max_vcpus: Option<u8>,
) -> Result<u64, AcpiError> {
    let align = |x: u64| (x + 63) & !63;
    let rsdp_addr = ACPI_START;
    let mut cur = align(rsdp_addr + 36);
    let facs_addr = cur;
    let facs = facs();
    cur = align(cur + facs.len() as u64);
    let dsdt_addr = cur;
    let dsdt = dsdt(max_vcpus);
    cur = align(cur + dsdt.len() as u64);
    let fadt_addr = cur;
    let fadt = fadt(dsdt_addr, facs_addr);
    cur = align(cur + fadt.len() as u64);
    let madt_addr = cur;
    let madt = madt(vcpus, max_vcpus.unwrap_or(vcpus));
    cur = align(cur + madt.len() as u64);
    let xsdt_addr = cur;
    let mut xsdt = Sdt::new(*b"XSDT", 36, 1, OEM_ID, OEM_TABLE, 1);
    xsdt.append_slice(&fadt_addr.to_le_bytes());
    xsdt.append_slice(&madt_addr.to_le_bytes());
    xsdt.update_checksum();
    cur += xsdt.len() as u64;
    if cur > ACPI_START + ACPI_SIZE {
        return Err(AcpiError::TooLarge(cur - ACPI_START));
    }
    let w = |addr: u64, b: &[u8]| {
        mem.write_slice(b, GuestAddress(addr))
            .map_err(AcpiError::Write)
    };
    w(rsdp_addr, &rsdp(xsdt_addr))?;
    w(facs_addr, &facs)?;
    w(dsdt_addr, dsdt.as_slice())?;
    w(fadt_addr, fadt.as_slice())?;
    w(madt_addr, madt.as_slice())?;
    w(xsdt_addr, xsdt.as_slice())?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_links() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp_addr = write_tables(&mem, 2, None).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp_addr)).unwrap();
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt: u64 = mem.read_obj(GuestAddress(rsdp_addr + 24)).unwrap();
        let read_table = |addr: u64| {
            let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
            let mut t = vec![0u8; len as usize];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            t
        };
        let x = read_table(xsdt);
        assert!(checksum_ok(&x));
        let mut sigs = vec![];
        for i in 0..(x.len() - 36) / 8 {
            let a = u64::from_le_bytes(x[36 + 8 * i..44 + 8 * i].try_into().unwrap());
            let t = read_table(a);
            assert!(checksum_ok(&t), "{:?}", &t[..4]);
            sigs.push(t[..4].to_vec());
            if &t[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
                let d = read_table(dsdt);
                assert_eq!(&d[..4], b"DSDT");
                assert!(checksum_ok(&d));
                assert!(d.windows(4).any(|w| w == b"_S5_"));
                for name in [
                    &b"PSCN"[..],
                    b"PEJ0",
                    b"S01_",
                    b"S1F_",
                    b"_E01",
                    b"_EJ0",
                    b"_SUN",
                ] {
                    assert!(d.windows(4).any(|w| w == name), "{name:?}");
                }
                if let Ok(dir) = std::env::var("RXEN_DUMP_DSDT") {
                    std::fs::write(format!("{dir}/dsdt.aml"), &d).unwrap();
                }
                // GPE0 block for PCI hot-plug.
                assert_eq!(
                    u32::from_le_bytes(t[80..84].try_into().unwrap()),
                    u32::from(GPE0_BASE)
                );
                assert_eq!(t[92], GPE0_LEN);
            }
            if &t[..4] == b"APIC" {
                let (mut off, mut lapics) = (44, 0);
                while off + 2 <= t.len() {
                    lapics += usize::from(t[off] == 0);
                    off += usize::from(t[off + 1]).max(1);
                }
                assert_eq!(off, t.len());
                assert_eq!(lapics, 2);
            }
        }
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
    }

    fn table(mem: &GuestMemoryMmap, sig: &[u8; 4]) -> Vec<u8> {
        let read_table = |addr: u64| {
            let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
            let mut t = vec![0u8; len as usize];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            t
        };
        let xsdt: u64 = mem.read_obj(GuestAddress(ACPI_START + 24)).unwrap();
        let x = read_table(xsdt);
        for i in 0..(x.len() - 36) / 8 {
            let a = u64::from_le_bytes(x[36 + 8 * i..44 + 8 * i].try_into().unwrap());
            let t = read_table(a);
            if &t[..4] == sig {
                return t;
            }
            if &t[..4] == b"FACP" && sig == b"DSDT" {
                return read_table(u64::from_le_bytes(t[140..148].try_into().unwrap()));
            }
        }
        panic!("no {sig:?}");
    }

    /// Local APIC entries of a MADT: (processor id, APIC id, flags).
    fn lapics(m: &[u8]) -> Vec<(u8, u8, u32)> {
        let (mut off, mut out) = (44, vec![]);
        while off + 2 <= m.len() {
            if m[off] == 0 {
                let f = u32::from_le_bytes(m[off + 4..off + 8].try_into().unwrap());
                out.push((m[off + 2], m[off + 3], f));
            }
            off += usize::from(m[off + 1]).max(1);
        }
        out
    }

    #[test]
    fn hotplug_capable_domain_lists_every_possible_cpu() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write_tables(&mem, 1, Some(3)).unwrap();
        let m = table(&mem, b"APIC");
        assert!(checksum_ok(&m));
        assert_eq!(
            m[8], 5,
            "MADT revision 5: the online-capable flag is defined"
        );
        assert_eq!(lapics(&m), vec![(0, 0, 1), (1, 1, 2), (2, 2, 2)]);
        let d = table(&mem, b"DSDT");
        assert!(checksum_ok(&d));
        let has = |name: &[u8]| d.windows(name.len()).any(|w| w == name);
        for name in [
            &b"CP00"[..],
            b"CP01",
            b"CP02",
            b"CSCN",
            b"CSTA",
            b"CEJ0",
            b"CPLK",
            b"_E02",
            b"_MAT",
            b"ACPI0007",
        ] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!has(b"CP03"), "no device beyond maxvcpus");
        if let Ok(dir) = std::env::var("RXEN_DUMP_DSDT") {
            std::fs::write(format!("{dir}/dsdt-cpuhp.aml"), &d).unwrap();
        }

        // Without hot-plug: no processor devices, only the boot vCPUs in the MADT.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write_tables(&mem, 2, None).unwrap();
        assert_eq!(lapics(&table(&mem, b"APIC")), vec![(0, 0, 1), (1, 1, 1)]);
        assert!(!table(&mem, b"DSDT").windows(4).any(|w| w == b"CSCN"));
    }
}
