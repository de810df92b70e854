//! Children that exit: a new worker that failed, the serving one lost, a drained one gone; and
//! what the master does when nobody serves (backoff, or stop, as the crash policy says).

use nix::unistd::Pid;
use tokio::time::Instant;

use super::env::Env;
use super::reaper::Exit;
use super::{memory, Event, Master, RestartOutcome, PROBATION_FALLBACK, STABLE_AFTER};
use crate::config::CrashPolicy;

impl<E: Env> Master<E> {
    pub(super) fn reap(&mut self) {
        let known: Vec<Pid> = self.all_workers().map(|w| w.pid).collect();
        for (pid, exit) in self.env.reap(&known) {
            self.on_exit(pid, exit);
        }
    }

    pub(super) fn on_exit(&mut self, pid: Pid, exit: Exit) {
        if let Some(mut w) = self.starting.take_if(|w| w.pid == pid) {
            let why = w
                .killed_because
                .clone()
                .unwrap_or_else(|| format!("exited before it was ready ({exit})"));
            tracing::warn!(generation = w.generation, %pid, %exit, "new worker failed: {why}; the previous worker keeps serving");
            self.sd
                .restart_failed(&why, self.serving.as_ref().map(|w| w.generation));
            w.report(RestartOutcome::Failed {
                reason: why,
                after_ready: false,
            });
            // The binary that failed would fail again: a queued restart waits for a new trigger.
            self.restart_queued = false;
            if self.serving.is_none() {
                self.on_no_worker(exit, w.ready_at, false);
            }
        } else if let Some(mut w) = self.serving.take_if(|w| w.pid == pid) {
            if w.reply.is_some() {
                let lived = w.ready_at.map(|t| t.elapsed()).unwrap_or_default();
                let reason =
                    format!("{exit} {lived:?} after it became ready, within the probation window");
                tracing::warn!(generation = w.generation, %pid, "new worker failed: {reason}");
                self.sd
                    .worker_lost(w.generation, &format!("failed: {reason}"));
                w.report(RestartOutcome::Failed {
                    reason,
                    after_ready: true,
                });
                if self.starting.is_none() && self.stopping.is_none() {
                    // The pipeline restores the previous binary and restarts at once; this is
                    // the fallback should it not.
                    self.after(PROBATION_FALLBACK, Event::BackoffElapsed);
                }
            } else if self.starting.is_some() {
                tracing::warn!(generation = w.generation, %pid, %exit, "serving worker exited while its successor starts");
            } else {
                tracing::warn!(generation = w.generation, %pid, %exit, "serving worker exited on its own");
                self.sd
                    .worker_lost(w.generation, &format!("exited on its own ({exit})"));
                self.on_no_worker(exit, w.ready_at, true);
            }
        } else if let Some(i) = self.draining.iter().position(|w| w.pid == pid) {
            let w = self.draining.swap_remove(i);
            match &w.killed_because {
                Some(why) => {
                    tracing::warn!(generation = w.generation, %pid, %exit, "drained worker killed: {why}")
                }
                None => {
                    tracing::info!(generation = w.generation, %pid, %exit, lived = ?w.started.elapsed(), "drained worker exited")
                }
            }
            if let Some(stop) = self
                .stopping
                .as_mut()
                .filter(|s| s.serving_generation == Some(w.generation))
            {
                stop.exit_code = exit.code();
            }
            if std::mem::take(&mut self.restart_queued) {
                self.request_restart("queued restart", None);
            }
            if self.draining.is_empty() && self.starting.is_none() {
                memory::give_back_freed();
            }
        }
    }

    /// Nobody is serving: restart with backoff, or stop, as the policy says.
    fn on_no_worker(&mut self, exit: Exit, ready_at: Option<Instant>, was_serving: bool) {
        if self.stopping.is_some() {
            return;
        }
        if self.cfg.crash_policy == CrashPolicy::Exit {
            tracing::info!(%exit, "crash policy is Exit: the master exits with the worker's status");
            self.stop_with(exit.code());
            return;
        }
        if was_serving && exit.success() {
            tracing::info!("the worker exited with status 0 on its own: stopping");
            self.stop_with(0);
            return;
        }
        if ready_at.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
            self.crash_streak = 0;
        }
        self.schedule_respawn();
    }

    pub(super) fn schedule_respawn(&mut self) {
        let factor = 1u32
            .checked_shl(self.crash_streak.min(16))
            .unwrap_or(u32::MAX);
        let delay = self
            .cfg
            .backoff_min
            .saturating_mul(factor)
            .min(self.cfg.backoff_max);
        self.crash_streak = self.crash_streak.saturating_add(1);
        tracing::warn!(
            ?delay,
            attempt = self.crash_streak,
            "no worker is serving; starting one after a backoff"
        );
        self.after(delay, Event::BackoffElapsed);
    }
}
