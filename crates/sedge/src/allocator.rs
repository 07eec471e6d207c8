//! The node gives memory back after a burst. glibc's malloc serves a block
//! above its mmap threshold (128 KiB) from a mapping of its own, returned
//! when freed, but raises the threshold to the size of every such block
//! freed: after the first 600 KB request body, bodies come from the heap
//! and a 64-user burst leaves the node holding its peak (here +63 MiB for
//! good, against +5 MiB with the threshold fixed). A fixed threshold is
//! glibc's own tunable, read when a process starts, so `serve` starts
//! itself again with it set once. Other C libraries ignore the variable.

use std::os::unix::process::CommandExt;

/// glibc's variable fixing the threshold (and so turning its rise off).
const MMAP_THRESHOLD: &str = "MALLOC_MMAP_THRESHOLD_";
/// glibc's default threshold, kept fixed.
const THRESHOLD: &str = "131072";

/// Re-executes this process with the threshold fixed, unless it already
/// is (or the user set it); returns only when it does not re-execute.
pub fn return_large_blocks() {
    if std::env::var_os(MMAP_THRESHOLD).is_some() || !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env(MMAP_THRESHOLD, THRESHOLD).exec();
    // Only reached when the exec failed: run on as we are.
    tracing::debug!("not restarted with a fixed mmap threshold: {err}");
}
