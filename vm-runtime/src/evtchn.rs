//! The guest side of event channels (see `shared_abi::evtchn` for the ABI): this VM's event page,
//! the port hypercalls, and delivery: the hypervisor raises [`EVTCHN_INTID`]; the handler takes
//! the pending ports, records them for [`wait`]/[`take`], and calls a port's handler if it has
//! one. One device interrupt may be bound to the local port [`LOCAL_IRQ_PORT`]
//! ([`bind_local_irq`], like Xen's VIRQ ports), so a driver sleeps on it the same way.

use core::sync::atomic::{AtomicU64, Ordering};

use shared_abi::evtchn::{self as abi, BITMAP_WORDS, EVTCHN_INTID, MAX_PORTS};
use shared_abi::hypercall::{
    Status, CONNECTION_PORT, EVTCHN_ALLOC_UNBOUND, EVTCHN_BIND_INTERDOMAIN, EVTCHN_CLOSE,
    EVTCHN_SEND, EVTCHN_SETUP, EVTCHN_UNMASK,
};
use spin::{Mutex, Once};

use crate::hypercall::{hvc, result};
use crate::page::Page;
use crate::{irq, timer};

static PAGE: Once<&'static Page> = Once::new();

/// Ports the IRQ handler has taken from the event page and not yet consumed by [`take`].
static ARRIVED: [AtomicU64; BITMAP_WORDS] = [const { AtomicU64::new(0) }; BITMAP_WORDS];

/// Port 0 is never allocated (`shared_abi::evtchn::NO_PORT`): it stands for the one device
/// interrupt bound with [`bind_local_irq`], so [`wait`], [`take`] and [`pending`] serve it too.
/// It has no other end: [`send`] on it is refused by the hypervisor.
pub const LOCAL_IRQ_PORT: u32 = abi::NO_PORT;

/// Interrupts taken for [`LOCAL_IRQ_PORT`] since boot.
static LOCAL_IRQS: AtomicU64 = AtomicU64::new(0);

/// Events delivered to this VM since boot (all ports), for statistics.
static DELIVERED: AtomicU64 = AtomicU64::new(0);

/// An event handler: runs in IRQ context (see `irq`), receives the port.
pub type Handler = fn(u32);

static HANDLERS: Mutex<[Option<Handler>; MAX_PORTS as usize]> =
    Mutex::new([None; MAX_PORTS as usize]);

fn port_result(regs: [u64; 4]) -> Result<u32, Status> {
    result(regs[0])?;
    u32::try_from(regs[1]).map_err(|_| Status::InvalidArgument)
}

/// Allocates and registers the event page (EVTCHN_SETUP) and installs the interrupt handler.
/// Call once, before using ports.
pub fn init() -> Result<(), Status> {
    if PAGE.get().is_some() {
        return Err(Status::Busy);
    }
    let page = Page::leak();
    result(hvc(EVTCHN_SETUP, [page.gpa(), 0, 0, 0, 0, 0])[0])?;
    PAGE.call_once(|| page);
    irq::register(EVTCHN_INTID, on_irq).map_err(|_| Status::InvalidArgument)?;
    Ok(())
}

fn on_irq(_intid: u32) {
    let Some(page) = PAGE.get() else { return };
    // The interrupt was acknowledged before this runs, so an event set after the take below
    // raises a new one (the rule in shared_abi::evtchn).
    for port in abi::take_pending(page.words()) {
        DELIVERED.fetch_add(1, Ordering::Relaxed);
        let handler = HANDLERS.lock().get(port as usize).copied().flatten();
        match handler {
            Some(handler) => handler(port),
            None => {
                ARRIVED[(port / 64) as usize].fetch_or(1 << (port % 64), Ordering::Release);
            }
        }
    }
}

/// Routes device interrupt `intid` to [`LOCAL_IRQ_PORT`]: each one marks the port arrived.
pub fn bind_local_irq(intid: u32) -> Result<u32, irq::IrqError> {
    irq::register(intid, on_local_irq)?;
    Ok(LOCAL_IRQ_PORT)
}

fn on_local_irq(_intid: u32) {
    LOCAL_IRQS.fetch_add(1, Ordering::Relaxed);
    ARRIVED[0].fetch_or(1 << LOCAL_IRQ_PORT, Ordering::Release);
}

/// Interrupts taken for [`LOCAL_IRQ_PORT`] so far.
pub fn local_irqs() -> u64 {
    LOCAL_IRQS.load(Ordering::Relaxed)
}

/// EVTCHN_ALLOC_UNBOUND: a new local port that VM `remote` may bind to.
pub fn alloc_unbound(remote: u16) -> Result<u32, Status> {
    port_result(hvc(
        EVTCHN_ALLOC_UNBOUND,
        [u64::from(remote), 0, 0, 0, 0, 0],
    ))
}

/// EVTCHN_BIND_INTERDOMAIN: connects a new local port to `remote`'s unbound `remote_port`.
pub fn bind_interdomain(remote: u16, remote_port: u32) -> Result<u32, Status> {
    port_result(hvc(
        EVTCHN_BIND_INTERDOMAIN,
        [u64::from(remote), u64::from(remote_port), 0, 0, 0, 0],
    ))
}

/// CONNECTION_PORT: our own port of the connection with VM `peer`, as the hypervisor set it
/// up (the control page's header holds a copy, but the peer can write that page).
pub fn connection_port(peer: u16) -> Result<u32, Status> {
    port_result(hvc(CONNECTION_PORT, [u64::from(peer), 0, 0, 0, 0, 0]))
}

/// EVTCHN_SEND: signals the other end of `port`.
pub fn send(port: u32) -> Result<(), Status> {
    result(hvc(EVTCHN_SEND, [u64::from(port), 0, 0, 0, 0, 0])[0])
}

/// EVTCHN_CLOSE.
pub fn close(port: u32) -> Result<(), Status> {
    set_handler(port, None);
    result(hvc(EVTCHN_CLOSE, [u64::from(port), 0, 0, 0, 0, 0])[0])
}

/// Sets the mask bit of `port` in the event page (no interrupt for it until unmasked).
pub fn mask(port: u32) -> bool {
    PAGE.get().is_some_and(|p| abi::set_mask(p.words(), port))
}

/// EVTCHN_UNMASK: clears the mask bit; the hypervisor re-raises the interrupt if it is pending.
pub fn unmask(port: u32) -> Result<(), Status> {
    result(hvc(EVTCHN_UNMASK, [u64::from(port), 0, 0, 0, 0, 0])[0])
}

/// Runs `handler` (in IRQ context) for each event on `port`, instead of recording it for
/// [`take`]/[`wait`]; `None` goes back to recording.
pub fn set_handler(port: u32, handler: Option<Handler>) {
    crate::gic::without_irqs(|| {
        if let Some(slot) = HANDLERS.lock().get_mut(port as usize) {
            *slot = handler;
        }
    });
}

/// Whether an event is recorded for `port` (without consuming it).
pub fn pending(port: u32) -> bool {
    port < MAX_PORTS
        && ARRIVED[(port / 64) as usize].load(Ordering::Acquire) & (1 << (port % 64)) != 0
}

/// Consumes an event recorded for `port`; true if there was one.
pub fn take(port: u32) -> bool {
    if port >= MAX_PORTS {
        return false;
    }
    let bit = 1u64 << (port % 64);
    ARRIVED[(port / 64) as usize].fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

/// Waits (in WFI, other vCPUs run) until an event arrives on `port` or `timeout_ticks` pass;
/// true if an event arrived (and was consumed).
pub fn wait(port: u32, timeout_ticks: u64) -> bool {
    if take(port) {
        return true;
    }
    let deadline = timer::now().saturating_add(timeout_ticks);
    timer::wait_until(deadline, || take(port))
}

/// Events delivered to this VM so far.
pub fn delivered() -> u64 {
    DELIVERED.load(Ordering::Relaxed)
}
