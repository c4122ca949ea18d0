//! The memory meter against known allocations. RSS is process-wide, so everything runs
//! in one test function: tests on parallel threads would move each other's numbers.

use std::hint::black_box;
use std::time::Duration;

use frugal_hw::{MemoryMeter, PeakMethod};

const MIB: u64 = 1 << 20;

fn touch(bytes: usize) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(bytes);
    // Write every page: an untouched allocation is only address space.
    v.resize(bytes, 1);
    black_box(v)
}

#[test]
fn meter_measures_known_allocations() {
    allocating_200_mib_raises_the_peak_by_200_to_230_mib();
    windows_nest_without_losing_the_outer_peak();
}

fn allocating_200_mib_raises_the_peak_by_200_to_230_mib() {
    for meter in [
        MemoryMeter::new(),
        MemoryMeter::new().sampling(Duration::from_millis(1)),
    ] {
        let window = meter.window().unwrap();
        let data = touch(200 * MIB as usize);
        let during = window.peak_bytes();
        drop(data);
        let report = window.finish();
        let rise = report.rise_bytes();
        assert!(
            (200 * MIB..=230 * MIB).contains(&rise),
            "{:?}: peak rose {} MiB",
            report.method,
            rise / MIB
        );
        assert!(during >= report.start_rss_bytes + 200 * MIB);
        // The buffer is gone again, and the window still remembers the peak.
        assert!(report.end_rss_bytes < report.peak_rss_bytes - 150 * MIB);
    }
}

fn windows_nest_without_losing_the_outer_peak() {
    let meter = MemoryMeter::new();
    let outer = meter.window().unwrap();
    let big = touch(120 * MIB as usize);
    drop(big);
    let inner = meter.window().unwrap();
    let small = touch(30 * MIB as usize);
    drop(small);
    let inner = inner.finish();
    let outer = outer.finish();
    if outer.method == PeakMethod::KernelHighWaterMark {
        assert!(
            inner.rise_bytes() < 60 * MIB,
            "inner rose {} MiB",
            inner.rise_bytes() / MIB
        );
    }
    assert!(
        outer.rise_bytes() >= 110 * MIB,
        "outer rose {} MiB",
        outer.rise_bytes() / MIB
    );
    let sample = meter.sample().unwrap();
    assert!(sample.peak_rss_bytes >= outer.peak_rss_bytes);
}
