//! GPU temperature through NVML (`libnvidia-ml.so.1`, part of the NVIDIA driver), loaded at run
//! time. Best effort: when the library, a symbol or the device is missing, there is no reading.

use std::ffi::{CString, c_char, c_int, c_uint, c_void};

type Init = unsafe extern "C" fn() -> c_int;
type HandleByBusId = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int;
type Temperature = unsafe extern "C" fn(*mut c_void, c_int, *mut c_uint) -> c_int;

/// NVML opened for one device.
pub(super) struct Nvml {
    /// Keeps the library loaded while `temperature` may be called.
    _lib: libloading::Library,
    temperature: Temperature,
    device: *mut c_void,
}

// SAFETY: NVML is thread-safe (its documentation says all calls are); the device handle is an
// opaque pointer owned by the library, valid until nvmlShutdown, which we never call.
unsafe impl Send for Nvml {}
// SAFETY: as above.
unsafe impl Sync for Nvml {}

impl Nvml {
    /// Opens NVML for the device at PCI bus id `bus_id` ("0000:3b:00.0").
    pub(super) fn open(bus_id: &str) -> Option<Self> {
        // SAFETY: loading the driver's NVML library runs its initialisers, which is how it is
        // meant to be used.
        let lib = unsafe { libloading::Library::new("libnvidia-ml.so.1") }.ok()?;
        // SAFETY: the symbol types are those of nvml.h (nvmlReturn_t is a C enum, an int).
        let (init, by_bus, temperature) = unsafe {
            (
                *lib.get::<Init>(b"nvmlInit_v2\0").ok()?,
                *lib.get::<HandleByBusId>(b"nvmlDeviceGetHandleByPciBusId_v2\0").ok()?,
                *lib.get::<Temperature>(b"nvmlDeviceGetTemperature\0").ok()?,
            )
        };
        // SAFETY: nvmlInit_v2 takes no arguments; calling it more than once is allowed.
        if unsafe { init() } != 0 {
            return None;
        }
        let id = CString::new(bus_id).ok()?;
        let mut device = std::ptr::null_mut();
        // SAFETY: `id` is a NUL-terminated string and `device` a valid out-pointer.
        if unsafe { by_bus(id.as_ptr(), &mut device) } != 0 || device.is_null() {
            return None;
        }
        Some(Self { _lib: lib, temperature, device })
    }

    /// The GPU die temperature in °C.
    pub(super) fn temperature_c(&self) -> Option<f32> {
        let mut t: c_uint = 0;
        // SAFETY: `device` came from NVML for this library, sensor 0 is NVML_TEMPERATURE_GPU,
        // `t` is a valid out-pointer.
        let r = unsafe { (self.temperature)(self.device, 0, &mut t) };
        (r == 0).then_some(t as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_reading_without_the_library_or_the_device() {
        // SAFETY: probing for the library only; the handle is dropped at once.
        let installed = unsafe { libloading::Library::new("libnvidia-ml.so.1") }.is_ok();
        if !installed {
            assert!(Nvml::open("0000:00:00.0").is_none());
        }
        // No device has this bus id, and a NUL inside is refused before any call.
        assert!(Nvml::open("ffff:ff:ff.7").is_none());
        assert!(Nvml::open("0000:00\0:00.0").is_none());
    }
}
