//! When the master re-executes itself, and what it hands over: on the fake environment, whose
//! exec always fails (so the tests also see that a failed exec loses nothing).

use std::time::Duration;

use nix::sys::signal::Signal;

use super::fake::{config, Harness};
use super::handover::Role;
use super::reaper::Exit;
use super::reexec::{Image, Prepared, Wanted};
use super::signals::Action;
use super::Event;

fn ready_image() -> Prepared {
    Prepared::Ready(Image {
        file: None,
        sha256: "ab".repeat(32),
        quiet: None,
    })
}

fn proven(reason: &str) -> Event {
    Event::Reexec(Wanted {
        reason: reason.into(),
        restart: false,
        expected: Some("ab".repeat(32)),
    })
}

#[tokio::test(start_paused = true)]
async fn the_restart_signal_checks_the_binary_first_and_restarts_workers_if_it_is_the_same() {
    let h = Harness::serving(config()).await;
    h.hold_reexec_checks();
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    assert_eq!(h.reexec_checks(), 1);
    assert_eq!(
        h.spawned(),
        vec![1],
        "no worker before the binary is checked"
    );

    h.send(Event::ReexecPrepared(Prepared::SameImage)).await;
    assert_eq!(h.spawned(), vec![1, 2], "the same image: a plain restart");
    assert!(h.execs().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_binary_that_cannot_take_over_still_gets_its_workers_restarted() {
    let h = Harness::serving(config()).await;
    h.hold_reexec_checks();
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    h.send(Event::ReexecPrepared(Prepared::Refused(
        "its test run failed".into(),
    )))
    .await;
    assert!(h.execs().is_empty());
    assert_eq!(h.spawned(), vec![1, 2]);
}

#[tokio::test(start_paused = true)]
async fn the_handover_carries_workers_listeners_counters_and_the_pending_restart() {
    let h = Harness::serving(config()).await;
    h.hold_reexec_checks();
    // Worker 2 replaces 1, which drains.
    let _outcomes = h.restart().await;
    h.ready(2).await;
    h.advance(config().probation).await;
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    h.advance(Duration::from_secs(1)).await;
    h.send(Event::ReexecPrepared(ready_image())).await;

    let execs = h.execs();
    assert_eq!(execs.len(), 1, "one exec attempted");
    let doc = &execs[0];
    assert_eq!(doc.next_generation, 3);
    assert_eq!(doc.restart.as_deref(), Some("SIGUSR2 received"));
    let roles: Vec<(u64, Role)> = doc.workers.iter().map(|w| (w.generation, w.role)).collect();
    assert_eq!(roles, vec![(2, Role::Serving), (1, Role::Draining)]);
    let draining = &doc.workers[1];
    // Drain timeout 7 s, of which probation (2 s) and 1 s have passed.
    assert_eq!(draining.drain_left, Some(Duration::from_secs(4)));
    assert_eq!(doc.workers[0].ready_for, Some(Duration::from_secs(3)));
    assert!(doc.workers.iter().all(|w| w.forked_here));
    assert_eq!(doc.workers[0].control_fd, 102);

    // The fake's exec fails: the master carries on and does the restart itself.
    assert!(h.is_running());
    assert_eq!(h.spawned(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn no_exec_while_a_worker_starts_or_a_release_is_on_probation() {
    let cfg = config();
    let probation = cfg.probation;
    let h = Harness::serving(cfg).await;
    h.hold_reexec_checks();
    let _outcomes = h.restart().await;
    h.send(proven("release v2 proved itself")).await;
    assert_eq!(h.reexec_checks(), 1, "the binary is checked at once");
    h.send(Event::ReexecPrepared(ready_image())).await;
    assert!(h.execs().is_empty(), "worker 2 is starting");

    h.ready(2).await;
    assert_eq!(
        h.reexec_checks(),
        1,
        "worker 2 is on probation: not checked again"
    );
    h.advance(probation).await;
    assert_eq!(h.reexec_checks(), 2, "checked again once probation is over");
    h.send(Event::ReexecPrepared(ready_image())).await;
    assert_eq!(h.execs().len(), 1);
    assert_eq!(
        h.execs()[0].restart,
        None,
        "a proven release needs no new worker"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_signal_during_probation_restarts_at_once_when_the_binary_is_the_masters() {
    let cfg = config();
    let h = Harness::serving(cfg).await;
    let _outcomes = h.restart().await;
    h.ready(2).await;
    // The fake answers "same image" at once: the restart does not wait for the probation.
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    assert_eq!(h.spawned(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_signal_with_a_new_binary_during_probation_restarts_now_and_reexecs_later() {
    let cfg = config();
    let probation = cfg.probation;
    let h = Harness::serving(cfg).await;
    h.hold_reexec_checks();
    let _outcomes = h.restart().await;
    h.ready(2).await;
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    h.send(Event::ReexecPrepared(ready_image())).await;
    assert!(h.execs().is_empty(), "worker 2 is on probation");
    assert_eq!(h.spawned(), vec![1, 2, 3], "the workers restart at once");
    h.ready(3).await;
    assert_eq!(
        h.reexec_checks(),
        2,
        "nothing blocks any more: checked again"
    );
    h.send(Event::ReexecPrepared(ready_image())).await;
    let doc = &h.execs()[0];
    assert_eq!(doc.restart, None, "the workers were restarted already");
    h.advance(probation).await;
    assert_eq!(h.spawned(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_signal_during_a_pending_reexec_is_not_lost() {
    let h = Harness::serving(config()).await;
    h.hold_reexec_checks();
    h.send(proven("release v2 proved itself")).await;
    assert_eq!(h.reexec_checks(), 1);
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    assert_eq!(h.reexec_checks(), 1, "one check at a time");
    h.send(Event::ReexecPrepared(ready_image())).await;
    let doc = &h.execs()[0];
    assert_eq!(doc.restart.as_deref(), Some("SIGUSR2 received"));
    assert_eq!(h.reexec_expectations(), vec![Some("ab".repeat(32))]);
}

#[tokio::test(start_paused = true)]
async fn the_restart_signal_joining_a_proven_release_takes_whatever_binary_is_on_disk() {
    let h = Harness::serving(config()).await;
    h.hold_reexec_checks();
    let _outcomes = h.restart().await;
    h.send(proven("release v2 proved itself")).await;
    h.send(Event::ReexecPrepared(ready_image())).await;
    assert!(h.execs().is_empty(), "worker 2 is starting");
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    h.ready(2).await;
    assert_eq!(
        h.spawned(),
        vec![1, 2, 3],
        "the signal's restart did not wait"
    );
    h.ready(3).await;
    assert_eq!(
        h.reexec_expectations(),
        vec![Some("ab".repeat(32)), None],
        "after the operator's signal, the binary on disk is what the master becomes"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_of_the_proven_release_does_not_swallow_a_restart_signal_that_came_meanwhile() {
    let h = Harness::serving(config()).await;
    h.hold_reexec_checks();
    h.send(proven("release v2 proved itself")).await;
    // The operator replaced the binary and signalled while the release's check ran.
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    h.send(Event::ReexecPrepared(Prepared::Refused(
        "not the release that proved itself".into(),
    )))
    .await;
    assert_eq!(
        h.reexec_expectations(),
        vec![Some("ab".repeat(32)), None],
        "checked again for whatever is on disk"
    );
    h.send(Event::ReexecPrepared(ready_image())).await;
    assert_eq!(h.execs().len(), 1);
    assert_eq!(h.execs()[0].restart.as_deref(), Some("SIGUSR2 received"));
}

#[tokio::test(start_paused = true)]
async fn a_stopping_master_does_not_reexec() {
    let h = Harness::serving(config()).await;
    h.hold_reexec_checks();
    h.send(proven("release v2 proved itself")).await;
    h.signal(Signal::SIGTERM, Action::Stop).await;
    h.send(Event::ReexecPrepared(ready_image())).await;
    assert!(h.execs().is_empty());
    h.exit(1, Exit::Code(0)).await;
    assert!(!h.is_running());
}

#[tokio::test(start_paused = true)]
async fn reexec_off_means_the_restart_signal_restarts_workers_at_once() {
    let mut cfg = config();
    cfg.master_reexec = false;
    let h = Harness::serving(cfg).await;
    h.signal(Signal::SIGUSR2, Action::Restart).await;
    assert_eq!(h.reexec_checks(), 0);
    assert_eq!(h.spawned(), vec![1, 2]);
}
