//! The container runtime of one peer: OCI images to root filesystems, containers run by
//! embedded libcontainer under a per-container shim, cgroups, container networking.
//!
//! - [`layers`]: image layers unpacked once each (whiteouts converted), stacked with overlayfs.
//! - [`spec`], [`seccomp`]: the OCI runtime spec from the image config and `run`'s options.
//! - [`shim`]: the per-container supervisor process; [`state`]: its directory and report.
//! - [`manager`]: the agent's side ([`Runtime`]): create, list, stop, kill, remove, recover.
//! - [`net`], [`proxy`]: bridge, addresses, veth pairs, published ports.
//! - [`cgroup`], [`logs`]: where cgroups go and what they say; rotated JSON-lines logs.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cgroup;
pub mod exec;
pub mod layers;
pub mod logs;
pub mod manager;
pub mod net;
pub mod proxy;
pub mod seccomp;
pub mod shim;
pub mod spec;

/// The longest grace period `stop -t` gives (a year): larger values are taken as this, so the
/// deadlines computed from them cannot overflow.
pub const MAX_STOP_SECS: u64 = 365 * 24 * 3600;
pub mod state;

pub use manager::{AttachGuard, ResolvedImage, Runtime, RuntimeConfig, RuntimeError};
