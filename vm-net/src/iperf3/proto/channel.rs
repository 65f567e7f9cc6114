//! The byte buffers of one control connection ([`Channel`]): bounded input, pending output,
//! and the framing of the messages (state bytes, length-prefixed JSON).

use alloc::vec::Vec;

use super::messages::{ProtoError, State, INBOX_LIMIT, MAX_JSON_LEN};

/// The byte buffers of a control connection: input not yet understood (from `start` on),
/// output not yet sent. Taking input only moves `start`; the buffer is compacted when more
/// input arrives, so a flood of single bytes costs linear time.
#[derive(Default)]
pub(super) struct Channel {
    inbox: Vec<u8>,
    start: usize,
    outbox: Vec<u8>,
}

impl Channel {
    /// Output not yet sent.
    pub(super) fn output(&self) -> &[u8] {
        &self.outbox
    }

    pub(super) fn push_bytes(&mut self, bytes: &[u8]) {
        self.outbox.extend_from_slice(bytes);
    }

    pub(super) fn push_state(&mut self, state: State) {
        self.outbox.push(state.byte());
    }

    pub(super) fn push_json(&mut self, text: &str) {
        self.outbox
            .extend_from_slice(&(text.len() as u32).to_be_bytes());
        self.outbox.extend_from_slice(text.as_bytes());
    }

    pub(super) fn push_server_error(&mut self, i_errno: i32) {
        self.push_state(State::ServerError);
        self.outbox.extend_from_slice(&i_errno.to_be_bytes());
        self.outbox.extend_from_slice(&0i32.to_be_bytes());
    }

    /// The input not yet taken.
    pub(super) fn pending(&self) -> &[u8] {
        &self.inbox[self.start..]
    }

    pub(super) fn skip(&mut self, n: usize) {
        self.start = (self.start + n).min(self.inbox.len());
        if self.start == self.inbox.len() {
            self.inbox.clear();
            self.start = 0;
        }
    }

    pub(super) fn take_byte(&mut self) -> Option<u8> {
        let byte = *self.pending().first()?;
        self.skip(1);
        Some(byte)
    }

    pub(super) fn take_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes: [u8; N] = self.pending().get(..N)?.try_into().ok()?;
        self.skip(N);
        Some(bytes)
    }

    /// A length-prefixed JSON message, once all of it is here.
    pub(super) fn take_json(&mut self) -> Option<Result<Vec<u8>, ProtoError>> {
        let len: [u8; 4] = self.pending().get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(len);
        if len as usize > MAX_JSON_LEN {
            return Some(Err(ProtoError::MessageTooLong(len)));
        }
        let end = 4 + len as usize;
        let text = self.pending().get(4..end)?.to_vec();
        self.skip(end);
        Some(Ok(text))
    }

    /// Appends what fits of `bytes` to the input; the rest is returned. Err: the input is full.
    pub(super) fn append<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b [u8], ProtoError> {
        if self.start > 0 {
            self.inbox.drain(..self.start);
            self.start = 0;
        }
        let room = INBOX_LIMIT.saturating_sub(self.inbox.len());
        if room == 0 {
            return Err(ProtoError::InputOverflow);
        }
        let (now, later) = bytes.split_at(room.min(bytes.len()));
        self.inbox.extend_from_slice(now);
        Ok(later)
    }

    pub(super) fn consume_output(&mut self, n: usize) {
        let n = n.min(self.outbox.len());
        self.outbox.drain(..n);
    }
}
