#![warn(missing_docs)]
//! bop-rs: the AOF2 append-only log. The public API is [`aof2`].

pub mod aof2;
