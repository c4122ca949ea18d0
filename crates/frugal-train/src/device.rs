//! Where training runs: the CPU backend (`flex`, always built) or a GPU backend compiled in
//! with a cargo feature (`cuda`, `vulkan` or `wgpu`) — which device to take, whether it can
//! compute in the precision asked for, what its allocator holds, and turning a backend's
//! panic into an error that names the device.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::precision::Precision;

/// The user's choice of device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The first GPU of a compiled-in GPU backend, else the CPU. Software renderers
    /// posing as GPUs are passed over: the CPU backend is faster than they are.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU; a software Vulkan driver (Mesa's lavapipe) when it is the only one, with
    /// [`Picked::software`] set; an error when there is none.
    Gpu,
}

/// A device picked for a run, with a name for reports.
#[derive(Debug, Clone)]
pub struct Picked {
    /// The burn device (without autodiff).
    pub device: Device,
    /// `cpu (flex, 2 threads)`, `NVIDIA H200 (cuda:0)`, `llvmpipe … (vulkan)`, …
    pub name: String,
    /// `flex`, `cuda`, `vulkan` or `wgpu`.
    pub backend: &'static str,
    /// Whether it is a GPU (a software one included).
    pub gpu: bool,
    /// Whether it is a driver running on the CPU that poses as a GPU (lavapipe): fine for
    /// testing GPU code paths, slower than the CPU backend for real work.
    pub software: bool,
}

/// The GPU backends compiled into this build, in order of preference.
pub fn gpu_backends() -> &'static [&'static str] {
    &[
        #[cfg(feature = "cuda")]
        "cuda",
        #[cfg(feature = "vulkan")]
        "vulkan",
        #[cfg(feature = "wgpu")]
        "wgpu",
    ]
}

/// Every GPU device of the compiled-in backends, in order of preference (CUDA, then
/// Vulkan, then wgpu's own choice of API; within each, the driver's order).
#[allow(unused_mut)]
fn gpus() -> Vec<Picked> {
    let mut out = Vec::new();
    #[cfg(any(feature = "cuda", feature = "vulkan", feature = "wgpu"))]
    {
        use burn::tensor::DeviceType;
        let mut add = |kind: DeviceType, backend: &'static str| {
            for (i, device) in Device::enumerate(kind).into_vec().into_iter().enumerate() {
                let identity = device.identity();
                // A card on a bus reports where it sits; a CPU adapter reports nothing.
                let software = identity.as_ref().is_none_or(|id| id.physical.is_none());
                let name = identity.map_or_else(|| format!("{backend}:{i}"), |id| id.name);
                out.push(Picked {
                    device,
                    name: format!("{name} ({backend}:{i})"),
                    backend,
                    gpu: true,
                    software,
                });
            }
        };
        #[cfg(feature = "cuda")]
        add(DeviceType::Cuda, "cuda");
        #[cfg(feature = "vulkan")]
        add(DeviceType::Vulkan, "vulkan");
        #[cfg(feature = "wgpu")]
        add(DeviceType::Wgpu, "wgpu");
    }
    out
}

/// What `frugal probe` lists of one compute device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// Its name, as reports show it.
    pub name: String,
    /// `flex`, `cuda`, `vulkan` or `wgpu`.
    pub backend: &'static str,
    /// Whether a software driver poses as this GPU.
    pub software: bool,
    /// Whether it computes in bf16 and in f16.
    pub bf16: bool,
    /// See `bf16`.
    pub f16: bool,
}

/// Every device this build can train on: the GPUs of the compiled-in backends (opening
/// each), then the CPU.
pub fn list() -> Vec<DeviceInfo> {
    gpus()
        .into_iter()
        .chain(std::iter::once(cpu()))
        .map(|p| DeviceInfo {
            bf16: p.device.supports_dtype(Precision::Bf16.dtype()),
            f16: p.device.supports_dtype(Precision::F16.dtype()),
            name: p.name,
            backend: p.backend,
            software: p.software,
        })
        .collect()
}

/// The CPU backend.
pub fn cpu() -> Picked {
    Picked {
        device: Device::flex(),
        name: format!("cpu (flex, {} threads)", rayon::current_num_threads()),
        backend: "flex",
        gpu: false,
        software: false,
    }
}

/// Picks the device for `choice`.
pub fn pick(choice: DeviceChoice) -> Result<Picked> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Auto => Ok(gpus().into_iter().find(|g| !g.software).unwrap_or_else(cpu)),
        DeviceChoice::Gpu => {
            if gpu_backends().is_empty() {
                return Err(TrainError::Unsupported("`compute.device = \"gpu\"` but this build has no GPU backend: rebuild with scripts/build-cuda.sh (NVIDIA) or `--features vulkan` (other cards; docs/gpu.md), or set `compute.device = \"cpu\"`".into()));
            }
            let all = gpus();
            let real = all.iter().position(|g| !g.software);
            all.into_iter()
                .nth(real.unwrap_or(0))
                .ok_or_else(|| {
                    TrainError::Unsupported(format!(
                        "`compute.device = \"gpu\"` but no GPU answered through {} (are the driver and its {} library installed?); set `compute.device = \"cpu\"` or \"auto\"",
                        gpu_backends().join(", "),
                        if cfg!(feature = "cuda") { "CUDA" } else { "Vulkan loader" }
                    ))
                })
        }
    }
}

impl Picked {
    /// Refuses a precision this device has no arithmetic for (bf16 on Vulkan, f16 on a
    /// card without 16-bit shader floats): computing in it would give garbage or lose the
    /// device, so the run stops before its first step and says what would work.
    pub fn check_precision(&self, precision: Precision) -> Result<()> {
        if self.device.supports_dtype(precision.dtype()) {
            return Ok(());
        }
        let others: Vec<&str> = [Precision::Bf16, Precision::F16, Precision::F32]
            .into_iter()
            .filter(|p| *p != precision && self.device.supports_dtype(p.dtype()))
            .map(Precision::name)
            .collect();
        let hint = if precision == Precision::Bf16 && self.backend != "cuda" {
            " (bf16 has no arithmetic on Vulkan; NVIDIA cards compute it with the `cuda` build)"
        } else {
            ""
        };
        Err(TrainError::Unsupported(format!(
            "`compute.precision = \"{}\"` cannot run on {}{hint}; set compute.precision to {}",
            precision.name(),
            self.name,
            others.join(" or ")
        )))
    }
}

/// The device's allocator reservation now, in bytes: what the card holds for this process,
/// like PyTorch's `memory_reserved`. `None` on the CPU backend, whose tensors are heap
/// memory.
pub fn reserved_bytes(device: &Device) -> Option<u64> {
    device.memory_pool_usage().map(|u| u.bytes_reserved)
}

/// The highest allocator reservation a device was seen holding.
///
/// cubecl's allocator keeps freed pages for reuse (it returns them to the driver only when
/// they go unused for a while, or on request), so what it reserves at the end of a
/// micro-batch covers the most the micro-batch held at once: sampled there, the maximum
/// is the run's device peak. A sample is a round trip to the device's thread, not a wait
/// for the device to finish its work.
#[derive(Debug, Clone)]
pub struct DevicePeak {
    device: Device,
    peak: Option<u64>,
}

impl DevicePeak {
    /// Starts watching `device`.
    pub fn new(device: &Device) -> Self {
        let mut p = Self {
            device: device.clone(),
            peak: None,
        };
        p.sample();
        p
    }

    /// Takes a sample.
    pub fn sample(&mut self) {
        if let Some(now) = reserved_bytes(&self.device) {
            self.peak = Some(self.peak.unwrap_or(0).max(now));
        }
    }

    /// The highest reservation seen; `None` on the CPU backend.
    pub fn peak(&self) -> Option<u64> {
        self.peak
    }
}

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside [`catch_backend_panics`]: a program's panic hook can stay
/// quiet there, since the panic comes back as an error.
pub fn guarded() -> bool {
    GUARDED.with(Cell::get)
}

/// Runs `f`, turning a panic (a backend's kernel that does not compile, a lost device, a
/// read that fails) into [`TrainError::Device`] naming `what` ran on which device.
pub fn catch_backend_panics<R>(
    what: &str,
    on: &Picked,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    catch_panics(
        || format!("{what} failed on {} (the {} backend)", on.name, on.backend),
        f,
    )
}

/// Runs `f`, turning a panic into [`TrainError::Device`] led by `context()`.
pub fn catch_panics<R>(
    context: impl FnOnce() -> String,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            GUARDED.with(|g| g.set(self.0));
        }
    }
    let _reset = Reset(GUARDED.with(|g| g.replace(true)));
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("a panic without a message");
            Err(TrainError::Device(format!("{}: {message}", context())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_computes_every_precision_and_reports_no_device_memory() {
        let cpu = cpu();
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            cpu.check_precision(p).unwrap();
        }
        assert_eq!(reserved_bytes(&cpu.device), None);
        assert_eq!(DevicePeak::new(&cpu.device).peak(), None);
    }

    #[test]
    fn a_panic_becomes_an_error_naming_the_device() {
        let cpu = cpu();
        let err = catch_backend_panics("a step", &cpu, || -> Result<()> {
            assert!(guarded());
            panic!("kernel did not compile")
        })
        .unwrap_err();
        assert!(!guarded());
        let text = err.to_string();
        assert!(text.contains("a step failed on cpu (flex"), "{text}");
        assert!(text.contains("kernel did not compile"), "{text}");
        assert!(matches!(err, TrainError::Device(_)));
    }
}
