//! The master's own upgrade: `execve` of the binary on disk in place, keeping the PID, with the
//! listeners, the workers' control sockets and a [handover document](super::handover) crossing
//! the exec.
//!
//! Two steps. [`prepare`] runs off the event loop: it waits for the install pipeline to be idle
//! (and keeps it so), opens the binary the invoked path names now, compares it with the master's
//! own image, and test-runs the very file it opened, which must answer that it reads this
//! master's handover version. Then the event loop, once nothing is half-done (no worker starting,
//! no release on probation), calls [`exec`] on that open file: what was checked is what runs.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::books::Books;
use super::handover::{self, Handover};
use super::Event;
use crate::release::disk::Hasher;

/// The install pipeline's lock: held from the check to the exec, so no release is half-staged
/// when the master's image is replaced.
pub(super) type PipelineLock = Arc<Mutex<Option<Books>>>;

/// Why the master wants to re-execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) reason: String,
    /// The restart signal asked for new workers too: the new image starts them.
    pub(crate) restart: bool,
    /// The sha256 the binary on disk must have (the release that proved itself); `None`: the
    /// operator's binary, whatever it is (the restart signal).
    pub(crate) expected: Option<String>,
}

/// The binary to become, open and checked.
pub(crate) struct Image {
    /// `None` only in the policy tests' fake.
    pub(super) file: Option<File>,
    pub(crate) sha256: String,
    /// Keeps the install pipeline idle until the exec (or until this is dropped).
    pub(super) quiet: Option<OwnedMutexGuard<Option<Books>>>,
}

impl Image {
    /// The releases the pipeline refused, to hand over with the rest.
    pub(super) fn refusals(&self) -> Vec<super::handover::HandedRefusal> {
        let books = self.quiet.as_ref().and_then(|guard| guard.as_ref());
        books.map(Books::handed_refusals).unwrap_or_default()
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// What [`prepare`] found.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// The binary on disk is the master's own image: nothing to become.
    SameImage,
    /// A binary that can take over, checked.
    Ready(Image),
    /// The binary on disk cannot take over (why, for the log and the service manager).
    Refused(String),
}

/// What the master knows of the file it runs from.
#[derive(Debug, Clone)]
pub(crate) struct OwnImage {
    dev: u64,
    ino: u64,
    sha256: Option<String>,
}

impl OwnImage {
    /// The executable this process runs (`/proc/self/exe`: the very file, even if replaced since).
    pub(crate) fn read() -> io::Result<OwnImage> {
        let meta = std::fs::metadata("/proc/self/exe")?;
        Ok(OwnImage {
            dev: meta.dev(),
            ino: meta.ino(),
            sha256: None,
        })
    }

    /// Its sha256 if already known.
    pub(crate) fn known_sha256(&self) -> Option<String> {
        self.sha256.clone()
    }

    /// Takes the sha256 the previous image hashed this very file to (see `handover`).
    pub(crate) fn set_known_sha256(&mut self, sha256: Option<String>) {
        if sha256.is_some() {
            self.sha256 = sha256;
        }
    }

    /// Its sha256, hashed once.
    fn sha256(&mut self, hasher: &mut Hasher) -> io::Result<String> {
        if let Some(sha) = &self.sha256 {
            return Ok(sha.clone());
        }
        let sha = hasher.sha256_of(&File::open("/proc/self/exe")?)?;
        self.sha256 = Some(sha.clone());
        Ok(sha)
    }

    /// Whether worker `pid` runs this very file (same device and inode).
    pub(crate) fn runs_in(&self, pid: i32) -> bool {
        std::fs::metadata(format!("/proc/{pid}/exe"))
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

/// What [`prepare`] needs, fixed for the master's life.
#[derive(Clone)]
pub(super) struct Preparer {
    pub(crate) invoked: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) test_run_timeout: Duration,
    pub(crate) pipeline: Option<PipelineLock>,
    pub(crate) own: Arc<std::sync::Mutex<OwnImage>>,
}

impl Preparer {
    /// Runs [`prepare`] on the master's runtime and reports with [`Event::ReexecPrepared`].
    pub(crate) fn start(&self, events: UnboundedSender<Event>, expected: Option<String>) {
        let me = self.clone();
        tokio::spawn(async move {
            let prepared = me.prepare(expected.as_deref()).await;
            let _ = events.send(Event::ReexecPrepared(prepared));
        });
    }

    /// Waits for the pipeline to be idle, then opens and checks the binary on disk (which must
    /// be `expected`, when given).
    pub(crate) async fn prepare(&self, expected: Option<&str>) -> Prepared {
        let quiet = match &self.pipeline {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let (invoked, own) = (self.invoked.clone(), self.own.clone());
        let opened = tokio::task::spawn_blocking(move || open_other_image(&invoked, &own)).await;
        let (file, sha256) = match opened {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) => return Prepared::SameImage,
            Ok(Err(e)) => return Prepared::Refused(e),
            Err(e) => return Prepared::Refused(format!("checking the binary on disk: {e}")),
        };
        if let Some(expected) = expected.filter(|e| *e != sha256) {
            // Something replaced the release after it proved itself: not what was vouched for.
            return Prepared::Refused(format!(
                "the binary on disk (sha256 {sha256}) is not the release that proved itself                  (sha256 {expected})"
            ));
        }
        // The file just hashed, by its descriptor: a rename over the path since cannot swap it.
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let tested = crate::install::test_run(
            &path,
            &self.args,
            self.test_run_timeout,
            Some(handover::WRITES),
        )
        .await;
        if let Err(e) = tested {
            return Prepared::Refused(format!("its test run failed: {e}"));
        }
        Prepared::Ready(Image {
            file: Some(file),
            sha256,
            quiet,
        })
    }
}

/// Opens what `invoked` names now; `None` when it is the master's own image (same file, or the
/// same bytes).
fn open_other_image(
    invoked: &std::path::Path,
    own: &std::sync::Mutex<OwnImage>,
) -> Result<Option<(File, String)>, String> {
    let shown = invoked.display();
    let file = File::open(invoked).map_err(|e| format!("opening {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("reading {shown}: {e}"))?;
    let mut own = own.lock().unwrap_or_else(|p| p.into_inner());
    if meta.dev() == own.dev && meta.ino() == own.ino {
        return Ok(None);
    }
    let mut hasher = Hasher::default();
    let theirs = hasher
        .sha256_of(&file)
        .map_err(|e| format!("hashing {shown}: {e}"))?;
    let ours = own
        .sha256(&mut hasher)
        .map_err(|e| format!("hashing the master's own executable: {e}"))?;
    if theirs == ours {
        return Ok(None);
    }
    Ok(Some((file, theirs)))
}

/// Replaces this process's image with `image`, handing `doc` over; returns only on failure,
/// with everything as it was (descriptors close-on-exec again, signals unblocked).
///
/// Every signal is blocked first: one that arrives from here on stays pending across exec and
/// reaches the new image's handlers once it has installed them (see `adopt`), instead of the
/// default action killing a process that has no handler yet.
pub(crate) fn exec(image: &File, argv: &[OsString], doc: &Handover) -> io::Error {
    let memfd = match handover::to_memfd(doc) {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    let Some(argv) = c_strings(argv.iter().map(|a| a.as_bytes().to_vec())) else {
        return io::Error::other("an argument contains a NUL byte");
    };
    let env = std::env::vars_os()
        .filter(|(k, _)| k.as_bytes() != handover::FD_ENV.as_bytes())
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .chain([format!("{}={}", handover::FD_ENV, memfd.as_raw_fd()).into_bytes()]);
    let Some(env) = c_strings(env) else {
        return io::Error::other("an environment variable contains a NUL byte");
    };
    let pointers = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    };
    let (argv_ptrs, env_ptrs) = (pointers(&argv), pointers(&env));
    let mut crossing = doc.descriptors();
    crossing.push(memfd.as_raw_fd());

    let old_mask = match block_all_signals() {
        Ok(mask) => mask,
        Err(e) => return e,
    };
    let mut err = None;
    for &fd in &crossing {
        if let Err(e) = crate::fds::clear_cloexec(fd) {
            err = Some(e);
            break;
        }
    }
    if err.is_none() {
        // SAFETY: both arrays are NUL-terminated arrays of pointers to NUL-terminated strings
        // that outlive the call; on success the call does not return.
        unsafe { libc::fexecve(image.as_raw_fd(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        err = Some(io::Error::last_os_error());
    }
    for &fd in &crossing {
        let _ = crate::fds::set_cloexec(fd);
    }
    restore_signals(&old_mask);
    err.unwrap_or_else(|| io::Error::other("exec did not happen"))
}

fn c_strings(items: impl Iterator<Item = Vec<u8>>) -> Option<Vec<CString>> {
    items.map(|b| CString::new(b).ok()).collect()
}

fn block_all_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigfillset/sigemptyset before use; the mask
    // calls only read and write those sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let r = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(old)
    }
}

fn restore_signals(mask: &libc::sigset_t) {
    // SAFETY: `mask` came from pthread_sigmask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// In the new image, once its handlers are installed: signals blocked for the exec (and pending
/// since) are delivered now.
pub(crate) fn unblock_signals() {
    // SAFETY: as in `block_all_signals`.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// The calling thread's id: a worker survives exec only if the thread that forked it is the one
/// that execs (Linux sends the parent-death signal when the forking *thread* goes).
pub(crate) fn this_thread() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preparer(invoked: PathBuf) -> Preparer {
        Preparer {
            invoked,
            args: Vec::new(),
            test_run_timeout: Duration::from_secs(10),
            pipeline: None,
            own: Arc::new(std::sync::Mutex::new(OwnImage::read().unwrap())),
        }
    }

    #[tokio::test]
    async fn the_masters_own_image_is_nothing_to_become() {
        let own = std::env::current_exe().unwrap();
        assert!(matches!(
            preparer(own).prepare(None).await,
            Prepared::SameImage
        ));
    }

    #[tokio::test]
    async fn a_binary_other_than_the_release_that_proved_itself_is_refused_unrun() {
        let dir = crate::install::tests::TempDir::new("reexec-expected");
        let other = dir.exe("app", b"#!/bin/sh\nexit 0\n");
        let sha = crate::install::file_sha256(&other).unwrap();
        match preparer(other.clone()).prepare(Some(&"0".repeat(64))).await {
            Prepared::Refused(why) => {
                assert!(why.contains("not the release that proved itself"), "{why}");
                assert!(why.contains(&sha), "{why}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The right one gets as far as its test run, which this script cannot answer.
        match preparer(other).prepare(Some(&sha)).await {
            Prepared::Refused(why) => assert!(why.contains("test run"), "{why}"),
            other => panic!("expected the test run to refuse it, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_binary_is_refused_with_its_path() {
        let dir = crate::install::tests::TempDir::new("reexec-missing");
        let gone = dir.path().join("app");
        match preparer(gone).prepare(None).await {
            Prepared::Refused(why) => assert!(why.contains("opening"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
