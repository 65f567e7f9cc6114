//! The JSON reader of the iperf3 control messages: a bounded, allocation-free parser for text a
//! peer sent, so anything may come in. It checks the whole text against the JSON grammar
//! (RFC 8259), nests at most [`MAX_DEPTH`] deep, never panics, and hands out the members of
//! an object one by one as borrowed [`Value`]s; the caller picks the fields it knows and
//! ignores the rest. Strings stay raw (escapes are checked, not decoded): the fields we read
//! are numbers and booleans, and keys with escapes simply match nothing.
//!
//! The messages we send are written with `core::fmt` where they are built (`proto/messages.rs`).

use thiserror::Error;

/// How deeply arrays and objects may nest.
pub const MAX_DEPTH: usize = 16;

/// Why a text is not the JSON we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum JsonError {
    /// Not JSON at this byte offset.
    #[error("bad JSON at byte {0}")]
    Syntax(usize),
    /// Arrays or objects nested more than [`MAX_DEPTH`] deep.
    #[error("JSON nested too deeply")]
    TooDeep,
    /// Valid JSON, but not an object where one is required.
    #[error("JSON is not an object")]
    NotAnObject,
}

/// A number: its value (approximate for long or fractional numbers) and, when it was written
/// as an integer of at most 38 digits, the exact integer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Number {
    pub value: f64,
    pub integer: Option<i128>,
}

impl Number {
    /// The number as a count: `None` if negative or not finite; fractions are truncated and
    /// values past `u64::MAX` saturate.
    pub fn as_u64(&self) -> Option<u64> {
        match self.integer {
            Some(i) if i < 0 => None,
            Some(i) => Some(u64::try_from(i).unwrap_or(u64::MAX)),
            None if self.value.is_finite() && self.value >= 0.0 => Some(self.value as u64),
            None => None,
        }
    }

    /// The number as a signed integer (fractions truncated, saturating), `None` if not
    /// finite. An integer between 2^63 and 2^64 reads as the negative number with the same
    /// 64 bits: iperf3 3.12 writes its -1 ("not counted") as 18446744073709551615.
    pub fn as_i64(&self) -> Option<i64> {
        match self.integer {
            Some(i) => Some(
                i64::try_from(i)
                    .or_else(|_| u64::try_from(i).map(|u| u as i64))
                    .unwrap_or(if i < 0 { i64::MIN } else { i64::MAX }),
            ),
            None if self.value.is_finite() => Some(self.value as i64),
            None => None,
        }
    }
}

/// One JSON value, borrowed from the text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Number(Number),
    /// A string's raw bytes between the quotes (escapes checked, not decoded).
    Str(&'a [u8]),
    /// An array's text, brackets included: walk it with [`elements`].
    Array(&'a [u8]),
    /// An object's text, braces included: walk it with [`members`].
    Object(&'a [u8]),
}

impl Value<'_> {
    pub fn as_number(&self) -> Option<Number> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// JSON's idea of a flag: anything but `false` and `null` counts as set (iperf3 itself only
    /// looks whether a flag's key is there).
    pub fn is_set(&self) -> bool {
        !matches!(self, Value::Bool(false) | Value::Null)
    }
}

/// Calls `f` with the key (raw) and value of every member of the object `text` (whitespace
/// around it allowed, nothing else). The whole text is checked before the first call.
pub fn members<'a>(
    text: &'a [u8],
    mut f: impl FnMut(&'a [u8], Value<'a>),
) -> Result<(), JsonError> {
    let value = whole(text)?;
    let Value::Object(object) = value else {
        return Err(JsonError::NotAnObject);
    };
    let mut reader = Reader::new(object);
    // Checked already: this walk cannot fail, but stays fallible rather than panicking.
    reader.object(0, &mut |key, value| f(key, value))
}

/// Calls `f` with every element of the array `text` (as handed out by [`Value::Array`]).
pub fn elements<'a>(text: &'a [u8], mut f: impl FnMut(Value<'a>)) -> Result<(), JsonError> {
    let mut reader = Reader::new(text);
    reader.skip_ws();
    reader.array(0, &mut |value| f(value))?;
    reader.skip_ws();
    if reader.pos != text.len() {
        return Err(JsonError::Syntax(reader.pos));
    }
    Ok(())
}

/// Checks that `text` is one JSON value and returns it.
pub fn whole(text: &[u8]) -> Result<Value<'_>, JsonError> {
    let mut reader = Reader::new(text);
    reader.skip_ws();
    let value = reader.value(0)?;
    reader.skip_ws();
    if reader.pos != text.len() {
        return Err(JsonError::Syntax(reader.pos));
    }
    Ok(value)
}

struct Reader<'a> {
    s: &'a [u8],
    pos: usize,
}

type MemberFn<'f, 'a> = dyn FnMut(&'a [u8], Value<'a>) + 'f;
type ElementFn<'f, 'a> = dyn FnMut(Value<'a>) + 'f;

impl<'a> Reader<'a> {
    fn new(s: &'a [u8]) -> Reader<'a> {
        Reader { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn error(&self) -> JsonError {
        JsonError::Syntax(self.pos)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), JsonError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// A value starting at the current position (no leading whitespace).
    fn value(&mut self, depth: usize) -> Result<Value<'a>, JsonError> {
        match self.peek() {
            Some(b'{') => {
                let start = self.pos;
                self.object(depth + 1, &mut |_, _| {})?;
                Ok(Value::Object(&self.s[start..self.pos]))
            }
            Some(b'[') => {
                let start = self.pos;
                self.array(depth + 1, &mut |_| {})?;
                Ok(Value::Array(&self.s[start..self.pos]))
            }
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') => self.literal(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            _ => Err(self.error()),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.s[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// An object; `depth` counts this object.
    fn object(&mut self, depth: usize, f: &mut MemberFn<'_, 'a>) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.expect(b'{')?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value(depth)?;
            f(key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error()),
            }
        }
    }

    /// An array; `depth` counts this array.
    fn array(&mut self, depth: usize, f: &mut ElementFn<'_, 'a>) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.expect(b'[')?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            let value = self.value(depth)?;
            f(value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error()),
            }
        }
    }

    /// A string: returns the bytes between the quotes.
    fn string(&mut self) -> Result<&'a [u8], JsonError> {
        self.expect(b'"')?;
        let start = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.error()),
                Some(b'"') => {
                    let raw = &self.s[start..self.pos];
                    self.pos += 1;
                    return Ok(raw);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            for _ in 0..4 {
                                if !self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
                                    return Err(self.error());
                                }
                                self.pos += 1;
                            }
                        }
                        _ => return Err(self.error()),
                    }
                }
                Some(0..=0x1f) => return Err(self.error()),
                Some(_) => self.pos += 1,
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<Number, JsonError> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        // Up to 19 significant digits go into the mantissa; the rest only move the exponent.
        let mut mantissa: u64 = 0;
        let mut digits = 0u32;
        let mut exponent: i64 = 0;
        let mut exact = true;
        // The integer part exactly, while it fits.
        let mut whole: Option<u128> = Some(0);
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(d @ b'0'..=b'9') = self.peek() {
                    whole = whole
                        .and_then(|w| w.checked_mul(10))
                        .and_then(|w| w.checked_add(u128::from(d - b'0')));
                    if digits < 19 {
                        mantissa = mantissa * 10 + u64::from(d - b'0');
                        if mantissa != 0 {
                            digits += 1;
                        }
                    } else {
                        exponent += 1;
                    }
                    self.pos += 1;
                }
            }
            _ => return Err(self.error()),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            exact = false;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error());
            }
            while let Some(d @ b'0'..=b'9') = self.peek() {
                if digits < 19 {
                    mantissa = mantissa * 10 + u64::from(d - b'0');
                    if mantissa != 0 {
                        digits += 1;
                    }
                    exponent -= 1;
                }
                self.pos += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            exact = false;
            let negative_exp = match self.peek() {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error());
            }
            let mut e: i64 = 0;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                e = (e * 10 + i64::from(d - b'0')).min(100_000);
                self.pos += 1;
            }
            exponent += if negative_exp { -e } else { e };
        }
        let magnitude = scale(mantissa as f64, exponent);
        let value = if negative { -magnitude } else { magnitude };
        let integer = if exact {
            whole
                .and_then(|w| i128::try_from(w).ok())
                .map(|w| if negative { -w } else { w })
        } else {
            None
        };
        Ok(Number { value, integer })
    }
}

/// `m * 10^exponent` without `powi` (not in `core`); far-out exponents give 0 or infinity.
fn scale(m: f64, exponent: i64) -> f64 {
    if m == 0.0 {
        return 0.0;
    }
    if exponent > 400 {
        return f64::INFINITY;
    }
    if exponent < -400 {
        return 0.0;
    }
    // 10^k is exact in an f64 up to k = 22, so up to there one rounding step is all.
    let mut value = m;
    let mut left = exponent.unsigned_abs();
    while left > 0 {
        let step = left.min(22);
        let mut power = 1.0f64;
        for _ in 0..step {
            power *= 10.0;
        }
        if exponent > 0 {
            value *= power;
        } else {
            value /= power;
        }
        left -= step;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(text: &str) -> Result<Vec<(String, String)>, JsonError> {
        let mut out = Vec::new();
        members(text.as_bytes(), |k, v| {
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                std::format!("{v:?}"),
            ))
        })?;
        Ok(out)
    }

    #[test]
    fn iperf_parameters_parse() {
        let text = r#"{"tcp":true,"omit":0,"time":10,"num":0,"blockcount":0,"parallel":1,"len":131072,"pacing_timer":1000,"client_version":"3.12"}"#;
        let mut time = None;
        let mut tcp = false;
        members(text.as_bytes(), |k, v| match k {
            b"time" => time = v.as_number().and_then(|n| n.as_u64()),
            b"tcp" => tcp = v.is_set(),
            _ => {}
        })
        .unwrap();
        assert_eq!(time, Some(10));
        assert!(tcp);
    }

    #[test]
    fn numbers() {
        let num = |s: &str| match whole(s.as_bytes()).unwrap() {
            Value::Number(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(num("0").integer, Some(0));
        assert_eq!(num("-17").integer, Some(-17));
        assert_eq!(num("131072").as_u64(), Some(131072));
        assert_eq!(num("9223372036854775807").as_i64(), Some(i64::MAX));
        // iperf3 3.12's -1.
        assert_eq!(num("18446744073709551615").as_i64(), Some(-1));
        assert_eq!(num("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(num("18446744073709551616").as_i64(), Some(i64::MAX));
        assert_eq!(num("-18446744073709551616").as_i64(), Some(i64::MIN));
        assert_eq!(num("3.001").value, 3.001);
        // cJSON writes large counts as %1.15g.
        assert_eq!(
            num("1.23456789012346e+15").as_u64(),
            Some(1_234_567_890_123_460)
        );
        assert_eq!(num("3221225472").as_u64(), Some(3_221_225_472));
        assert!((num("0.5").value - 0.5).abs() < 1e-12);
        assert!((num("12.0625").value - 12.0625).abs() < 1e-9);
        assert!((num("1E-3").value - 0.001).abs() < 1e-12);
        assert_eq!(num("-1").as_u64(), None);
        assert_eq!(num("1e999").as_u64(), None);
        assert_eq!(num("1e999").as_i64(), None);
        assert_eq!(num("99999999999999999999999").as_u64(), Some(u64::MAX));
        assert_eq!(num("-0.0").value, 0.0);
        for bad in ["01", "-", "1.", ".5", "1e", "1e+", "+1", "0x10", "1.e3"] {
            assert!(whole(bad.as_bytes()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn nesting_and_unknown_fields() {
        let fields =
            collect(r#" { "a" : [1, {"b": [true, null]}, "x\"y\u00e9"], "c": {}, "d": [] } "#)
                .unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0].0, "a");
        let Ok(Value::Object(inner)) = whole(br#"{"streams":[{"id":1,"bytes":5}]}"#) else {
            panic!()
        };
        let mut streams = None;
        members(inner, |k, v| {
            if k == b"streams" {
                streams = Some(v)
            }
        })
        .unwrap();
        let Some(Value::Array(list)) = streams else {
            panic!()
        };
        let mut n = 0;
        elements(list, |v| {
            assert!(matches!(v, Value::Object(_)));
            n += 1
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn hostile_texts_are_refused_without_panics() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(whole(deep.as_bytes()), Err(JsonError::TooDeep));
        let ok_deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(whole(ok_deep.as_bytes()).is_ok());
        let very_deep = "[".repeat(100_000);
        assert_eq!(whole(very_deep.as_bytes()), Err(JsonError::TooDeep));
        for bad in [
            "",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "{a:1}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\n\"}",
            "{\"a\":\"unterminated}",
            "[1,,2]",
            "{\"a\":1 \"b\":2}",
        ] {
            assert!(collect(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(collect("[1]"), Err(JsonError::NotAnObject));
        assert_eq!(collect("\"s\""), Err(JsonError::NotAnObject));
        // Every prefix and every single-byte corruption of a real message: no panic.
        let text = br#"{"cpu_util_total":1.5,"sender_has_retransmits":-1,"streams":[{"id":1,"bytes":123,"retransmits":-1,"jitter":0,"errors":0,"packets":0,"start_time":0,"end_time":1.000041}]}"#;
        for end in 0..text.len() {
            let _ = collect(std::str::from_utf8(&text[..end]).unwrap());
        }
        for i in 0..text.len() {
            for b in [
                0u8, b'"', b'{', b'[', b']', b'}', b',', b':', b'-', b'e', 0xff,
            ] {
                let mut t = text.to_vec();
                t[i] = b;
                let _ = members(&t, |_, _| {});
            }
        }
    }

    /// A number inside `depth` containers, alternately arrays and objects.
    fn nested(depth: usize) -> String {
        (0..depth).fold(String::from("0"), |inner, level| {
            if level % 2 == 0 {
                std::format!("[{inner}]")
            } else {
                std::format!("{{\"k\":{inner}}}")
            }
        })
    }

    proptest::proptest! {
        /// Any bytes at all: each entry point answers with a value or an error, never a
        /// panic, and a text `whole` accepts as an object, `members` walks too.
        #[test]
        fn any_bytes_are_read_or_refused_without_panics(
            text in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            let checked = whole(&text);
            let walked = members(&text, |_, _| {});
            let listed = elements(&text, |_| {});
            if let Ok(Value::Object(_)) = checked {
                proptest::prop_assert_eq!(walked, Ok(()));
            }
            if let Ok(Value::Array(_)) = checked {
                proptest::prop_assert_eq!(listed, Ok(()));
            }
        }

        /// Texts made of JSON's own characters (so the reader gets deep into its grammar,
        /// where random bytes rarely reach): no panics, and every value handed out is a
        /// slice of the text that reads back as the same kind of value.
        #[test]
        fn json_like_texts_are_read_or_refused_without_panics(
            text in "[\\[\\]{}\":, 0-9eE.+\\-\\\\/utrfalsn]{0,300}"
        ) {
            let _ = whole(text.as_bytes());
            let _ = members(text.as_bytes(), |key, value| {
                assert!(key.len() <= text.len());
                match value {
                    Value::Object(inner) => assert!(matches!(whole(inner), Ok(Value::Object(_)))),
                    Value::Array(inner) => assert!(elements(inner, |_| {}).is_ok()),
                    _ => {}
                }
            });
        }

        /// Any number text the grammar allows (long mantissas, far exponents) reads without
        /// overflow; its value is never NaN, and the conversions never panic.
        #[test]
        fn any_number_text_reads_without_overflow(
            text in "-?(0|[1-9][0-9]{0,60})(\\.[0-9]{1,60})?([eE][+-]?[0-9]{1,12})?"
        ) {
            let Ok(Value::Number(number)) = whole(text.as_bytes()) else {
                return Err(proptest::test_runner::TestCaseError::fail(
                    std::format!("{text} not read as a number"),
                ));
            };
            proptest::prop_assert!(!number.value.is_nan());
            let _ = (number.as_u64(), number.as_i64());
        }

        /// Integers are exact across the whole 64-bit range, either sign.
        #[test]
        fn integers_read_exactly(signed in proptest::prelude::any::<i64>(), unsigned in proptest::prelude::any::<u64>()) {
            let read = |text: String| match whole(text.as_bytes()) {
                Ok(Value::Number(n)) => n,
                other => panic!("{text}: {other:?}"),
            };
            proptest::prop_assert_eq!(read(std::format!("{signed}")).as_i64(), Some(signed));
            proptest::prop_assert_eq!(read(std::format!("{unsigned}")).as_u64(), Some(unsigned));
        }

        /// Nesting is accepted up to [`MAX_DEPTH`] and refused past it, whatever the mix of
        /// arrays and objects, and however deep the attempt (the reader's recursion stops at
        /// the limit, so the stack does not grow with the text).
        #[test]
        fn nesting_past_the_limit_is_refused(depth in 1usize..4 * MAX_DEPTH) {
            let text = nested(depth);
            let result = whole(text.as_bytes());
            if depth <= MAX_DEPTH {
                proptest::prop_assert!(result.is_ok(), "{text}: {result:?}");
            } else {
                proptest::prop_assert_eq!(result, Err(JsonError::TooDeep), "{}", text);
            }
        }
    }
}
