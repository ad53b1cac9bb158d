//! Amounts of compute: CPUs (kept as millicores so sums are exact) and memory in bytes.
//!
//! On the wire and in JSON a CPU amount is a decimal number of CPUs (`"cpus": 0.5`), as Docker's
//! `--cpus` is; inside Shoal it is an integer number of millicores.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// CPU and memory, as a capacity, a reservation or what is left free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Resources {
    /// Thousandths of a CPU.
    pub millicpus: u64,
    /// Bytes of memory.
    pub memory_bytes: u64,
}

/// Why a resource amount was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResourcesError {
    /// CPU amounts are positive decimal numbers such as 0.5 or 2
    #[error("`{input}` is not a CPU amount: use a positive number such as 0.5 or 2")]
    BadCpus { input: String },
}

impl Resources {
    /// Nothing.
    pub const ZERO: Resources = Resources { millicpus: 0, memory_bytes: 0 };

    /// Builds an amount from whole millicores and bytes.
    pub const fn new(millicpus: u64, memory_bytes: u64) -> Self {
        Resources { millicpus, memory_bytes }
    }

    /// The CPU amount as a decimal number of CPUs.
    pub fn cpus(&self) -> f64 {
        self.millicpus as f64 / 1000.0
    }

    /// Parses a decimal CPU amount (`0.5`, `2`) into millicores.
    pub fn parse_cpus(input: &str) -> Result<u64, ResourcesError> {
        let bad = || ResourcesError::BadCpus { input: input.to_string() };
        let v: f64 = input.trim().parse().map_err(|_| bad())?;
        cpus_to_milli(v).ok_or_else(bad)
    }

    /// Whether `other` fits inside `self`.
    pub fn fits(&self, other: &Resources) -> bool {
        other.millicpus <= self.millicpus && other.memory_bytes <= self.memory_bytes
    }

    /// `self - other`, floored at zero in each dimension.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            millicpus: self.millicpus.saturating_sub(other.millicpus),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// `self + other`, capped at the maximum in each dimension.
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            millicpus: self.millicpus.saturating_add(other.millicpus),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

fn cpus_to_milli(v: f64) -> Option<u64> {
    if (0.0..1e12).contains(&v) { Some((v * 1000.0).round() as u64) } else { None }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cpu, {}", self.cpus(), crate::ByteSize(self.memory_bytes))
    }
}

/// The JSON shape of [`Resources`].
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Resources))]
pub struct ResourcesJson {
    /// CPUs, as a decimal number (0.5 is half a CPU).
    pub cpus: f64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResourcesJson { cpus: self.cpus(), memory_bytes: self.memory_bytes }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = ResourcesJson::deserialize(d)?;
        let millicpus =
            cpus_to_milli(j.cpus).ok_or_else(|| serde::de::Error::custom("cpus must be a non-negative number"))?;
        Ok(Resources { millicpus, memory_bytes: j.memory_bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_decimal_cpus() {
        let r = Resources::new(1500, 1 << 30);
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"cpus":1.5,"memory_bytes":1073741824}"#);
        assert_eq!(serde_json::from_str::<Resources>(&j).unwrap(), r);
        assert!(serde_json::from_str::<Resources>(r#"{"cpus":-1,"memory_bytes":1}"#).is_err());
    }

    #[test]
    fn parse_cpus() {
        assert_eq!(Resources::parse_cpus("0.5").unwrap(), 500);
        assert_eq!(Resources::parse_cpus("2").unwrap(), 2000);
        assert!(Resources::parse_cpus("-1").is_err());
        assert!(Resources::parse_cpus("lots").is_err());
    }

    #[test]
    fn arithmetic() {
        let cap = Resources::new(2000, 100);
        assert!(cap.fits(&Resources::new(2000, 100)));
        assert!(!cap.fits(&Resources::new(2001, 1)));
        assert_eq!(cap.saturating_sub(&Resources::new(3000, 1)), Resources::new(0, 99));
    }
}
