//! A shard mapped into memory, read by copying rows out of the mapping.
//!
//! Mapping lets batch assembly copy rows straight from the page cache into the batch —
//! one pass over memory, no system call per sample — where `pread` into a window buffer
//! and a gather out of it cost three. Pages are dropped from the process (`MADV_DONTNEED`)
//! once their window is consumed, so resident memory stays bounded by the windows in
//! flight, and every mapping is guarded against SIGBUS (see [`crate::guard`]).

// mmap is FFI; every unsafe block below says why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::guard::Guard;
use crate::shard::ShardLayout;

/// A read-only, shared mapping of a whole shard file.
#[derive(Debug)]
pub(crate) struct ShardMap {
    base: usize,
    len: usize,
    file: File,
    layout: ShardLayout,
    widths: Vec<u64>,
    guard: Guard,
    path: PathBuf,
}

impl ShardMap {
    /// Maps `file`, already checked against the manifest as `layout`.
    pub(crate) fn new(
        path: &Path,
        file: File,
        layout: ShardLayout,
        widths: Vec<u64>,
    ) -> Result<Self> {
        let len = layout.file_bytes as usize;
        // SAFETY: a fresh read-only shared mapping of an open file of `len` bytes (> 0: a
        // shard has at least a header); the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(StoreError::io(path, std::io::Error::last_os_error()));
        }
        let base = ptr as usize;
        let Some(guard) = Guard::new(base, len) else {
            // SAFETY: unmapping the mapping made just above, never handed out.
            unsafe { libc::munmap(ptr, len) };
            return Err(StoreError::Failed(format!(
                "{}: cannot guard the mapping against truncation (too many shards open, or no SIGBUS handler)",
                path.display()
            )));
        };
        Ok(Self {
            base,
            len,
            file,
            layout,
            widths,
            guard,
            path: path.to_owned(),
        })
    }

    /// The shard's file name in messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Copies row `row` of column `column` into `dst` (exactly one row's bytes).
    pub(crate) fn copy_row(&self, column: usize, row: u64, dst: &mut [u8]) -> Result<()> {
        let width = self.widths[column];
        let offset = self.layout.column_offsets[column] + row * width;
        if row >= self.layout.samples
            || dst.len() as u64 != width
            || offset + width > self.len as u64
        {
            return Err(StoreError::shard(
                &self.path,
                format!("row {row} of column {column} is outside the shard"),
            ));
        }
        // SAFETY: `[offset, offset + width)` lies inside the live mapping (checked above);
        // the mapping is read-only and never exposed as a Rust reference, so a change to
        // the file underneath is a change of bytes copied, not of memory Rust reasons
        // about; a page past a truncated end is replaced by zeros by the SIGBUS guard and
        // reported through `truncated`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base + offset as usize) as *const u8,
                dst.as_mut_ptr(),
                width as usize,
            );
        }
        Ok(())
    }

    /// Hints the CPU to start loading a row that will be copied soon: the hardware
    /// prefetcher does not cross pages, and rows of a shuffled window are scattered, so
    /// touching each page's first lines early overlaps their memory latency with the copy
    /// of the row before.
    pub(crate) fn prefetch_row(&self, column: usize, row: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let width = self.widths[column];
            let start = self.layout.column_offsets[column] + row * width;
            let end = (start + width).min(self.len as u64);
            let mut at = start;
            while at < end {
                // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is only a hint:
                // it never faults and reads nothing Rust can observe.
                unsafe { _mm_prefetch::<_MM_HINT_T0>((self.base + at as usize) as *const i8) };
                at = (at / 4096 + 1) * 4096;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (column, row);
    }

    /// True when the file shrank since it was mapped: a read hit pages it no longer has
    /// (the guard saw a SIGBUS), or bytes past its new end within its last page, which
    /// read as zeros without one. Checked after copies, so damage before or during them
    /// is seen.
    pub(crate) fn truncated(&self) -> bool {
        self.guard.faulted()
            || self
                .file
                .metadata()
                .map_or(true, |m| m.len() < self.len as u64)
    }

    /// The byte range of `rows` rows of `column` from `row`.
    fn range(&self, column: usize, row: u64, rows: u64) -> (u64, u64) {
        let width = self.widths[column];
        let start = self.layout.column_offsets[column] + row * width;
        (start, (start + rows * width).min(self.len as u64))
    }

    /// Starts reading rows into the page cache without waiting (advisory).
    pub(crate) fn will_need(&self, column: usize, row: u64, rows: u64) {
        let (start, end) = self.range(column, row, rows);
        let _ = rustix::fs::fadvise(
            &self.file,
            start,
            std::num::NonZeroU64::new(end - start),
            rustix::fs::Advice::WillNeed,
        );
    }

    /// Drops rows' pages from this process (not from the page cache): resident memory
    /// stays bounded however much of the file has been read.
    pub(crate) fn dont_need(&self, column: usize, row: u64, rows: u64) {
        let page = crate::guard::page_size();
        let (start, end) = self.range(column, row, rows);
        let start = start / page * page;
        let end = (end.div_ceil(page) * page).min((self.len as u64).div_ceil(page) * page);
        if end > start {
            // SAFETY: the range is page-aligned and inside the mapping; MADV_DONTNEED on a
            // shared read-only file mapping only unmaps pages, which the next access maps
            // again from the page cache with the same contents.
            unsafe {
                libc::madvise(
                    (self.base + start as usize) as *mut libc::c_void,
                    (end - start) as usize,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

impl Drop for ShardMap {
    fn drop(&mut self) {
        // SAFETY: unmapping this struct's own mapping once; no copy can be in progress
        // because copies borrow `self`.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}
