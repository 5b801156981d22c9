//! placeholder while the wire crate builds
