//! The upshift workspace's test kit (dev-only, never published): one copy of what the fetchers',
//! the publisher's, the conformance suite's and the bench's tests need around them.
//!
//! - [`servers`]: nginx, s3s-fs and the GitHub fixture on loopback ports, killed by PID on drop;
//! - [`builds`]: the `hello` example and the fixture built through cargo, bounded in time;
//! - [`hello`]: `hello` running as a master under test; [`upgrade`]: the "upgrade hello to this
//!   release" end-to-end check;
//! - [`get`] and [`load`]: a blocking HTTP/1.1 client and the polling load client;
//! - [`procs`]: processes by PID and the one kill-on-drop [`procs::ChildGuard`];
//! - [`crafted`]: the crafted archives of the security review;
//! - `s3` (feature `s3`): the S3 test bed, s3s-fs behind a fault-injecting proxy, and moto;
//! - [`skip`]: skipping (or failing, under `scripts/test`) for want of an outside program;
//! - [`startup`]: a `hello` that must refuse to start.
//!
//! It depends on no upshift crate, so that every one of them (the core included) may use it.
//!
//! ```
//! let g = upshift_testkit::hello::parse_greeting("hello from b1 pid 7 gen 2\n").unwrap();
//! assert_eq!((g.pid, g.generation), (7, 2));
//! ```

pub mod builds;
pub mod crafted;
pub mod get;
pub mod hello;
pub mod load;
pub mod procs;
#[cfg(feature = "s3")]
pub mod s3;
pub mod servers;
pub mod skip;
pub mod startup;
pub mod upgrade;
