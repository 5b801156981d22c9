//! Running the service: the process state ([`state`]), starting and stopping the HTTP
//! server and the workers of each mode ([`serve`]), and the one-shot CLI subcommands
//! ([`cli`], with terminal progress bars from [`progress`]).

pub mod cli;
pub mod ledgers;
pub mod progress;
pub mod serve;
pub mod state;
