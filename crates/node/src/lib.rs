//! The Shoal agent's core: configuration and the operations every front end calls.
//!
//! [`Node::start`] prepares the data dir, loads keys, measures this machine's capacity and
//! starts the subsystems: the overlay, content, the services actor, the cluster network (the
//! subnet claim and the network actor, [`network`]) and the `/shoal/state/1` protocol (the
//! container runtime opens once the subnet is claimed). [`Node`] is a cheap handle whose typed
//! async methods are the whole command surface of the agent: the HTTP API turns each request
//! into one call and never reaches past it; the core never sees HTTP. Every error carries the
//! [`ErrorKind`] a front end answers it with.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
mod containers;
mod content;
mod error;
mod events;
mod exec;
mod metrics;
mod network;
mod node;
mod registry;
pub mod resources;
mod service_logs;
mod services;
mod streams;
mod trust;

pub use config::{AgentConfig, ConfigError, FileConfig, Overrides};
pub use error::{ErrorKind, NodeError};
pub use exec::ExecSession;
pub use node::Node;
pub use services::StateMsg;
