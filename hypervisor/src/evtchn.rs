//! Event channels, hypervisor side: who is bound to whom, and each VM's event page.
//!
//! This module owns the port tables of every VM id `1..=MAX_VMS` (ports `1..MAX_PORTS`; port 0
//! is never allocated) and the GPA of each VM's registered event page. It decides *whether* and
//! *where* an event goes; it never touches guest memory. The page layout and the atomic
//! pending/mask operations are `shared_abi::evtchn`; the hypercalls are in
//! `shared_abi::hypercall`.
//!
//! # Use from the hypercall handler
//!
//! One [`EventChannels`] for the machine over a [`PortStore`] that holds each VM's table
//! ([`VmPorts`]): the hypervisor keeps each under that VM's own lock, and makes every change
//! (setup, bind, close, death) holding the HV lock, one VM's table at a time. EVTCHN_SEND and
//! EVTCHN_UNMASK need no HV lock: they run on the tables alone ([`VmPorts::route`] on the
//! sender's, then [`VmPorts::deliver_from`] on the target's, which checks the binding still
//! holds; [`VmPorts::unmask`]), as [`EventChannels::send`] and [`EventChannels::unmask`] do
//! here. Guest-provided register values are passed as the raw `u64`s, so no truncation can turn
//! a bad value into a good one:
//!
//! | hypercall               | call                                     | on `Ok(v)`      |
//! |-------------------------|------------------------------------------|-----------------|
//! | EVTCHN_SETUP            | [`setup`]`(caller, x1, in_ram)`          | x0 = Ok         |
//! | EVTCHN_ALLOC_UNBOUND    | [`alloc_unbound`]`(caller, x1)`          | x1 = `v`        |
//! | EVTCHN_BIND_INTERDOMAIN | [`bind_interdomain`]`(caller, x1, x2)`   | x1 = `v`        |
//! | EVTCHN_SEND             | [`send`]`(caller, x1)`                   | deliver `v`     |
//! | EVTCHN_CLOSE            | [`close`]`(caller, x1)`                  | x0 = Ok         |
//! | EVTCHN_UNMASK           | [`unmask`]`(caller, x1)`                 | clear mask on `v` |
//!
//! [`setup`]: EventChannels::setup
//! [`alloc_unbound`]: EventChannels::alloc_unbound
//! [`bind_interdomain`]: EventChannels::bind_interdomain
//! [`send`]: EventChannels::send
//! [`close`]: EventChannels::close
//! [`unmask`]: EventChannels::unmask
//!
//! `Err(status)` goes to x0 as is.
//!
//! - **Send.** [`Signal`] names the target VM, its port and its event page. The hypervisor calls
//!   `shared_abi::evtchn::set_pending` on that page for that port and raises `EVTCHN_INTID` on
//!   the target when it returns `Delivery::Notify`. If the target has no event page yet
//!   (`page_gpa == None`) there is nowhere to record the event and it is dropped; the call still
//!   succeeds, because the sender did nothing wrong. Protocols register the page before they
//!   publish a port.
//! - **Unmask.** Returns the caller's event page; the hypervisor calls `clear_mask` on it and
//!   raises `EVTCHN_INTID` on the caller if the port was pending.
//! - **Hypervisor-made channels.** [`EventChannels::bind_pair`] connects two VMs directly (the
//!   handshake's control ports).
//! - **Death and reset.** [`EventChannels::vm_died`] closes all ports of the VM and forgets its
//!   page. A reset is a death followed by a new VM with the same id: the new incarnation starts
//!   with no ports and must register its page again.
//!
//! # Decisions
//!
//! - **Close and death are Xen's.** Closing a bound port frees it and turns the peer's end into
//!   `Unbound { remote: closer }`, so the closer (or its next incarnation, after a reset) can bind
//!   to it again and the peer keeps its port number; e.g. after a reset the hypervisor can call
//!   `bind_interdomain(reset_vm, peer, peer_port)` to reconnect a control channel. Ports that
//!   other VMs allocated unbound for a dead VM stay unbound for that id, as in Xen.
//! - **Send to a peer that closed or died** is `BadPort`: the sender's end is `Unbound` by then,
//!   and sending needs a bound port. (Xen silently drops such a send; an error tells the guest
//!   that its peer is gone.) [`EventChannels::vm_died`] returns the peer ends it unbound, so the
//!   hypervisor may signal them if a protocol wants to learn of the death.
//! - **No storm protection here.** Delivery is idempotent: `set_pending` on an already pending
//!   port reports `AlreadyPending` and raises no interrupt, so a sender looping on EVTCHN_SEND
//!   costs the target at most one interrupt per take of its pending bits (and costs the sender
//!   its own time slice).
//!
//! # Status of every error
//!
//! | call                | rule broken                                     | status            |
//! |---------------------|-------------------------------------------------|-------------------|
//! | any                 | caller not a VM id (a hypervisor bug)           | `InvalidArgument` |
//! | SETUP               | page not page aligned, or not in caller's RAM   | `InvalidArgument` |
//! | ALLOC, BIND, pair   | remote not a VM id, or the caller itself        | `InvalidArgument` |
//! | BIND                | remote port 0, out of range, not `Unbound`      | `BadPort`         |
//! | BIND                | remote port unbound for another VM              | `Denied`          |
//! | ALLOC, BIND, pair   | no free port left (either side for `bind_pair`) | `NoSpace`         |
//! | SEND                | port 0, out of range, `Free` or `Unbound`       | `BadPort`         |
//! | CLOSE, UNMASK       | port 0, out of range or `Free`                  | `BadPort`         |
//! | UNMASK              | the caller has no event page                    | `InvalidArgument` |
//!
//! Checked top to bottom; the first broken rule decides.

use alloc::vec;
use alloc::vec::Vec;

use shared_abi::evtchn::{MAX_PORTS, NO_PORT};
use shared_abi::hypercall::Status;
use shared_abi::layout::{MAX_VMS, PAGE_SIZE};

use crate::grant::{vm_index, VmId};

/// A port number, `1..MAX_PORTS`.
pub type Port = u32;

/// One port of one VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PortState {
    #[default]
    Free,
    /// Allocated; only `remote` may bind to it.
    Unbound { remote: VmId },
    /// Connected to `remote_port` of `remote`.
    Interdomain { remote: VmId, remote_port: Port },
    /// Bound to the hypervisor: the request port of guest `client`'s emulated device, whose
    /// device model owns the port (see `shared_abi::ioreq`). The hypervisor marks it pending
    /// when it posts a request; the owner's EVTCHN_SEND on it says "answers are ready". Made
    /// only by [`EventChannels::bind_hypervisor`]; the owner cannot close it.
    Hypervisor { client: VmId },
}

/// Where an EVTCHN_SEND goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendTarget<P = u64> {
    /// To the peer at the other end of an interdomain port.
    Peer(Signal<P>),
    /// To the hypervisor: the device model of guest `client` has answered requests.
    Hypervisor { client: VmId },
}

/// Where an EVTCHN_SEND goes: mark `port` pending on `vm`'s event page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal<P = u64> {
    pub vm: VmId,
    pub port: Port,
    /// The target's event page (its handle, see [`PortStore::Page`]), `None` if it registered
    /// none (the event is then dropped).
    pub page_gpa: Option<P>,
}

/// A port of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRef {
    pub vm: VmId,
    pub port: Port,
}

/// Where a port of the sender leads, as its own table says ([`VmPorts::route`]): the first
/// half of a send, decided under the sender's table alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To `port` of VM `vm`; the target's table must still agree ([`VmPorts::deliver_from`]).
    Peer(PortRef),
    /// To the hypervisor: the device model of guest `client` has answered requests.
    Hypervisor { client: VmId },
}

/// One VM's event channels: its ports and its registered event page. The running hypervisor
/// keeps each VM's under that VM's own lock (so a send takes no lock another pair of VMs
/// needs); `P` is how it holds the event page (the host tests: its GPA).
#[derive(Clone, Debug)]
pub struct VmPorts<P = u64> {
    /// The page's GPA and the caller's handle for it.
    page: Option<(u64, P)>,
    /// Indexed by port; entry 0 (NO_PORT) stays `Free` forever.
    ports: Vec<PortState>,
}

impl<P: Copy> Default for VmPorts<P> {
    fn default() -> Self {
        VmPorts {
            page: None,
            ports: vec![PortState::Free; MAX_PORTS as usize],
        }
    }
}

impl<P: Copy> VmPorts<P> {
    /// Lowest free port, never port 0.
    fn free_port(&self) -> Option<Port> {
        self.ports
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, state)| **state == PortState::Free)
            .map(|(port, _)| port as Port)
    }

    /// The GPA of the event page, if one is registered.
    pub fn page_gpa(&self) -> Option<u64> {
        self.page.map(|(gpa, _)| gpa)
    }

    /// The event page's handle, if one is registered.
    pub fn page(&self) -> Option<P> {
        self.page.map(|(_, page)| page)
    }

    /// EVTCHN_SEND's first half, on the sender's table: where its (guest-given) `port` leads.
    /// Only a bound port can send.
    pub fn route(&self, port: u64) -> Result<Route, Status> {
        let port = port_number(port)?;
        match self.ports[port as usize] {
            PortState::Interdomain {
                remote,
                remote_port,
            } => Ok(Route::Peer(PortRef {
                vm: remote,
                port: remote_port,
            })),
            PortState::Hypervisor { client } => Ok(Route::Hypervisor { client }),
            PortState::Free | PortState::Unbound { .. } => Err(Status::BadPort),
        }
    }

    /// EVTCHN_SEND's second half, on the target's table: `port` must still be bound to `from`'s
    /// `from_port` (the sender's table was read under another lock, and a close or a death may
    /// have come between: the send then fails as if it came after, `BadPort`). Returns the
    /// target's event page, `None` if it has none (the event is dropped).
    pub fn deliver_from(
        &self,
        port: Port,
        from: VmId,
        from_port: Port,
    ) -> Result<Option<P>, Status> {
        let bound = PortState::Interdomain {
            remote: from,
            remote_port: from_port,
        };
        match self.ports.get(port as usize) {
            Some(state) if *state == bound => Ok(self.page()),
            _ => Err(Status::BadPort),
        }
    }

    /// EVTCHN_UNMASK on this VM's table: checks that it owns `port` and returns its event page,
    /// on which the hypervisor clears the mask bit (and re-raises the interrupt if pending).
    pub fn unmask(&self, port: u64) -> Result<P, Status> {
        let port = port_number(port)?;
        if self.ports[port as usize] == PortState::Free {
            return Err(Status::BadPort);
        }
        self.page().ok_or(Status::InvalidArgument)
    }
}

/// Where [`EventChannels`] keeps the VMs' tables. The host tests keep them in one vector
/// ([`PortVec`]); the hypervisor keeps each under its VM's lock and takes that lock for the
/// length of `f` (one VM at a time: no two tables are ever held together).
pub trait PortStore {
    /// How an event page is held (a GPA in the tests, a host mapping in the hypervisor).
    type Page: Copy;
    /// Runs `f` on the table of the VM at `index` (`0..MAX_VMS`, from [`vm_index`]).
    fn with<R>(&mut self, index: usize, f: impl FnOnce(&mut VmPorts<Self::Page>) -> R) -> R;
}

/// Every VM's table in one vector.
#[derive(Debug)]
pub struct PortVec(Vec<VmPorts>);

impl PortStore for PortVec {
    type Page = u64;
    fn with<R>(&mut self, index: usize, f: impl FnOnce(&mut VmPorts) -> R) -> R {
        f(&mut self.0[index])
    }
}

/// One connection the hypervisor set up (a front-end, its back-end, and each side's port of
/// their control channel), as [`own_connection_port`] reads it.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLink {
    pub frontend: VmId,
    pub backend: VmId,
    pub frontend_port: Port,
    pub backend_port: Port,
}

/// CONNECTION_PORT: `caller`'s own port of its connection with `peer` (a guest-given id), if
/// the two are connected either way round.
pub fn own_connection_port(
    mut links: impl Iterator<Item = ConnectionLink>,
    caller: VmId,
    peer: u64,
) -> Option<Port> {
    let peer = VmId::try_from(peer).ok()?;
    links.find_map(|c| {
        if c.frontend == caller && c.backend == peer {
            Some(c.frontend_port)
        } else if c.backend == caller && c.frontend == peer {
            Some(c.backend_port)
        } else {
            None
        }
    })
}

/// Port tables and event pages of every VM, over a [`PortStore`]. See the module
/// documentation. Every change to the tables goes through here; in the hypervisor, under the HV
/// lock, so two changes never interleave, while a send or an unmask reads one VM's table under
/// that VM's lock only ([`VmPorts::route`], [`VmPorts::deliver_from`], [`VmPorts::unmask`]).
#[derive(Debug)]
pub struct EventChannels<S = PortVec> {
    store: S,
}

impl Default for EventChannels {
    fn default() -> Self {
        Self::new()
    }
}

/// Index of the caller (trusted, but a bad id must not panic).
fn caller_index(caller: VmId) -> Result<usize, Status> {
    vm_index(caller).ok_or(Status::InvalidArgument)
}

/// A guest-given remote VM id: a VM id other than the caller's.
fn remote_id(caller: VmId, remote: u64) -> Result<(VmId, usize), Status> {
    let remote = VmId::try_from(remote).map_err(|_| Status::InvalidArgument)?;
    match vm_index(remote) {
        Some(index) if remote != caller => Ok((remote, index)),
        _ => Err(Status::InvalidArgument),
    }
}

/// A guest-given port number in `1..MAX_PORTS`.
fn port_number(port: u64) -> Result<Port, Status> {
    match Port::try_from(port) {
        Ok(port) if port != NO_PORT && port < MAX_PORTS => Ok(port),
        _ => Err(Status::BadPort),
    }
}

impl EventChannels {
    pub fn new() -> Self {
        EventChannels {
            store: PortVec((0..MAX_VMS).map(|_| VmPorts::default()).collect()),
        }
    }
}

impl<S: PortStore> EventChannels<S> {
    /// The tables kept in `store`.
    pub fn over(store: S) -> Self {
        EventChannels { store }
    }

    /// EVTCHN_SETUP: registers (or replaces) `caller`'s event page. `resolve(gpa, len)` must
    /// return the page's handle if `[gpa, gpa + len)` lies inside the caller's RAM; it is called
    /// with `len == PAGE_SIZE` for an aligned `page_gpa`.
    pub fn setup(
        &mut self,
        caller: VmId,
        page_gpa: u64,
        resolve: impl FnOnce(u64, u64) -> Option<S::Page>,
    ) -> Result<(), Status> {
        let ci = caller_index(caller)?;
        if !page_gpa.is_multiple_of(PAGE_SIZE) {
            return Err(Status::InvalidArgument);
        }
        let page = resolve(page_gpa, PAGE_SIZE).ok_or(Status::InvalidArgument)?;
        self.store.with(ci, |vm| vm.page = Some((page_gpa, page)));
        Ok(())
    }

    /// The GPA of `vm`'s event page, if it registered one.
    pub fn event_page(&mut self, vm: VmId) -> Option<u64> {
        self.store.with(vm_index(vm)?, |v| v.page_gpa())
    }

    /// The handle of `vm`'s event page, if it registered one.
    pub fn event_page_handle(&mut self, vm: VmId) -> Option<S::Page> {
        self.store.with(vm_index(vm)?, |v| v.page())
    }

    /// State of `vm`'s `port` (`None` for a bad id or port number).
    pub fn state(&mut self, vm: VmId, port: Port) -> Option<PortState> {
        self.store
            .with(vm_index(vm)?, |v| v.ports.get(port as usize).copied())
    }

    /// EVTCHN_ALLOC_UNBOUND: a new port of `caller` that only `remote` may bind to.
    pub fn alloc_unbound(&mut self, caller: VmId, remote: u64) -> Result<Port, Status> {
        let ci = caller_index(caller)?;
        let (remote, _) = remote_id(caller, remote)?;
        self.store.with(ci, |vm| {
            let port = vm.free_port().ok_or(Status::NoSpace)?;
            vm.ports[port as usize] = PortState::Unbound { remote };
            Ok(port)
        })
    }

    /// EVTCHN_BIND_INTERDOMAIN: connects a new port of `caller` to `remote`'s `remote_port`,
    /// which must be unbound for the caller.
    pub fn bind_interdomain(
        &mut self,
        caller: VmId,
        remote: u64,
        remote_port: u64,
    ) -> Result<Port, Status> {
        let ci = caller_index(caller)?;
        let (remote, ri) = remote_id(caller, remote)?;
        let remote_port = port_number(remote_port)?;
        match self.store.with(ri, |vm| vm.ports[remote_port as usize]) {
            PortState::Unbound { remote: allowed } if allowed == caller => {}
            PortState::Unbound { .. } => return Err(Status::Denied),
            _ => return Err(Status::BadPort),
        }
        let port = self.store.with(ci, |vm| {
            let port = vm.free_port().ok_or(Status::NoSpace)?;
            vm.ports[port as usize] = PortState::Interdomain {
                remote,
                remote_port,
            };
            Ok(port)
        })?;
        self.store.with(ri, |vm| {
            vm.ports[remote_port as usize] = PortState::Interdomain {
                remote: caller,
                remote_port: port,
            }
        });
        Ok(port)
    }

    /// Connects a new port of `a` to a new port of `b` (for channels the hypervisor sets up
    /// itself). Returns `(port of a, port of b)`; allocates nothing on error.
    pub fn bind_pair(&mut self, a: VmId, b: VmId) -> Result<(Port, Port), Status> {
        let ai = caller_index(a)?;
        let (b, bi) = remote_id(a, b as u64)?;
        let port_a = self
            .store
            .with(ai, |vm| vm.free_port())
            .ok_or(Status::NoSpace)?;
        let port_b = self
            .store
            .with(bi, |vm| vm.free_port())
            .ok_or(Status::NoSpace)?;
        self.store.with(ai, |vm| {
            vm.ports[port_a as usize] = PortState::Interdomain {
                remote: b,
                remote_port: port_b,
            }
        });
        self.store.with(bi, |vm| {
            vm.ports[port_b as usize] = PortState::Interdomain {
                remote: a,
                remote_port: port_a,
            }
        });
        Ok((port_a, port_b))
    }

    /// A new port of `owner` bound to the hypervisor as the request port of guest `client`'s
    /// emulated device (the owner is its device model).
    pub fn bind_hypervisor(&mut self, owner: VmId, client: VmId) -> Result<Port, Status> {
        let oi = caller_index(owner)?;
        let (client, _) = remote_id(owner, u64::from(client))?;
        self.store.with(oi, |vm| {
            let port = vm.free_port().ok_or(Status::NoSpace)?;
            vm.ports[port as usize] = PortState::Hypervisor { client };
            Ok(port)
        })
    }

    /// EVTCHN_SEND: where the event on `caller`'s `port` goes. Only a bound port can send.
    /// Read as the hypervisor's fast path reads it: the caller's table, then the target's.
    pub fn send(&mut self, caller: VmId, port: u64) -> Result<SendTarget<S::Page>, Status> {
        let ci = caller_index(caller)?;
        match self.store.with(ci, |vm| vm.route(port))? {
            Route::Peer(to) => {
                let ti = vm_index(to.vm).ok_or(Status::BadPort)?;
                // `port` is a valid port number: `route` checked it.
                let page = self
                    .store
                    .with(ti, |vm| vm.deliver_from(to.port, caller, port as Port))?;
                Ok(SendTarget::Peer(Signal {
                    vm: to.vm,
                    port: to.port,
                    page_gpa: page,
                }))
            }
            Route::Hypervisor { client } => Ok(SendTarget::Hypervisor { client }),
        }
    }

    /// EVTCHN_CLOSE: frees `caller`'s `port`; a bound peer's end becomes unbound for the caller.
    pub fn close(&mut self, caller: VmId, port: u64) -> Result<(), Status> {
        let ci = caller_index(caller)?;
        let port = port_number(port)?;
        match self.store.with(ci, |vm| vm.ports[port as usize]) {
            PortState::Free => return Err(Status::BadPort),
            // The hypervisor's channel: closing it would leave the guest's requests unheard.
            PortState::Hypervisor { .. } => return Err(Status::Denied),
            PortState::Unbound { .. } => {}
            PortState::Interdomain {
                remote,
                remote_port,
            } => {
                self.unbind_peer_end(caller, port, remote, remote_port);
            }
        }
        self.store
            .with(ci, |vm| vm.ports[port as usize] = PortState::Free);
        Ok(())
    }

    /// EVTCHN_UNMASK: checks that `caller` owns `port` and returns the caller's event page, on
    /// which the hypervisor clears the mask bit (and re-raises the interrupt if pending).
    pub fn unmask(&mut self, caller: VmId, port: u64) -> Result<S::Page, Status> {
        let ci = caller_index(caller)?;
        self.store.with(ci, |vm| vm.unmask(port))
    }

    /// `vm` has stopped (killed, powered off or reset): closes all its ports and forgets its
    /// event page. Returns the peer ends that were bound to it and are now unbound for `vm`.
    pub fn vm_died(&mut self, vm: VmId) -> Vec<PortRef> {
        let mut unbound = Vec::new();
        let Some(vi) = vm_index(vm) else {
            return unbound;
        };
        let ports = self.store.with(vi, |v| {
            v.page = None;
            core::mem::replace(&mut v.ports, vec![PortState::Free; MAX_PORTS as usize])
        });
        for (port, state) in ports.into_iter().enumerate() {
            if let PortState::Interdomain {
                remote,
                remote_port,
            } = state
            {
                if self.unbind_peer_end(vm, port as Port, remote, remote_port) {
                    unbound.push(PortRef {
                        vm: remote,
                        port: remote_port,
                    });
                }
            }
        }
        unbound
    }

    /// Turns `remote`'s `remote_port` into `Unbound { remote: closer }` if it is the other end of
    /// `closer`'s `port` (it always is while the tables are consistent; checked anyway so a bug
    /// elsewhere cannot free an unrelated port).
    fn unbind_peer_end(
        &mut self,
        closer: VmId,
        port: Port,
        remote: VmId,
        remote_port: Port,
    ) -> bool {
        let Some(ri) = vm_index(remote) else {
            return false;
        };
        self.store.with(ri, |vm| {
            let Some(end) = vm.ports.get_mut(remote_port as usize) else {
                return false;
            };
            if *end
                == (PortState::Interdomain {
                    remote: closer,
                    remote_port: port,
                })
            {
                *end = PortState::Unbound { remote: closer };
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared_abi::layout::GUEST_RAM_BASE;

    const PAGE: u64 = GUEST_RAM_BASE + 0x3000;

    /// A send's signal to a peer (a send to the hypervisor is not one).
    fn peer(sent: Result<SendTarget, Status>) -> Result<Signal, Status> {
        match sent? {
            SendTarget::Peer(signal) => Ok(signal),
            SendTarget::Hypervisor { client } => panic!("a send to the hypervisor for {client}"),
        }
    }

    #[test]
    fn a_request_port_reaches_only_the_hypervisor_and_stays_open() {
        let mut ec = world();
        let port = ec.bind_hypervisor(1, 3).unwrap();
        assert_eq!(ec.state(1, port), Some(PortState::Hypervisor { client: 3 }));
        assert_eq!(
            ec.send(1, u64::from(port)),
            Ok(SendTarget::Hypervisor { client: 3 })
        );
        // Nobody else can send on it, bind to it, or close it.
        assert_eq!(ec.send(3, u64::from(port)), Err(Status::BadPort));
        assert_eq!(
            ec.bind_interdomain(3, 1, u64::from(port)),
            Err(Status::BadPort)
        );
        assert_eq!(ec.close(1, u64::from(port)), Err(Status::Denied));
        // Unmask works on it like on any port of the owner.
        assert_eq!(ec.unmask(1, u64::from(port)), Ok(PAGE));
        // Bad ids are refused; a death frees it.
        assert_eq!(ec.bind_hypervisor(1, 1), Err(Status::InvalidArgument));
        assert_eq!(ec.bind_hypervisor(0, 3), Err(Status::InvalidArgument));
        assert!(ec.vm_died(1).is_empty());
        assert_eq!(ec.state(1, port), Some(PortState::Free));
    }

    /// VM 1's port bound to a port of VM 2: `(port of 1, port of 2)`.
    fn bound_pair(ec: &mut EventChannels) -> (Port, Port) {
        let a = ec.alloc_unbound(1, 2).unwrap();
        let b = ec.bind_interdomain(2, 1, u64::from(a)).unwrap();
        (a, b)
    }

    #[test]
    fn a_send_read_in_two_halves_delivers_only_to_the_port_still_bound_to_the_sender() {
        let mut ec = world();
        let (a, b) = bound_pair(&mut ec);
        // The sender's half, under its own table only.
        let route = ec.store.0[0].route(u64::from(a));
        assert_eq!(route, Ok(Route::Peer(PortRef { vm: 2, port: b })));
        // The target's half, under its own table only.
        assert_eq!(ec.store.0[1].deliver_from(b, 1, a), Ok(Some(PAGE)));
        // Another sender, or another of the sender's ports, is not who the port is bound to.
        assert_eq!(ec.store.0[1].deliver_from(b, 3, a), Err(Status::BadPort));
        assert_eq!(
            ec.store.0[1].deliver_from(b, 1, a + 1),
            Err(Status::BadPort)
        );
        // The target closes its end between the halves, and its port number is bound again,
        // to VM 3: the send fails as if it came after the close, and VM 3's channel hears
        // nothing of it.
        ec.close(2, u64::from(b)).unwrap();
        assert_eq!(ec.store.0[1].deliver_from(b, 1, a), Err(Status::BadPort));
        let c = ec.alloc_unbound(3, 2).unwrap();
        assert_eq!(
            ec.bind_interdomain(2, 3, u64::from(c)),
            Ok(b),
            "the number is reused"
        );
        assert_eq!(ec.store.0[1].deliver_from(b, 1, a), Err(Status::BadPort));
        // So does a death of the target between the halves.
        let (a, b) = bound_pair(&mut ec);
        assert_eq!(
            ec.store.0[0].route(u64::from(a)),
            Ok(Route::Peer(PortRef { vm: 2, port: b }))
        );
        ec.vm_died(2);
        assert_eq!(ec.store.0[1].deliver_from(b, 1, a), Err(Status::BadPort));
        // Port numbers out of range, in either half.
        for port in [0, MAX_PORTS, u32::MAX] {
            assert_eq!(ec.store.0[1].deliver_from(port, 1, a), Err(Status::BadPort));
            assert_eq!(ec.store.0[0].route(u64::from(port)), Err(Status::BadPort));
        }
        assert_eq!(ec.store.0[0].route(u64::MAX), Err(Status::BadPort));
    }

    #[test]
    fn a_target_without_an_event_page_is_still_reached_and_hears_nothing() {
        let mut ec = EventChannels::new();
        ec.setup(1, PAGE, in_ram).unwrap();
        let (a, b) = bound_pair(&mut ec);
        assert_eq!(ec.store.0[1].deliver_from(b, 1, a), Ok(None));
        assert_eq!(ec.store.0[0].deliver_from(a, 2, b), Ok(Some(PAGE)));
        // Unmask on a table alone: the owner's page, or why not.
        assert_eq!(ec.store.0[0].unmask(u64::from(a)), Ok(PAGE));
        assert_eq!(
            ec.store.0[1].unmask(u64::from(b)),
            Err(Status::InvalidArgument)
        );
        assert_eq!(ec.store.0[0].unmask(u64::from(a) + 1), Err(Status::BadPort));
        assert_eq!(ec.store.0[0].unmask(0), Err(Status::BadPort));
    }

    /// A store that counts how often it is entered and never lends two tables at once (the
    /// hypervisor's takes one VM's lock per entry).
    struct Counting {
        tables: PortVec,
        entered: usize,
        inside: bool,
    }

    impl PortStore for Counting {
        type Page = u64;
        fn with<R>(&mut self, index: usize, f: impl FnOnce(&mut VmPorts) -> R) -> R {
            assert!(!self.inside, "two tables held at once");
            self.inside = true;
            self.entered += 1;
            let r = self.tables.with(index, f);
            self.inside = false;
            r
        }
    }

    #[test]
    fn changes_take_one_table_at_a_time_and_agree_with_the_vector() {
        let mut counted = EventChannels::over(Counting {
            tables: PortVec((0..MAX_VMS).map(|_| VmPorts::default()).collect()),
            entered: 0,
            inside: false,
        });
        let mut plain = world();
        for vm in 1..=3 {
            counted.setup(vm, PAGE, in_ram).unwrap();
        }
        let a = counted.alloc_unbound(1, 2).unwrap();
        let b = counted.bind_interdomain(2, 1, u64::from(a)).unwrap();
        let (pa, pb) = bound_pair(&mut plain);
        assert_eq!((a, b), (pa, pb));
        let (x, y) = counted.bind_pair(1, 3).unwrap();
        assert_eq!(plain.bind_pair(1, 3), Ok((x, y)));
        assert_eq!(counted.send(1, u64::from(a)), plain.send(1, u64::from(a)));
        assert_eq!(counted.close(3, u64::from(y)), plain.close(3, u64::from(y)));
        assert_eq!(counted.vm_died(1), plain.vm_died(1));
        for vm in 1..=3 {
            for port in 0..8 {
                assert_eq!(counted.state(vm, port), plain.state(vm, port));
            }
        }
        assert!(counted.store.entered > 0);
    }

    #[test]
    fn each_side_learns_only_its_own_port_of_its_own_connections() {
        let links = [
            ConnectionLink {
                frontend: 2,
                backend: 1,
                frontend_port: 5,
                backend_port: 7,
            },
            ConnectionLink {
                frontend: 3,
                backend: 1,
                frontend_port: 4,
                backend_port: 8,
            },
        ];
        let ask = |caller, peer| own_connection_port(links.iter().copied(), caller, peer);
        assert_eq!(ask(2, 1), Some(5));
        assert_eq!(ask(1, 2), Some(7));
        assert_eq!(ask(1, 3), Some(8));
        assert_eq!(ask(3, 1), Some(4));
        // Not connected, itself, not a VM id, or an id that truncates to one.
        for (caller, peer) in [
            (2, 3),
            (3, 2),
            (1, 1),
            (2, 0),
            (2, u64::MAX),
            (2, 1 << 16 | 1),
        ] {
            assert_eq!(ask(caller, peer), None, "{caller} asks about {peer}");
        }
    }
    /// The first id above every VM id.
    const BEYOND: VmId = MAX_VMS as VmId + 1;

    fn in_ram(gpa: u64, len: u64) -> Option<u64> {
        (gpa >= GUEST_RAM_BASE
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= GUEST_RAM_BASE + 0x10_0000))
        .then_some(gpa)
    }

    /// VMs 1, 2, 3 with event pages.
    fn world() -> EventChannels {
        let mut ec = EventChannels::new();
        for vm in 1..=3 {
            ec.setup(vm, PAGE, in_ram).unwrap();
        }
        ec
    }

    fn bound(remote: VmId, remote_port: Port) -> PortState {
        PortState::Interdomain {
            remote,
            remote_port,
        }
    }

    #[test]
    fn setup_rules() {
        let mut ec = EventChannels::new();
        assert_eq!(ec.event_page(1), None);
        assert_eq!(ec.setup(1, PAGE + 8, in_ram), Err(Status::InvalidArgument));
        assert_eq!(ec.setup(1, 0, in_ram), Err(Status::InvalidArgument));
        assert_eq!(
            ec.setup(1, GUEST_RAM_BASE + 0x10_0000, in_ram),
            Err(Status::InvalidArgument)
        );
        assert_eq!(ec.setup(1, !0xfffu64, in_ram), Err(Status::InvalidArgument));
        assert_eq!(ec.setup(0, PAGE, in_ram), Err(Status::InvalidArgument));
        assert_eq!(ec.setup(BEYOND, PAGE, in_ram), Err(Status::InvalidArgument));
        let mut asked = None;
        assert_eq!(
            ec.setup(1, PAGE, |g, l| {
                asked = Some((g, l));
                Some(g)
            }),
            Ok(())
        );
        assert_eq!(asked, Some((PAGE, PAGE_SIZE)));
        assert_eq!(ec.event_page(1), Some(PAGE));
        assert_eq!(
            ec.setup(1, PAGE + PAGE_SIZE, in_ram),
            Ok(()),
            "replacing is allowed"
        );
        assert_eq!(ec.event_page(1), Some(PAGE + PAGE_SIZE));
        assert_eq!(ec.event_page(0), None);
        assert_eq!(ec.event_page(u16::MAX), None);
    }

    #[test]
    fn alloc_bind_send_both_ways() {
        let mut ec = world();
        let p1 = ec.alloc_unbound(1, 2).unwrap();
        assert_eq!(p1, 1, "lowest free port, never 0");
        assert_eq!(ec.state(1, p1), Some(PortState::Unbound { remote: 2 }));
        assert_eq!(
            peer(ec.send(1, p1 as u64)),
            Err(Status::BadPort),
            "unbound cannot send"
        );
        let p2 = ec.bind_interdomain(2, 1, p1 as u64).unwrap();
        assert_eq!(ec.state(1, p1), Some(bound(2, p2)));
        assert_eq!(ec.state(2, p2), Some(bound(1, p1)));
        assert_eq!(
            peer(ec.send(1, p1 as u64)),
            Ok(Signal {
                vm: 2,
                port: p2,
                page_gpa: Some(PAGE)
            })
        );
        assert_eq!(
            peer(ec.send(2, p2 as u64)),
            Ok(Signal {
                vm: 1,
                port: p1,
                page_gpa: Some(PAGE)
            })
        );
        assert_eq!(ec.alloc_unbound(1, 3), Ok(2));
        assert_eq!(ec.state(0, 1), None);
        assert_eq!(ec.state(1, MAX_PORTS), None);
    }

    #[test]
    fn send_to_a_vm_without_event_page_names_no_page() {
        let mut ec = EventChannels::new();
        ec.setup(1, PAGE, in_ram).unwrap();
        let (a, b) = ec.bind_pair(1, 2).unwrap();
        assert_eq!(
            peer(ec.send(1, a as u64)),
            Ok(Signal {
                vm: 2,
                port: b,
                page_gpa: None
            })
        );
        assert_eq!(
            peer(ec.send(2, b as u64)),
            Ok(Signal {
                vm: 1,
                port: a,
                page_gpa: Some(PAGE)
            })
        );
    }

    #[test]
    fn alloc_rules() {
        let mut ec = world();
        for remote in [
            0,
            1,
            u64::from(BEYOND),
            u16::MAX as u64,
            1 << 16 | 2,
            u64::MAX,
        ] {
            assert_eq!(
                ec.alloc_unbound(1, remote),
                Err(Status::InvalidArgument),
                "remote {remote:#x}"
            );
        }
        assert_eq!(ec.alloc_unbound(0, 2), Err(Status::InvalidArgument));
        for expect in 1..MAX_PORTS {
            assert_eq!(ec.alloc_unbound(1, 2), Ok(expect));
        }
        assert_eq!(ec.alloc_unbound(1, 2), Err(Status::NoSpace));
        // A closed port is reused, lowest first.
        ec.close(1, 77).unwrap();
        ec.close(1, 5).unwrap();
        assert_eq!(ec.alloc_unbound(1, 3), Ok(5));
        assert_eq!(ec.alloc_unbound(1, 3), Ok(77));
        // A VM id with no VM behind it can still be named (like Xen, the port just waits).
        assert_eq!(ec.alloc_unbound(2, 9), Ok(1));
    }

    #[test]
    fn bind_rules() {
        let mut ec = world();
        let p = ec.alloc_unbound(1, 2).unwrap();
        // Remote ids.
        for remote in [0, 2, u64::from(BEYOND), 1 << 16 | 1] {
            assert_eq!(
                ec.bind_interdomain(2, remote, p as u64),
                Err(Status::InvalidArgument)
            );
        }
        assert_eq!(
            ec.bind_interdomain(0, 1, p as u64),
            Err(Status::InvalidArgument)
        );
        // Remote ports: 0, out of range, free, bound.
        for port in [0, MAX_PORTS as u64, 1 << 32 | p as u64, u64::MAX, 200] {
            assert_eq!(
                ec.bind_interdomain(2, 1, port),
                Err(Status::BadPort),
                "port {port:#x}"
            );
        }
        // Unbound for someone else.
        assert_eq!(ec.bind_interdomain(3, 1, p as u64), Err(Status::Denied));
        let q = ec.bind_interdomain(2, 1, p as u64).unwrap();
        // Already bound: BadPort, for the rightful peer too.
        assert_eq!(ec.bind_interdomain(2, 1, p as u64), Err(Status::BadPort));
        assert_eq!(ec.bind_interdomain(3, 1, p as u64), Err(Status::BadPort));
        assert_eq!(ec.state(2, q), Some(bound(1, p)));
        // No local port left: NoSpace, and the remote port stays unbound.
        let r = ec.alloc_unbound(1, 3).unwrap();
        while ec.alloc_unbound(3, 2).is_ok() {}
        assert_eq!(ec.bind_interdomain(3, 1, r as u64), Err(Status::NoSpace));
        assert_eq!(ec.state(1, r), Some(PortState::Unbound { remote: 3 }));
        // Rule order: Denied before NoSpace.
        let s = ec.alloc_unbound(1, 2).unwrap();
        assert_eq!(ec.bind_interdomain(3, 1, s as u64), Err(Status::Denied));
    }

    #[test]
    fn send_rules() {
        let mut ec = world();
        for port in [0, 1, MAX_PORTS as u64, 1 << 32 | 1, u64::MAX] {
            assert_eq!(peer(ec.send(1, port)), Err(Status::BadPort));
        }
        assert_eq!(peer(ec.send(0, 1)), Err(Status::InvalidArgument));
        let (a, b) = ec.bind_pair(1, 2).unwrap();
        // Another VM cannot send on VM 1's port number: the number means its own port.
        assert_eq!(peer(ec.send(3, a as u64)), Err(Status::BadPort));
        assert!(peer(ec.send(1, a as u64)).is_ok());
        // The peer closes: the sender's end is unbound, sending is BadPort.
        ec.close(2, b as u64).unwrap();
        assert_eq!(ec.state(1, a), Some(PortState::Unbound { remote: 2 }));
        assert_eq!(peer(ec.send(1, a as u64)), Err(Status::BadPort));
        // The closer binds again to the same port: the sender's port number is unchanged.
        let c = ec.bind_interdomain(2, 1, a as u64).unwrap();
        assert_eq!(
            peer(ec.send(1, a as u64)),
            Ok(Signal {
                vm: 2,
                port: c,
                page_gpa: Some(PAGE)
            })
        );
    }

    #[test]
    fn close_rules() {
        let mut ec = world();
        for port in [0, 1, MAX_PORTS as u64, u64::MAX] {
            assert_eq!(ec.close(1, port), Err(Status::BadPort));
        }
        assert_eq!(ec.close(0, 1), Err(Status::InvalidArgument));
        let u = ec.alloc_unbound(1, 2).unwrap();
        assert_eq!(ec.close(1, u as u64), Ok(()));
        assert_eq!(ec.state(1, u), Some(PortState::Free));
        assert_eq!(ec.close(1, u as u64), Err(Status::BadPort), "double close");
        let (a, b) = ec.bind_pair(1, 2).unwrap();
        // Closing someone else's port number closes nothing of theirs.
        assert_eq!(ec.close(3, a as u64), Err(Status::BadPort));
        assert_eq!(ec.close(1, a as u64), Ok(()));
        assert_eq!(ec.state(1, a), Some(PortState::Free));
        assert_eq!(ec.state(2, b), Some(PortState::Unbound { remote: 1 }));
        assert_eq!(peer(ec.send(2, b as u64)), Err(Status::BadPort));
        // The remaining unbound end closes normally.
        assert_eq!(ec.close(2, b as u64), Ok(()));
        assert_eq!(ec.state(2, b), Some(PortState::Free));
    }

    #[test]
    fn unmask_rules() {
        let mut ec = world();
        let u = ec.alloc_unbound(1, 2).unwrap();
        assert_eq!(
            ec.unmask(1, u as u64),
            Ok(PAGE),
            "an unbound port is owned too"
        );
        let (a, _) = ec.bind_pair(1, 3).unwrap();
        assert_eq!(ec.unmask(1, a as u64), Ok(PAGE));
        for port in [0, 99, MAX_PORTS as u64, u64::MAX] {
            assert_eq!(ec.unmask(1, port), Err(Status::BadPort));
        }
        assert_eq!(
            ec.unmask(2, u as u64),
            Err(Status::BadPort),
            "VM 2 has no port 1"
        );
        assert_eq!(ec.unmask(0, 1), Err(Status::InvalidArgument));
        let mut no_page = EventChannels::new();
        let p = no_page.alloc_unbound(1, 2).unwrap();
        assert_eq!(no_page.unmask(1, p as u64), Err(Status::InvalidArgument));
    }

    #[test]
    fn bind_pair_rules() {
        let mut ec = world();
        assert_eq!(ec.bind_pair(1, 1), Err(Status::InvalidArgument));
        assert_eq!(ec.bind_pair(0, 1), Err(Status::InvalidArgument));
        assert_eq!(ec.bind_pair(1, 0), Err(Status::InvalidArgument));
        assert_eq!(ec.bind_pair(1, BEYOND), Err(Status::InvalidArgument));
        let (a, b) = ec.bind_pair(1, 2).unwrap();
        assert_eq!((a, b), (1, 1));
        assert_eq!(ec.state(1, a), Some(bound(2, b)));
        assert_eq!(ec.state(2, b), Some(bound(1, a)));
        // Either side full: NoSpace, nothing allocated on the other side.
        while ec.alloc_unbound(3, 1).is_ok() {}
        assert_eq!(ec.bind_pair(1, 3), Err(Status::NoSpace));
        assert_eq!(ec.bind_pair(3, 1), Err(Status::NoSpace));
        assert_eq!(ec.state(1, 2), Some(PortState::Free));
    }

    #[test]
    fn death_closes_ports_and_unbinds_peers() {
        let mut ec = world();
        let (a12, b12) = ec.bind_pair(1, 2).unwrap();
        let u = ec.alloc_unbound(1, 3).unwrap();
        let p3 = ec.alloc_unbound(3, 1).unwrap();
        let q1 = ec.bind_interdomain(1, 3, p3 as u64).unwrap();
        let waiting = ec.alloc_unbound(2, 1).unwrap();
        let died = ec.vm_died(1);
        assert_eq!(
            died,
            [PortRef { vm: 2, port: b12 }, PortRef { vm: 3, port: p3 }]
        );
        for port in [a12, u, q1] {
            assert_eq!(ec.state(1, port), Some(PortState::Free));
        }
        assert_eq!(ec.event_page(1), None);
        assert_eq!(ec.state(2, b12), Some(PortState::Unbound { remote: 1 }));
        assert_eq!(ec.state(3, p3), Some(PortState::Unbound { remote: 1 }));
        assert_eq!(peer(ec.send(2, b12 as u64)), Err(Status::BadPort));
        // Ports other VMs allocated for VM 1 stay unbound for it.
        assert_eq!(ec.state(2, waiting), Some(PortState::Unbound { remote: 1 }));
        // The next incarnation (a reset) can reconnect to the peers' old ports.
        ec.setup(1, PAGE, in_ram).unwrap();
        let n = ec.bind_interdomain(1, 2, b12 as u64).unwrap();
        assert_eq!(
            peer(ec.send(2, b12 as u64)),
            Ok(Signal {
                vm: 1,
                port: n,
                page_gpa: Some(PAGE)
            })
        );
        assert!(ec.vm_died(0).is_empty() && ec.vm_died(BEYOND).is_empty());
        // VM 3 holds only an unbound port now: nothing to unbind elsewhere.
        assert!(ec.vm_died(3).is_empty());
        assert_eq!(ec.state(3, p3), Some(PortState::Free));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(VmId, u64),
        Bind(VmId, u64, u64),
        Pair(VmId, VmId),
        Close(VmId, u64),
        Die(VmId),
        Setup(VmId, u64),
        Send(VmId, u64),
        Unmask(VmId, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let vm = 0..=4u16; // includes a bad id and a VM that does nothing else
        let port = 0..6u64;
        prop_oneof![
            (vm.clone(), 0..=4u64).prop_map(|(v, r)| Op::Alloc(v, r)),
            (vm.clone(), 0..=4u64, port.clone()).prop_map(|(v, r, p)| Op::Bind(v, r, p)),
            (vm.clone(), vm.clone()).prop_map(|(a, b)| Op::Pair(a, b)),
            (vm.clone(), port).prop_map(|(v, p)| Op::Close(v, p)),
            vm.prop_map(Op::Die),
        ]
    }

    /// A guest's raw register: small values that name real VMs and ports, the edges of every
    /// range, values that only truncation would make valid, anything.
    fn register() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => 0..8u64,
            1 => prop::sample::select(vec![
                u64::from(MAX_PORTS - 1),
                u64::from(MAX_PORTS),
                MAX_VMS as u64,
                MAX_VMS as u64 + 1,
                1 << 16 | 2,
                1 << 32 | 1,
                u64::MAX,
            ]),
            1 => any::<u64>(),
            1 => (0..0x20u64).prop_map(|page| GUEST_RAM_BASE + page * PAGE_SIZE / 2),
        ]
    }

    /// Every hypercall with raw registers, from any caller id (the hypervisor only passes real
    /// ones, but a bad id must not panic either).
    fn hostile_op() -> impl Strategy<Value = Op> {
        let vm = prop_oneof![4 => 1..=4u16, 1 => any::<u16>()];
        prop_oneof![
            (vm.clone(), register()).prop_map(|(v, r)| Op::Alloc(v, r)),
            (vm.clone(), register(), register()).prop_map(|(v, r, p)| Op::Bind(v, r, p)),
            (vm.clone(), register()).prop_map(|(v, p)| Op::Close(v, p)),
            (vm.clone(), register()).prop_map(|(v, g)| Op::Setup(v, g)),
            (vm.clone(), register()).prop_map(|(v, p)| Op::Send(v, p)),
            (vm.clone(), register()).prop_map(|(v, p)| Op::Unmask(v, p)),
            vm.prop_map(Op::Die),
        ]
    }

    /// Whatever the sequence: every call answers a status its rule table allows, port 0 is
    /// never used, every bound port's peer points back at it, sending works exactly on bound
    /// ports and goes to the peer.
    fn symmetric(ops: Vec<Op>) -> Result<(), TestCaseError> {
        // What a call on one of the caller's ports may answer (a bad caller id is
        // InvalidArgument, and so is UNMASK without an event page).
        const PORT_RULES: &[Status] = &[Status::InvalidArgument, Status::BadPort];
        let mut ec = world();
        for op in ops {
            let (status, allowed): (Option<Status>, &[Status]) = match op {
                Op::Alloc(v, r) => (
                    ec.alloc_unbound(v, r).err(),
                    &[Status::InvalidArgument, Status::NoSpace],
                ),
                Op::Bind(v, r, p) => (
                    ec.bind_interdomain(v, r, p).err(),
                    &[
                        Status::InvalidArgument,
                        Status::BadPort,
                        Status::Denied,
                        Status::NoSpace,
                    ],
                ),
                Op::Pair(a, b) => (
                    ec.bind_pair(a, b).err(),
                    &[Status::InvalidArgument, Status::NoSpace],
                ),
                Op::Close(v, p) => (ec.close(v, p).err(), PORT_RULES),
                Op::Die(v) => {
                    let _ = ec.vm_died(v);
                    (None, &[])
                }
                Op::Setup(v, g) => (ec.setup(v, g, in_ram).err(), &[Status::InvalidArgument]),
                Op::Send(v, p) => (peer(ec.send(v, p)).err(), PORT_RULES),
                Op::Unmask(v, p) => (ec.unmask(v, p).err(), PORT_RULES),
            };
            if let Some(status) = status {
                prop_assert!(allowed.contains(&status), "{:?}: {:?}", op, status);
            }
            for vm in 1..=4u16 {
                prop_assert_eq!(ec.state(vm, NO_PORT), Some(PortState::Free));
                for port in 1..MAX_PORTS {
                    let state = ec.state(vm, port).unwrap();
                    match state {
                        PortState::Interdomain {
                            remote,
                            remote_port,
                        } => {
                            prop_assert_ne!(remote, vm);
                            prop_assert_eq!(ec.state(remote, remote_port), Some(bound(vm, port)));
                            let signal = peer(ec.send(vm, port as u64)).unwrap();
                            prop_assert_eq!((signal.vm, signal.port), (remote, remote_port));
                        }
                        PortState::Unbound { remote } => {
                            prop_assert_ne!(remote, vm);
                            prop_assert_eq!(peer(ec.send(vm, port as u64)), Err(Status::BadPort));
                        }
                        PortState::Free => {
                            prop_assert_eq!(peer(ec.send(vm, port as u64)), Err(Status::BadPort));
                        }
                        PortState::Hypervisor { .. } => {
                            prop_assert!(false, "no op here makes a request port");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn bindings_stay_symmetric(ops in prop::collection::vec(op(), 1..100)) {
            symmetric(ops)?;
        }

        #[test]
        fn raw_registers_get_documented_statuses(ops in prop::collection::vec(hostile_op(), 1..100)) {
            symmetric(ops)?;
        }
    }
}
