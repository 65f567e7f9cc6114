//! Host tests of the sharing calls' routing, over the grant tests' machine model.

use super::*;
use crate::grant::tests::{map_op, statuses, world, write_ops, Model, FRAME, OPS, WIN};
use crate::grant::MapFailed;
use shared_abi::grant::{MapOp, PERMIT};
use shared_abi::layout::GUEST_RAM_BASE;

/// Event pages of the VMs in the test (the model's RAM has room for them).
const EVENT_PAGE: u64 = GUEST_RAM_BASE + 0x2_0000;

/// The grant model plus what [`SharingEnv`] adds, recording the event-page operations.
struct Env {
    model: Model,
    heap_low: bool,
    /// What `set_pending` and `clear_mask` answer.
    interrupt: bool,
    pending: Vec<(VmId, u64, u32)>,
    unmasked: Vec<(VmId, u64, u32)>,
    connection: Option<u32>,
}

impl GrantEnv for Env {
    fn in_ram(&self, vm: VmId, gpa: u64, len: u64) -> bool {
        self.model.in_ram(vm, gpa, len)
    }
    fn read_u64(&self, vm: VmId, gpa: u64) -> u64 {
        self.model.read_u64(vm, gpa)
    }
    fn write_u64(&mut self, vm: VmId, gpa: u64, value: u64) {
        self.model.write_u64(vm, gpa, value)
    }
    fn compare_exchange_u64(
        &mut self,
        vm: VmId,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<u64, u64> {
        self.model.compare_exchange_u64(vm, gpa, current, new)
    }
    fn copy(&mut self, dst_vm: VmId, dst_gpa: u64, src_vm: VmId, src_gpa: u64, len: u64) {
        self.model.copy(dst_vm, dst_gpa, src_vm, src_gpa, len)
    }
    fn host_pa(&self, vm: VmId, gpa: u64) -> u64 {
        self.model.host_pa(vm, gpa)
    }
    fn map_page(
        &mut self,
        vm: VmId,
        ipa: u64,
        host_pa: u64,
        readonly: bool,
    ) -> Result<(), MapFailed> {
        self.model.map_page(vm, ipa, host_pa, readonly)
    }
    fn unmap_page(&mut self, vm: VmId, ipa: u64) {
        self.model.unmap_page(vm, ipa)
    }
    fn revoked(&mut self, vm: VmId) {
        self.model.revoked(vm)
    }
}

impl SharingEnv for Env {
    type Page = u64;
    fn event_page(&self, _vm: VmId, page_gpa: u64) -> Option<u64> {
        Some(page_gpa)
    }
    fn heap_low(&self) -> bool {
        self.heap_low
    }
    fn set_pending(&mut self, vm: VmId, page_gpa: u64, port: u32) -> bool {
        self.pending.push((vm, page_gpa, port));
        self.interrupt
    }
    fn clear_mask(&mut self, vm: VmId, page_gpa: u64, port: u32) -> bool {
        self.unmasked.push((vm, page_gpa, port));
        self.interrupt
    }
    fn connection_port(&self, _caller: VmId, _peer: u64) -> Option<u32> {
        self.connection
    }
}

struct World {
    grants: GrantTables,
    events: EventChannels,
    env: Env,
}

impl World {
    fn new() -> World {
        let (grants, model) = world();
        World {
            grants,
            events: EventChannels::new(),
            env: Env {
                model,
                heap_low: false,
                interrupt: true,
                pending: Vec::new(),
                unmasked: Vec::new(),
                connection: None,
            },
        }
    }

    fn call(&mut self, caller: VmId, function: u64, args: &[u64]) -> SharingAnswer {
        let mut x = [0u64; 31];
        x[0] = function;
        x[1..=args.len()].copy_from_slice(args);
        sharing_call(
            &mut self.grants,
            &mut self.events,
            &mut self.env,
            caller,
            function,
            &x,
        )
    }

    /// VM 2 maps VM 1's grant ref 7 at the window's start; the op's own status.
    fn map(&mut self, caller: VmId) -> (Status, Status) {
        write_ops(
            &mut self.env.model,
            caller,
            &map_op(1, 7, WIN, 0).to_words(),
        );
        let status = self.call(caller, hypercall::GRANT_MAP, &[OPS, 1]).status;
        let op = statuses(&self.env.model, caller, 1, MapOp::WORDS, MapOp::STATUS_WORD)[0];
        (status, op)
    }
}

fn status(status: Status) -> SharingAnswer {
    SharingAnswer {
        status,
        x1: None,
        notify: None,
        released: Vec::new(),
        answers_from_device_model: None,
    }
}

#[test]
fn grant_calls_reach_the_grant_tables_and_a_low_heap_refuses_only_mappings() {
    let mut w = World::new();
    w.env.model.grant(1, 7, 2, FRAME, PERMIT);
    w.env.heap_low = true;
    assert_eq!(
        w.call(2, hypercall::GRANT_MAP, &[OPS, 1]),
        status(Status::NoSpace)
    );
    assert!(w.env.model.stage2.is_empty());
    // Unmapping (which frees heap) still works while the heap is low.
    assert_eq!(
        w.call(2, hypercall::GRANT_UNMAP, &[OPS, 0]).status,
        Status::InvalidArgument
    );
    w.env.heap_low = false;
    assert_eq!(w.map(2), (Status::Ok, Status::Ok));
    assert_eq!(
        w.env.model.stage2[&(2, WIN)],
        (Model::host(1, FRAME), false)
    );
    // The granter cannot end a ref that is mapped; the tables' rule answers through the call.
    assert_eq!(w.call(1, hypercall::GRANT_END, &[7]), status(Status::Busy));
    // A bad table address is refused by the tables' setup rule.
    assert_eq!(
        w.call(3, hypercall::GRANT_TABLE_SETUP, &[1, 1]),
        status(Status::InvalidArgument)
    );
}

#[test]
fn event_calls_route_to_the_tables_and_deliver_through_the_event_pages() {
    let mut w = World::new();
    for vm in [1, 2] {
        assert_eq!(
            w.call(vm, hypercall::EVTCHN_SETUP, &[EVENT_PAGE]),
            status(Status::Ok)
        );
    }
    // An event page outside the caller's RAM is refused.
    assert_eq!(
        w.call(3, hypercall::EVTCHN_SETUP, &[0x1000]),
        status(Status::InvalidArgument)
    );
    let unbound = w.call(2, hypercall::EVTCHN_ALLOC_UNBOUND, &[1]);
    assert_eq!(unbound.status, Status::Ok);
    let port2 = unbound.x1.expect("a port");
    let bound = w.call(1, hypercall::EVTCHN_BIND_INTERDOMAIN, &[2, port2]);
    assert_eq!(bound.status, Status::Ok);
    let port1 = bound.x1.expect("a port");

    let sent = w.call(1, hypercall::EVTCHN_SEND, &[port1]);
    assert_eq!((sent.status, sent.notify), (Status::Ok, Some(2)));
    assert_eq!(w.env.pending, vec![(2, EVENT_PAGE, port2 as u32)]);
    // Already pending or masked: the page says so and nobody is interrupted.
    w.env.interrupt = false;
    assert_eq!(w.call(1, hypercall::EVTCHN_SEND, &[port1]).notify, None);

    w.env.interrupt = true;
    let unmasked = w.call(2, hypercall::EVTCHN_UNMASK, &[port2]);
    assert_eq!((unmasked.status, unmasked.notify), (Status::Ok, Some(2)));
    assert_eq!(w.env.unmasked, vec![(2, EVENT_PAGE, port2 as u32)]);

    assert_eq!(
        w.call(1, hypercall::EVTCHN_CLOSE, &[port1]),
        status(Status::Ok)
    );
    assert_eq!(
        w.call(1, hypercall::EVTCHN_SEND, &[port1]),
        status(Status::BadPort)
    );
    assert_eq!(w.env.pending.len(), 2);
}

#[test]
fn a_send_on_a_request_port_reaches_the_hypervisor_not_a_peer() {
    let mut w = World::new();
    for vm in [1, 2] {
        w.call(vm, hypercall::EVTCHN_SETUP, &[EVENT_PAGE]);
    }
    let port = w.events.bind_hypervisor(1, 2).unwrap();
    let sent = w.call(1, hypercall::EVTCHN_SEND, &[u64::from(port)]);
    assert_eq!(
        sent,
        SharingAnswer {
            answers_from_device_model: Some(2),
            ..status(Status::Ok)
        }
    );
    // No event page was touched: the guest hears nothing of its device model's signal.
    assert!(w.env.pending.is_empty());
    // The guest cannot signal, or close, its device model's request port.
    assert_eq!(
        w.call(2, hypercall::EVTCHN_SEND, &[u64::from(port)]),
        status(Status::BadPort)
    );
    assert_eq!(
        w.call(1, hypercall::EVTCHN_CLOSE, &[u64::from(port)]),
        status(Status::Denied)
    );
}

#[test]
fn connection_port_comes_from_the_environment_and_unknown_calls_are_not_supported() {
    let mut w = World::new();
    assert_eq!(
        w.call(2, hypercall::CONNECTION_PORT, &[1]),
        status(Status::InvalidArgument)
    );
    w.env.connection = Some(5);
    let answer = w.call(2, hypercall::CONNECTION_PORT, &[1]);
    assert_eq!((answer.status, answer.x1), (Status::Ok, Some(5)));
    for function in [hypercall::CONSOLE_WRITE, hypercall::YIELD, 0, u64::MAX] {
        assert_eq!(w.call(2, function, &[1, 2]), status(Status::NotSupported));
    }
}
