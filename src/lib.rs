#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
//! bop-rs: the AOF2 append-only log. The public API is [`aof2`].

pub mod aof2;
