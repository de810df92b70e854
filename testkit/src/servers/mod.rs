//! Servers on 127.0.0.1 for the tests: each started on a free loopback port, waited for with a
//! bound, and killed by PID on drop (through [`crate::procs::ChildGuard`]).

pub mod github;
pub mod nginx;
pub mod s3s_fs;
