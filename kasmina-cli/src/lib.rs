//! The library half of the `kasmina` command: the morphogenetic demo ([`demo`]) and the NPY and
//! snapshot file handling ([`files`]) its subcommands use. Applications that only need the layer
//! depend on the `kasmina` facade instead, which pulls in none of the command's dependencies.
#![deny(missing_docs)]

pub mod demo;
pub mod files;
