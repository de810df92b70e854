//! # upshift
//!
//! Zero-downtime self-upgrading network servers for Rust: the answer to Go's overseer,
//! tableflip, grace and endless.
//!
//! The first process becomes the **master**. It binds the listeners, keeps its pid for life (so
//! systemd, supervisor and Docker see one stable process) and runs your program in a **worker**
//! child that inherits the listening sockets. A restart (SIGUSR2 by default) starts a new worker
//! beside the old one; only when the new worker says it is [ready](State::ready) is the old one
//! told to [drain](State::shutdown). Both accept from the very same kernel socket, so there is never
//! a moment with no one accepting, and a new worker that crashes or never becomes ready is killed
//! while the old one keeps serving.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     upshift::Upgrader::new()
//!         .listen("127.0.0.1:8080")
//!         .run_async(|mut state| async move {
//!             let app = Router::new().route("/", get(|| async { "hello\n" }));
//!             // serves every listener, calls state.ready(), drains politely on shutdown
//!             upshift::http::serve(&mut state, app).await
//!         })
//!         .await??;
//!     Ok(())
//! }
//! ```
//!
//! Code before `run`/`run_async` executes in the master **and** in every worker: keep it to
//! configuration. In the master `run` never returns; in a worker it returns what your program
//! returns.
//!
//! Where the pieces live: [`Upgrader`] (configuration, and the choice of master, worker or
//! disabled), `master` (event loop; `master::env`, the seam for its side effects on workers;
//! spawn = where sockets cross exec on the parent side; reaper; signals), `fds` (the descriptor
//! layout a worker inherits), `env` (the environment protocol), `worker` (adopting descriptors;
//! the agent that carries readiness and drain), `control` (the line protocol on the socket
//! between a worker and its master), [`State`] (what your program receives) and [`http`] (polite-drain serving for hyper and axum). `systemd` speaks
//! sd_notify and adopts socket-activated listeners; `children` decides which child's exit status
//! the master may reap when it is PID 1 in a container.
#![warn(missing_docs)]

mod children;
mod config;
mod control;
pub mod delta;
mod env;
mod error;
mod events;
mod fds;
pub mod fetch;
mod forwarded;
#[cfg(feature = "http")]
pub mod http;
mod install;
mod listener;
mod master;
pub mod release;
pub mod rollout;
mod state;
mod systemd;
mod unix_socket;
mod worker;

pub use config::{CrashPolicy, InstallMode, Upgrader};
pub use env::DISABLE as DISABLE_ENV;
pub use error::Error;
pub use events::{ReleaseInfo, UpgradeEvent};
pub use forwarded::{Signals, FORWARDED_SIGNALS};
pub use install::InstallError;
pub use listener::{ListenAddr, Listener, ListenerSocket, TokioListener};
/// Signals, for [`Upgrader::restart_signal`] and [`State::signals`].
pub use nix::sys::signal::Signal;
pub use state::{Lifecycle, Mode, State};
