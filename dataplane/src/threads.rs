//! The core's threads: where the tokio runtime runs.
//!
//! Decides: one thread with a current-thread runtime (threads=1: no work-stealing
//! hand-offs on the latency path) or tokio's multi-thread runtime, and how they stop
//! (two seconds for tasks to finish), and glibc malloc's thresholds for the process
//! when the core starts (limits.rs: MALLOC_*). Must never: run Python or hold the GIL.

use std::time::Duration;

/// The core's threads: one I/O thread runs a current-thread runtime (no work-stealing
/// hand-offs between threads on the latency path); more run tokio's multi-thread one.
pub enum Threads {
    One {
        handle: tokio::runtime::Handle,
        stop: tokio::sync::oneshot::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    },
    Many(tokio::runtime::Runtime),
}

/// glibc malloc's thresholds for the whole process (limits.rs says why): the copy
/// buffers and h2/rustls chunks of a bulk transfer (256 KiB) come from the heap and
/// are reused, instead of being mapped, unmapped and faulted in again each time.
pub(crate) fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets two of glibc's tunables; any value is valid
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, crate::limits::MALLOC_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, crate::limits::MALLOC_TRIM_THRESHOLD);
    }
}

impl Threads {
    pub fn start(n: usize) -> std::io::Result<Self> {
        tune_malloc();
        if n > 1 {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .thread_name("hostmesh-dataplane")
                .enable_all()
                .build()?;
            return Ok(Threads::Many(rt));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hostmesh-dataplane".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })?;
        Ok(Threads::One {
            handle,
            stop,
            thread,
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        match self {
            Threads::One { handle, .. } => handle,
            Threads::Many(rt) => rt.handle(),
        }
    }

    pub fn stop(self) {
        match self {
            Threads::One { stop, thread, .. } => {
                let _ = stop.send(());
                let _ = thread.join();
            }
            Threads::Many(rt) => rt.shutdown_timeout(Duration::from_secs(2)),
        }
    }
}
