//! Keeps a memory-mapped shard from killing the process with SIGBUS.
//!
//! Reading a mapped page beyond the end of a file that another process truncated raises
//! SIGBUS. A handler installed once per process looks the faulting address up in a table
//! of guarded mappings; if it is one of ours, it maps a page of zeros over the faulting
//! page (so the interrupted copy completes) and flags the mapping, and the reader turns
//! the flag into an error naming the shard. Any other SIGBUS goes to the handler that was
//! installed before ours (Rust's own, or the default action).

// Signal handling and mmap are FFI; every unsafe block below says why it is sound.
#![allow(unsafe_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Mappings guarded at once (each an open shard).
const SLOTS: usize = 1024;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    faulted: AtomicBool,
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    }
}; SLOTS];

static PAGE: AtomicUsize = AtomicUsize::new(4096);

struct Previous(libc::sigaction);
// SAFETY: a `sigaction` is plain data (a function address, flags, a signal mask); it is
// written once before the handler can run and only read afterwards.
unsafe impl Send for Previous {}
unsafe impl Sync for Previous {}

static PREVIOUS: OnceLock<Option<Previous>> = OnceLock::new();

/// The page size (known once a guard exists).
pub(crate) fn page_size() -> u64 {
    PAGE.load(Ordering::Relaxed) as u64
}

/// A guarded address range; dropping it removes the guard.
#[derive(Debug)]
pub(crate) struct Guard(usize);

impl Guard {
    /// Guards `[start, start + len)`, installing the handler on first use. `None` when
    /// every slot is taken or the handler could not be installed.
    pub(crate) fn new(start: usize, len: usize) -> Option<Self> {
        if PREVIOUS.get_or_init(install).is_none() {
            return None;
        }
        for (i, slot) in TABLE.iter().enumerate() {
            if slot
                .start
                .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.faulted.store(false, Ordering::Release);
                slot.end.store(start + len, Ordering::Release);
                return Some(Self(i));
            }
        }
        None
    }

    /// True once a read of this range hit a page past the end of its file.
    pub(crate) fn faulted(&self) -> bool {
        TABLE[self.0].faulted.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let slot = &TABLE[self.0];
        slot.end.store(0, Ordering::Release);
        slot.start.store(0, Ordering::Release);
    }
}

fn install() -> Option<Previous> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        PAGE.store(page as usize, Ordering::Relaxed);
    }
    // SAFETY: both structs are zeroed plain data, filled in before use; the handler is
    // an `extern "C"` function with the SA_SIGINFO signature and only does
    // async-signal-safe things (atomic loads and stores, mmap, sigaction).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, &action, &mut old) != 0 {
            return None;
        }
        Some(Previous(old))
    }
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    for slot in &TABLE {
        let end = slot.end.load(Ordering::Acquire);
        let start = slot.start.load(Ordering::Acquire);
        if start != 0 && start <= addr && addr < end {
            let base = addr & !(page - 1);
            // SAFETY: `base` is a page inside a read-only mapping this process made and
            // still holds (its guard is registered until just before munmap); replacing
            // that page with anonymous zeros changes what the interrupted copy reads, not
            // any memory Rust code owns.
            let mapped = unsafe {
                libc::mmap(
                    base as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if mapped != libc::MAP_FAILED {
                slot.faulted.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: put the previous disposition back; the faulting access repeats and is
    // handled (or kills the process) as it would have been without us.
    if let Some(Some(previous)) = PREVIOUS.get() {
        // SAFETY: `previous.0` is the action the kernel gave us at installation.
        unsafe { libc::sigaction(libc::SIGBUS, &previous.0, std::ptr::null_mut()) };
    }
}
