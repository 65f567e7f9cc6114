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
//!
//! An interrupt that comes before its handler is registered is not lost: it is ended as any
//! other, and its slot remembers it; [`register`] then calls the new handler once for it (on the
//! registering vCPU, IRQs masked), however many came meanwhile. A source is often live before
//! its handler: the event-channel interrupt is raised as soon as EVTCHN_SETUP has registered
//! the event page, and a peer can send in the moment before `evtchn::init` registers its
//! handler. That event's pending bit then stayed set without an interrupt, every later send on
//! its port found it pending and raised none, and the port went deaf for good (a driver domain
//! whose front-ends all sent in that moment heard no control event for the whole boot). So
//! every handler must look at its source (a page, a device's status) rather than assume one
//! call per interrupt, which the handlers here do (the `virq` test app's SGI counter, which
//! counts calls, is how the test sees the once).

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

/// Words of the missed-interrupt bitmap, one bit per slot.
const MISSED_WORDS: usize = SLOTS.div_ceil(64);

/// The handler of each slot, and which slots had an interrupt while they had none.
struct Table {
    handlers: [Option<Handler>; SLOTS],
    /// Bit `slot`: an interrupt of that slot was acknowledged while it had no handler, and no
    /// handler has been called for it since.
    missed: [u64; MISSED_WORDS],
}

impl Table {
    const fn new() -> Table {
        Table {
            handlers: [None; SLOTS],
            missed: [0; MISSED_WORDS],
        }
    }

    /// An interrupt of `slot` was acknowledged: its handler, or `None` after noting it as
    /// missed (for the next handler registered for it).
    fn arrived(&mut self, slot: usize) -> Option<Handler> {
        let handler = *self.handlers.get(slot)?;
        if handler.is_none() {
            self.missed[slot / 64] |= 1 << (slot % 64);
        }
        handler
    }

    /// Sets the handler of `slot`; returns the handler to call once now if the slot missed an
    /// interrupt before it (and forgets that it did).
    fn set(&mut self, slot: usize, handler: Option<Handler>) -> Option<Handler> {
        let entry = self.handlers.get_mut(slot)?;
        *entry = handler;
        let handler = handler?;
        let bit = 1 << (slot % 64);
        let word = &mut self.missed[slot / 64];
        let missed = *word & bit != 0;
        *word &= !bit;
        missed.then_some(handler)
    }
}

static HANDLERS: Mutex<Table> = Mutex::new(Table::new());

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

/// Sets the handler for `intid` (shared by all vCPUs of the VM), replacing any earlier one. If
/// an interrupt of `intid` came while it had no handler, `handler` is called once for it before
/// this returns (IRQs masked, as from the vector).
pub fn register(intid: u32, handler: Handler) -> Result<(), IrqError> {
    set(intid, Some(handler))
}

/// Removes the handler for `intid`; its interrupts are then acknowledged, ended and remembered
/// for the next handler registered for it.
pub fn unregister(intid: u32) -> Result<(), IrqError> {
    set(intid, None)
}

fn set(intid: u32, handler: Option<Handler>) -> Result<(), IrqError> {
    let slot = slot(intid).ok_or(IrqError::OutOfRange { intid })?;
    gic::without_irqs(|| {
        // The table's lock is released before the call: handlers take locks of their own.
        let missed = HANDLERS.lock().set(slot, handler);
        if let Some(handler) = missed {
            handler(intid);
        }
    });
    Ok(())
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
        match slot(intid) {
            Some(slot) => {
                // Copied out: the handler runs without the table's lock.
                let handler = HANDLERS.lock().arrived(slot);
                match handler {
                    Some(handler) => handler(intid),
                    None => log::debug!("IRQ {intid} came before its handler: kept for it"),
                }
            }
            None => log::warn!("IRQ {intid} can have no handler (out of range): dropped"),
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
        assert!(HANDLERS.lock().handlers.iter().all(Option::is_none));
    }

    static CALLS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

    fn counting(_: u32) {
        CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }

    fn other(_: u32) {}

    #[test]
    fn interrupts_before_a_handler_are_handed_to_it_once_when_it_is_registered() {
        let mut table = Table::new();
        let evtchn = slot(20).unwrap();
        // Three arrivals with no handler: each is remembered, none is handled.
        for _ in 0..3 {
            assert!(table.arrived(evtchn).is_none());
        }
        // Registering hands them to the handler, once.
        let missed = table
            .set(evtchn, Some(counting))
            .expect("the missed interrupts");
        missed(20);
        assert_eq!(CALLS.load(core::sync::atomic::Ordering::Relaxed), 1);
        // ... and only once: a second registration has nothing to catch up on.
        assert!(table.set(evtchn, Some(counting)).is_none());
        // With a handler, an arrival is the handler's at once, not remembered.
        assert!(table.arrived(evtchn).is_some());
        assert!(table.set(evtchn, Some(other)).is_none());
    }

    #[test]
    fn a_missed_interrupt_waits_for_a_handler_and_stays_with_its_own_slot() {
        let mut table = Table::new();
        let (sgi, lpi) = (slot(3).unwrap(), slot(FIRST_LPI + 5).unwrap());
        assert!(table.arrived(lpi).is_none());
        // Another slot's handler does not take it.
        assert!(table.set(sgi, Some(other)).is_none());
        // Removing a handler hands nothing over and does not forget what was missed.
        assert!(table.set(lpi, None).is_none());
        assert!(table.set(lpi, Some(other)).is_some());
        // After an unregister, arrivals are remembered again for the next handler.
        assert!(table.set(lpi, None).is_none());
        assert!(table.arrived(lpi).is_none());
        assert!(table.set(lpi, Some(other)).is_some());
        // Every slot has its own bit, the last one too.
        assert!(table.arrived(SLOTS - 1).is_none());
        assert!(table.set(SLOTS - 2, Some(other)).is_none());
        assert!(table.set(SLOTS - 1, Some(other)).is_some());
        assert!(table.arrived(SLOTS).is_none(), "no slot, nothing noted");
        assert!(table.set(SLOTS, Some(other)).is_none());
    }
}
