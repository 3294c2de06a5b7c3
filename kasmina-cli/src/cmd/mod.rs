//! One module per command.

pub mod bench;
pub mod conformance;
pub mod demo;
pub mod devices;
pub mod files;
pub mod select;
pub mod state;
pub mod table;
