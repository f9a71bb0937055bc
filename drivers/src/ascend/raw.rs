//! A small low-level API over the same runtime core the backend uses, for checking how the
//! runtime (or govbox's simulator) reacts to misuse: reading memory that queued work still
//! writes, launching a single-use executor twice, passing a host pointer as a device pointer.
//!
//! Every call goes through the backend's own wrappers, so a refusal comes back as
//! [`DriverError::Device`](crate::DriverError::Device) naming the call, with the runtime's
//! message from `aclGetRecentErrMsg`.

use std::ffi::c_void;
use std::sync::Arc;

use super::runtime::{DevMem, Device, Libs, View};
use super::sys;
use crate::{DriverError, Result};

/// One device and its stream, loaded as [`super::AscendBackend::open`] loads them.
#[derive(Debug)]
pub struct Runtime {
    dev: Arc<Device>,
}

/// Device memory owned by a [`Runtime`]; freed after the next stream sync once dropped.
#[derive(Debug)]
pub struct DeviceMemory {
    mem: DevMem,
}

impl DeviceMemory {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.mem.bytes
    }

    /// Whether it holds no bytes (never: allocations are at least one byte).
    pub fn is_empty(&self) -> bool {
        self.mem.bytes == 0
    }
}

/// An aclnn op after its first phase (`GetWorkspaceSize`): a single-use executor, ready to launch.
#[derive(Debug)]
pub struct PreparedOp<'a> {
    rt: &'a Runtime,
    exec: *mut sys::aclOpExecutor,
    workspace: u64,
    name: &'static str,
}

impl Runtime {
    /// Opens device `device` (libraries found as for the backend: `GOVBOX_ASCEND_SIM_LIB` first).
    pub fn open(device: u32) -> Result<Runtime> {
        let libs = Libs::load().map_err(|reason| DriverError::Unavailable { backend: "ascend", reason })?;
        Ok(Runtime { dev: Device::open(libs, device)? })
    }

    /// Opens device `device` of the runtime in `library` (one file for all the libraries).
    pub fn open_with_library(library: &std::path::Path, device: u32) -> Result<Runtime> {
        let libs =
            Libs::load_single(library).map_err(|reason| DriverError::Unavailable { backend: "ascend", reason })?;
        Ok(Runtime { dev: Device::open(libs, device)? })
    }

    /// Whether the runtime is govbox's simulator.
    pub fn simulated(&self) -> bool {
        self.dev.libs.sim.is_some()
    }

    /// Allocates `bytes` of device memory.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceMemory> {
        Ok(DeviceMemory { mem: self.dev.alloc(bytes)? })
    }

    /// Allocates device memory holding `data` (a synchronous copy).
    pub fn upload(&self, data: &[u8]) -> Result<DeviceMemory> {
        Ok(DeviceMemory { mem: self.dev.upload_bytes(data)? })
    }

    /// Queues an asynchronous host-to-device copy of `data` to the start of `dst`.
    pub fn copy_to_device_async(&self, dst: &DeviceMemory, data: Vec<u8>) -> Result<()> {
        if data.len() > dst.mem.bytes {
            return Err(DriverError::Shape {
                op: "copy_to_device_async",
                detail: format!("{} bytes into {}", data.len(), dst.mem.bytes),
            });
        }
        // SAFETY: `dst` is a live allocation of at least `data.len()` bytes.
        unsafe { self.dev.copy_h2d_async(dst.mem.ptr.0.as_ptr(), dst.mem.bytes, data.into()) }
    }

    /// Queues an asynchronous host-to-device copy to an arbitrary address.
    ///
    /// # Safety
    /// `dst` must be device memory of at least `dst_bytes` bytes that may be overwritten. Passing
    /// anything else is for checking that the runtime refuses it: govbox's simulator checks the
    /// address against its allocations and fails the call; a vendor runtime may not.
    pub unsafe fn copy_to_address_async(&self, dst: *mut c_void, dst_bytes: usize, data: Vec<u8>) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.dev.copy_h2d_async(dst, dst_bytes, data.into()) }
    }

    /// Copies the first `out.len()` bytes of `src` to the host WITHOUT synchronising the stream
    /// first. The runtime must refuse this while queued work writes `src`; the backend's own
    /// downloads always synchronise.
    pub fn read_unsynchronized(&self, src: &DeviceMemory, out: &mut [u8]) -> Result<()> {
        self.dev.read_unsynced(src.mem.ptr, src.mem.bytes, out)
    }

    /// Waits for the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// Prepares `out = x * s` over the first `n` `f32` values of `x` and `out`
    /// (`aclnnMulsGetWorkspaceSize`).
    pub fn prepare_muls(&self, x: &DeviceMemory, s: f32, out: &DeviceMemory, n: usize) -> Result<PreparedOp<'_>> {
        if n * 4 > x.mem.bytes || n * 4 > out.mem.bytes || n == 0 {
            return Err(DriverError::Shape { op: "prepare_muls", detail: format!("{n} values") });
        }
        let mut l = self.dev.launch()?;
        let xv = View::contiguous(&x.mem, sys::aclDataType_ACL_FLOAT, 4, &[n]);
        let ov = View::contiguous(&out.mem, sys::aclDataType_ACL_FLOAT, 4, &[n]);
        let (xt, ot, st) = (l.tensor(&xv)?, l.tensor(&ov)?, l.scalar_f32(s)?);
        let get = self.dev.sym(&self.dev.libs.op.aclnnMulsGetWorkspaceSize, "aclnnMulsGetWorkspaceSize")?;
        let mut size = 0u64;
        let mut exec = std::ptr::null_mut();
        // SAFETY: the descriptors were just made and live until the next sync; valid out pointers.
        let code = unsafe { get(xt, st, ot, &mut size, &mut exec) };
        self.dev.check(code, "aclnnMulsGetWorkspaceSize")?;
        Ok(PreparedOp { rt: self, exec, workspace: size, name: "aclnnMuls" })
    }
}

impl PreparedOp<'_> {
    /// Launches the op on the runtime's stream, consuming the executor.
    pub fn launch(self) -> Result<()> {
        // SAFETY: first and only launch of this executor.
        unsafe { self.launch_unchecked() }
    }

    /// Launches the op without giving up the executor.
    ///
    /// # Safety
    /// An aclnn executor is single-use. Launching it a second time is only for checking that the
    /// runtime refuses it (govbox's simulator does); a vendor runtime may misbehave.
    pub unsafe fn launch_unchecked(&self) -> Result<()> {
        let dev = &self.rt.dev;
        let mut l = dev.launch()?;
        let run = dev.sym(&dev.libs.op.aclnnMuls, "aclnnMuls")?;
        let ws = l.workspace(self.workspace)?;
        // SAFETY: `exec` came from aclnnMulsGetWorkspaceSize (reuse is the caller's contract);
        // the workspace holds at least `self.workspace` bytes.
        let code = unsafe { run(ws, self.workspace, self.exec, l.stream()) };
        dev.check(code, self.name)
    }
}
