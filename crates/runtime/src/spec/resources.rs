//! Resources: CPU quota, memory without swap beyond it, pids, and Docker's device rules.

use super::{CPU_PERIOD_US, MIN_MEMORY_BYTES, SpecError};
use oci_spec::runtime::{LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxPids, LinuxResources};
use shoal_types::ContainerSpec;

/// Smallest CFS quota the kernel accepts (1 ms), so the smallest limit is 10 millicpus.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// CPU quota over [`CPU_PERIOD_US`], memory with swap equal to it (no swap beyond the limit),
/// pids, and Docker's device rules.
pub(super) fn resources(spec: &ContainerSpec) -> Result<LinuxResources, SpecError> {
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(device_rules()));
    if spec.memory_bytes != 0 {
        if spec.memory_bytes < MIN_MEMORY_BYTES {
            return Err(SpecError::MemoryTooSmall { bytes: spec.memory_bytes });
        }
        let limit = i64::try_from(spec.memory_bytes)
            .map_err(|_| SpecError::TooLarge { what: "memory limit", value: spec.memory_bytes })?;
        let mut memory = LinuxMemory::default();
        // OCI's swap is memory + swap: equal to the limit means no swap at all.
        memory.set_limit(Some(limit)).set_swap(Some(limit));
        resources.set_memory(Some(memory));
    }
    if spec.cpus_milli != 0 {
        let too_large = || SpecError::TooLarge { what: "CPU limit (millicpus)", value: spec.cpus_milli };
        let quota = spec.cpus_milli.checked_mul(CPU_PERIOD_US).ok_or_else(too_large)? / 1000;
        if quota < MIN_CPU_QUOTA_US {
            return Err(SpecError::CpuTooSmall { millis: spec.cpus_milli });
        }
        let mut cpu = LinuxCpu::default();
        cpu.set_quota(Some(i64::try_from(quota).map_err(|_| too_large())?)).set_period(Some(CPU_PERIOD_US));
        resources.set_cpu(Some(cpu));
    }
    if spec.pids != 0 {
        let limit =
            i64::try_from(spec.pids).map_err(|_| SpecError::TooLarge { what: "pids limit", value: spec.pids })?;
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        resources.set_pids(Some(pids));
    }
    Ok(resources)
}

/// Deny every device, then allow Docker's defaults: creating any node (`m`), and using the
/// standard character devices and pseudo-terminals.
fn device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    let rule = |allow: bool, typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow).set_typ(Some(typ)).set_major(major).set_minor(minor).set_access(Some(access.to_string()));
        r
    };
    vec![
        rule(false, A, None, None, "rwm"),
        rule(true, C, None, None, "m"),
        rule(true, B, None, None, "m"),
        rule(true, C, Some(1), Some(3), "rwm"), // null
        rule(true, C, Some(1), Some(5), "rwm"), // zero
        rule(true, C, Some(1), Some(7), "rwm"), // full
        rule(true, C, Some(1), Some(8), "rwm"), // random
        rule(true, C, Some(1), Some(9), "rwm"), // urandom
        rule(true, C, Some(5), Some(0), "rwm"), // tty
        rule(true, C, Some(5), Some(1), "rwm"), // console
        rule(true, C, Some(5), Some(2), "rwm"), // ptmx
        rule(true, C, Some(136), None, "rwm"),  // pts/*
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_support::run;

    #[test]
    fn resources_convert() {
        let spec = ContainerSpec { cpus_milli: 1500, memory_bytes: 256 << 20, pids: 100, ..run("i") };
        let r = resources(&spec).expect("resources");
        let cpu = r.cpu().as_ref().expect("cpu");
        assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(100_000)));
        let memory = r.memory().as_ref().expect("memory");
        assert_eq!((memory.limit(), memory.swap()), (Some(256 << 20), Some(256 << 20)));
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(100));

        let none = resources(&run("i")).expect("no limits");
        assert!(none.cpu().is_none() && none.memory().is_none() && none.pids().is_none());
        let devices = none.devices().as_ref().expect("devices");
        assert_eq!(devices[0].to_string(), "a *:* rwm");
        assert!(!devices[0].allow());
        let allowed: Vec<String> = devices.iter().filter(|d| d.allow()).map(|d| d.to_string()).collect();
        for want in ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:9 rwm", "c 5:2 rwm", "c 136:* rwm"] {
            assert!(allowed.iter().any(|a| a == want), "{want} missing from {allowed:?}");
        }
    }

    #[test]
    fn resources_refuse_unenforceable_limits() {
        let spec = ContainerSpec { memory_bytes: (6 << 20) - 1, ..run("i") };
        let err = resources(&spec).expect_err("too small");
        assert!(matches!(err, SpecError::MemoryTooSmall { .. }) && err.to_string().contains("6 MiB"), "{err}");
        assert!(resources(&ContainerSpec { memory_bytes: 6 << 20, ..run("i") }).is_ok());
        assert!(matches!(resources(&ContainerSpec { cpus_milli: 9, ..run("i") }), Err(SpecError::CpuTooSmall { .. })));
        assert!(resources(&ContainerSpec { cpus_milli: 10, ..run("i") }).is_ok());
        for spec in [
            ContainerSpec { cpus_milli: u64::MAX, ..run("i") },
            ContainerSpec { memory_bytes: u64::MAX, ..run("i") },
            ContainerSpec { pids: u64::MAX, ..run("i") },
        ] {
            assert!(matches!(resources(&spec), Err(SpecError::TooLarge { .. })));
        }
    }
}
