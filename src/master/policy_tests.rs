//! The master's policy on a fake environment with tokio's clock paused: every timeout fires when
//! the test moves time on, never on its own, and no process is started.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::fake::{config, pid, Harness};
use super::reaper::Exit;
use super::signals::Action;
use super::{RestartOutcome, PROBATION_FALLBACK, STABLE_AFTER};
use crate::config::CrashPolicy;

const MS: Duration = Duration::from_millis(1);

fn nothing_more(outcomes: &mut UnboundedReceiver<RestartOutcome>) {
    assert_eq!(outcomes.try_recv(), Err(TryRecvError::Empty));
}

fn next(outcomes: &mut UnboundedReceiver<RestartOutcome>) -> RestartOutcome {
    outcomes.try_recv().expect("an outcome")
}

#[tokio::test(start_paused = true)]
async fn a_worker_not_ready_in_time_is_killed_and_the_old_one_keeps_serving() {
    let cfg = config();
    let ready_timeout = cfg.ready_timeout;
    let h = Harness::serving(cfg).await;
    let mut outcomes = h.restart().await;
    assert_eq!(h.spawned(), vec![1, 2]);

    h.advance(ready_timeout - MS).await;
    assert_eq!(h.kills(), vec![]);
    h.advance(MS).await;
    assert_eq!(h.kills(), vec![(2, Signal::SIGKILL)]);
    nothing_more(&mut outcomes);

    h.exit(2, Exit::Signal(Signal::SIGKILL)).await;
    match next(&mut outcomes) {
        RestartOutcome::Failed {
            reason,
            after_ready: false,
        } => assert!(reason.contains("not ready within"), "{reason}"),
        other => panic!("expected a failure before ready, got {other:?}"),
    }
    assert_eq!(h.serving_generation(), Some(1));
    assert_eq!(
        h.drained(),
        Vec::<u64>::new(),
        "the old worker was never told to drain"
    );
    assert_eq!(h.kills(), vec![(2, Signal::SIGKILL)]);
    assert_eq!(h.spawned(), vec![1, 2], "a failed restart is not retried");
}

#[tokio::test(start_paused = true)]
async fn a_worker_still_draining_at_the_drain_timeout_is_killed() {
    let cfg = config();
    let drain_timeout = cfg.drain_timeout;
    let h = Harness::serving(cfg).await;
    h.restart().await;
    h.ready(2).await;
    assert_eq!(h.drained(), vec![1]);
    assert_eq!(h.serving_generation(), Some(2));

    h.advance(drain_timeout - MS).await;
    assert_eq!(h.kills(), vec![]);
    h.advance(MS).await;
    assert_eq!(h.kills(), vec![(1, Signal::SIGKILL)]);
    h.exit(1, Exit::Signal(Signal::SIGKILL)).await;
    assert_eq!(h.serving_generation(), Some(2));
    assert_eq!(h.spawned(), vec![1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_drain_line_that_cannot_be_written_becomes_sigterm() {
    let h = Harness::serving(config()).await;
    h.refuse_drain_lines();
    h.restart().await;
    h.ready(2).await;
    assert_eq!(h.drained(), vec![1]);
    assert_eq!(h.kills(), vec![(1, Signal::SIGTERM)]);
}

/// How long after the exit of worker `generation` the master starts the next one.
async fn respawn_delay(h: &Harness, generation: u64, exit: Exit) -> Duration {
    let step = Duration::from_millis(5);
    h.exit(generation, exit).await;
    let began = Instant::now();
    while !h.spawned().contains(&(generation + 1)) {
        assert!(began.elapsed() < Duration::from_secs(60), "never restarted");
        h.advance(step).await;
    }
    began.elapsed()
}

#[tokio::test(start_paused = true)]
async fn crash_backoff_doubles_up_to_the_maximum_and_resets_after_a_stable_run() {
    let h = Harness::serving(config()).await;
    let crash = Exit::Code(1);
    let ms = Duration::from_millis;
    // Ready and crashed at once, then never ready: the streak grows either way.
    assert_eq!(respawn_delay(&h, 1, crash).await, ms(100));
    h.ready(2).await;
    assert_eq!(respawn_delay(&h, 2, crash).await, ms(200));
    assert_eq!(respawn_delay(&h, 3, crash).await, ms(400));
    assert_eq!(
        respawn_delay(&h, 4, Exit::Signal(Signal::SIGSEGV)).await,
        ms(800)
    );
    assert_eq!(respawn_delay(&h, 5, crash).await, ms(1600));
    assert_eq!(respawn_delay(&h, 6, crash).await, ms(1600), "capped");

    // Ready just short of STABLE_AFTER: still a crash loop.
    h.ready(7).await;
    h.advance(STABLE_AFTER - MS).await;
    assert_eq!(respawn_delay(&h, 7, crash).await, ms(1600));
    // Served STABLE_AFTER: the next crash starts over from the minimum.
    h.ready(8).await;
    h.advance(STABLE_AFTER).await;
    assert_eq!(respawn_delay(&h, 8, crash).await, ms(100));
    assert_eq!(respawn_delay(&h, 9, crash).await, ms(200));
    assert!(h.is_running());
}

#[tokio::test(start_paused = true)]
async fn a_restart_waits_for_a_draining_slot_and_is_never_dropped() {
    let mut cfg = config();
    cfg.max_draining = 1;
    let drain_timeout = cfg.drain_timeout;
    let h = Harness::serving(cfg).await;
    h.restart().await;
    h.ready(2).await;
    assert_eq!(h.drained(), vec![1]);

    let mut outcomes = h.restart().await;
    assert_eq!(h.spawned(), vec![1, 2], "queued while generation 1 drains");
    h.advance(drain_timeout / 2).await;
    assert_eq!(h.spawned(), vec![1, 2]);
    nothing_more(&mut outcomes);

    h.exit(1, Exit::Code(0)).await;
    assert_eq!(h.spawned(), vec![1, 2, 3], "started once a slot was free");
    h.ready(3).await;
    let generation = 3;
    let ready = RestartOutcome::Ready {
        generation,
        pid: pid(3),
    };
    assert_eq!(
        next(&mut outcomes),
        ready,
        "the queued restart kept its reply"
    );
    assert_eq!(h.serving_generation(), Some(3));
}

/// Generation 1 serves, a restart starts generation 2, which is ready: its probation begins.
async fn on_probation() -> (Harness, UnboundedReceiver<RestartOutcome>) {
    let h = Harness::serving(config()).await;
    let mut outcomes = h.restart().await;
    h.ready(2).await;
    let (generation, pid) = (2, pid(2));
    let ready = RestartOutcome::Ready { generation, pid };
    assert_eq!(next(&mut outcomes), ready);
    (h, outcomes)
}

/// Generation 2 survived, and that was the last word.
fn survived(outcomes: &mut UnboundedReceiver<RestartOutcome>) {
    let (generation, pid) = (2, pid(2));
    let survived = RestartOutcome::Survived { generation, pid };
    assert_eq!(next(outcomes), survived);
    assert_eq!(outcomes.try_recv(), Err(TryRecvError::Disconnected));
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_serves_through_probation_survives() {
    let probation = config().probation;
    let (h, mut outcomes) = on_probation().await;
    h.advance(probation - MS).await;
    nothing_more(&mut outcomes);
    h.advance(MS).await;
    survived(&mut outcomes);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_exits_on_probation_fails_and_a_fallback_worker_starts() {
    let (h, mut outcomes) = on_probation().await;
    h.advance(Duration::from_secs(1)).await;

    h.exit(2, Exit::Code(3)).await;
    match next(&mut outcomes) {
        RestartOutcome::Failed {
            reason,
            after_ready: true,
        } => assert!(reason.contains("exit status 3"), "{reason}"),
        other => panic!("expected a failure after ready, got {other:?}"),
    }
    assert_eq!(outcomes.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(h.serving_generation(), None);

    // The pipeline would roll back and restart; if it does not, the master does.
    h.advance(PROBATION_FALLBACK - MS).await;
    assert_eq!(h.spawned(), vec![1, 2]);
    h.advance(MS).await;
    assert_eq!(h.spawned(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_replaced_during_probation_survives() {
    let (h, mut outcomes) = on_probation().await;
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    h.ready(3).await;
    assert_eq!(h.drained(), vec![1, 2]);
    survived(&mut outcomes);
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_signal_kills_every_worker() {
    let h = Harness::serving(config()).await;
    h.restart().await;
    h.signal(Signal::SIGTERM, Action::Stop).await;
    assert_eq!(
        h.drained(),
        vec![2, 1],
        "the starting and the serving worker drain"
    );
    assert_eq!(h.kills(), vec![]);

    h.signal(Signal::SIGINT, Action::Stop).await;
    let mut kills = h.kills();
    kills.sort();
    assert_eq!(kills, vec![(1, Signal::SIGKILL), (2, Signal::SIGKILL)]);

    h.exit(2, Exit::Signal(Signal::SIGKILL)).await;
    assert!(h.is_running(), "generation 1 has not exited yet");
    h.exit(1, Exit::Signal(Signal::SIGKILL)).await;
    // The status of the worker that served when the stop began.
    assert_eq!(h.exit_code().await, 128 + Signal::SIGKILL as i32);
}

#[tokio::test(start_paused = true)]
async fn a_worker_exiting_0_on_its_own_stops_the_master_with_0() {
    let cfg = config();
    let backoff_max = cfg.backoff_max;
    let h = Harness::serving(cfg).await;
    h.exit(1, Exit::Code(0)).await;
    h.advance(backoff_max).await;
    assert_eq!(h.spawned(), vec![1], "no restart");
    assert_eq!(h.exit_code().await, 0);
}

#[tokio::test(start_paused = true)]
async fn crash_policy_exit_exits_with_the_workers_status() {
    for (exit, code) in [(Exit::Code(3), 3), (Exit::Signal(Signal::SIGSEGV), 139)] {
        let mut cfg = config();
        cfg.crash_policy = CrashPolicy::Exit;
        let backoff_max = cfg.backoff_max;
        let h = Harness::serving(cfg).await;
        h.exit(1, exit).await;
        h.advance(backoff_max).await;
        assert_eq!(h.spawned(), vec![1], "no restart after {exit}");
        assert_eq!(h.exit_code().await, code, "after {exit}");
    }
}
