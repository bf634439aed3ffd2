//! The cluster: how the nodes of one cluster talk — the messages (`rpc`), openraft's network over
//! the transport (`network`) and the serving side (`handler`).

pub mod handler;
pub mod network;
pub mod rpc;

#[cfg(test)]
mod sim_tests;
