//! Armada's server: the node, its Raft groups, the catalog, the gRPC services, configuration
//! and telemetry. See docs/architecture.md for how the parts fit.

pub mod address;
pub mod api;
pub mod build_info;
pub mod catalog;
pub mod certificates;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fail_stop;
pub mod follower;
pub mod groups;
pub mod health;
pub mod listener;
pub mod node;
pub mod replication;
pub mod rest;
pub mod server;
pub mod telemetry;
pub mod transport;
