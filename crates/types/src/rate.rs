//! Bit rates as `tc` writes them: `500kbit`, `50mbit`, `1gbit`.

/// Why a rate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a rate: use e.g. 500kbit, 50mbit or 1gbit")]
pub struct RateError(pub String);

/// `50mbit` → 50_000_000 bits per second; `none`/`unlimited`/`off` → None.
pub fn parse_rate(s: &str) -> Result<Option<u64>, RateError> {
    let t = s.trim().to_ascii_lowercase();
    if matches!(t.as_str(), "none" | "unlimited" | "off") {
        return Ok(None);
    }
    let bad = || RateError(s.to_string());
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        _ => return Err(bad()),
    };
    let bps = (v * mult).round();
    if !(8000.0..=1e11).contains(&bps) {
        return Err(bad());
    }
    Ok(Some(bps as u64))
}

/// 50_000_000 → `50mbit`.
pub fn format_rate(bps: u64) -> String {
    if bps.is_multiple_of(1_000_000_000) {
        format!("{}gbit", bps / 1_000_000_000)
    } else if bps.is_multiple_of(1_000_000) {
        format!("{}mbit", bps / 1_000_000)
    } else if bps.is_multiple_of(1000) {
        format!("{}kbit", bps / 1000)
    } else {
        format!("{bps}bit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tc_style_rates() {
        assert_eq!(parse_rate("50mbit").unwrap(), Some(50_000_000));
        assert_eq!(parse_rate("1.5gbit").unwrap(), Some(1_500_000_000));
        assert_eq!(parse_rate("none").unwrap(), None);
        assert!(parse_rate("50").is_err() && parse_rate("fast").is_err() && parse_rate("1bit").is_err());
        assert_eq!(format_rate(50_000_000), "50mbit");
    }
}
