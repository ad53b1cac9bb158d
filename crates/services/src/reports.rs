//! Replica reports as they ride in a peer's signed record (`ext` key `replicas`).
//!
//! One compact JSON array per replica, the peer implied by the record:
//! `[service, slot, state, version, restarts, cpu_milli, ip, container, started, failures,
//! fault]`, where `slot` is a number (replicated) or a peer id (global) and `fault` is `null` or
//! `[local, message]`. The whole value is capped at [`MAX_BYTES`] (the record itself is bounded):
//! beyond that the rest are left out and logged. Fault messages are cut to
//! [`MAX_FAULT_CHARS`]. Entries that do not parse are skipped, so a peer cannot make another
//! one fail by publishing junk.

use serde_json::{Value, json};
use shoal_scheduler::{Fault, ReplicaState, Report};
use shoal_types::Slot;
use tracing::warn;

/// The `ext` key of the record that carries the reports.
pub const EXT_KEY: &str = "replicas";
/// The `ext` key of the record that says the peer drains.
pub const DRAINING_KEY: &str = "draining";
/// Most bytes of reports one record carries (about 80 replicas).
pub const MAX_BYTES: usize = 10 << 10;
/// Longest fault message carried.
pub const MAX_FAULT_CHARS: usize = 160;

/// The record form of `reports` (this peer's own).
pub fn encode(reports: &[Report]) -> Value {
    let mut out = Vec::new();
    let mut size = 2;
    for r in reports {
        let slot = match &r.slot {
            Slot::Index(i) => json!(i),
            Slot::Peer(p) => json!(p),
        };
        let fault =
            r.fault.as_ref().map(|f| json!([f.local, f.message.chars().take(MAX_FAULT_CHARS).collect::<String>()]));
        let item = json!([
            r.service,
            slot,
            r.state.as_str(),
            r.version,
            r.restarts,
            r.cpu_milli,
            r.ip,
            r.container,
            r.started_unix,
            r.failures,
            fault
        ]);
        size += item.to_string().len() + 1;
        if size > MAX_BYTES {
            warn!(total = reports.len(), published = out.len(), "too many replicas on this peer to report them all");
            break;
        }
        out.push(item);
    }
    Value::Array(out)
}

/// The reports in `peer`'s record value `v`; entries that do not parse are skipped.
pub fn decode(v: &Value, peer: &str) -> Vec<Report> {
    let Some(items) = v.as_array() else { return Vec::new() };
    items.iter().filter_map(|i| decode_one(i, peer)).collect()
}

fn decode_one(i: &Value, peer: &str) -> Option<Report> {
    let a = i.as_array()?;
    let slot = match a.get(1)? {
        Value::Number(n) => Slot::Index(u32::try_from(n.as_u64()?).ok()?),
        Value::String(p) if !p.is_empty() && p.len() <= 128 => Slot::Peer(p.clone()),
        _ => return None,
    };
    let fault = match a.get(10) {
        Some(Value::Array(f)) => Some(Fault {
            local: f.first()?.as_bool()?,
            message: f.get(1)?.as_str()?.chars().take(MAX_FAULT_CHARS).collect(),
        }),
        _ => None,
    };
    Some(Report {
        peer: peer.to_string(),
        service: a.first()?.as_str()?.to_string(),
        slot,
        state: ReplicaState::parse(a.get(2)?.as_str()?)?,
        version: a.get(3)?.as_str()?.to_string(),
        restarts: u32::try_from(a.get(4)?.as_u64()?).ok()?,
        cpu_milli: a.get(5)?.as_u64()?,
        ip: a.get(6)?.as_str().map(str::to_string),
        container: a.get(7)?.as_str()?.to_string(),
        started_unix: a.get(8)?.as_u64(),
        failures: a.get(9).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        fault,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(slot: Slot) -> Report {
        Report {
            peer: "p".into(),
            service: "web".into(),
            slot,
            version: "0123456789abcdef".into(),
            state: ReplicaState::Failed,
            restarts: 1,
            cpu_milli: 250,
            failures: 2,
            fault: Some(Fault { local: true, message: "port 80 is taken".into() }),
            container: "c".repeat(64),
            ip: Some("198.19.0.2".into()),
            started_unix: Some(7),
        }
    }

    #[test]
    fn reports_round_trip_and_are_bounded() {
        let list = vec![report(Slot::Index(3)), report(Slot::Peer("12D3KooWabc".into()))];
        assert_eq!(decode(&encode(&list), "p"), list);
        let many = vec![report(Slot::Index(1)); 1000];
        let v = encode(&many);
        assert!(v.to_string().len() <= MAX_BYTES);
        assert!(!decode(&v, "p").is_empty());
        let mut long = report(Slot::Index(0));
        long.fault = Some(Fault { local: false, message: "x".repeat(10_000) });
        let back = decode(&encode(&[long]), "p");
        assert_eq!(back[0].fault.as_ref().map(|f| f.message.len()), Some(MAX_FAULT_CHARS));
    }

    #[test]
    fn junk_is_skipped() {
        let junk = json!([
            ["x"],
            5,
            "junk",
            ["web", -1, "running", "v", 0, 0, null, "c", null, 0, null],
            ["web", 0, "sleeping", "v", 0, 0, null, "c", null, 0, null]
        ]);
        assert!(decode(&junk, "p").is_empty());
        assert!(decode(&json!({"not": "a list"}), "p").is_empty());
    }
}
