//! The command line of the `qgate` binary (not of the library): clap's definitions of
//! `qgate serve`'s flags and of `qgate ctl`, which are the binary's alone, so the
//! library compiles without clap.

pub mod ctl;
pub mod serve;
