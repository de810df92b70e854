//! Shared helpers for the process-level tests: real processes, real sockets, loopback only.
//!
//! Each integration test crate (`tests/*.rs`) compiles this module on its own and uses only part
//! of it. Where a module holds helpers that only some crates use (the load generator and the heavy
//! lock are for `zero_downtime`, fd counting and `--starts-file` reading for `process_model`, ...),
//! dead code is allowed on that module, so a crate is not warned about another crate's tools.

mod examples;
#[allow(dead_code)]
mod http_client;
#[allow(dead_code)]
mod load;
#[allow(dead_code)]
mod procfs;
// Only the release_* crates run releases through the master.
#[allow(dead_code)]
mod release_rig;
#[allow(dead_code)]
mod sandbox;
#[allow(dead_code)]
mod server;
// Only `systemd` and `pid1` play the service manager or read sockets and environments.
#[allow(dead_code)]
mod systemd;

pub use examples::*;
pub use http_client::*;
// Only `zero_downtime` generates load.
#[allow(unused_imports)]
pub use load::*;
pub use procfs::*;
#[allow(unused_imports)]
pub use release_rig::*;
pub use sandbox::*;
// Not used by the fetcher conformance crates, which start no server.
#[allow(unused_imports)]
pub use server::*;
#[allow(unused_imports)]
pub use systemd::*;
