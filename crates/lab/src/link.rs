//! Link settings: bandwidth (`50mbit`), latency (`20ms`) and loss (`0.5%`), as `tc` takes them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a link setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Bandwidth is a number with kbit, mbit or gbit
    #[error("`{0}` is not a bandwidth: use e.g. 500kbit, 50mbit or 1gbit")]
    Bandwidth(String),
    /// Latency is a number of ms
    #[error("`{0}` is not a latency: use e.g. 20ms")]
    Latency(String),
    /// Loss is a percentage
    #[error("`{0}` is not a loss rate: use a percentage such as 0.5%")]
    Loss(String),
}

/// How one peer's link to the lab's switch behaves, in each direction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// Bits per second, if shaped.
    pub bandwidth_bps: Option<u64>,
    /// One-way delay in microseconds, if any.
    pub latency_us: Option<u64>,
    /// Loss in percent, if any.
    pub loss_pct: Option<f64>,
}

impl LinkSpec {
    pub fn is_plain(&self) -> bool {
        self.bandwidth_bps.is_none() && self.latency_us.is_none() && self.loss_pct.is_none()
    }

    /// Whether the link needs netem (delay or loss).
    pub fn needs_netem(&self) -> bool {
        self.latency_us.is_some() || self.loss_pct.is_some()
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(b) = self.bandwidth_bps {
            parts.push(format_rate(b));
        }
        if let Some(l) = self.latency_us {
            parts.push(format!("{}ms", l as f64 / 1000.0));
        }
        if let Some(p) = self.loss_pct {
            parts.push(format!("{p}% loss"));
        }
        if parts.is_empty() { f.write_str("unshaped") } else { f.write_str(&parts.join(" ")) }
    }
}

/// `50mbit` → 50_000_000. `none`/`unlimited` → None.
pub fn parse_bandwidth(s: &str) -> Result<Option<u64>, LinkError> {
    shoal_types::rate::parse_rate(s).map_err(|_| LinkError::Bandwidth(s.to_string()))
}

/// `20ms` → 20_000 µs.
pub fn parse_latency(s: &str) -> Result<Option<u64>, LinkError> {
    let t = s.trim().to_ascii_lowercase();
    if matches!(t.as_str(), "none" | "0" | "off") {
        return Ok(None);
    }
    let bad = || LinkError::Latency(s.to_string());
    let (num, mult) = if let Some(n) = t.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e6)
    } else {
        return Err(bad());
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..=60.0 * 1e6).contains(&(v * mult)) {
        return Err(bad());
    }
    Ok(Some((v * mult).round() as u64))
}

/// `0.5%` → 0.5.
pub fn parse_loss(s: &str) -> Result<Option<f64>, LinkError> {
    let t = s.trim();
    if matches!(t, "none" | "0" | "0%" | "off") {
        return Ok(None);
    }
    let v: f64 = t.strip_suffix('%').unwrap_or(t).parse().map_err(|_| LinkError::Loss(s.to_string()))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(LinkError::Loss(s.to_string()));
    }
    Ok(Some(v))
}

pub use shoal_types::rate::format_rate;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tc_style_values() {
        assert_eq!(parse_bandwidth("50mbit").unwrap(), Some(50_000_000));
        assert_eq!(parse_bandwidth("1.5gbit").unwrap(), Some(1_500_000_000));
        assert_eq!(parse_bandwidth("none").unwrap(), None);
        assert!(parse_bandwidth("50").is_err() && parse_bandwidth("fast").is_err() && parse_bandwidth("1bit").is_err());
        assert_eq!(parse_latency("20ms").unwrap(), Some(20_000));
        assert_eq!(parse_latency("250us").unwrap(), Some(250));
        assert!(parse_latency("20").is_err());
        assert_eq!(parse_loss("0.5%").unwrap(), Some(0.5));
        assert!(parse_loss("150%").is_err());
        assert_eq!(format_rate(50_000_000), "50mbit");
        let l = LinkSpec { bandwidth_bps: Some(5_000_000), latency_us: Some(20_000), loss_pct: None };
        assert_eq!(l.to_string(), "5mbit 20ms");
    }
}
