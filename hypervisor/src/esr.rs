//! Decoding of ESR_EL2 syndromes into words a person can read in a log line.

use core::fmt;

pub const EC_WFX: u64 = 0x01;
pub const EC_SYSREG: u64 = 0x18;
pub const EC_HVC64: u64 = 0x16;
pub const EC_SMC64: u64 = 0x17;
pub const EC_IABT_LOWER: u64 = 0x20;
pub const EC_DABT_LOWER: u64 = 0x24;

pub const fn exception_class(esr: u64) -> u64 {
    (esr >> 26) & 0x3f
}

/// The faulting IPA of a stage-2 abort: HPFAR_EL2.FIPA holds IPA[47:12] in bits [43:4]; the page
/// offset comes from FAR_EL2.
pub const fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar & 0x0fff_ffff_fff0) << 8) | (far & 0xfff)
}

/// True for a WFE (as opposed to WFI) trap.
pub const fn is_wfe(esr: u64) -> bool {
    esr & 1 == 1
}

/// One guest load or store that faulted at stage 2, as an emulator needs it (from a data abort
/// with ISV set: the syndrome then describes the instruction completely).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Bytes accessed: 1, 2, 4 or 8.
    pub size: u8,
    pub write: bool,
    /// The general-purpose register transferred (31 = the zero register for a store, and
    /// nothing to write back for a load).
    pub reg: u8,
    /// A load sign-extends to `sixty_four` or 32 bits.
    pub sign_extend: bool,
    /// The register is an X register (else a W register: the upper half is written as zero).
    pub sixty_four: bool,
}

/// Why a data abort cannot be emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioDecodeError {
    /// Not a data abort from a lower exception level.
    #[error("not a data abort")]
    NotDataAbort,
    /// ISV is clear: a load/store pair, a writeback or a SIMD access, which the syndrome does
    /// not describe. MMIO must be accessed with plain single-register loads and stores.
    #[error(
        "an MMIO access the syndrome does not describe (pair, writeback or SIMD \
             load/store); use single-register LDR/STR for device registers"
    )]
    NoSyndrome,
}

/// Decodes the access of a lower-EL data abort (ESR_EL2.ISS: ISV 24, SAS 23:22, SSE 21,
/// SRT 20:16, SF 15, WnR 6).
pub const fn mmio_access(esr: u64) -> Result<MmioAccess, MmioDecodeError> {
    if exception_class(esr) != EC_DABT_LOWER {
        return Err(MmioDecodeError::NotDataAbort);
    }
    if esr & (1 << 24) == 0 {
        return Err(MmioDecodeError::NoSyndrome);
    }
    Ok(MmioAccess {
        size: 1 << ((esr >> 22) & 3),
        write: esr & (1 << 6) != 0,
        reg: ((esr >> 16) & 0x1f) as u8,
        sign_extend: esr & (1 << 21) != 0,
        sixty_four: esr & (1 << 15) != 0,
    })
}

impl MmioAccess {
    /// The register value a load of `raw` (the `size` bytes read, zero-extended) leaves.
    pub const fn load_value(&self, raw: u64) -> u64 {
        let bits = self.size as u32 * 8;
        let value = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        if self.sixty_four {
            value
        } else {
            value & 0xffff_ffff
        }
    }

    /// The bytes a store writes, from the register's value.
    pub const fn store_value(&self, reg_value: u64) -> u64 {
        if self.size >= 8 {
            reg_value
        } else {
            reg_value & ((1u64 << (self.size as u32 * 8)) - 1)
        }
    }
}

/// A decoded syndrome, printed as e.g. "data abort, read of 8 bytes, translation fault at level 1".
pub struct Syndrome(pub u64);

fn fault_status(fsc: u64) -> (&'static str, Option<u64>) {
    match fsc {
        0b000000..=0b000011 => ("address size fault", Some(fsc & 3)),
        0b000100..=0b000111 => ("translation fault", Some(fsc & 3)),
        0b001001..=0b001011 => ("access flag fault", Some(fsc & 3)),
        0b001101..=0b001111 => ("permission fault", Some(fsc & 3)),
        0b010000 => ("synchronous external abort", None),
        0b100001 => ("alignment fault", None),
        _ => ("fault", None),
    }
}

impl fmt::Display for Syndrome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let esr = self.0;
        let ec = exception_class(esr);
        let iss = esr & 0x1ff_ffff;
        match ec {
            EC_DABT_LOWER | EC_IABT_LOWER => {
                let (what, level) = fault_status(iss & 0x3f);
                if ec == EC_IABT_LOWER {
                    write!(f, "instruction abort, ")?;
                } else {
                    let write = iss & (1 << 6) != 0;
                    write!(f, "data abort, {} ", if write { "write" } else { "read" })?;
                    if iss & (1 << 24) != 0 {
                        write!(f, "of {} bytes, ", 1u64 << ((iss >> 22) & 3))?;
                    } else {
                        write!(f, "(no syndrome), ")?;
                    }
                }
                write!(f, "{what}")?;
                if let Some(level) = level {
                    write!(f, " at level {level}")?;
                }
                Ok(())
            }
            EC_SYSREG => {
                let direction = if iss & 1 == 1 { "read" } else { "write" };
                let (op0, op2, op1, crn, rt, crm) = (
                    (iss >> 20) & 3,
                    (iss >> 17) & 7,
                    (iss >> 14) & 7,
                    (iss >> 10) & 0xf,
                    (iss >> 5) & 0x1f,
                    (iss >> 1) & 0xf,
                );
                write!(
                    f,
                    "trapped system register {direction} S{op0}_{op1}_C{crn}_C{crm}_{op2} (x{rt})"
                )
            }
            EC_WFX => write!(f, "{}", if is_wfe(esr) { "WFE" } else { "WFI" }),
            EC_HVC64 => write!(f, "HVC #{}", iss & 0xffff),
            EC_SMC64 => write!(f, "SMC #{}", iss & 0xffff),
            0x00 => write!(f, "unknown reason (undefined instruction)"),
            _ => write!(f, "exception class {ec:#x}, ISS {iss:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_stage2_read_translation_fault() {
        // EC = 0x24, IL, ISV, SAS = 3 (8 bytes), WnR = 0, DFSC = translation fault level 1.
        let esr = (0x24 << 26) | (1 << 25) | (1 << 24) | (3 << 22) | 0b000101;
        assert_eq!(
            Syndrome(esr).to_string(),
            "data abort, read of 8 bytes, translation fault at level 1"
        );
    }

    #[test]
    fn decodes_write_permission_fault() {
        let esr = (0x24 << 26) | (1 << 24) | (2 << 22) | (1 << 6) | 0b001111;
        assert_eq!(
            Syndrome(esr).to_string(),
            "data abort, write of 4 bytes, permission fault at level 3"
        );
    }

    #[test]
    fn fault_ipa_combines_hpfar_and_far() {
        let ipa = 0x4_1234_5678u64;
        let hpfar = (ipa >> 12) << 4;
        assert_eq!(fault_ipa(hpfar, 0xffff_0000_0000_0678), ipa);
    }

    #[test]
    fn decodes_mmio_loads_and_stores() {
        // ldr w3, [x0]: ISV, SAS = 2, SRT = 3, SF = 0, read.
        let ldr_w3 = (0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (3 << 16) | 0b000101;
        let access = mmio_access(ldr_w3).unwrap();
        assert_eq!(
            access,
            MmioAccess {
                size: 4,
                write: false,
                reg: 3,
                sign_extend: false,
                sixty_four: false
            }
        );
        assert_eq!(access.load_value(0xdead_beef), 0xdead_beef);
        // strh w7: SAS = 1, WnR.
        let strh = (0x24 << 26) | (1 << 24) | (1 << 22) | (7 << 16) | (1 << 6);
        let access = mmio_access(strh).unwrap();
        assert!(access.write);
        assert_eq!((access.size, access.reg), (2, 7));
        assert_eq!(access.store_value(0x1234_5678), 0x5678);
        // ldrsb x1: SAS = 0, SSE, SF: 0x80 becomes -128.
        let ldrsb = (0x24 << 26) | (1 << 24) | (1 << 21) | (1 << 16) | (1 << 15);
        assert_eq!(
            mmio_access(ldrsb).unwrap().load_value(0x80),
            (-128i64) as u64
        );
        // ldrsb w1 (SF = 0): sign-extended to 32 bits only.
        let ldrsb_w = (0x24 << 26) | (1 << 24) | (1 << 21) | (1 << 16);
        assert_eq!(mmio_access(ldrsb_w).unwrap().load_value(0x80), 0xffff_ff80);
        // 64-bit store keeps every bit.
        let str_x = (0x24 << 26) | (1 << 24) | (3 << 22) | (1 << 6) | (1 << 15);
        assert_eq!(mmio_access(str_x).unwrap().store_value(u64::MAX), u64::MAX);
    }

    #[test]
    fn refuses_what_it_cannot_emulate() {
        // ISV clear (e.g. ldp).
        let ldp = (0x24 << 26) | (1 << 25) | 0b000101;
        assert_eq!(mmio_access(ldp), Err(MmioDecodeError::NoSyndrome));
        assert_eq!(mmio_access(0x16 << 26), Err(MmioDecodeError::NotDataAbort));
    }

    #[test]
    fn decodes_sysreg_and_wfx() {
        assert_eq!(Syndrome((0x01 << 26) | 1).to_string(), "WFE");
        assert_eq!(Syndrome(0x01 << 26).to_string(), "WFI");
        // CNTP_CTL_EL0 = S3_3_C14_C2_1, write from x2.
        let iss = (3 << 20) | (1 << 17) | (3 << 14) | (14 << 10) | (2 << 5) | (2 << 1);
        assert_eq!(
            Syndrome((0x18 << 26) | iss).to_string(),
            "trapped system register write S3_3_C14_C2_1 (x2)"
        );
    }
}
