//! The old image's side of the master's re-exec: when to do it, and what to hand over.
//!
//! The binary on disk is checked at once: when it is the master's own image (or cannot take
//! over), a restart signal restarts the workers without delay. The exec itself waits until
//! nothing is half-done that the document could not carry: a worker still starting (its
//! readiness timer and reply), a release on probation (the pipeline's rollback waits on it), or
//! a worker forked by another thread (an exec would fire its parent-death signal). Those end on
//! their own; the binary is then checked again, since it may have changed meanwhile.

use std::os::fd::AsRawFd;

use tokio::time::Instant;

use super::env::Env;
use super::handover::{HandedListener, HandedWorker, Handover, Role, SocketFileId};
use super::reexec::{self, Image, Prepared, Wanted};
use super::{Master, Worker};

impl<E: Env> Master<E> {
    /// Asks for a re-exec; a second wish joins the first (a restart asked for is never lost).
    pub(super) fn want_reexec(&mut self, mut wanted: Wanted) {
        if self.stopping.is_some() {
            tracing::info!(reason = %wanted.reason, "not re-executing the master: it is stopping");
            return;
        }
        if wanted.restart && self.reexec.awaiting_clear {
            // A new image is known to be waiting for the exec: the restart does not wait too.
            self.request_restart(&wanted.reason, None);
            wanted.restart = false;
        }
        match &mut self.reexec.wanted {
            Some(already) => {
                already.restart |= wanted.restart;
                if wanted.restart {
                    already.reason = wanted.reason;
                }
                // The operator's signal means "the binary on disk", whatever proved itself.
                already.expected = match (already.expected.take(), wanted.expected) {
                    (Some(_), Some(newer)) => Some(newer),
                    _ => None,
                };
            }
            None => self.reexec.wanted = Some(wanted),
        }
    }

    /// What keeps the master from re-executing right now, if anything.
    pub(super) fn reexec_blocker(&self) -> Option<String> {
        if self.stopping.is_some() {
            return Some("the master is stopping".into());
        }
        if let Some(w) = &self.starting {
            return Some(format!("worker {} is starting", w.generation));
        }
        if let Some(w) = self.serving.as_ref().filter(|w| w.reply.is_some()) {
            return Some(format!("worker {} is on probation", w.generation));
        }
        let here = reexec::this_thread();
        if let Some(w) = self.all_workers().find(|w| w.forked_by != here) {
            return Some(format!(
                "worker {} was started by another thread, which an exec would end",
                w.generation
            ));
        }
        None
    }

    /// Starts checking the binary on disk when a re-exec is wanted (after an exec was blocked:
    /// once nothing blocks it any more).
    pub(super) fn try_reexec(&mut self) {
        if self.reexec.preparing.is_some() || self.reexec.wanted.is_none() {
            return;
        }
        if self.stopping.is_some() {
            self.reexec.wanted = None;
            return;
        }
        if self.reexec.awaiting_clear {
            if let Some(why) = self.reexec_blocker() {
                tracing::debug!(why, "master re-exec waits");
                return;
            }
        }
        self.reexec.awaiting_clear = false;
        let expected = self.reexec.wanted.as_ref().and_then(|w| w.expected.clone());
        self.reexec.preparing = Some(expected.clone());
        self.env.prepare_reexec(&self.events, expected);
    }

    pub(super) fn on_prepared(&mut self, prepared: Prepared) {
        let checked_for = self.reexec.preparing.take();
        let Some(wanted) = self.reexec.wanted.take() else {
            return;
        };
        if matches!(prepared, Prepared::Refused(_)) && checked_for != Some(wanted.expected.clone())
        {
            // The restart signal joined while a proven release's binary was checked: the binary
            // on disk is now wanted whatever it is, so it is checked again on those terms.
            self.reexec.wanted = Some(wanted);
            return;
        }
        let image = match prepared {
            Prepared::SameImage => {
                tracing::debug!(reason = %wanted.reason, "the binary on disk is the master's own image: no re-exec");
                return self.restart_workers_only(&wanted);
            }
            Prepared::Refused(why) => {
                tracing::warn!(reason = %wanted.reason, "the master is not re-executed: {why}; it keeps running as it is");
                self.sd.status(&format!("master not upgraded: {why}"));
                return self.restart_workers_only(&wanted);
            }
            Prepared::Ready(image) => image,
        };
        if let Some(why) = self.reexec_blocker() {
            // The image is let go (and with it the pipeline, which a probation needs): it is
            // checked again once nothing blocks the exec. A restart asked for does not wait for
            // that: this master starts the workers from the binary on disk now, and the new
            // image, which is that same binary, will find nothing to restart.
            tracing::info!(why, reason = %wanted.reason, "master re-exec postponed");
            self.restart_workers_only(&wanted);
            self.reexec.wanted = Some(Wanted {
                restart: false,
                ..wanted
            });
            self.reexec.awaiting_clear = true;
            return;
        }
        let doc = self.handover(&wanted, &image);
        tracing::info!(
            reason = %wanted.reason,
            from = %doc.build,
            to_sha256 = %image.sha256,
            workers = doc.workers.len(),
            listeners = doc.listeners.len(),
            "master re-executing in place"
        );
        let err = self.env.exec(&image, &doc);
        drop(image);
        tracing::error!(error = %err, "the master could not re-execute; it keeps running as it is");
        self.sd
            .status(&format!("master not upgraded: exec failed: {err}"));
        self.restart_workers_only(&wanted);
    }

    /// The restart signal asked for new workers; without a new master, this one starts them.
    fn restart_workers_only(&mut self, wanted: &Wanted) {
        if wanted.restart {
            self.request_restart(&wanted.reason, None);
        }
    }

    /// The document for the next image, which is `image`: everything it needs to carry on.
    pub(super) fn handover(&self, wanted: &Wanted, image: &Image) -> Handover {
        let now = Instant::now();
        let here = reexec::this_thread();
        let worker = |w: &Worker<E::Control>, role| HandedWorker {
            pid: w.pid.as_raw(),
            generation: w.generation,
            control_fd: self.env.control_fd(&w.control),
            role,
            forked_here: w.forked_by == here,
            ready_for: w.ready_at.map(|t| now.saturating_duration_since(t)),
            drain_left: w.drain_deadline.map(|t| t.saturating_duration_since(now)),
        };
        let serving = self.serving.iter().map(|w| worker(w, Role::Serving));
        let draining = self.draining.iter().map(|w| worker(w, Role::Draining));
        Handover {
            build: self.build_label(),
            image_sha256: Some(image.sha256.clone()),
            next_generation: self.next_generation,
            crash_streak: self.crash_streak,
            restart: wanted.restart.then(|| wanted.reason.clone()),
            notify: self.sd.target_value(),
            notify_ready: self.sd.ready_sent(),
            notify_signalled: self.sd.signalled(),
            listeners: self
                .sockets
                .iter()
                .map(|s| HandedListener {
                    fd: s.fd.as_raw_fd(),
                    kind: s.kind,
                    name: s.name.clone(),
                    from_manager: s.from_manager,
                    unlink: s.unlink_on_exit.as_ref().map(|f| {
                        let (path, dev, ino) = f.id();
                        SocketFileId {
                            path: path.to_path_buf(),
                            dev,
                            ino,
                        }
                    }),
                })
                .collect(),
            workers: serving.chain(draining).collect(),
            // The pipeline's books, which the checked image holds for the exec.
            refusals: image.refusals(),
        }
    }

    /// This master's build as events name it: its `build_id`, else the start of its sha256 when
    /// known (hashed when it compared itself with the binary on disk, or handed over).
    pub(super) fn build_label(&self) -> String {
        if let Some(id) = &self.cfg.build_id {
            return id.clone();
        }
        match self.env.own_sha256() {
            Some(sha) => format!("sha256:{}", sha.get(..12).unwrap_or(&sha)),
            None => "a build without build_id".into(),
        }
    }
}
