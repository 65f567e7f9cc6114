//! The device model of each guest with the emulated NIC (`nic = "emulated"`): its request page
//! (mapped by the hypervisor at `control_page_ipa(guest)`, in this VM only), its request port
//! (our port of the connection, bound to the hypervisor: CONNECTION_PORT), and the device
//! itself (`shared_abi::emunic::Device`), which the fabric plugs into the switch as that
//! guest's port, held to the guest's identity from the topology like a para-virtual port.
//!
//! [`EmuPort::serve`] does one bounded pass over the page (`driver_domain::devmodel`) and
//! signals the port when it answered anything; frames the guest completed come back to the
//! fabric to switch. [`EmuPort::deliver`] puts a frame from the switch into the device's
//! receive FIFO. Both raise the guest's interrupt with IOREQ_SET_IRQ when the device owes
//! one.
//!
//! The hypervisor tells us when the guest stops (the page's guest epoch and state, then our
//! request port; `shared_abi::ioreq`, "The guest's life"): a restarted guest finds the device
//! back in its power-on state, and a guest gone for good ends our serving of it.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use driver_domain::devmodel::{self, GuestChange, GuestWatch};
use shared_abi::emunic::Device;
use shared_abi::ioreq;
use vm_runtime::hypercall::{ioreq_set_irq, Status};
use vm_runtime::shared::SharedMem;
use vm_runtime::{evtchn, println, timer};

/// After an answer in the middle of a frame, how long we keep watching the page for the
/// guest's next access before going back to the other ports (and to sleep): a guest moving a
/// frame makes one access after another, and catching the next one here saves a wake-up of
/// this VM per access.
/// Measured (17:05 UTC, one emulated guest making 4039 accesses): sleeping between accesses
/// cost 5.1 ms per access (waking this VM from WFI for each request), watching the page
/// 0.13 ms (the guest resumed on the other pCPU); watching 5 ms: 0.094 ms (17:53), but
/// watching only 1 ms: 4.5 ms. Yielding instead of watching was slower too (YIELD in the
/// loop: 3.2 ms per access; 0.3 ms of watching, then YIELD: 4.6 ms).
const SPIN_US: u64 = 5_000;
/// Most requests answered per call, so the other ports are served in between.
const REQUESTS_PER_CALL: usize = 256;

/// What the device model did besides the device's own counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelStats {
    pub requests: u64,
    pub malformed: u64,
    pub passes: u64,
    pub irqs: u64,
    pub irqs_lost: u64,
}

pub struct EmuPort {
    pub guest: u16,
    page: SharedMem,
    port: u32,
    device: Box<Device>,
    pub stats: ModelStats,
    watch: GuestWatch,
    /// Times the device went back to its power-on state for a restarted guest.
    pub resets: u64,
    /// Test hook (setting `test_devmodel_mute`): take the hypervisor's events and answer
    /// nothing, like a hung device model, to show that it stalls only its own guest's vCPU.
    mute: bool,
}

impl EmuPort {
    /// The device model of guest `guest`, whose device gets MAC `mac`; a `mute` one never
    /// answers (a test hook).
    pub fn open(guest: u16, mac: [u8; 6], mute: bool) -> Result<EmuPort, String> {
        let page = SharedMem::control_page(guest).ok_or("no request page for that id")?;
        ioreq::check_header(page.words()).map_err(|e| format!("request page: {e}"))?;
        let watch = GuestWatch::new(page.words()).map_err(|e| format!("request page: {e}"))?;
        let port = evtchn::connection_port(guest)
            .map_err(|e| format!("the hypervisor knows no request port ({e:?})"))?;
        Ok(EmuPort {
            guest,
            page,
            port,
            device: Box::new(Device::new(mac)),
            stats: ModelStats::default(),
            watch,
            resets: 0,
            mute,
        })
    }

    /// The port the hypervisor signals when it posts a request.
    pub fn request_port(&self) -> u32 {
        self.port
    }

    /// Answers the waiting requests, and those that follow within [`SPIN_US`] of an answer,
    /// up to [`REQUESTS_PER_CALL`]; frames the guest completed are pushed to `sent`. Returns
    /// how many requests were answered.
    pub fn serve(&mut self, sent: &mut Vec<Vec<u8>>) -> usize {
        evtchn::take(self.port);
        if self.mute {
            return 0;
        }
        self.follow_guest();
        let mut answered = 0;
        let mut last = timer::now();
        let spin = timer::us_to_ticks(SPIN_US);
        while answered < REQUESTS_PER_CALL {
            let pass = match devmodel::serve(self.page.words(), &mut self.device, |frame| {
                sent.push(frame.to_vec())
            }) {
                Ok(pass) => pass,
                Err(e) => {
                    println!("emulated NIC of front-end {}: {e}", self.guest);
                    break;
                }
            };
            let now = timer::now();
            if pass.answered > 0 {
                self.stats.passes += 1;
                self.stats.requests += pass.answered as u64;
                self.stats.malformed += pass.malformed as u64;
                let _ = evtchn::send(self.port);
                answered += pass.answered;
                last = now;
                // Watch for the next access only in the middle of a frame, where it comes at
                // once; otherwise (and once a frame the guest completed must go out) back to
                // the other ports. Watching after every answer starved the para-virtual
                // guests sharing our pCPUs (pings of 2-8 s in the default topology).
                if !sent.is_empty() || !pass.mid_frame {
                    break;
                }
            } else if answered == 0 || now - last > spin {
                break;
            } else {
                core::hint::spin_loop();
            }
        }
        self.raise_if_owed();
        answered
    }

    /// A frame from the switch for the guest; false if the device dropped it (FIFO full).
    pub fn deliver(&mut self, frame: &[u8]) -> bool {
        let taken = self.device.receive(frame);
        self.raise_if_owed();
        taken
    }

    fn raise_if_owed(&mut self) {
        if !self.device.take_interrupt() {
            return;
        }
        match ioreq_set_irq(self.guest) {
            Status::Ok => self.stats.irqs += 1,
            _ => self.stats.irqs_lost += 1,
        }
    }

    /// Acts on the guest's stops the hypervisor recorded since the last look: a restarted
    /// guest gets a device in its power-on state (empty FIFOs, interrupts disabled), as a real
    /// NIC after a bus reset; its counters keep counting.
    fn follow_guest(&mut self) {
        match self.watch.look(self.page.words()) {
            Ok(GuestChange::Same) => {}
            Ok(GuestChange::Restarted) => {
                self.device.reset();
                self.resets += 1;
                println!(
                    "front-end {}: guest restarted, its emulated NIC reset to the power-on state",
                    self.guest
                );
            }
            Ok(GuestChange::Gone) => println!(
                "front-end {}: guest stopped for good after {} device reset(s); its emulated NIC \
                 serves no more",
                self.guest, self.resets
            ),
            Err(e) => println!("emulated NIC of front-end {}: {e}", self.guest),
        }
    }

    /// The guest stopped for good (the hypervisor said so), or we never answer it (a mute
    /// device model does not keep the driver domain running: its end releases the guest).
    pub fn finished(&self) -> bool {
        self.mute || self.watch.gone()
    }

    /// The closing line.
    pub fn summary(&self) -> String {
        let c = self.device.counters;
        let s = self.stats;
        format!(
            "emulated NIC of front-end {}: {} requests ({} reads, {} writes, {} malformed) in {} \
             passes, tx {} frames, rx {} frames, rx dropped {}, tx errors {}, bad accesses {}, \
             interrupts {} raised / {} lost",
            self.guest,
            s.requests,
            c.reads,
            c.writes,
            s.malformed,
            s.passes,
            c.tx_frames,
            c.rx_frames,
            c.rx_dropped,
            c.tx_errors,
            c.bad_accesses,
            s.irqs,
            s.irqs_lost
        )
    }
}
