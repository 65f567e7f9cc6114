//! The output a pCPU keeps while it holds the HV lock, to print once it has dropped it (the
//! binary's `logger`): log lines and VM console flushes, in order, in a fixed buffer. Nothing
//! here allocates, so logging under the HV lock never takes the heap's lock or fails for want
//! of memory; what does not fit is dropped whole and counted, and the logger says so after the
//! lines it kept.

use core::fmt::{self, Write};

/// One thing kept, as [`KeptOutput::drain`] hands it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept<'a> {
    /// Text to print as it is (a log line with its newline).
    Text(&'a str),
    /// Flush VM `id`'s console.
    Flush(u16),
}

#[derive(Clone, Copy, Debug)]
enum Item {
    /// A text ending at this byte of the buffer (it starts where the text before it ended).
    Text {
        end: usize,
    },
    Flush(u16),
}

/// Kept output: up to `BYTES` bytes of text in up to `ITEMS` items.
pub struct KeptOutput<const BYTES: usize, const ITEMS: usize> {
    bytes: heapless::Vec<u8, BYTES>,
    items: heapless::Vec<Item, ITEMS>,
    /// Console flushes that found no room among the items, by VM id (bit `id`): done after the
    /// items, so no VM's last line is lost.
    late_flushes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl<const BYTES: usize, const ITEMS: usize> Default for KeptOutput<BYTES, ITEMS> {
    fn default() -> Self {
        Self::new()
    }
}

/// Appends to the buffer until it is full, then only counts.
struct Appender<'a, const BYTES: usize> {
    bytes: &'a mut heapless::Vec<u8, BYTES>,
    len: usize,
    overflow: bool,
}

impl<const BYTES: usize> Write for Appender<'_, BYTES> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.len += s.len();
        if !self.overflow && self.bytes.extend_from_slice(s.as_bytes()).is_err() {
            self.overflow = true;
        }
        Ok(())
    }
}

impl<const BYTES: usize, const ITEMS: usize> KeptOutput<BYTES, ITEMS> {
    pub const fn new() -> Self {
        KeptOutput {
            bytes: heapless::Vec::new(),
            items: heapless::Vec::new(),
            late_flushes: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    /// True when nothing is kept and nothing was dropped.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.late_flushes == 0 && self.dropped_lines == 0
    }

    /// Keeps the text `args` formats to, whole, or drops and counts it if it does not fit.
    pub fn push_fmt(&mut self, args: fmt::Arguments) {
        let start = self.bytes.len();
        let mut out = Appender {
            bytes: &mut self.bytes,
            len: 0,
            overflow: false,
        };
        // The appender never fails; a Display impl that does only shortens the line.
        let _ = out.write_fmt(args);
        let (len, overflow) = (out.len, out.overflow);
        let end = self.bytes.len();
        if overflow || self.items.push(Item::Text { end }).is_err() {
            self.bytes.truncate(start);
            self.dropped_lines += 1;
            self.dropped_bytes += len as u64;
        }
    }

    /// Keeps a flush of VM `id`'s console (after the text kept so far).
    pub fn push_flush(&mut self, id: u16) {
        if self.items.push(Item::Flush(id)).is_err() && id < 64 {
            self.late_flushes |= 1 << id;
        }
    }

    /// What was dropped: lines and bytes.
    pub fn dropped(&self) -> (u64, u64) {
        (self.dropped_lines, self.dropped_bytes)
    }

    /// Hands everything kept to `f`, in order (late flushes last), and empties it (the counts
    /// of what was dropped too: read them with [`dropped`](Self::dropped) first).
    pub fn drain(&mut self, mut f: impl FnMut(Kept)) {
        let mut start = 0;
        for item in &self.items {
            match *item {
                Item::Text { end } => {
                    let text = self.bytes.get(start..end).unwrap_or_default();
                    // Written from `&str`s, and cut only at their ends.
                    f(Kept::Text(core::str::from_utf8(text).unwrap_or("")));
                    start = end;
                }
                Item::Flush(id) => f(Kept::Flush(id)),
            }
        }
        for id in 0..64 {
            if self.late_flushes & (1 << id) != 0 {
                f(Kept::Flush(id));
            }
        }
        self.bytes.clear();
        self.items.clear();
        self.late_flushes = 0;
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn drained<const B: usize, const I: usize>(kept: &mut KeptOutput<B, I>) -> Vec<String> {
        let mut out = Vec::new();
        kept.drain(|k| match k {
            Kept::Text(t) => out.push(String::from(t)),
            Kept::Flush(id) => out.push(std::format!("flush {id}")),
        });
        out
    }

    #[test]
    fn lines_and_flushes_come_back_in_order_and_the_buffer_empties() {
        let mut kept = KeptOutput::<64, 8>::new();
        assert!(kept.is_empty());
        kept.push_fmt(format_args!("[hv] VM {} stopping\n", "a"));
        kept.push_flush(3);
        kept.push_fmt(format_args!("[hv] {}\n", 42));
        assert!(!kept.is_empty());
        assert_eq!(
            drained(&mut kept),
            ["[hv] VM a stopping\n", "flush 3", "[hv] 42\n"]
        );
        assert!(kept.is_empty());
        kept.push_fmt(format_args!("again\n"));
        assert_eq!(drained(&mut kept), ["again\n"]);
    }

    #[test]
    fn a_line_that_does_not_fit_is_dropped_whole_and_counted() {
        let mut kept = KeptOutput::<16, 8>::new();
        kept.push_fmt(format_args!("0123456789\n"));
        kept.push_fmt(format_args!("{}\n", "this one is too long"));
        kept.push_fmt(format_args!("abc\n"));
        assert_eq!(kept.dropped(), (1, 21));
        assert_eq!(drained(&mut kept), ["0123456789\n", "abc\n"]);
        assert_eq!(kept.dropped(), (0, 0));
        assert!(kept.is_empty());
    }

    #[test]
    fn with_no_item_left_lines_are_counted_and_flushes_still_done() {
        let mut kept = KeptOutput::<64, 2>::new();
        kept.push_fmt(format_args!("a\n"));
        kept.push_flush(5);
        kept.push_fmt(format_args!("b\n"));
        kept.push_flush(7);
        kept.push_flush(7);
        assert_eq!(kept.dropped(), (1, 2));
        assert_eq!(drained(&mut kept), ["a\n", "flush 5", "flush 7"]);
    }
}
