//! The command line's modules: the flags (`args`), what the subcommands share (`common`) and
//! one module per command.

pub(crate) mod args;
pub(crate) mod common;
pub(crate) mod compare;
pub(crate) mod eval;
pub(crate) mod export;
pub(crate) mod pipeline;
pub(crate) mod train;
