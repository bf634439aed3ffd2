//! The cluster: how the nodes of one cluster talk — the messages (`rpc`), openraft's network over
//! the transport (`network`), the serving side (`handler`) and the batching of writes forwarded
//! to a Raft leader (`forward`).

pub mod forward;
pub mod handler;
pub mod network;
pub mod rpc;

#[cfg(test)]
mod sim_tests;
