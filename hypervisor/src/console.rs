//! Per-VM console line assembly: bytes from the console hypercall are collected until a newline
//! so the hypervisor can print whole lines prefixed with the VM's name, never interleaved.

pub const LINE_MAX: usize = 200;

pub struct LineBuffer {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer {
            bytes: [0; LINE_MAX],
            len: 0,
        }
    }
}

impl LineBuffer {
    /// Adds bytes; calls `emit` with each completed line (without the newline). A line longer
    /// than LINE_MAX is emitted in pieces. Carriage returns and other control bytes except tab
    /// are dropped so a guest cannot move the host terminal's cursor or forge another VM's prefix.
    pub fn push(&mut self, input: &[u8], mut emit: impl FnMut(&[u8])) {
        for &byte in input {
            match byte {
                b'\n' => {
                    emit(&self.bytes[..self.len]);
                    self.len = 0;
                }
                b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                    if self.len == LINE_MAX {
                        emit(&self.bytes[..self.len]);
                        self.len = 0;
                    }
                    self.bytes[self.len] = byte;
                    self.len += 1;
                }
                _ => {}
            }
        }
    }

    /// Emits whatever partial line is left (when the VM stops).
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if self.len > 0 {
            emit(&self.bytes[..self.len]);
            self.len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buffer: &mut LineBuffer, input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        buffer.push(input, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        out
    }

    #[test]
    fn assembles_lines_across_calls() {
        let mut b = LineBuffer::default();
        assert!(lines(&mut b, b"hel").is_empty());
        assert_eq!(lines(&mut b, b"lo\nwor"), vec!["hello"]);
        assert_eq!(lines(&mut b, b"ld\n"), vec!["world"]);
    }

    #[test]
    fn drops_control_bytes() {
        let mut b = LineBuffer::default();
        assert_eq!(lines(&mut b, b"a\rb\x1b[2Jc\n"), vec!["ab[2Jc"]);
    }

    #[test]
    fn splits_overlong_lines() {
        let mut b = LineBuffer::default();
        let input = vec![b'x'; LINE_MAX + 5];
        let out = lines(&mut b, &input);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), LINE_MAX);
        let mut rest = Vec::new();
        b.flush(|l| rest.push(l.len()));
        assert_eq!(rest, vec![5]);
    }
}
