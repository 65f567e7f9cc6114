//! A smoltcp device made of two frame queues: whoever owns it pushes received frames into
//! `to_stack` and takes the stack's frames from `from_stack`. The driver domain's own endpoint
//! is one (the fabric feeds it from the switch), and so is the host tests' hand-played cable.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// Two queues of Ethernet frames and the device's limits.
pub struct FrameQueues {
    /// Frames for the stack to receive, oldest first.
    pub to_stack: VecDeque<Vec<u8>>,
    /// Frames the stack sent, oldest first.
    pub from_stack: VecDeque<Vec<u8>>,
    /// The stack may transmit only while fewer than this many of its frames wait.
    limit: usize,
    mtu: usize,
}

impl FrameQueues {
    /// Empty queues for frames of up to `mtu` bytes (Ethernet header included); the stack is
    /// held back while `limit` of its frames wait to be taken.
    pub fn new(mtu: usize, limit: usize) -> Self {
        Self {
            to_stack: VecDeque::new(),
            from_stack: VecDeque::new(),
            limit,
            mtu,
        }
    }
}

/// A received frame, taken off `to_stack`.
pub struct QueuedRx(Vec<u8>);
/// Room for one frame at the back of `from_stack`.
pub struct QueuedTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for QueuedRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for QueuedTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}

impl Device for FrameQueues {
    type RxToken<'a> = QueuedRx;
    type TxToken<'a> = QueuedTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(QueuedRx, QueuedTx<'_>)> {
        let frame = self.to_stack.pop_front()?;
        Some((QueuedRx(frame), QueuedTx(&mut self.from_stack)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<QueuedTx<'_>> {
        (self.from_stack.len() < self.limit).then_some(QueuedTx(&mut self.from_stack))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = Some((self.limit / 2).max(1));
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order_and_the_stack_is_held_back_at_the_limit() {
        let mut queues = FrameQueues::new(1514, 2);
        queues.to_stack.push_back(vec![1]);
        queues.to_stack.push_back(vec![2, 2]);
        let now = Instant::from_millis(0);
        let (rx, tx) = queues.receive(now).unwrap();
        assert_eq!(rx.consume(|f| f.to_vec()), vec![1]);
        tx.consume(3, |f| f.fill(7));
        queues.transmit(now).unwrap().consume(1, |f| f[0] = 9);
        assert!(queues.transmit(now).is_none(), "two frames wait: held back");
        assert_eq!(queues.from_stack.pop_front(), Some(vec![7, 7, 7]));
        assert!(queues.transmit(now).is_some());
        let (rx, _) = queues.receive(now).unwrap();
        assert_eq!(rx.consume(|f| f.len()), 2);
        assert!(queues.receive(now).is_none());
        assert_eq!(queues.capabilities().max_transmission_unit, 1514);
    }
}
