//! The fuzz targets' shared bodies (see `targets.rs`).

mod targets;
pub use targets::*;
