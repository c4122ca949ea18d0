//! Where training runs: the CPU backend (`flex`, always built) or a GPU backend compiled in
//! with a cargo feature (`vulkan`, `wgpu`, or `cuda`).

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// The user's choice of device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The first usable GPU of a compiled-in GPU backend, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU; an error when none is usable.
    Gpu,
}

/// A device picked for a run, with a name for reports.
#[derive(Debug, Clone)]
pub struct Picked {
    /// The burn device (without autodiff).
    pub device: Device,
    /// `cpu (flex)`, `cuda:0`, `vulkan:0`, …
    pub name: String,
    /// Whether it is a GPU.
    pub gpu: bool,
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

/// The usable GPUs of the compiled-in backends. Software adapters (a CPU posing as a
/// GPU) are left out.
#[allow(unused_mut, clippy::vec_init_then_push)]
fn gpus() -> Vec<(Device, String)> {
    let mut out = Vec::new();
    #[cfg(feature = "cuda")]
    for (i, d) in Device::enumerate(burn::tensor::DeviceType::Cuda)
        .into_vec()
        .into_iter()
        .enumerate()
    {
        out.push((d, format!("cuda:{i}")));
    }
    #[cfg(any(feature = "vulkan", feature = "wgpu"))]
    for gpu in Device::enumerate_physical() {
        for d in gpu.devices.into_vec() {
            out.push((d, gpu.name.clone()));
        }
    }
    out
}

/// Picks the device for `choice`.
pub fn pick(choice: DeviceChoice) -> Result<Picked, String> {
    let cpu = || Picked {
        device: Device::flex(),
        name: format!("cpu (flex, {} threads)", rayon::current_num_threads()),
        gpu: false,
    };
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Auto => Ok(gpus()
            .into_iter()
            .next()
            .map_or_else(cpu, |(device, name)| Picked {
                device,
                name,
                gpu: true,
            })),
        DeviceChoice::Gpu => {
            if gpu_backends().is_empty() {
                return Err("`compute.device = \"gpu\"` but this build has no GPU backend: rebuild with `--features vulkan` (or `wgpu`, or `cuda` where the build machine can download LLVM), or set `compute.device = \"cpu\"`".into());
            }
            gpus()
                .into_iter()
                .next()
                .map(|(device, name)| Picked {
                    device,
                    name,
                    gpu: true,
                })
                .ok_or_else(|| {
                    format!(
                        "`compute.device = \"gpu\"` but no GPU answered through {} (is the driver and its Vulkan/CUDA loader installed?); set `compute.device = \"cpu\"` or \"auto\"",
                        gpu_backends().join(", ")
                    )
                })
        }
    }
}
