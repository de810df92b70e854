//! The release state as data, and every decision over it as a pure function: no I/O, no clock
//! (times are passed in). The updater reads the disk, asks these functions what to do, does it,
//! and reports back; the property tests drive the same functions through random sequences.

use std::time::{Duration, Instant};

use super::version::{parse_version, Version};
use crate::fetch::{source_digest, Current, Origin};

/// How many refusals are remembered (oldest forgotten first).
pub(crate) const REFUSAL_MEMORY: usize = 64;
/// A release that stays refused is reminded of at most this often.
pub(crate) const REMIND_EVERY: Duration = Duration::from_secs(300);
/// How long a refusal that may be the source's passing state (a checksum mismatch, a cut transfer)
/// is kept when the source says nothing about its bytes to tell a change by.
pub(crate) const TRANSIENT_WITHOUT_SOURCE: Duration = Duration::from_secs(300);

/// One build: a binary's sha256, and what the release that brought it said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Build {
    pub(crate) sha256: String,
    /// The release's identity; `None` for a build upshift did not install (the one it started
    /// with, or one the operator put in place).
    pub(crate) identity: Option<String>,
    pub(crate) version: Option<Version>,
    /// A digest ([`source_digest`]) of what the source said about the release's bytes when it
    /// was installed (an ETag, a file's stamp), if it said anything.
    pub(crate) source: Option<String>,
}

impl Build {
    /// A build found on disk, not installed by upshift.
    pub(crate) fn found(sha256: impl Into<String>) -> Build {
        Build {
            sha256: sha256.into(),
            identity: None,
            version: None,
            source: None,
        }
    }

    /// Whether `offer` is the very publication this build was installed from: the same
    /// identity, and the same description of its bytes by the source.
    fn installed_from(&self, offer: &Offer<'_>) -> bool {
        self.identity.as_deref() == Some(offer.identity)
            && self.source.as_deref() == offer.source.map(source_digest).as_deref()
    }
}

/// What the persisted state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Persisted {
    /// The build upshift last put at the target (installed, or restored by a rollback).
    pub(crate) installed: Option<Build>,
    /// The highest version ever accepted (installed): the floor survives restarts.
    pub(crate) highest_version: Option<Version>,
    /// The sha256 of the last build that proved itself (passed probation).
    pub(crate) proven: Option<String>,
    /// The release upshift installed that the operator then replaced with a build of their own
    /// (a manual deploy). Its publication is not installed over their build again; published
    /// anew (its source describes new bytes or a new upload), it is. Kept until the next
    /// install, and across restarts: a master that starts (or re-executes) after the deploy
    /// has no fetcher memory of having offered it.
    pub(crate) replaced: Option<Build>,
}

/// Why a release was refused, as far as deciding whether to try it again goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// Fault of the release: the same bytes would fail the same way.
    Release,
    /// Possibly the source's state at that moment (read mid-upload): tried again once the source
    /// changes.
    Transient,
}

/// A refused release, remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// [`Current::rejection_key`] or, for a transient one, [`Current::transient_rejection_key`].
    pub(crate) key: String,
    pub(crate) identity: String,
    /// The sha256 of the binary that was received and refused, when it got that far: the same
    /// bytes under another identity are refused too.
    pub(crate) binary_sha256: Option<String>,
    pub(crate) reason: String,
    pub(crate) kind: RefusalKind,
    /// When it was refused or last reminded of.
    pub(crate) reminded: Instant,
    /// For a transient refusal without a source: forgotten at this time.
    pub(crate) expires: Option<Instant>,
}

/// What a release says about itself before its body is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer<'a> {
    pub(crate) identity: &'a str,
    pub(crate) sha256: Option<&'a str>,
    pub(crate) signature: Option<&'a str>,
    pub(crate) version: Option<&'a str>,
    pub(crate) source: Option<&'a str>,
    pub(crate) origin: Origin,
    /// Why the release's signed metadata refuses it (another product or target, no metadata),
    /// when a key is configured; checked before the body is read.
    pub(crate) unvouched: Option<&'a str>,
}

impl Offer<'_> {
    pub(crate) fn key(&self) -> String {
        Current::rejection_key(self.identity, self.sha256, self.signature)
    }

    fn transient_key(&self) -> Option<String> {
        let source = self.source?;
        Some(Current::transient_rejection_key(
            self.identity,
            self.sha256,
            self.signature,
            source,
        ))
    }
}

/// What the pipeline accepts, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// A remote release must come with a sha256 (no signature key, no opt-out).
    pub(crate) require_checksum_for_remote: bool,
    /// A minisign key is configured: every release must be signed.
    pub(crate) require_signature: bool,
}

/// Whether to read a release's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    Download,
    /// Refused before a byte of the body was read; remember it.
    Refuse {
        reason: String,
    },
    /// Refused before; `remind` when the reminder is due (logged at INFO and an event).
    AlreadyRefused {
        reason: String,
        remind: bool,
    },
}

/// What to do with a staged, verified binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Staging {
    /// Test-run, veto, install.
    Proceed,
    /// The build at the target already: nothing to do (the identity is recorded).
    AlreadyInstalled,
    /// These bytes were refused before under another identity.
    RefusedBefore { reason: String },
}

/// How the disk compares with what upshift last put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DiskChange {
    Unchanged,
    /// First look, or a state file that named another build: now recorded.
    Adopted,
    /// Someone else put another build at the path (a manual deploy): it is what is installed now.
    ChangedOutside {
        was: String,
    },
}

/// The release state of one master.
#[derive(Debug, Clone)]
pub(crate) struct ReleaseState {
    /// Persisted beside the binary.
    pub(crate) persisted: Persisted,
    /// The running program's configured version (`Upgrader::version`).
    pub(crate) running_version: Option<Version>,
    /// The candidate installed and not yet proven or failed, if any.
    pub(crate) probation: Option<Build>,
    pub(crate) refusals: Vec<Refusal>,
}

impl ReleaseState {
    pub(crate) fn new(persisted: Persisted, running_version: Option<&str>) -> ReleaseState {
        ReleaseState {
            persisted,
            running_version: running_version.and_then(parse_version),
            probation: None,
            refusals: Vec::new(),
        }
    }

    /// The version nothing at or below may be installed: the higher of the running build's and
    /// the highest ever accepted.
    pub(crate) fn floor(&self) -> Option<&Version> {
        match (&self.persisted.highest_version, &self.running_version) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.as_ref().or(b.as_ref()),
        }
    }

    /// Records the sha256 of the file at the invoked path, just read: the disk is the truth. A
    /// build other than the recorded one was put there by someone else, and is what the
    /// fetchers must compare against from now on.
    pub(crate) fn observe_disk(&mut self, sha256: &str) -> DiskChange {
        let change = match &self.persisted.installed {
            Some(b) if b.sha256 == sha256 => return DiskChange::Unchanged,
            Some(b) if b.identity.is_some() || self.persisted.proven.is_some() => {
                DiskChange::ChangedOutside {
                    was: b.sha256.clone(),
                }
            }
            _ => DiskChange::Adopted,
        };
        if let Some(release) = self
            .persisted
            .installed
            .take()
            .filter(|b| b.identity.is_some())
        {
            self.persisted.replaced = Some(release);
        }
        self.persisted.installed = Some(Build::found(sha256));
        // The operator's build counts as proven: it is what they chose to run, and a failing
        // candidate after it falls back to it, not to something older.
        self.persisted.proven = Some(sha256.to_string());
        if self.probation.as_ref().is_some_and(|p| p.sha256 != sha256) {
            self.probation = None;
        }
        change
    }

    /// What fetchers are told is current.
    pub(crate) fn current(&self, policy: &Policy, now: Instant) -> Current {
        let installed = self.persisted.installed.as_ref();
        Current {
            sha256: installed.map(|b| b.sha256.clone()).unwrap_or_default(),
            identity: installed.and_then(|b| b.identity.clone()),
            version: self.floor().map(ToString::to_string),
            rejected: self
                .refusals
                .iter()
                .filter(|r| r.expires.map_or(true, |t| now < t))
                .map(|r| r.key.clone())
                .collect(),
            requires_checksum: policy.require_checksum_for_remote || policy.require_signature,
        }
    }

    /// Decides, from what a release says about itself, whether to read its body.
    pub(crate) fn admit(&mut self, offer: &Offer<'_>, policy: &Policy, now: Instant) -> Admission {
        self.forget_expired(now);
        let keys = [Some(offer.key()), offer.transient_key()];
        if let Some(r) = self
            .refusals
            .iter_mut()
            .find(|r| keys.iter().flatten().any(|k| *k == r.key))
        {
            let remind = now.saturating_duration_since(r.reminded) >= REMIND_EVERY;
            if remind {
                r.reminded = now;
            }
            return Admission::AlreadyRefused {
                reason: r.reason.clone(),
                remind,
            };
        }
        let installed = self.persisted.installed.as_mut();
        if let Some(sha) = offer.sha256 {
            if let Some(b) = installed.filter(|b| b.sha256.eq_ignore_ascii_case(sha)) {
                // Not new; a fetcher should not have offered it, but nothing is refused. The
                // installed build is this publication now (the same bytes uploaded again), should
                // the operator replace it.
                b.identity = Some(offer.identity.to_string());
                b.source = offer.source.map(source_digest);
                return Admission::AlreadyRefused {
                    reason: "it is the build already installed".into(),
                    remind: false,
                };
            }
        }
        if self
            .persisted
            .replaced
            .as_ref()
            .is_some_and(|r| r.installed_from(offer))
        {
            // The operator chose another build over this one: offering the same publication
            // again (a restarted master's fetchers have no memory of it) must not undo that.
            return Admission::AlreadyRefused {
                reason: "the operator replaced it with another build; it is installed again \
                         only once it is published again"
                    .into(),
                remind: false,
            };
        }
        if let Some(reason) = offer.unvouched {
            return Admission::Refuse {
                reason: reason.to_string(),
            };
        }
        if let Some(raw) = offer.version {
            let Some(version) = parse_version(raw) else {
                return Admission::Refuse {
                    reason: format!(
                        "its version {raw:?} is not a semantic version, so it cannot be ordered \
                         against the installed one"
                    ),
                };
            };
            if let Some(floor) = self.floor().filter(|f| version <= **f) {
                return Admission::Refuse {
                    reason: format!(
                        "its version {version} is not newer than {floor}, the highest version \
                         this host runs or ever accepted (versions only go up)"
                    ),
                };
            }
        }
        if policy.require_signature && offer.signature.is_none() {
            return Admission::Refuse {
                reason: crate::install::InstallError::Unsigned.to_string(),
            };
        }
        if offer.origin == Origin::Remote
            && offer.sha256.is_none()
            && policy.require_checksum_for_remote
        {
            return Admission::Refuse {
                reason: crate::install::InstallError::MissingChecksum.to_string(),
            };
        }
        Admission::Download
    }

    /// Decides what to do with a binary staged and verified (its sha256 known).
    pub(crate) fn after_staging(&self, binary_sha256: &str) -> Staging {
        if self
            .persisted
            .installed
            .as_ref()
            .is_some_and(|b| b.sha256 == binary_sha256)
        {
            return Staging::AlreadyInstalled;
        }
        let refused = self.refusals.iter().find(|r| {
            r.kind == RefusalKind::Release && r.binary_sha256.as_deref() == Some(binary_sha256)
        });
        match refused {
            Some(r) => Staging::RefusedBefore {
                reason: format!(
                    "the same binary was refused before as release {}: {}",
                    r.identity, r.reason
                ),
            },
            None => Staging::Proceed,
        }
    }

    /// Whether this release was refused before for the very same reason (the same bytes read
    /// again under a changed source description): not news, so not worth a warning.
    pub(crate) fn refused_alike(&self, identity: &str, reason: &str) -> bool {
        self.refusals
            .iter()
            .any(|r| r.identity == identity && r.reason == reason)
    }

    /// Remembers a refusal. A transient one is keyed by the source's description of the bytes,
    /// so that new bytes are a new candidate; without one, it is kept only for a while.
    pub(crate) fn refuse(
        &mut self,
        offer: &Offer<'_>,
        binary_sha256: Option<&str>,
        reason: &str,
        kind: RefusalKind,
        now: Instant,
    ) {
        let (key, expires) = match (kind, offer.transient_key()) {
            (RefusalKind::Release, _) => (offer.key(), None),
            (RefusalKind::Transient, Some(k)) => (k, None),
            (RefusalKind::Transient, None) => (offer.key(), Some(now + TRANSIENT_WITHOUT_SOURCE)),
        };
        self.refusals.retain(|r| r.key != key);
        if self.refusals.len() >= REFUSAL_MEMORY {
            self.refusals.remove(0);
        }
        self.refusals.push(Refusal {
            key,
            identity: offer.identity.to_string(),
            binary_sha256: binary_sha256
                .filter(|_| kind == RefusalKind::Release)
                .map(str::to_string),
            reason: reason.to_string(),
            kind,
            reminded: now,
            expires,
        });
    }

    /// Records the release whose binary is now at the target, on probation, and counts its
    /// version as accepted.
    pub(crate) fn installed(&mut self, build: Build) {
        if let Some(v) = &build.version {
            self.accept_version(v);
        }
        self.persisted.installed = Some(build.clone());
        self.persisted.replaced = None;
        self.probation = Some(build);
    }

    /// A release turned out to be the installed build already: remember its name, version and
    /// source (so fetchers that compare identities stop offering it, and a manual deploy over it
    /// is known to replace this publication), and count its version as accepted.
    pub(crate) fn name_installed(&mut self, offer: &Offer<'_>, version: Option<&Version>) {
        let Some(b) = self.persisted.installed.as_mut() else {
            return;
        };
        b.identity = Some(offer.identity.to_string());
        b.source = offer.source.map(source_digest);
        if let Some(v) = version {
            b.version = Some(v.clone());
            self.accept_version(v);
        }
    }

    /// Raises the highest version accepted to `v`; it never goes down.
    fn accept_version(&mut self, v: &Version) {
        let highest = &mut self.persisted.highest_version;
        if highest.as_ref().map_or(true, |h| v > h) {
            *highest = Some(v.clone());
        }
    }

    /// The build a candidate about to be installed would be rolled back to: the one that serves
    /// now (`serving_sha256`, read from the serving worker's executable), with the installed
    /// record's name and version when it is that build.
    pub(crate) fn restore_build(&self, serving_sha256: &str) -> Build {
        match &self.persisted.installed {
            Some(b) if b.sha256 == serving_sha256 => b.clone(),
            _ => Build::found(serving_sha256),
        }
    }

    /// Whether `.prev` should be pointed at the build about to be replaced: only a proven one.
    pub(crate) fn keep_as_prev(&self) -> bool {
        self.persisted.installed.as_ref().map(|b| &b.sha256) == self.persisted.proven.as_ref()
    }

    /// A candidate served through its probation (or was replaced by a newer one after it became
    /// ready): it is proven, and the next install keeps it as `.prev`. Returns whether it is
    /// still the installed build.
    pub(crate) fn proven(&mut self, sha256: &str) -> bool {
        if self.probation.as_ref().is_some_and(|p| p.sha256 == sha256) {
            self.probation = None;
        }
        let still = self
            .persisted
            .installed
            .as_ref()
            .is_some_and(|b| b.sha256 == sha256);
        if still {
            self.persisted.proven = Some(sha256.to_string());
        }
        still
    }

    /// A candidate failed (never ready, or died on probation). When it is still the installed
    /// build, the build to restore is `restore` — the one that served when it was installed —
    /// and the state records that as installed again. Returns whether the target must be
    /// restored. The candidate is remembered as refused either way.
    pub(crate) fn failed(
        &mut self,
        candidate: &Build,
        offer: &Offer<'_>,
        restore: &Build,
        reason: &str,
        now: Instant,
    ) -> bool {
        if self
            .probation
            .as_ref()
            .is_some_and(|p| p.sha256 == candidate.sha256)
        {
            self.probation = None;
        }
        self.refuse(
            offer,
            Some(&candidate.sha256),
            reason,
            RefusalKind::Release,
            now,
        );
        let still = self
            .persisted
            .installed
            .as_ref()
            .is_some_and(|b| b.sha256 == candidate.sha256);
        if still {
            self.persisted.installed = Some(restore.clone());
            // What served before the candidate is back on probation if it was on probation.
        }
        still
    }

    /// The last release a fetcher offered was refused, and the fetcher keeps offering nothing
    /// newer (it skips what was refused): the reason, when a reminder is due.
    pub(crate) fn remind_due(&mut self, identity: &str, now: Instant) -> Option<String> {
        self.forget_expired(now);
        let r = self.refusals.iter_mut().rfind(|r| r.identity == identity)?;
        if now.saturating_duration_since(r.reminded) < REMIND_EVERY {
            return None;
        }
        r.reminded = now;
        Some(r.reason.clone())
    }

    fn forget_expired(&mut self, now: Instant) {
        self.refusals
            .retain(|r| r.expires.map_or(true, |t| now < t));
    }
}

/// Whether a refusal of a release is the release's fault, may be the source's passing state,
/// or the machine's (then not remembered at all: the same release is retried after a backoff).
pub(crate) fn refusal_kind(error: &crate::install::InstallError) -> Option<RefusalKind> {
    use crate::install::InstallError as E;
    match error {
        // The disk, a slow network, or another master's lock: the same bytes are tried again
        // after a backoff.
        E::Io { .. } | E::DownloadFailed(_) | E::DeadlineExceeded { .. } | E::Locked { .. } => None,
        E::ChecksumMismatch { .. } | E::Truncated { .. } => Some(RefusalKind::Transient),
        _ => Some(RefusalKind::Release),
    }
}
