//! The device govboxd runs its models on: the `device` setting, what probing found, and how both
//! are reported (`govbox status`, `/readyz`, `/metrics`, the logs).

use govbox_admin::protocol::{AcceleratorProbe, BackendStatus};
use govbox_drivers::device::{self, Opened, kind_name};
use govbox_drivers::{Backend, DeviceInfo, DeviceSpec, DriverError, Probe};

/// What was asked for, what was chosen, and every accelerator probe.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    /// The `device` setting.
    pub requested: DeviceSpec,
    /// The device in use (never `auto`).
    pub chosen: DeviceSpec,
    /// Ascend and CUDA probes, in `auto`'s order.
    pub probes: Vec<Probe>,
}

impl DeviceReport {
    /// A report for a CPU backend made without probing (tests, tools).
    pub fn cpu_only() -> Self {
        Self { requested: DeviceSpec::Cpu, chosen: DeviceSpec::Cpu, probes: Vec::new() }
    }
}

pub use govbox_drivers::cpu::CpuOptions;

/// Opens the configured device with the CPU backend's `cpu` options, logging every probe and
/// the choice.
pub fn open(
    requested: DeviceSpec,
    threads: usize,
    cpu: CpuOptions,
) -> Result<(std::sync::Arc<dyn Backend>, DeviceReport), DriverError> {
    let Opened { backend, requested, chosen, probes } = device::open_with(requested, threads, cpu)?;
    for p in &probes {
        log::info!("device probe: {}", p.summary());
    }
    let info = backend.info();
    log::info!("{}", describe(&info, requested, chosen));
    for note in &info.notes {
        log::info!("device note: {note}");
    }
    if info.simulated {
        log::warn!("the device is a SIMULATOR ({}): for tests only, not real hardware", info.name);
    }
    Ok((backend, DeviceReport { requested, chosen, probes }))
}

fn describe(info: &DeviceInfo, requested: DeviceSpec, chosen: DeviceSpec) -> String {
    let mem = match (info.memory_used, info.memory_total) {
        (Some(u), Some(t)) => format!(", memory {} of {} MiB used", u >> 20, t >> 20),
        (None, Some(t)) => format!(", {} MiB memory", t >> 20),
        _ => String::new(),
    };
    format!(
        "device: {chosen} (device = \"{requested}\"): {} '{}'{}, {} threads{mem}",
        kind_name(info.kind),
        info.name,
        if info.simulated { " [SIMULATED]" } else { "" },
        info.threads
    )
}

/// The backend in use, for the admin `status`.
pub fn backend_status(info: &DeviceInfo, report: &DeviceReport) -> BackendStatus {
    BackendStatus {
        kind: kind_name(info.kind).to_string(),
        device: report.chosen.to_string(),
        requested: report.requested.to_string(),
        name: info.name.clone(),
        threads: info.threads,
        simulated: info.simulated,
        memory_used: info.memory_used,
        memory_total: info.memory_total,
        temperature_c: info.temperature_c,
        health: info.health.clone(),
        notes: info.notes.clone(),
    }
}

/// Every accelerator probe, for the admin `status`.
pub fn probes(report: &DeviceReport) -> Vec<AcceleratorProbe> {
    report
        .probes
        .iter()
        .map(|p| AcceleratorProbe {
            kind: kind_name(p.kind).to_string(),
            compiled: p.compiled,
            present: p.present,
            devices: p.devices,
            simulated: p.simulated,
            detail: p.detail.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_reports_its_facts_and_every_probe() {
        let (backend, report) = open(DeviceSpec::Cpu, 1, CpuOptions::default()).unwrap();
        let j = backend_status(&backend.info(), &report);
        assert_eq!(j.kind, "cpu");
        assert_eq!(j.device, "cpu");
        assert!(!j.simulated);
        assert_eq!(probes(&report).len(), 2, "Ascend and CUDA are always listed");
        assert!(backend.info().notes.is_empty(), "the fast kernels by default");
        let (_, auto) = open(DeviceSpec::Auto, 1, CpuOptions::default()).unwrap();
        assert_eq!(auto.requested, DeviceSpec::Auto);
        assert_ne!(auto.chosen, DeviceSpec::Auto);
    }

    /// `[serving] batch_invariant = true` reaches the CPU backend, which says so in its notes
    /// (`govbox status`, the startup log).
    #[test]
    fn batch_invariant_reaches_the_cpu_backend() {
        match open(DeviceSpec::Cpu, 1, CpuOptions { batch_invariant: true }) {
            Ok((backend, _)) => {
                let notes = backend.info().notes;
                assert!(notes.iter().any(|n| n.contains("batch-invariant")), "{notes:?}");
            }
            // A CPU without AVX-512 refuses the option rather than run without it.
            Err(e) => assert!(e.to_string().contains("AVX-512"), "{e}"),
        }
    }
}
