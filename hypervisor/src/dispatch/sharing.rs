//! The grant and event-channel hypercalls routed to the tables that hold their rules
//! ([`GrantTables`], [`EventChannels`]), with what they need of the machine beyond the grant
//! tables' view ([`SharingEnv`]): the heap check before a mapping, event pages, and the
//! hypervisor's record of connection ports. Host-tested; the binary implements the environment
//! over guest RAM and stage 2.

use alloc::vec::Vec;

use shared_abi::hypercall::{self, Status};

use crate::evtchn::{EventChannels, PortStore, SendTarget};
use crate::grant::{GrantEnv, GrantTables, RamRelease, VmId};

/// What the sharing calls need of the machine beyond [`GrantEnv`].
pub trait SharingEnv: GrantEnv {
    /// How the machine holds an event page (see [`PortStore::Page`]).
    type Page: Copy;
    /// The handle of `vm`'s page at `page_gpa` if the whole page is in its RAM (EVTCHN_SETUP).
    fn event_page(&self, vm: VmId, page_gpa: u64) -> Option<Self::Page>;
    /// True while the hypervisor's heap is too low to record another grant mapping: GRANT_MAP
    /// is then refused (`NoSpace`) rather than let an allocation fail.
    fn heap_low(&self) -> bool;
    /// Marks `port` pending in `vm`'s event page `page`; true when `vm` must be interrupted
    /// (the port was neither pending nor masked).
    fn set_pending(&mut self, vm: VmId, page: Self::Page, port: u32) -> bool;
    /// Clears `port`'s mask bit in `vm`'s event page `page`; true when it is pending, so the
    /// event that arrived while masked must be delivered now.
    fn clear_mask(&mut self, vm: VmId, page: Self::Page, port: u32) -> bool;
    /// `caller`'s own port of its connection with VM `peer`, from the hypervisor's record.
    fn connection_port(&self, caller: VmId, peer: u64) -> Option<u32>;
}

/// The answer to one sharing call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharingAnswer {
    /// For x0.
    pub status: Status,
    /// For x1 (calls that return a port).
    pub x1: Option<u64>,
    /// A VM to interrupt with the event-channel interrupt.
    pub notify: Option<VmId>,
    /// RAM of dead VMs that has just lost its last foreign mapping: free it.
    pub released: Vec<RamRelease>,
    /// The caller, device model of this guest's emulated device, signalled its request port:
    /// collect the answers it has given.
    pub answers_from_device_model: Option<VmId>,
}

impl SharingAnswer {
    fn status(status: Status) -> Self {
        SharingAnswer {
            status,
            x1: None,
            notify: None,
            released: Vec::new(),
            answers_from_device_model: None,
        }
    }

    fn done(result: Result<(), Status>) -> Self {
        Self::status(result.err().unwrap_or(Status::Ok))
    }

    fn port(result: Result<u32, Status>) -> Self {
        match result {
            Ok(port) => SharingAnswer {
                x1: Some(u64::from(port)),
                ..Self::status(Status::Ok)
            },
            Err(e) => Self::status(e),
        }
    }

    fn notifying(vm: Option<VmId>) -> Self {
        SharingAnswer {
            notify: vm,
            ..Self::status(Status::Ok)
        }
    }
}

/// Carries out grant or event-channel call `function` of VM `caller` with registers `x`.
pub fn sharing_call<E: SharingEnv>(
    grants: &mut GrantTables,
    events: &mut EventChannels<impl PortStore<Page = E::Page>>,
    env: &mut E,
    caller: VmId,
    function: u64,
    x: &[u64; 31],
) -> SharingAnswer {
    match function {
        hypercall::GRANT_TABLE_SETUP => {
            SharingAnswer::status(grants.setup(env, caller, x[1], x[2]))
        }
        hypercall::GRANT_MAP if env.heap_low() => SharingAnswer::status(Status::NoSpace),
        hypercall::GRANT_MAP => SharingAnswer::status(grants.map_batch(env, caller, x[1], x[2])),
        hypercall::GRANT_UNMAP => {
            let result = grants.unmap_batch(env, caller, x[1], x[2]);
            SharingAnswer {
                released: result.released,
                ..SharingAnswer::status(result.status)
            }
        }
        hypercall::GRANT_COPY => SharingAnswer::status(grants.copy_batch(env, caller, x[1], x[2])),
        hypercall::GRANT_END => SharingAnswer::status(grants.end(env, caller, x[1])),
        hypercall::EVTCHN_SETUP => SharingAnswer::done(events.setup(caller, x[1], |gpa, len| {
            env.in_ram(caller, gpa, len)
                .then(|| env.event_page(caller, gpa))
                .flatten()
        })),
        hypercall::EVTCHN_ALLOC_UNBOUND => SharingAnswer::port(events.alloc_unbound(caller, x[1])),
        hypercall::EVTCHN_BIND_INTERDOMAIN => {
            SharingAnswer::port(events.bind_interdomain(caller, x[1], x[2]))
        }
        hypercall::EVTCHN_SEND => match events.send(caller, x[1]) {
            // A VM without an event page simply does not hear it.
            Ok(SendTarget::Peer(signal)) => {
                SharingAnswer::notifying(signal.page_gpa.and_then(|page| {
                    env.set_pending(signal.vm, page, signal.port)
                        .then_some(signal.vm)
                }))
            }
            Ok(SendTarget::Hypervisor { client }) => SharingAnswer {
                answers_from_device_model: Some(client),
                ..SharingAnswer::status(Status::Ok)
            },
            Err(e) => SharingAnswer::status(e),
        },
        hypercall::EVTCHN_CLOSE => SharingAnswer::done(events.close(caller, x[1])),
        hypercall::CONNECTION_PORT => SharingAnswer::port(
            env.connection_port(caller, x[1])
                .ok_or(Status::InvalidArgument),
        ),
        hypercall::EVTCHN_UNMASK => match events.unmask(caller, x[1]) {
            Ok(page_gpa) => SharingAnswer::notifying(
                env.clear_mask(caller, page_gpa, x[1] as u32)
                    .then_some(caller),
            ),
            Err(e) => SharingAnswer::status(e),
        },
        _ => SharingAnswer::status(Status::NotSupported),
    }
}

#[cfg(test)]
mod tests;
