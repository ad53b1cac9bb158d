//! The default seccomp profile of every container: Docker's list of refused system calls, on a
//! filter that lets everything else through.
//!
//! # Why a deny list and not Docker's allow list
//!
//! Docker's `default.json` returns `EPERM` for every syscall it does not name. That is safe under
//! runc only because runc adds a stub that answers `ENOSYS` for syscall numbers newer than any the
//! profile knows, so libc sees "not implemented" and falls back to an older call (the 2021 breakage
//! of newer images on `faccessat2` under older Docker releases is what happens without it). The embedded
//! libcontainer 0.7 has no such stub, and the libseccomp it links (2.5.4 on Debian 12, syscall table
//! up to `futex_requeue`, Linux 6.7) cannot even name what this host's kernel (6.18) added since:
//! `statmount`, `listmount`, `lsm_*`, `mseal`, `*xattrat`, `file_getattr`, ... An allow list would
//! answer `EPERM` to all of them and break any libc that probes them, now or after the next
//! distribution release.
//!
//! So the filter allows by default and refuses, with `EPERM`, what Docker documents as blocked
//! (and what its allow list leaves out for lack of a capability we do not grant): kernel modules,
//! kexec, reboot, swap, accounting, quotas, clock setting, keyrings, mounts and the new mount API,
//! namespace creation and entry (`unshare`, `setns`, `clone` with a `CLONE_NEW*` flag), tracing other
//! processes (`ptrace`, `process_vm_*`, `kcmp`, `pidfd_getfd`), BPF and perf events, file handles
//! (`open_by_handle_at`, the "shocker" escape), NUMA policy, I/O ports, `userfaultfd`, obsolete
//! syscalls, `socketcall`, sockets of the `AF_ALG` and `AF_VSOCK` families, personalities other
//! than Linux/Linux32/UNAME26, and `io_uring`, which Docker also
//! dropped from its profile as the largest source of recent kernel exploits. `clone3` answers
//! `ENOSYS`, as in Docker, because its flags sit in a struct seccomp cannot inspect: glibc then
//! falls back to `clone`, whose flags the filter does check.
//!
//! The cost of this choice: a syscall added to a future kernel is reachable until it is listed
//! here. Its first line of defence is then the kernel's own permission check, which sees a
//! process with Docker's reduced capability set and `no_new_privileges`.
//!
//! # How libcontainer reads this
//!
//! - Names are resolved with libseccomp; a name it does not know is skipped with a warning, not an
//!   error. Every name here resolves on x86_64 or, for the 32-bit-only ones (`stime`, `umount`,
//!   `vm86`, `vm86old`, `clock_settime64`, `clock_adjtime64`), on x86; a test checks this.
//! - A rule whose action equals the default action is skipped, so every rule here is an `ERRNO`.
//! - Several comparisons on one argument inside one rule become separate rules (OR-ed), as in runc.
//! - For `SCMP_CMP_MASKED_EQ`, libcontainer 0.7 reads `valueTwo` as the mask and `value` as the
//!   datum, the reverse of runc and Docker (`value` is the mask); libseccomp then ANDs the datum
//!   with the mask. The clone rules compare a flag with itself (mask == datum), which reads the
//!   same both ways. The personality rules cannot: they are written for libcontainer, and given
//!   to runc they would refuse more (the query included). No rule can mean the same to both, as
//!   an asymmetric pair (a, b) reads `x & b == a & b` in one and `x & a == a & b` in the other.
//!
//! Architectures: x86_64 and its two compat ABIs, x86 and x32, as in Docker's amd64 profile.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

/// Errno returned by refused syscalls: "Operation not permitted", as Docker answers.
const EPERM: u32 = libc::EPERM as u32;
/// Errno returned by `clone3`: "Function not implemented", so that libc falls back to `clone`.
const ENOSYS: u32 = libc::ENOSYS as u32;

/// Syscalls refused outright with `EPERM`, grouped by what they would let a container do.
pub const BLOCKED_SYSCALLS: &[&str] = &[
    // Kernel code: load, remove or replace it, or reboot into another.
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "init_module",
    "query_module",
    "kexec_file_load",
    "kexec_load",
    "reboot",
    // Host-wide state: swap, process accounting, quotas, the clock.
    "acct",
    "swapoff",
    "swapon",
    "quotactl",
    "quotactl_fd",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_settime",
    "clock_settime64",
    "settimeofday",
    "stime",
    // The kernel keyring is not namespaced.
    "add_key",
    "keyctl",
    "request_key",
    // Mounts, old and new API.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "mount_setattr",
    "move_mount",
    "open_tree",
    // Creating or entering namespaces (clone is filtered on its flags below).
    "setns",
    "unshare",
    // Inspecting or controlling other processes.
    "kcmp",
    "pidfd_getfd",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    // Kernel attack surface with a record of exploits.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "lookup_dcookie",
    // File handles bypass path-based confinement ("shocker").
    "name_to_handle_at",
    "open_by_handle_at",
    // NUMA memory policy (CAP_SYS_NICE in Docker's profile).
    "get_mempolicy",
    "mbind",
    "migrate_pages",
    "move_pages",
    "set_mempolicy",
    "set_mempolicy_home_node",
    // Raw I/O ports and virtual-8086 mode.
    "ioperm",
    "iopl",
    "vm86",
    "vm86old",
    // Need a capability the container does not get (SYS_ADMIN, SYSLOG, SYS_TTY_CONFIG).
    "fanotify_init",
    "syslog",
    "vhangup",
    // Obsolete interfaces.
    "_sysctl",
    "nfsservctl",
    "sysfs",
    "uselib",
    "ustat",
    // 32-bit x86's multiplexer for the socket calls: its arguments sit in memory the filter
    // cannot read, so it would get around the address-family rule below. Stricter than
    // Docker, which allows it: a 32-bit x86 program whose libc still uses socketcall (glibc
    // built for kernels before 4.3) has no network here.
    "socketcall",
];

/// Socket address families refused: `AF_ALG` (the kernel's crypto API, a source of
/// exploits) and `AF_VSOCK` (host-guest sockets, which Docker's profile refuses too).
pub const BLOCKED_SOCKET_FAMILIES: [u64; 2] = [libc::AF_ALG as u64, libc::AF_VSOCK as u64];

/// `clone` flags that create a namespace; `clone` with any of them is refused.
pub const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// `personality` arguments Docker allows: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32 | UNAME26`, and `0xffffffff`, which only queries.
pub const PERSONALITY_ALLOWED: [u32; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The profile given to every container; see the module header for what it refuses and why.
pub fn default_profile() -> LinuxSeccomp {
    let mut syscalls = vec![errno_rule(BLOCKED_SYSCALLS, EPERM, Vec::new())];
    syscalls.push(errno_rule(&["clone3"], ENOSYS, Vec::new()));
    // One rule per flag: rules OR together, comparisons inside one rule AND together.
    for flag in CLONE_NAMESPACE_FLAGS {
        syscalls.push(errno_rule(&["clone"], EPERM, vec![masked_eq(0, flag, flag)]));
    }
    // The family is an `int`: compare the low 32 bits (the kernel ignores the rest).
    for family in BLOCKED_SOCKET_FAMILIES {
        syscalls.push(errno_rule(&["socket"], EPERM, vec![masked_eq(0, 0xffff_ffff, family)]));
    }
    for (mask, prefix) in personality_blocks() {
        syscalls.push(errno_rule(&["personality"], EPERM, vec![masked_eq(0, mask, prefix)]));
    }
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActAllow)
        .set_default_errno_ret(None)
        .set_architectures(Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]))
        .set_flags(None)
        .set_syscalls(Some(syscalls));
    profile
}

/// The `(mask, prefix)` blocks whose rules refuse every personality outside
/// [`PERSONALITY_ALLOWED`]: `personality(x)` is refused when `x & mask == prefix` for one of them.
///
/// The refused set is the complement of five points in the 32 bits the kernel reads (its argument
/// is an `unsigned int`; upper register bits are ignored, so the masks ignore them too), cut into
/// aligned power-of-two blocks.
pub fn personality_blocks() -> Vec<(u64, u64)> {
    blocks_excluding(&PERSONALITY_ALLOWED)
}

/// Aligned blocks `(mask, prefix)` that together cover every 32-bit value except `allowed`:
/// `x` is covered exactly when `x & mask == prefix` for one of them.
fn blocks_excluding(allowed: &[u32]) -> Vec<(u64, u64)> {
    let mut points: Vec<u64> = allowed.iter().map(|&p| u64::from(p)).collect();
    points.sort_unstable();
    points.dedup();
    let mut blocks = Vec::new();
    let mut start = 0u64;
    for end in points.into_iter().chain(std::iter::once(1 << 32)) {
        // Cover [start, end) with the largest aligned blocks that fit.
        let mut lo = start;
        while lo < end {
            let align = if lo == 0 { 1 << 32 } else { 1u64 << lo.trailing_zeros() };
            let mut size = align;
            while lo + size > end {
                size >>= 1;
            }
            blocks.push((0xffff_ffff & !(size - 1), lo));
            lo += size;
        }
        start = end + 1;
    }
    blocks
}

fn errno_rule(names: &[&str], errno: u32, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| (*n).to_string()).collect())
        .set_action(LinuxSeccompAction::ScmpActErrno)
        .set_errno_ret(Some(errno))
        .set_args(if args.is_empty() { None } else { Some(args) });
    rule
}

/// "Argument `index` ANDed with `mask` equals `datum`", in libcontainer 0.7's reading of the
/// fields (`value` the datum, `valueTwo` the mask; see the module header).
fn masked_eq(index: usize, mask: u64, datum: u64) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(datum)
        .value_two(mask)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .expect("every field of LinuxSeccompArg is set or has a default")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How one reads `SCMP_CMP_MASKED_EQ`'s two values.
    #[derive(Clone, Copy)]
    enum Reading {
        /// libcontainer 0.7: `arg & value_two == value & value_two`.
        Libcontainer,
        /// runc and Docker: `arg & value == value_two & value`.
        Runc,
    }

    /// What the filter answers to `name(args)`: `None` to let it run, else the errno.
    /// A model of libseccomp's semantics: rules OR together, comparisons in a rule AND together.
    fn verdict(profile: &LinuxSeccomp, name: &str, args: [u64; 6], reading: Reading) -> Option<u32> {
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        let rules = profile.syscalls().as_deref().unwrap_or_default();
        for rule in rules.iter().filter(|r| r.names().iter().any(|n| n == name)) {
            let matches = rule.args().as_deref().unwrap_or_default().iter().all(|a| {
                let x = args[a.index()];
                match a.op() {
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        // libseccomp ANDs the datum with the mask.
                        let (mask, datum) = match reading {
                            Reading::Libcontainer => (a.value_two().unwrap_or(0), a.value()),
                            Reading::Runc => (a.value(), a.value_two().unwrap_or(0)),
                        };
                        x & mask == datum & mask
                    }
                    LinuxSeccompOperator::ScmpCmpEq => x == a.value(),
                    other => panic!("the model does not know {other:?}"),
                }
            });
            if matches {
                assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
                return rule.errno_ret();
            }
        }
        None
    }

    fn ours(profile: &LinuxSeccomp, name: &str, arg0: u64) -> Option<u32> {
        verdict(profile, name, [arg0, 0, 0, 0, 0, 0], Reading::Libcontainer)
    }

    /// The verdict, checked to be the same under runc's reading (true of every rule but personality's).
    fn both(profile: &LinuxSeccomp, name: &str, arg0: u64) -> Option<u32> {
        let args = [arg0, 0, 0, 0, 0, 0];
        let ours = verdict(profile, name, args, Reading::Libcontainer);
        assert_eq!(ours, verdict(profile, name, args, Reading::Runc), "{name}({arg0:#x}) differs between runtimes");
        ours
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let p = default_profile();
        for name in ["mount", "umount2", "ptrace", "keyctl", "add_key", "unshare", "setns", "bpf", "open_by_handle_at"]
        {
            assert_eq!(both(&p, name, 0), Some(EPERM), "{name}");
        }
        assert_eq!(both(&p, "io_uring_setup", 8), Some(EPERM));
        assert_eq!(both(&p, "fsopen", 0), Some(EPERM));
        assert_eq!(both(&p, "clone3", 0), Some(ENOSYS), "clone3 must say ENOSYS so glibc falls back to clone");
        assert_eq!(both(&p, "socketcall", 1), Some(EPERM));
        for family in [libc::AF_ALG as u64, libc::AF_VSOCK as u64, (1 << 32) | libc::AF_VSOCK as u64] {
            assert_eq!(ours(&p, "socket", family), Some(EPERM), "socket({family:#x})");
        }
        for family in [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX, libc::AF_NETLINK, libc::AF_PACKET] {
            assert_eq!(ours(&p, "socket", family as u64), None, "socket({family})");
        }
    }

    #[test]
    fn allows_ordinary_syscalls() {
        let p = default_profile();
        for name in ["read", "write", "openat", "execve", "mmap", "futex", "rseq", "faccessat2", "chroot", "statx"] {
            assert_eq!(both(&p, name, 0), None, "{name}");
        }
        // fork() and pthread_create() flags.
        let fork = (libc::SIGCHLD | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(both(&p, "clone", fork), None);
        assert_eq!(both(&p, "clone", thread), None);
    }

    #[test]
    fn clone_with_a_namespace_flag_is_refused() {
        let p = default_profile();
        for flag in CLONE_NAMESPACE_FLAGS {
            assert_eq!(both(&p, "clone", flag | libc::SIGCHLD as u64), Some(EPERM), "{flag:#x}");
        }
    }

    #[test]
    fn personality_allows_only_docker_values() {
        let p = default_profile();
        for ok in PERSONALITY_ALLOWED {
            assert_eq!(ours(&p, "personality", u64::from(ok)), None, "{ok:#x}");
        }
        // The kernel reads 32 bits: the query with junk above them is still the query.
        assert_eq!(ours(&p, "personality", u64::MAX), None);
        for bad in
            [0x1, 0x7, 0x9, 0x0004_0000 /* ADDR_NO_RANDOMIZE */, 0x0040_0000, 0x2_0009, 0xffff_fffe, 0x8000_0000]
        {
            assert_eq!(ours(&p, "personality", bad), Some(EPERM), "{bad:#x}");
        }
    }

    proptest! {
        #[test]
        fn personality_blocks_are_exact(x in any::<u32>()) {
            let p = default_profile();
            let allowed = PERSONALITY_ALLOWED.contains(&x);
            prop_assert_eq!(ours(&p, "personality", u64::from(x)).is_none(), allowed);
            let covering = blocks_excluding(&PERSONALITY_ALLOWED)
                .iter()
                .filter(|(mask, prefix)| u64::from(x) & mask == *prefix)
                .count();
            prop_assert_eq!(covering, usize::from(!allowed), "blocks must not overlap");
        }
    }

    #[test]
    fn serialises_as_oci_json() {
        let json = serde_json::to_value(default_profile()).expect("serialises");
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(json["architectures"][0], "SCMP_ARCH_X86_64");
        assert_eq!(json["syscalls"][1]["names"][0], "clone3");
        assert_eq!(json["syscalls"][1]["errnoRet"], ENOSYS);
        let back: LinuxSeccomp = serde_json::from_value(json).expect("parses back");
        assert_eq!(back, default_profile());
    }

    /// Every name must be one libseccomp 2.5.4 knows, or libcontainer silently skips it.
    #[test]
    fn every_name_resolves_in_libseccomp() {
        use libseccomp::{ScmpArch, ScmpSyscall};
        const X86_ONLY: [&str; 7] =
            ["stime", "umount", "vm86", "vm86old", "clock_settime64", "clock_adjtime64", "socketcall"];
        let profile = default_profile();
        for rule in profile.syscalls().as_deref().unwrap_or_default() {
            for name in rule.names() {
                let arch = if X86_ONLY.contains(&name.as_str()) { ScmpArch::X86 } else { ScmpArch::X8664 };
                let nr = ScmpSyscall::from_name_by_arch(name, arch)
                    .unwrap_or_else(|e| panic!("libseccomp does not know {name}: {e}"))
                    .as_raw_syscall();
                assert!(nr >= 0, "{name} is not a syscall on {arch:?} (pseudo number {nr})");
            }
        }
    }

    /// Compiles the profile the way libcontainer does and checks that the BPF program fits the
    /// kernel's limit of 4096 instructions with room to spare.
    #[test]
    fn compiled_filter_is_small() {
        use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
        let profile = default_profile();
        let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).expect("filter");
        for arch in [ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32] {
            ctx.add_arch(arch).expect("arch");
        }
        for rule in profile.syscalls().as_deref().unwrap_or_default() {
            let action = ScmpAction::Errno(rule.errno_ret().unwrap_or(EPERM) as i32);
            for name in rule.names() {
                let sc = ScmpSyscall::from_name(name).expect("resolves");
                let cmps: Vec<ScmpArgCompare> = rule
                    .args()
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| {
                        ScmpArgCompare::new(
                            a.index() as u32,
                            ScmpCompareOp::MaskedEqual(a.value_two().unwrap_or(0)),
                            a.value(),
                        )
                    })
                    .collect();
                if cmps.is_empty() {
                    ctx.add_rule(action, sc).expect("rule");
                } else {
                    ctx.add_rule_conditional(action, sc, &cmps).expect("conditional rule");
                }
            }
        }
        let file = tempfile::tempfile().expect("tempfile");
        ctx.export_bpf(&file).expect("export");
        let instructions = file.metadata().expect("metadata").len() / 8;
        println!("compiled filter: {instructions} BPF instructions");
        assert!(instructions < 2048, "{instructions} BPF instructions");
    }

    /// Loads the profile into one thread with libcontainer's own loader, then makes real calls
    /// whose error without the filter would not be EPERM (this test runs as root or not at all).
    #[test]
    fn loaded_filter_refuses_and_allows() {
        use nix::errno::Errno;
        use nix::sys::personality::{self, Persona};
        let outcome = std::thread::spawn(|| -> Result<(), String> {
            // no_new_privs and seccomp are per thread: the test harness's other threads are untouched.
            nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
            libcontainer::seccomp::initialize_seccomp(&default_profile()).map_err(|e| format!("load: {e:?}"))?;
            let expect = |what: &str, got: Result<(), Errno>, want: Result<(), Errno>| {
                if got == want { Ok(()) } else { Err(format!("{what}: got {got:?}, want {want:?}")) }
            };
            // Unfiltered: ENOENT or ENODEV.
            let mount = nix::mount::mount(
                None::<&str>,
                "/nonexistent/shoal-seccomp-test",
                Some("shoal-no-such-fs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
            expect("mount", mount, Err(Errno::EPERM))?;
            // Unfiltered: EINVAL, as the process has several threads.
            expect("unshare", nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER), Err(Errno::EPERM))?;
            expect("personality query", personality::get().map(drop), Ok(()))?;
            expect(
                "personality ADDR_NO_RANDOMIZE",
                personality::set(Persona::ADDR_NO_RANDOMIZE).map(drop),
                Err(Errno::EPERM),
            )?;
            expect("personality PER_LINUX", personality::set(Persona::empty()).map(drop), Ok(()))?;
            // Unfiltered: AF_ALG works, AF_VSOCK works or says EAFNOSUPPORT.
            use nix::sys::socket::{AddressFamily, SockFlag, SockType};
            let socket = |family, kind| nix::sys::socket::socket(family, kind, SockFlag::empty(), None).map(drop);
            expect("socket AF_ALG", socket(AddressFamily::Alg, SockType::SeqPacket), Err(Errno::EPERM))?;
            expect("socket AF_VSOCK", socket(AddressFamily::Vsock, SockType::Stream), Err(Errno::EPERM))?;
            expect("socket AF_INET", socket(AddressFamily::Inet, SockType::Datagram), Ok(()))?;
            // pthread_create tries clone3 (ENOSYS here), then clone.
            let joined = std::thread::spawn(|| 7).join().map_err(|_| "thread panicked".to_string())?;
            if joined != 7 {
                return Err("thread result".into());
            }
            // fork/clone + execve.
            let status =
                std::process::Command::new("/bin/true").status().map_err(|e| format!("spawn /bin/true: {e}"))?;
            if !status.success() {
                return Err(format!("/bin/true: {status}"));
            }
            Ok(())
        })
        .join()
        .expect("test thread");
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }
}
