//! The emulated NIC's device model, the part that is pure logic: one pass over a guest's I/O
//! request page (`shared_abi::ioreq`), each waiting access answered from the device's state
//! machine (`shared_abi::emunic::Device`). The binary's `emunic` module wires it to the page
//! the hypervisor maps at `control_page_ipa(guest)`, the request port, the switch and
//! IOREQ_SET_IRQ.
//!
//! The page is the hypervisor's, but it is memory a VM writes: a slot is taken only in state
//! READY (compare-exchange to IN_PROCESS), its fields are read once, and a pass looks at each
//! slot once, so one call does at most [`SLOTS`] answers whatever the page holds.

use core::sync::atomic::AtomicU64;

use shared_abi::emunic::{Device, WriteEffect};
use shared_abi::ioreq::{self, IoreqError, SLOTS};

/// The answer to a request whose access the page describes impossibly (a size that is not 1,
/// 2, 4 or 8): what a bus gives for an absent device, so the vCPU is never left waiting.
pub const BAD_REQUEST_ANSWER: u64 = u64::MAX;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Requests answered (signal the request port if any).
    pub answered: usize,
    /// Of those, requests that could not be decoded (answered [`BAD_REQUEST_ANSWER`]).
    pub malformed: usize,
    /// The guest is in the middle of moving a frame (see `Device::transfer_in_progress`).
    pub mid_frame: bool,
}

/// What became of the guest since the device model last looked (`shared_abi::ioreq`, "The
/// guest's life").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestChange {
    /// Nothing new.
    Same,
    /// The guest stopped and boots again: the device must go back to its power-on state.
    Restarted,
    /// The guest stopped for good: nothing more to serve.
    Gone,
}

/// The device model's record of its guest's life: the last epoch it saw on the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestWatch {
    epoch: u64,
    gone: bool,
}

impl GuestWatch {
    /// Starts from what the page says now: stops from before this device model (a restarted
    /// driver domain) are not news, but a guest already gone is.
    pub fn new(page: &[AtomicU64]) -> Result<GuestWatch, IoreqError> {
        let status = ioreq::guest_status(page)?;
        Ok(GuestWatch {
            epoch: status.epoch,
            gone: status.gone,
        })
    }

    /// Reads the page's guest words once and says what changed. Only a new epoch is news: the
    /// hypervisor writes the state with every stop, so a state word that changed alone was
    /// written by someone else (this VM's own bug) and is ignored.
    pub fn look(&mut self, page: &[AtomicU64]) -> Result<GuestChange, IoreqError> {
        let status = ioreq::guest_status(page)?;
        if status.epoch == self.epoch {
            return Ok(GuestChange::Same);
        }
        self.epoch = status.epoch;
        self.gone = status.gone;
        Ok(if status.gone {
            GuestChange::Gone
        } else {
            GuestChange::Restarted
        })
    }

    /// The guest stopped for good.
    pub fn gone(&self) -> bool {
        self.gone
    }
}

/// Answers every request waiting in `page`, once each. `sent` gets each frame a write
/// completed, in order. `Err` only for a page too short to be a request page.
pub fn serve(
    page: &[AtomicU64],
    device: &mut Device,
    mut sent: impl FnMut(&[u8]),
) -> Result<Pass, IoreqError> {
    let mut pass = Pass::default();
    for slot in 0..SLOTS {
        let answer = match ioreq::take_request(page, slot) {
            Ok(None) => continue,
            Ok(Some(request)) if request.write => {
                if device.write(request.offset, request.size, request.data)
                    == WriteEffect::FrameSent
                {
                    if let Some(frame) = device.sent_frame() {
                        sent(frame);
                    }
                }
                0
            }
            Ok(Some(request)) => device.read(request.offset, request.size),
            Err(IoreqError::BadSize { .. }) => {
                pass.malformed += 1;
                BAD_REQUEST_ANSWER
            }
            Err(e) => return Err(e),
        };
        ioreq::respond(page, slot, answer)?;
        pass.answered += 1;
    }
    pass.mid_frame = device.transfer_in_progress();
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::sync::atomic::Ordering;
    use shared_abi::emunic::{self, ID_VALUE};
    use shared_abi::ioreq::{Request, STATE_IN_PROCESS, STATE_READY};

    const MAC: [u8; 6] = [2, 0x51, 0x55, 0, 0, 4];

    fn page() -> Vec<AtomicU64> {
        let page: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
        ioreq::init_page(&page).unwrap();
        page
    }

    fn access(offset: u64, write: bool, data: u64) -> Request {
        Request {
            offset,
            size: 4,
            write,
            data,
        }
    }

    /// The guest's vCPU `slot` makes `request` and waits: the hypervisor's part.
    fn trap(
        page: &[AtomicU64],
        slot: usize,
        request: Request,
        dev: &mut Device,
    ) -> (u64, Vec<Vec<u8>>) {
        ioreq::post(page, slot, request).unwrap();
        let mut frames = Vec::new();
        let pass = serve(page, dev, |f| frames.push(f.to_vec())).unwrap();
        assert_eq!((pass.answered, pass.malformed), (1, 0));
        assert_eq!(pass.mid_frame, dev.transfer_in_progress());
        (ioreq::take_response(page, slot).unwrap().unwrap(), frames)
    }

    #[test]
    fn reads_writes_and_a_whole_frame_go_through_the_page() {
        let page = page();
        let mut dev = Box::new(Device::new(MAC));
        assert_eq!(
            trap(&page, 0, access(emunic::ID_REV, false, 0), &mut dev).0,
            u64::from(ID_VALUE)
        );
        assert_eq!(
            trap(&page, 0, access(emunic::MAC_HI, false, 0), &mut dev).0,
            0x0400
        );
        let frame: Vec<u8> = (0..18u8).collect();
        trap(&page, 1, access(emunic::TX_CMD, true, 18), &mut dev);
        let mut out = Vec::new();
        for chunk in frame.chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            let data = u64::from(u32::from_le_bytes(word));
            let (answer, frames) = trap(&page, 1, access(emunic::TX_DATA, true, data), &mut dev);
            assert_eq!(answer, 0);
            out.extend(frames);
        }
        assert_eq!(out, vec![frame]);
        // And a frame from the switch comes back out through RX_STATUS and RX_DATA.
        assert!(dev.receive(&[7; 14]));
        assert_eq!(
            trap(&page, 2, access(emunic::RX_STATUS, false, 0), &mut dev).0,
            14
        );
        for _ in 0..3 {
            assert_eq!(
                trap(&page, 2, access(emunic::RX_DATA, false, 0), &mut dev).0,
                0x0707_0707
            );
        }
        assert_eq!(
            trap(&page, 2, access(emunic::RX_DATA, false, 0), &mut dev).0,
            0x0707
        );
        assert_eq!(
            trap(&page, 2, access(emunic::RX_STATUS, false, 0), &mut dev).0,
            0
        );
    }

    #[test]
    fn one_pass_answers_every_waiting_slot_once_and_touches_no_other() {
        let page = page();
        let mut dev = Box::new(Device::new(MAC));
        for slot in [0, 3, SLOTS - 1] {
            ioreq::post(&page, slot, access(emunic::BYTE_TEST, false, 0)).unwrap();
        }
        // A slot some earlier pass took but never answered stays as it is.
        ioreq::post(&page, 1, access(emunic::ID_REV, false, 0)).unwrap();
        assert!(ioreq::take_request(&page, 1).unwrap().is_some());
        let pass = serve(&page, &mut dev, |_| panic!("no frame")).unwrap();
        assert_eq!(pass.answered, 3);
        for slot in [0, 3, SLOTS - 1] {
            assert_eq!(
                ioreq::take_response(&page, slot).unwrap(),
                Some(0x8765_4321)
            );
        }
        let state = |slot: usize| page[8 + 4 * slot].load(Ordering::Relaxed);
        assert_eq!(state(1), STATE_IN_PROCESS);
        assert_eq!(state(2), 0);
        // Nothing is answered twice.
        assert_eq!(serve(&page, &mut dev, |_| {}).unwrap().answered, 0);
        assert_eq!(dev.counters.reads, 3);
    }

    #[test]
    fn the_watch_reports_each_stop_once_and_only_new_epochs() {
        let page = page();
        // A guest that stopped twice before this device model started: no news, not gone.
        ioreq::record_guest_stop(&page, 2, false).unwrap();
        let mut watch = GuestWatch::new(&page).unwrap();
        assert!(!watch.gone());
        assert_eq!(watch.look(&page), Ok(GuestChange::Same));
        ioreq::record_guest_stop(&page, 3, false).unwrap();
        assert_eq!(watch.look(&page), Ok(GuestChange::Restarted));
        assert_eq!(watch.look(&page), Ok(GuestChange::Same));
        // A state word written without a new epoch is not the hypervisor's.
        page[3].store(ioreq::GUEST_GONE, Ordering::Relaxed);
        assert_eq!(watch.look(&page), Ok(GuestChange::Same));
        assert!(!watch.gone());
        ioreq::record_guest_stop(&page, 4, true).unwrap();
        assert_eq!(watch.look(&page), Ok(GuestChange::Gone));
        assert!(watch.gone());
        // A device model started after the guest went is told at once.
        assert!(GuestWatch::new(&page).unwrap().gone());
        let short: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        assert!(GuestWatch::new(&short).is_err());
        assert!(watch.look(&short).is_err());
    }

    #[test]
    fn an_undecodable_request_is_answered_as_an_absent_device_and_a_short_page_is_refused() {
        let page = page();
        let mut dev = Box::new(Device::new(MAC));
        // Whatever wrote the slot, a READY state with size 3 is taken and answered.
        page[8 + 4 * 2 + 3].store(3, Ordering::Relaxed);
        page[8 + 4 * 2].store(STATE_READY, Ordering::Release);
        let pass = serve(&page, &mut dev, |_| {}).unwrap();
        assert_eq!(
            pass,
            Pass {
                answered: 1,
                malformed: 1,
                mid_frame: false
            }
        );
        assert_eq!(
            ioreq::take_response(&page, 2).unwrap(),
            Some(BAD_REQUEST_ANSWER)
        );
        assert_eq!(dev.counters.reads + dev.counters.writes, 0);
        let short: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        assert!(serve(&short, &mut dev, |_| {}).is_err());
    }
}
