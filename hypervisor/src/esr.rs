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
