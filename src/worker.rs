//! The worker side: reading the inherited environment, adopting the descriptors, and the agent
//! thread that turns master messages and signals into [`State::shutdown`](crate::State::shutdown).

/// Written by a worker on its control socket when `prog` is ready.
pub(crate) const READY_LINE: &[u8] = b"ready\n";
/// Written by the master on a worker's control socket to make it drain.
pub(crate) const DRAIN_LINE: &[u8] = b"drain\n";
