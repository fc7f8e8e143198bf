//! Code generated from `proto/` (prost messages, tonic clients and servers).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod events {
    pub mod v1 {
        tonic::include_proto!("saga.events.v1");
    }
}
pub mod order {
    pub mod v1 {
        tonic::include_proto!("saga.order.v1");
    }
}
pub mod inventory {
    pub mod v1 {
        tonic::include_proto!("saga.inventory.v1");
    }
}
pub mod payment {
    pub mod v1 {
        tonic::include_proto!("saga.payment.v1");
    }
}
pub mod reservation {
    pub mod v1 {
        tonic::include_proto!("saga.reservation.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/saga_descriptor.bin"));
