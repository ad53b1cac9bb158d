//! The container runtime of one peer (being built).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
