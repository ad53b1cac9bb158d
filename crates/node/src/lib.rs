//! The Shoal agent's core: configuration and the operations every front end calls.
//!
//! [`Node::start`] prepares the data dir, loads keys, measures this machine's capacity and
//! starts the subsystems (today: the overlay). [`Node`] is a cheap handle whose typed async
//! methods are the whole command surface of the agent: the HTTP API turns each request into
//! one call and never reaches past it; the core never sees HTTP.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
mod containers;
mod content;
mod error;
mod node;
pub mod resources;
mod rollout;
mod service_logs;
mod services;

pub use config::{AgentConfig, ConfigError, FileConfig, Overrides};
pub use error::NodeError;
pub use node::Node;
