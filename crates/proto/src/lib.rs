//! Generated code for Armada's wire contract. Nothing here is written by hand but these
//! re-exports and the services' codec ([`codec`]): the `.proto` files under `proto/` are the
//! source of truth.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

#[cfg(feature = "grpc")]
pub mod codec;

/// Encoded `FileDescriptorSet` of the services the API port serves (and every message they
/// use), for gRPC server reflection; written by `build.rs`.
pub const API_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/api_descriptor_set.bin"));

pub mod mvcc {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mvcc.v1.rs"));
    }
}

pub mod regatta {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/regatta.v1.rs"));
    }
}

pub mod replication {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/replication.v1.rs"));
    }
}

pub mod maintenance {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/maintenance.v1.rs"));
    }
}

/// Armada additions (`armada.v1`), beyond Regatta's wire contract.
pub mod armada {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/armada.v1.rs"));
    }
}

/// The etcd v3 KV subset used by `armada bench` to drive etcd for comparison.
pub mod etcd {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}
