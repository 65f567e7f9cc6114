//! `nicabuse`: a guest that misuses its emulated NIC (`nic = "emulated"`) in every way the
//! device documents (`shared_abi::emunic`) and checks each answer: unimplemented registers,
//! odd access widths, writes to read-only registers, frame lengths the device refuses, and a
//! flood of the data port. Each step must read back the documented value and move the
//! device's own counters (`BAD_ACCESSES`, `TX_ERRORS`) by exactly the number of bad accesses;
//! then the device must still identify itself. Last, with setting `unaligned = true`, an
//! unaligned access, which the guest's Device mapping turns into an alignment fault in the
//! guest itself (it never reaches the device): the runtime reports it and powers off.
//! The harness checks that a bystander pair keeps pinging through the same driver domain.

use alloc::format;
use alloc::string::String;

use shared_abi::emunic::{
    BAD_ACCESSES, BYTE_TEST, BYTE_TEST_VALUE, ID_REV, ID_VALUE, INT_EN, INT_STS, MAC_LO,
    REGISTERS_END, RX_STATUS, TX_CMD, TX_DATA, TX_ERRORS,
};
use vm_runtime::{mmio, println, setting, timer, StartInfo};

/// Data-port writes of the flood.
const FLOOD_WORDS: u64 = 2_000;

pub fn run(info: &StartInfo<'static>) {
    match abuse() {
        Ok(summary) => println!("REPORT ok: emulated NIC abuse: {summary}"),
        Err(why) => {
            println!("REPORT fail: emulated NIC abuse: {why}");
            return;
        }
    }
    if setting(info.settings, "unaligned") == Some("true") {
        println!("nicabuse: reading ID_REV 4 bytes at offset 1 (unaligned)");
        let value = mmio::read(ID_REV + 1, 4);
        println!("nicabuse: the unaligned read returned {value:?}");
    }
}

fn read(offset: u64, size: u8) -> Result<u64, String> {
    mmio::read(offset, size).map_err(|e| format!("{e}"))
}

fn write(offset: u64, size: u8, value: u64) -> Result<(), String> {
    mmio::write(offset, size, value).map_err(|e| format!("{e}"))
}

/// Runs `step` and checks that it moved counter register `counter` by exactly `by`.
fn counted(
    what: &str,
    counter: u64,
    by: u64,
    step: impl FnOnce() -> Result<(), String>,
) -> Result<String, String> {
    let before = read(counter, 4)?;
    step()?;
    let after = read(counter, 4)?;
    if after != before + by {
        return Err(format!(
            "{what}: counter {counter:#x} went {before} -> {after}, expected +{by}"
        ));
    }
    println!("nicabuse: {what}: as documented (counter +{by})");
    Ok(format!("{what} +{by}"))
}

fn expect(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what} read {got:#x}, expected {want:#x}"))
    }
}

fn abuse() -> Result<String, String> {
    expect("ID_REV", read(ID_REV, 4)?, u64::from(ID_VALUE))?;
    let mac_lo = read(MAC_LO, 4)?;
    let start = timer::now();
    let mut done = alloc::vec::Vec::new();
    done.push(counted("unimplemented registers", BAD_ACCESSES, 5, || {
        for offset in [REGISTERS_END, 0x100, 0xffc] {
            expect("an unimplemented register", read(offset, 4)?, 0)?;
        }
        write(0x40, 4, u64::MAX)?;
        write(0x800, 4, u64::MAX)
    })?);
    done.push(counted(
        "read-only registers written",
        BAD_ACCESSES,
        3,
        || {
            write(ID_REV, 4, 0)?;
            write(MAC_LO, 4, 0)?;
            write(RX_STATUS, 4, 0x5ea)?;
            expect(
                "ID_REV after a write",
                read(ID_REV, 4)?,
                u64::from(ID_VALUE),
            )?;
            expect("MAC_LO after a write", read(MAC_LO, 4)?, mac_lo)
        },
    )?);
    done.push(counted("odd widths", BAD_ACCESSES, 6, || {
        expect("ID_REV as 1 byte", read(ID_REV, 1)?, 0)?;
        expect("ID_REV as 2 bytes", read(ID_REV, 2)?, 0)?;
        expect("ID_REV as 8 bytes", read(ID_REV, 8)?, 0)?;
        expect("BYTE_TEST high half", read(BYTE_TEST + 2, 2)?, 0)?;
        write(INT_EN, 1, 0xff)?;
        write(INT_STS, 8, u64::MAX)?;
        // The ignored writes enabled nothing beyond what the driver would set.
        expect("INT_EN", read(INT_EN, 4)?, 0)
    })?);
    done.push(counted("refused frame lengths", TX_ERRORS, 5, || {
        for len in [0, 13, 1515, 65_535, u64::from(u32::MAX)] {
            write(TX_CMD, 4, len)?;
        }
        Ok(())
    })?);
    done.push(counted("data-port flood", TX_ERRORS, FLOOD_WORDS, || {
        for i in 0..FLOOD_WORDS {
            write(TX_DATA, 4, i)?;
        }
        Ok(())
    })?);
    // A frame started and flooded past its end: the first words complete it (the switch
    // drops it: it is not from our MAC), the rest are errors.
    done.push(counted(
        "data past a frame's end",
        TX_ERRORS,
        FLOOD_WORDS - 4,
        || {
            write(TX_CMD, 4, 16)?;
            for _ in 0..FLOOD_WORDS {
                write(TX_DATA, 4, 0)?;
            }
            Ok(())
        },
    )?);
    expect("ID_REV at the end", read(ID_REV, 4)?, u64::from(ID_VALUE))?;
    expect(
        "BYTE_TEST at the end",
        read(BYTE_TEST, 4)?,
        u64::from(BYTE_TEST_VALUE),
    )?;
    let us = timer::ticks_to_us(timer::now() - start);
    println!("nicabuse: the abuse took {us} us");
    Ok(format!("{}; the device still answers", done.join(", ")))
}
