//! IRQ dispatch: a small table mapping INTIDs to handlers, and the loop the IRQ vector runs
//! (acknowledge, dispatch, end of interrupt) until nothing is pending.
//!
//! Two ranges have handlers: SGIs, PPIs and the first SPIs (below [`MAX_INTID`]), and the
//! first [`LPI_COUNT`] LPIs (from [`FIRST_LPI`]): the virtual LPIs a GICv4 delivers straight
//! into the driver domain for its NIC's MSI-X vectors (issue 15). Every acknowledged INTID but
//! the special 1020..=1023 is ended, handled or not: an LPI left without its EOI would keep the
//! running priority raised and mask everything of lower priority for good.
//!
//! Handlers run on the interrupted vCPU with IRQs masked. They may print, but must not sleep,
//! allocate, or take a lock the interrupted code might hold without masking IRQs.

use spin::Mutex;

use crate::gic;

/// Handlers exist for INTIDs below this: SGIs (0..16), PPIs (16..32) and the first SPIs.
pub const MAX_INTID: u32 = 128;

/// The first LPI INTID.
pub const FIRST_LPI: u32 = 8192;
/// LPIs with handlers: `FIRST_LPI..FIRST_LPI + LPI_COUNT` (MSI-X vectors of a passed device).
pub const LPI_COUNT: u32 = 32;
/// Handler slots: the low range, then the LPIs.
const SLOTS: usize = (MAX_INTID + LPI_COUNT) as usize;

/// An IRQ handler; it receives the INTID it was registered for.
pub type Handler = fn(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IrqError {
    /// The INTID is neither below [`MAX_INTID`] nor one of the LPIs with handlers.
    #[error(
        "INTID {intid} is out of range (handlers exist below {MAX_INTID} and for LPIs \
         {FIRST_LPI}..{})", FIRST_LPI + LPI_COUNT
    )]
    OutOfRange { intid: u32 },
}

static HANDLERS: Mutex<[Option<Handler>; SLOTS]> = Mutex::new([None; SLOTS]);

/// The handler slot of `intid`, if it can have a handler.
fn slot(intid: u32) -> Option<usize> {
    match intid {
        0..MAX_INTID => Some(intid as usize),
        FIRST_LPI.. if intid - FIRST_LPI < LPI_COUNT => {
            Some((MAX_INTID + intid - FIRST_LPI) as usize)
        }
        _ => None,
    }
}

/// Whether an acknowledged INTID is one of the special ones (1020..=1023), which are never
/// ended.
fn is_special(intid: u32) -> bool {
    (1020..=1023).contains(&intid)
}

/// Sets the handler for `intid` (shared by all vCPUs of the VM), replacing any earlier one.
pub fn register(intid: u32, handler: Handler) -> Result<(), IrqError> {
    set(intid, Some(handler))
}

/// Removes the handler for `intid`; its interrupts are then acknowledged and dropped.
pub fn unregister(intid: u32) -> Result<(), IrqError> {
    set(intid, None)
}

fn set(intid: u32, handler: Option<Handler>) -> Result<(), IrqError> {
    let slot = slot(intid).ok_or(IrqError::OutOfRange { intid })?;
    gic::without_irqs(|| HANDLERS.lock()[slot] = handler);
    Ok(())
}

fn handler_for(intid: u32) -> Option<Handler> {
    HANDLERS.lock().get(slot(intid)?).copied().flatten()
}

/// Bounds the work one IRQ exception does, so a storm cannot wedge the vCPU inside the handler.
const MAX_PER_EXCEPTION: usize = 64;

/// Called by the IRQ vector with IRQs masked.
pub(crate) fn handle() {
    for _ in 0..MAX_PER_EXCEPTION {
        let Some(id) = gic::acknowledge() else {
            break;
        };
        let intid = u32::from(id);
        if is_special(intid) {
            // 1020..=1022 cannot occur for group 1 (1023, nothing pending, is `None`).
            break;
        }
        log::trace!("irq {intid}");
        match handler_for(intid) {
            Some(handler) => handler(intid),
            None => log::warn!("unhandled IRQ {intid}"),
        }
        gic::end_of_interrupt(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_exist_for_the_low_intids_and_the_first_lpis_only() {
        assert_eq!(slot(0), Some(0));
        assert_eq!(slot(MAX_INTID - 1), Some(MAX_INTID as usize - 1));
        assert_eq!(slot(FIRST_LPI), Some(MAX_INTID as usize));
        assert_eq!(slot(FIRST_LPI + LPI_COUNT - 1), Some(SLOTS - 1));
        for intid in [
            MAX_INTID,
            1019,
            1020,
            1023,
            4096,
            FIRST_LPI - 1,
            FIRST_LPI + LPI_COUNT,
            u32::MAX,
        ] {
            assert_eq!(slot(intid), None, "{intid}");
        }
    }

    #[test]
    fn only_1020_to_1023_are_special() {
        for intid in [1020, 1021, 1022, 1023] {
            assert!(is_special(intid));
        }
        for intid in [0, 27, 1019, 1024, FIRST_LPI, FIRST_LPI + 1, 65535] {
            assert!(!is_special(intid), "{intid}");
        }
    }

    #[test]
    fn an_intid_without_a_slot_is_refused_before_anything_is_touched() {
        fn h(_: u32) {}
        // (Registering a valid one masks IRQs, a register the host build cannot reach.)
        for intid in [MAX_INTID, FIRST_LPI + LPI_COUNT] {
            assert_eq!(register(intid, h), Err(IrqError::OutOfRange { intid }));
        }
        assert!(handler_for(FIRST_LPI).is_none());
    }
}
