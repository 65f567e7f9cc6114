//! IRQ dispatch: a small table mapping INTIDs to handlers, and the loop the IRQ vector runs
//! (acknowledge, dispatch, end of interrupt) until nothing is pending.
//!
//! Handlers run on the interrupted vCPU with IRQs masked. They may print, but must not sleep,
//! allocate, or take a lock the interrupted code might hold without masking IRQs.

use spin::Mutex;

use crate::gic;

/// Handlers exist for INTIDs below this: SGIs (0..16), PPIs (16..32) and the first SPIs.
pub const MAX_INTID: u32 = 128;

/// An IRQ handler; it receives the INTID it was registered for.
pub type Handler = fn(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IrqError {
    /// The INTID is not below [`MAX_INTID`].
    #[error("INTID {intid} is out of range (handlers exist below {MAX_INTID})")]
    OutOfRange { intid: u32 },
}

static HANDLERS: Mutex<[Option<Handler>; MAX_INTID as usize]> =
    Mutex::new([None; MAX_INTID as usize]);

/// Sets the handler for `intid` (shared by all vCPUs of the VM), replacing any earlier one.
pub fn register(intid: u32, handler: Handler) -> Result<(), IrqError> {
    set(intid, Some(handler))
}

/// Removes the handler for `intid`; its interrupts are then acknowledged and dropped.
pub fn unregister(intid: u32) -> Result<(), IrqError> {
    set(intid, None)
}

fn set(intid: u32, handler: Option<Handler>) -> Result<(), IrqError> {
    let slot = usize::try_from(intid)
        .ok()
        .filter(|&i| i < MAX_INTID as usize)
        .ok_or(IrqError::OutOfRange { intid })?;
    gic::without_irqs(|| HANDLERS.lock()[slot] = handler);
    Ok(())
}

fn handler_for(intid: u32) -> Option<Handler> {
    HANDLERS.lock().get(intid as usize).copied().flatten()
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
        if intid >= 1020 {
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
