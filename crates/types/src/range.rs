//! HTTP `Range: bytes=…` requests, one range at a time (what the API's content reads and the
//! registry mirror's blob reads serve).

/// A single byte range as a client asks for it, before the size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=START-`
    From(u64),
    /// `bytes=START-END` (inclusive)
    Between(u64, u64),
    /// `bytes=-N`: the last N bytes.
    Last(u64),
}

impl ByteRange {
    /// `None` for anything but one `bytes=` range (several ranges, other units, garbage):
    /// HTTP lets a server answer those with the whole body.
    pub fn parse(header: &str) -> Option<ByteRange> {
        let spec = header.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        Some(match (a.trim(), b.trim()) {
            ("", "") => return None,
            ("", n) => ByteRange::Last(digits(n)?),
            (s, "") => ByteRange::From(digits(s)?),
            (s, e) => ByteRange::Between(digits(s)?, digits(e)?),
        })
    }

    /// The first byte, when it is known without the size.
    pub fn start(&self) -> Option<u64> {
        match *self {
            ByteRange::From(s) | ByteRange::Between(s, _) => Some(s),
            ByteRange::Last(_) => None,
        }
    }

    /// The inclusive `(start, end)` within `size` bytes, the end cut to the size; `None` when
    /// nothing of it is there (the answer is 416).
    pub fn within(&self, size: u64) -> Option<(u64, u64)> {
        let last = size.checked_sub(1)?;
        let (start, end) = match *self {
            ByteRange::From(s) => (s, last),
            ByteRange::Between(s, e) => (s, e.min(last)),
            ByteRange::Last(0) => return None,
            ByteRange::Last(n) => (size.saturating_sub(n), last),
        };
        (start <= end).then_some((start, end))
    }
}

/// A position as HTTP writes it: decimal digits only (`u64::from_str` also takes a `+`).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    fn within(h: &str, size: u64) -> Option<Option<(u64, u64)>> {
        ByteRange::parse(h).map(|r| r.within(size))
    }

    #[test]
    fn ranges_read_as_http_says() {
        assert_eq!(within("bytes=0-9", 100), Some(Some((0, 9))));
        assert_eq!(within("bytes=90-", 100), Some(Some((90, 99))));
        assert_eq!(within("bytes=-10", 100), Some(Some((90, 99))));
        assert_eq!(within("bytes=-1000", 100), Some(Some((0, 99))));
        assert_eq!(within("bytes=50-500", 100), Some(Some((50, 99))));
        assert_eq!(within("bytes=100-", 100), Some(None));
        assert_eq!(within("bytes=9-3", 100), Some(None));
        assert_eq!(within("bytes=-0", 100), Some(None));
        assert_eq!(within("bytes=0-", 0), Some(None));
        assert_eq!(within("bytes=0-1,5-6", 100), None);
        assert_eq!(within("items=0-1", 100), None);
        assert_eq!(within("bytes=-", 100), None);
        assert_eq!(within("bytes=x-", 100), None);
        assert_eq!(within("bytes=+5-", 100), None);
        assert_eq!(within("bytes=-+5", 100), None);
        assert_eq!(within("bytes=1-+5", 100), None);
        assert_eq!(within("bytes=99999999999999999999-", 100), None);
        assert_eq!(ByteRange::parse("bytes=7-9").and_then(|r| r.start()), Some(7));
        assert_eq!(ByteRange::parse("bytes=-9").and_then(|r| r.start()), None);
    }
}
