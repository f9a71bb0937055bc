//! libdcmi.so: card list, temperature, health and HBM figures of the simulated devices. Cards
//! are numbered 0..N (GOVBOX_ASCEND_SIM_DEVICES), each with one chip, device_id 0.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dcmi_hbm_info;
use crate::error::codes::*;
use crate::error::{SimResult, bail, guard};
use crate::state::{env_devices, env_hbm_bytes, lock};

/// The fixed simulated chip and HBM temperature, degrees Celsius.
pub const SIM_TEMPERATURE_C: i32 = 45;
/// The fixed simulated HBM frequency, MHz.
pub const SIM_HBM_FREQ_MHZ: u32 = 1600;

static DCMI_READY: AtomicBool = AtomicBool::new(false);

/// (devices, hbm bytes per device): from aclInit's reading when initialised, else the environment.
fn config() -> (u32, usize) {
    let st = lock();
    if st.initialized { (st.devices, st.hbm_bytes) } else { (env_devices(), env_hbm_bytes()) }
}

fn check(card_id: c_int, device_id: c_int) -> SimResult<()> {
    if !DCMI_READY.load(Ordering::SeqCst) {
        bail!(DCMI_ERR_CODE_INNER_ERR, "dcmi_init has not been called");
    }
    let (n, _) = config();
    if card_id < 0 || card_id as u32 >= n || device_id != 0 {
        bail!(
            DCMI_ERR_CODE_INVALID_DEVICE_ID,
            "card {card_id} device {device_id} does not exist: cards 0..{n} with device 0 each (GOVBOX_ASCEND_SIM_DEVICES)"
        );
    }
    Ok(())
}

fn out<T>(p: *mut T, name: &str) -> SimResult<()> {
    if p.is_null() {
        bail!(DCMI_ERR_CODE_INVALID_PARAMETER, "{name} is NULL");
    }
    Ok(())
}

/// Initialises DCMI (always succeeds).
///
/// # Safety
/// No pointer arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dcmi_init() -> c_int {
    DCMI_READY.store(true, Ordering::SeqCst);
    0
}

/// Card count and ids (0..N); `list_len` must hold them all.
///
/// # Safety
/// `card_num` is writable; `card_list` has `list_len` writable ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dcmi_get_card_num_list(card_num: *mut c_int, card_list: *mut c_int, list_len: c_int) -> c_int {
    guard("dcmi_get_card_num_list", || {
        if !DCMI_READY.load(Ordering::SeqCst) {
            bail!(DCMI_ERR_CODE_INNER_ERR, "dcmi_init has not been called");
        }
        out(card_num, "card_num")?;
        out(card_list, "card_list")?;
        let (n, _) = config();
        if list_len < 0 || (list_len as u32) < n {
            bail!(DCMI_ERR_CODE_INVALID_PARAMETER, "list_len {list_len} cannot hold the {n} card ids");
        }
        // SAFETY: non-NULL (checked); `card_list` has list_len >= n writable ints (caller contract).
        unsafe {
            *card_num = n as c_int;
            for i in 0..n as usize {
                *card_list.add(i) = i as c_int;
            }
        }
        Ok(())
    })
}

/// Chip temperature ([`SIM_TEMPERATURE_C`]).
///
/// # Safety
/// `temperature` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dcmi_get_device_temperature(
    card_id: c_int,
    device_id: c_int,
    temperature: *mut c_int,
) -> c_int {
    guard("dcmi_get_device_temperature", || {
        check(card_id, device_id)?;
        out(temperature, "temperature")?;
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe { *temperature = SIM_TEMPERATURE_C };
        Ok(())
    })
}

/// Health: 0 (OK).
///
/// # Safety
/// `health` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dcmi_get_device_health(card_id: c_int, device_id: c_int, health: *mut u32) -> c_int {
    guard("dcmi_get_device_health", || {
        check(card_id, device_id)?;
        out(health, "health")?;
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe { *health = 0 };
        Ok(())
    })
}

/// HBM total and in use (MB, from the tracked allocations of that device), frequency,
/// temperature and bandwidth use (0).
///
/// # Safety
/// `hbm_info` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dcmi_get_device_hbm_info(
    card_id: c_int,
    device_id: c_int,
    hbm_info: *mut dcmi_hbm_info,
) -> c_int {
    guard("dcmi_get_device_hbm_info", || {
        check(card_id, device_id)?;
        out(hbm_info, "hbm_info")?;
        let (_, total) = config();
        let used = lock().allocated(card_id);
        let info = dcmi_hbm_info {
            memory_size: (total >> 20) as u64,
            freq: SIM_HBM_FREQ_MHZ,
            memory_usage: used.div_ceil(1 << 20) as u64,
            temp: SIM_TEMPERATURE_C,
            bandwith_util_rate: 0,
        };
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe { hbm_info.write(info) };
        Ok(())
    })
}
