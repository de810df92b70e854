//! A model-based property test of the release state: random sequences of what happens to a host
//! (releases good and bad, uploads read half-way, manual deploys, restart signals, symlink flips,
//! master restarts, version tags up and down) run against a simulated host that calls the same
//! decisions in the same order as the master's updater, with the invariants checked after every
//! step. No I/O, no clock: thousands of sequences in seconds.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::model::*;
use super::version::{parse_version, Version};
use crate::fetch::Origin;

/// How a published release behaves once it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    CrashBeforeReady,
    CrashAfterReady,
    NotUpshift,
    /// Its published checksum belongs to other bytes.
    Mismatched,
    /// Published without a checksum, from the network.
    NoChecksum,
}

#[derive(Debug, Clone)]
enum Step {
    Publish {
        kind: Kind,
        version: Option<u8>,
    },
    /// A good release written in place: a poll reads it half-written, then the upload ends.
    UploadInPlace {
        version: Option<u8>,
    },
    Poll,
    /// The same build published again (uploaded anew: a new ETag), then a poll.
    Republish,
    /// The operator copies a new build over the binary (or flips its symlink to one).
    ManualDeploy {
        restart: bool,
    },
    RestartSignal,
    ProbationEnds,
    MasterRestart,
    Wait {
        minutes: u8,
    },
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Good),
        1 => Just(Kind::CrashBeforeReady),
        1 => Just(Kind::CrashAfterReady),
        1 => Just(Kind::NotUpshift),
        1 => Just(Kind::Mismatched),
        1 => Just(Kind::NoChecksum),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let version = proptest::option::weighted(0.6, 0u8..12);
    prop_oneof![
        4 => (kind(), version.clone()).prop_map(|(kind, version)| Step::Publish { kind, version }),
        1 => version.prop_map(|version| Step::UploadInPlace { version }),
        3 => Just(Step::Poll),
        1 => Just(Step::Republish),
        1 => any::<bool>().prop_map(|restart| Step::ManualDeploy { restart }),
        1 => Just(Step::RestartSignal),
        2 => Just(Step::ProbationEnds),
        1 => Just(Step::MasterRestart),
        1 => (1u8..10).prop_map(|minutes| Step::Wait { minutes }),
    ]
}

fn sha(n: u32) -> String {
    format!("{n:064x}")
}

fn version(v: u8) -> String {
    format!("{v}.0.0")
}

/// What the origin offers now.
#[derive(Debug, Clone)]
struct Published {
    build: u32,
    kind: Kind,
    version: Option<String>,
    /// The upload is still being written: a read gets part of it.
    partial: bool,
    /// What the source says about its bytes (an ETag): changes as the bytes do.
    source: String,
}

/// A candidate between install and the end of its probation.
#[derive(Debug, Clone)]
struct Pending {
    build: Build,
    kind: Kind,
    restore: Build,
    identity: String,
    sha256: Option<String>,
    source: String,
    /// The build that served when it was installed.
    served_before: u32,
}

/// The simulated host and its origin.
struct Host {
    st: ReleaseState,
    /// The state file: what a master restart reads.
    saved: Persisted,
    running_version: Option<String>,
    disk: u32,
    serving: u32,
    prev: Option<u32>,
    /// Builds the operator placed at the path.
    operator: HashSet<u32>,
    /// The publication (its source) whose build the operator last replaced at the path.
    replaced_publication: Option<String>,
    published: Option<Published>,
    pending: Vec<Pending>,
    kinds: Vec<(u32, Kind)>,
    next_build: u32,
    now: Instant,
    policy: Policy,
    /// The floor as it was at each step, to check it never goes down.
    last_floor: Option<Version>,
}

impl Host {
    fn new() -> Host {
        let running_version = Some("1.0.0".to_string());
        let mut st = ReleaseState::new(Persisted::default(), running_version.as_deref());
        st.observe_disk(&sha(1));
        Host {
            saved: st.persisted.clone(),
            st,
            running_version,
            disk: 1,
            serving: 1,
            prev: None,
            operator: HashSet::from([1]),
            replaced_publication: None,
            published: None,
            pending: Vec::new(),
            kinds: vec![(1, Kind::Good)],
            next_build: 2,
            now: Instant::now(),
            policy: Policy {
                require_checksum_for_remote: true,
                require_signature: false,
            },
            last_floor: None,
        }
    }

    /// Publishes a release and lets the host poll it.
    fn publish(&mut self, kind: Kind, version: Option<u8>) {
        self.step(&Step::Publish { kind, version }).unwrap();
    }

    fn fresh(&mut self, kind: Kind) -> u32 {
        let b = self.next_build;
        self.next_build += 1;
        self.kinds.push((b, kind));
        b
    }

    fn build_of(&self, sha256: &str) -> u32 {
        u32::from_str_radix(sha256, 16).unwrap_or(0)
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::Publish { kind, version: v } => {
                let build = self.fresh(*kind);
                self.published = Some(Published {
                    build,
                    kind: *kind,
                    version: v.map(version),
                    partial: false,
                    source: format!("etag-{build}"),
                });
                self.poll()?;
            }
            Step::UploadInPlace { version: v } => {
                let build = self.fresh(Kind::Good);
                self.published = Some(Published {
                    build,
                    kind: Kind::Good,
                    version: v.map(version),
                    partial: true,
                    source: format!("etag-{build}-partial"),
                });
                self.poll()?;
                // The upload completes: new bytes, a new ETag.
                if let Some(p) = self.published.as_mut() {
                    p.partial = false;
                    p.source = format!("etag-{build}");
                }
                let admissible = self.admissible(build, v.map(version).as_deref());
                self.poll()?;
                if admissible {
                    // Refused while half-written, it must install once intact.
                    let installed = self
                        .st
                        .persisted
                        .installed
                        .as_ref()
                        .map(|b| b.sha256.clone());
                    prop_assert_eq!(
                        installed,
                        Some(sha(build)),
                        "a release read mid-upload did not install once complete"
                    );
                }
            }
            Step::Poll => self.poll()?,
            Step::Republish => {
                if let Some(p) = self.published.as_mut() {
                    if !p.partial {
                        p.source = format!("{}-again", p.source);
                    }
                }
                self.poll()?;
            }
            Step::ManualDeploy { restart } => {
                self.replaced_publication = self
                    .published
                    .as_ref()
                    .filter(|p| p.build == self.disk)
                    .map(|p| p.source.clone());
                let build = self.fresh(Kind::Good);
                self.operator.insert(build);
                self.disk = build;
                if *restart {
                    self.restart_signal();
                }
            }
            Step::RestartSignal => self.restart_signal(),
            Step::ProbationEnds => self.probation_ends()?,
            Step::MasterRestart => {
                // Every worker dies with the master; the new master runs what is on disk.
                self.st = ReleaseState::new(self.saved.clone(), self.running_version.as_deref());
                self.pending.clear();
                self.serving = self.disk;
                self.observe();
            }
            Step::Wait { minutes } => {
                self.now += Duration::from_secs(u64::from(*minutes) * 60);
            }
        }
        self.check()
    }

    /// Whether a release of `build` at `version` may be taken at all: above the floor, not the
    /// build installed. (What the pipeline refuses for that reason is checked elsewhere.)
    fn admissible(&self, build: u32, version: Option<&str>) -> bool {
        let floor_ok = match version {
            Some(v) => parse_version(v).is_some_and(|v| self.st.floor().is_none_or(|f| v > *f)),
            None => true,
        };
        floor_ok && self.disk != build
    }

    fn observe(&mut self) {
        self.st.observe_disk(&sha(self.disk));
        self.saved = self.st.persisted.clone();
    }

    fn restart_signal(&mut self) {
        // A restart signal runs the disk's build; a manual build is good.
        self.observe();
        self.pending.clear();
        self.serving = self.disk;
    }

    /// The updater's order: observe, admit, stage, after_staging, test-run, install, hand off.
    fn poll(&mut self) -> Result<(), TestCaseError> {
        self.observe();
        let Some(p) = self.published.clone() else {
            return Ok(());
        };
        let checksum = match p.kind {
            Kind::NoChecksum => None,
            Kind::Mismatched => Some(sha(p.build + 1_000_000)),
            _ => Some(sha(p.build)),
        };
        let identity = format!("release-{}", p.build);
        let offer = Offer {
            identity: &identity,
            sha256: checksum.as_deref(),
            signature: None,
            version: p.version.as_deref(),
            source: Some(&p.source),
            origin: Origin::Remote,
            unvouched: None,
        };
        let floor_before = self.st.floor().cloned();
        let admission = self.st.admit(&offer, &self.policy, self.now);
        let Admission::Download = admission else {
            if let Admission::Refuse { reason } = admission {
                self.st
                    .refuse(&offer, None, &reason, RefusalKind::Release, self.now);
            }
            return Ok(());
        };
        // Decisions from metadata read no body: only a release that passed them is downloaded.
        prop_assert!(
            checksum.is_some(),
            "a release without a checksum was downloaded"
        );
        if let Some(v) = p.version.as_deref() {
            let v = parse_version(v).unwrap_or_else(|| Version::new(0, 0, 0));
            prop_assert!(
                floor_before.as_ref().is_none_or(|f| v > *f),
                "{} was downloaded though the floor is {:?}",
                v,
                floor_before
            );
        }
        if p.partial || p.kind == Kind::Mismatched {
            let reason = "checksum mismatch";
            self.st
                .refuse(&offer, None, reason, RefusalKind::Transient, self.now);
            return Ok(());
        }
        let build = Build {
            sha256: sha(p.build),
            identity: Some(identity.clone()),
            version: p.version.as_deref().and_then(parse_version),
            source: Some(crate::fetch::source_digest(&p.source)),
        };
        match self.st.after_staging(&build.sha256) {
            Staging::Proceed => {}
            Staging::AlreadyInstalled => {
                self.st.name_installed(&offer, build.version.as_ref());
                return Ok(());
            }
            Staging::RefusedBefore { reason } => {
                self.st.refuse(
                    &offer,
                    Some(&build.sha256),
                    &reason,
                    RefusalKind::Release,
                    self.now,
                );
                return Ok(());
            }
        }
        if p.kind == Kind::NotUpshift {
            let reason = "did not answer the handshake";
            self.st.refuse(
                &offer,
                Some(&build.sha256),
                reason,
                RefusalKind::Release,
                self.now,
            );
            return Ok(());
        }
        // Install: what serves is kept open as the restore point; `.prev` takes a proven build.
        self.observe();
        let restore = self.st.restore_build(&sha(self.serving));
        if self.st.keep_as_prev() {
            self.prev = Some(self.disk);
        }
        self.disk = p.build;
        self.st.installed(build.clone());
        self.saved = self.st.persisted.clone();
        let pending = Pending {
            build,
            kind: p.kind,
            restore,
            identity: identity.clone(),
            sha256: checksum.clone(),
            source: p.source.clone(),
            served_before: self.serving,
        };
        if p.kind == Kind::CrashBeforeReady {
            self.fail(&pending)?;
        } else {
            // Ready: whatever was on probation before was replaced after it became ready.
            for older in std::mem::take(&mut self.pending) {
                self.survived(&older);
            }
            self.serving = p.build;
            self.pending.push(pending);
        }
        Ok(())
    }

    fn probation_ends(&mut self) -> Result<(), TestCaseError> {
        let Some(last) = self.pending.pop() else {
            return Ok(());
        };
        match last.kind {
            Kind::CrashAfterReady => {
                self.fail(&last)?;
                // Nobody serves: the master starts a worker from the disk.
                self.serving = self.disk;
            }
            _ => self.survived(&last),
        }
        Ok(())
    }

    fn survived(&mut self, p: &Pending) {
        self.st.proven(&p.build.sha256);
        self.saved = self.st.persisted.clone();
    }

    fn fail(&mut self, p: &Pending) -> Result<(), TestCaseError> {
        let offer = Offer {
            identity: &p.identity,
            sha256: p.sha256.as_deref(),
            signature: None,
            version: None,
            source: Some(&p.source),
            origin: Origin::Remote,
            unvouched: None,
        };
        if self
            .st
            .failed(&p.build, &offer, &p.restore, "crashed", self.now)
        {
            let restored = self.build_of(&p.restore.sha256);
            // A rollback never restores below the serving build: exactly the one that served
            // when the candidate was installed (which still serves, if it failed before ready).
            prop_assert_eq!(
                restored,
                p.served_before,
                "rollback restored {} while {} served before the candidate",
                restored,
                p.served_before
            );
            self.disk = restored;
        }
        self.saved = self.st.persisted.clone();
        Ok(())
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        // The file at the invoked path is the serving build, or one the operator put there, or
        // a candidate whose worker is on its way (none here: hand-offs complete within a step).
        prop_assert!(
            self.disk == self.serving || self.operator.contains(&self.disk),
            "disk holds {} while {} serves",
            self.disk,
            self.serving
        );
        // What is recorded as installed is what is on disk, once observed.
        self.observe();
        let recorded = self
            .st
            .persisted
            .installed
            .as_ref()
            .map(|b| b.sha256.clone());
        prop_assert_eq!(recorded, Some(sha(self.disk)));
        // The floor only goes up, across restarts too.
        let floor = self.st.floor().cloned();
        if let (Some(before), Some(now)) = (&self.last_floor, &floor) {
            prop_assert!(
                now >= before,
                "the floor went down from {} to {}",
                before,
                now
            );
        }
        prop_assert!(
            !(self.last_floor.is_some() && floor.is_none()),
            "the floor was lost"
        );
        self.last_floor = floor;
        // Nothing that failed is what the disk holds unless the operator put it there.
        let kind = self
            .kinds
            .iter()
            .find(|(b, _)| *b == self.disk)
            .map(|(_, k)| *k);
        prop_assert!(
            matches!(kind, Some(Kind::Good) | Some(Kind::CrashAfterReady))
                || self.operator.contains(&self.disk),
            "disk holds build {} of kind {:?}",
            self.disk,
            kind
        );
        // A publication whose build the operator replaced is not installed over their build
        // again; only a new publication is.
        if let (Some(p), Some(replaced)) = (&self.published, &self.replaced_publication) {
            prop_assert!(
                !(p.source == *replaced && self.disk == p.build),
                "build {} was installed again from the publication the operator replaced",
                p.build
            );
        }
        // `.prev` is a build that proved itself, never a failed one.
        if let Some(prev) = self.prev {
            let kind = self.kinds.iter().find(|(b, _)| *b == prev).map(|(_, k)| *k);
            prop_assert!(
                kind != Some(Kind::CrashBeforeReady) && kind != Some(Kind::NotUpshift),
                ".prev holds build {} of kind {:?}",
                prev,
                kind
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_release_state_holds_its_invariants(steps in proptest::collection::vec(step(), 1..40)) {
        let mut host = Host::new();
        for s in &steps {
            host.step(s)?;
        }
    }
}

#[test]
fn a_rollback_restores_the_serving_build_not_the_one_before_it() {
    // Sequence 1 of the issue, spelled out: A on probation, B fails before ready.
    let mut h = Host::new();
    h.publish(Kind::Good, None);
    let a = h.disk;
    h.publish(Kind::CrashBeforeReady, None);
    assert_eq!(h.disk, a);
    assert_eq!(h.serving, a);
    assert_eq!(h.prev, Some(1));
    h.step(&Step::ProbationEnds).unwrap();
    h.publish(Kind::Good, None);
    assert_eq!(
        h.prev,
        Some(a),
        ".prev takes A once it proved itself and was replaced"
    );
}

#[test]
fn the_floor_survives_a_master_restart_and_refuses_downgrades() {
    let mut h = Host::new();
    h.publish(Kind::Good, Some(9));
    h.step(&Step::MasterRestart).unwrap();
    let before = h.disk;
    h.publish(Kind::Good, Some(5));
    assert_eq!(h.disk, before, "5.0.0 after 9.0.0 was installed");
    assert_eq!(h.st.floor().map(ToString::to_string), Some("9.0.0".into()));
}

#[test]
fn a_release_a_manual_deploy_replaced_is_installed_again_only_once_published_again() {
    for master_restart in [false, true] {
        let mut h = Host::new();
        h.publish(Kind::Good, None);
        let a = h.disk;
        h.step(&Step::ProbationEnds).unwrap();
        h.step(&Step::ManualDeploy { restart: true }).unwrap();
        let b = h.disk;
        assert_ne!(b, a);
        if master_restart {
            // A new master (or a re-executed one) has no fetcher memory of having offered A.
            h.step(&Step::MasterRestart).unwrap();
        }
        // A is not the installed build any more, but the same publication of it stays out.
        let current = h.st.current(&h.policy, h.now);
        assert_ne!(current.sha256, sha(a));
        h.step(&Step::Poll).unwrap();
        assert_eq!(
            h.disk, b,
            "the operator's build was replaced by the same publication"
        );
        // Published again, A is new again.
        h.step(&Step::Republish).unwrap();
        assert_eq!(h.disk, a, "restart {master_restart}");
    }
}

#[test]
fn a_refusal_is_reminded_at_most_every_few_minutes() {
    let mut st = ReleaseState::new(Persisted::default(), None);
    st.observe_disk(&sha(1));
    let policy = Policy {
        require_checksum_for_remote: true,
        require_signature: false,
    };
    let now = Instant::now();
    let offer = Offer {
        identity: "x",
        sha256: None,
        signature: None,
        version: None,
        source: None,
        origin: Origin::Remote,
        unvouched: None,
    };
    let Admission::Refuse { reason } = st.admit(&offer, &policy, now) else {
        panic!("admitted")
    };
    st.refuse(&offer, None, &reason, RefusalKind::Release, now);
    let remind = |st: &mut ReleaseState, t| match st.admit(&offer, &policy, t) {
        Admission::AlreadyRefused { remind, .. } => remind,
        other => panic!("{other:?}"),
    };
    assert!(!remind(&mut st, now + Duration::from_secs(60)));
    assert!(remind(&mut st, now + REMIND_EVERY));
    assert!(!remind(
        &mut st,
        now + REMIND_EVERY + Duration::from_secs(1)
    ));
    assert!(st.current(&policy, now).was_rejected("x", None, None));
    // A fetcher that skips it offers nothing; the poll loop asks whether a reminder is due.
    assert_eq!(
        st.remind_due("x", now + REMIND_EVERY),
        None,
        "reminded twice in a row"
    );
    let later = now + REMIND_EVERY * 2 + Duration::from_secs(1);
    assert!(st.remind_due("x", later).is_some());
    assert_eq!(st.remind_due("x", later + Duration::from_secs(60)), None);
    assert_eq!(st.remind_due("never refused", later), None);
}

#[test]
fn a_release_its_signed_metadata_refuses_is_refused_unread_and_remembered() {
    let mut st = ReleaseState::new(Persisted::default(), Some("1.0.0"));
    st.observe_disk(&sha(1));
    let policy = Policy {
        require_checksum_for_remote: false,
        require_signature: true,
    };
    let now = Instant::now();
    let why = "the release is signed for product \"billing\", not \"app\"";
    // Even with a version above the floor, the metadata's verdict comes first.
    let foreign = Offer {
        identity: "v2.0.0",
        sha256: Some("ab"),
        signature: Some("sig"),
        version: Some("2.0.0"),
        source: None,
        origin: Origin::Remote,
        unvouched: Some(why),
    };
    let Admission::Refuse { reason } = st.admit(&foreign, &policy, now) else {
        panic!("admitted a release for another product")
    };
    assert_eq!(reason, why);
    st.refuse(&foreign, None, &reason, RefusalKind::Release, now);
    assert!(matches!(
        st.admit(&foreign, &policy, now + Duration::from_secs(1)),
        Admission::AlreadyRefused { remind: false, .. }
    ));
    assert!(st
        .current(&policy, now)
        .was_rejected("v2.0.0", Some("ab"), Some("sig")));
    // A replayed old version, vouched for by its metadata, meets the floor.
    let replay = Offer {
        identity: "v0.9.0",
        version: Some("0.9.0"),
        unvouched: None,
        ..foreign
    };
    let Admission::Refuse { reason } = st.admit(&replay, &policy, now) else {
        panic!("admitted a version below the floor")
    };
    assert!(reason.contains("not newer than 1.0.0"), "{reason}");
}
