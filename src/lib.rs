//! upshift (being written).
#![warn(missing_docs)]

mod config;
mod env;
mod error;
mod fds;
#[cfg(feature = "http")]
pub mod http;
mod listener;
mod master;
mod state;
mod worker;

pub use config::{CrashPolicy, Upgrader};
pub use env::DISABLE as DISABLE_ENV;
pub use error::Error;
pub use listener::{ListenAddr, Listener, ListenerSocket, TokioListener};
pub use nix::sys::signal::Signal;
pub use state::{Lifecycle, Mode, State};
