//! Human byte sizes: `256m`, `1.5GiB`, `512k`, `1073741824`.
//!
//! Like Docker, single-letter suffixes are binary (`m` = MiB); `KB`/`MB`/`GB` are decimal and
//! `KiB`/`MiB`/`GiB` binary. Display picks the largest binary unit that keeps one decimal.

use std::fmt;
use std::str::FromStr;

/// A number of bytes parsed from or shown in human form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a byte size could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// `{input}` is not a size: use a number with an optional unit, such as 256m, 1.5g or 512MiB
    #[error("`{input}` is not a size: use a number with an optional unit, such as 256m, 1.5g or 512MiB")]
    Invalid { input: String },
    /// `{input}` is too large
    #[error("`{input}` is too large")]
    TooLarge { input: String },
}

const KIB: f64 = 1024.0;

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        let invalid = || ByteSizeError::Invalid { input: s.to_string() };
        let split = input.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(input.len());
        let (num, unit) = input.split_at(split);
        if num.is_empty() {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kib" => KIB,
            "m" | "mib" => KIB * KIB,
            "g" | "gib" => KIB * KIB * KIB,
            "t" | "tib" => KIB * KIB * KIB * KIB,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            _ => return Err(invalid()),
        };
        let bytes = (value * mult).round();
        if !bytes.is_finite() || bytes < 0.0 {
            return Err(invalid());
        }
        if bytes >= u64::MAX as f64 {
            return Err(ByteSizeError::TooLarge { input: s.to_string() });
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 { write!(f, "{} B", self.0) } else { write!(f, "{value:.1} {}", UNITS[unit]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_docker_style_units() {
        assert_eq!("256m".parse::<ByteSize>().unwrap().0, 256 * 1024 * 1024);
        assert_eq!("1.5g".parse::<ByteSize>().unwrap().0, 1536 * 1024 * 1024);
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 * 1024 * 1024);
        assert_eq!("1MB".parse::<ByteSize>().unwrap().0, 1_000_000);
        assert_eq!("42".parse::<ByteSize>().unwrap().0, 42);
        assert_eq!(" 2 k ".parse::<ByteSize>().unwrap().0, 2048);
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for bad in ["", "m", "12q", "-5m", "1.2.3g", "99999999999999999999t"] {
            let err = bad.parse::<ByteSize>().unwrap_err();
            assert!(err.to_string().contains(bad.trim()), "{err}");
        }
    }

    #[test]
    fn displays_in_binary_units() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(256 * 1024 * 1024).to_string(), "256.0 MiB");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,24}") {
            let _ = s.parse::<ByteSize>();
        }

        #[test]
        fn whole_mebibytes_round_trip(n in 0u64..1_000_000) {
            prop_assert_eq!(format!("{n}m").parse::<ByteSize>().unwrap().0, n * 1024 * 1024);
        }
    }
}
