//! One harness run at a time on a machine: two runs would share the CPUs and measure each other
//! (it happened: two scenarios of an earlier BENCHMARKS.md ran at once on the 2-core machine).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// The lock file every harness run holds (`flock`, exclusive) for as long as it runs.
pub fn path() -> PathBuf {
    std::env::temp_dir().join("upshift-bench.lock")
}

/// Held for as long as it lives; the kernel releases the lock when the process ends, however
/// it ends.
pub struct RunLock {
    _file: File,
}

/// Takes the lock or says who holds it.
pub fn acquire() -> Result<RunLock, String> {
    let path = path();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this File owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(format!(
            "another upshift-bench run ({}) holds {}: two runs at once would measure each \
             other; wait for it to finish",
            match holder.trim() {
                "" => "pid unknown".to_string(),
                h => format!("pid {h}"),
            },
            path.display()
        ));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(RunLock { _file: file })
}
