//! Device selection: the `device = "auto" | "cpu" | "cuda:N" | "ascend:N"` setting.
//!
//! Accelerator runtimes are loaded at run time (dlopen), never linked, so one binary runs on a
//! machine with no vendor library at all. There, probing reports the accelerator as absent,
//! with the reason, and `auto` falls back to the CPU. Nothing here panics on a missing library.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::cpu::{CpuBackend, CpuOptions};
use crate::{Backend, DeviceKind, Result};

/// Which device the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// Probe at run time: Ascend, then CUDA, then the CPU.
    #[default]
    Auto,
    /// The host CPU.
    Cpu,
    /// CUDA device `N`.
    Cuda(u32),
    /// Ascend device `N`.
    Ascend(u32),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Ascend(n) => write!(f, "ascend:{n}"),
        }
    }
}

/// A `device` value that is not one of the accepted forms.
#[derive(Debug, thiserror::Error)]
#[error("invalid device {0:?}: expected \"auto\", \"cpu\", \"cuda:N\" or \"ascend:N\"")]
pub struct ParseDeviceError(String);

impl FromStr for DeviceSpec {
    type Err = ParseDeviceError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || ParseDeviceError(s.to_owned());
        let index = |n: &str| -> std::result::Result<u32, ParseDeviceError> {
            if n.is_empty() || n.len() > 4 || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            n.parse().map_err(|_| bad())
        };
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "ascend" | "npu" => Ok(Self::Ascend(0)),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    Ok(Self::Cuda(index(n)?))
                } else if let Some(n) = s.strip_prefix("ascend:").or_else(|| s.strip_prefix("npu:")) {
                    Ok(Self::Ascend(index(n)?))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// What probing found for one kind of accelerator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The accelerator kind.
    pub kind: DeviceKind,
    /// Whether support for it was compiled into this binary.
    pub compiled: bool,
    /// Whether its runtime library loaded and reported at least one device.
    pub present: bool,
    /// Devices the runtime reports (0 when absent).
    pub devices: u32,
    /// True when the library found is govbox's simulator, not a vendor runtime.
    pub simulated: bool,
    /// Library and version when present; why it is absent otherwise.
    pub detail: String,
}

impl Probe {
    /// A probe for a kind whose support was not compiled in.
    pub fn not_compiled(kind: DeviceKind, feature: &str) -> Self {
        Self {
            kind,
            compiled: false,
            present: false,
            devices: 0,
            simulated: false,
            detail: format!("not compiled in (cargo feature `{feature}`)"),
        }
    }

    /// One line for logs and `govbox status`: `cuda: absent (libcuda.so: not found)`.
    pub fn summary(&self) -> String {
        let name = kind_name(self.kind);
        let sim = if self.simulated { " SIMULATED" } else { "" };
        if self.present {
            format!("{name}: present{sim}, {} device(s) ({})", self.devices, self.detail)
        } else {
            format!("{name}: absent ({})", self.detail)
        }
    }
}

/// The lower-case name of a device kind, as in the `device` setting.
pub fn kind_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
        DeviceKind::Ascend => "ascend",
    }
}

/// Probes every accelerator this binary knows, in `auto`'s order (Ascend, then CUDA). Never
/// panics and never fails: a missing library is an absent device.
pub fn probe_all() -> Vec<Probe> {
    vec![probe_ascend(), probe_cuda()]
}

fn probe_ascend() -> Probe {
    #[cfg(feature = "ascend")]
    {
        crate::ascend::probe()
    }
    #[cfg(not(feature = "ascend"))]
    {
        Probe::not_compiled(DeviceKind::Ascend, "ascend")
    }
}

fn probe_cuda() -> Probe {
    #[cfg(feature = "cuda")]
    {
        crate::cuda::probe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Probe::not_compiled(DeviceKind::Cuda, "cuda")
    }
}

/// The backend that `open` chose, with what probing found.
#[derive(Debug)]
pub struct Opened {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// What was asked for.
    pub requested: DeviceSpec,
    /// What was chosen (never `Auto`).
    pub chosen: DeviceSpec,
    /// Every accelerator probe, in `auto`'s order.
    pub probes: Vec<Probe>,
}

/// Opens the backend for `spec`. `cpu_threads` sizes the CPU backend (0: one per core).
///
/// `auto` picks the first present accelerator in the order Ascend, CUDA, and the CPU when
/// neither is present. An explicit `cuda:N` or `ascend:N` fails, with the probe's reason, when
/// that device cannot be opened: an operator who names a device must not silently get another.
pub fn open(spec: DeviceSpec, cpu_threads: usize) -> Result<Opened> {
    open_with(spec, cpu_threads, CpuOptions::default())
}

/// [`open`] with the CPU backend's `options`. `batch_invariant` is a CPU option only: where the
/// device chosen is an accelerator (named, or picked by `auto`) this fails
/// ([`crate::DriverError::Unsupported`]) rather than run without the invariance asked for.
pub fn open_with(spec: DeviceSpec, cpu_threads: usize, options: CpuOptions) -> Result<Opened> {
    let probes = probe_all();
    let cpu = || -> Result<Arc<dyn Backend>> { Ok(Arc::new(CpuBackend::with_options(cpu_threads, options)?)) };
    let (backend, chosen) = match spec {
        DeviceSpec::Cpu => (cpu()?, DeviceSpec::Cpu),
        DeviceSpec::Cuda(n) => (open_cuda(n)?, spec),
        DeviceSpec::Ascend(n) => (open_ascend(n)?, spec),
        DeviceSpec::Auto => {
            let mut picked = None;
            for p in probes.iter().filter(|p| p.present) {
                let tried = match p.kind {
                    DeviceKind::Ascend => open_ascend(0).map(|b| (b, DeviceSpec::Ascend(0))),
                    DeviceKind::Cuda => open_cuda(0).map(|b| (b, DeviceSpec::Cuda(0))),
                    DeviceKind::Cpu => continue,
                };
                match tried {
                    Ok(b) => {
                        picked = Some(b);
                        break;
                    }
                    Err(e) => log::warn!("device auto: {} probed present but did not open: {e}", kind_name(p.kind)),
                }
            }
            match picked {
                Some(b) => b,
                None => (cpu()?, DeviceSpec::Cpu),
            }
        }
    };
    if options.batch_invariant && chosen != DeviceSpec::Cpu {
        return Err(crate::DriverError::Unsupported {
            op: "batch_invariant = true (batch-invariant matmul for every weight format)",
            backend: kind_name(backend.info().kind),
        });
    }
    Ok(Opened { backend, requested: spec, chosen, probes })
}

fn open_cuda(ordinal: u32) -> Result<Arc<dyn Backend>> {
    #[cfg(feature = "cuda")]
    {
        Ok(Arc::new(crate::cuda::CudaBackend::open(ordinal)?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(crate::DriverError::NotCompiled("CUDA"))
    }
}

fn open_ascend(device: u32) -> Result<Arc<dyn Backend>> {
    #[cfg(feature = "ascend")]
    {
        Ok(Arc::new(crate::ascend::AscendBackend::open(device)?))
    }
    #[cfg(not(feature = "ascend"))]
    {
        let _ = device;
        Err(crate::DriverError::NotCompiled("Ascend"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form_and_rejects_the_rest() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("ascend:7".parse::<DeviceSpec>().unwrap(), DeviceSpec::Ascend(7));
        for bad in ["", "gpu", "cuda:", "cuda:-1", "cuda:x", "ascend:99999", "cuda:1 ", "CPU"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("expected \"auto\""), "{bad}: {e}");
        }
        for s in [DeviceSpec::Auto, DeviceSpec::Cpu, DeviceSpec::Cuda(3), DeviceSpec::Ascend(0)] {
            assert_eq!(s.to_string().parse::<DeviceSpec>().unwrap(), s);
        }
    }

    #[test]
    fn auto_never_fails_and_cpu_is_always_there() {
        let o = open(DeviceSpec::Auto, 1).unwrap();
        assert_ne!(o.chosen, DeviceSpec::Auto);
        assert_eq!(o.probes.len(), 2);
        for p in &o.probes {
            assert!(!p.summary().is_empty());
            if !p.present {
                assert_eq!(p.devices, 0);
            }
        }
        let cpu = open(DeviceSpec::Cpu, 1).unwrap();
        assert_eq!(cpu.backend.info().kind, DeviceKind::Cpu);
    }
}
