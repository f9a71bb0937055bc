//! Error codes, the per-thread last error message and the panic guard around every export.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The status codes the simulator returns (see the crate docs for when).
pub mod codes {
    /// ACL_SUCCESS.
    pub const ACL_SUCCESS: i32 = 0;
    /// ACL_ERROR_INVALID_PARAM.
    pub const ACL_ERROR_INVALID_PARAM: i32 = 100000;
    /// ACL_ERROR_UNINITIALIZE.
    pub const ACL_ERROR_UNINITIALIZE: i32 = 100001;
    /// ACL_ERROR_REPEAT_INITIALIZE.
    pub const ACL_ERROR_REPEAT_INITIALIZE: i32 = 100002;
    /// ACL_ERROR_RT_PARAM_INVALID.
    pub const ACL_ERROR_RT_PARAM_INVALID: i32 = 107000;
    /// ACL_ERROR_RT_INVALID_DEVICEID.
    pub const ACL_ERROR_RT_INVALID_DEVICEID: i32 = 107001;
    /// ACL_ERROR_RT_CONTEXT_NULL (no device bound to the calling thread).
    pub const ACL_ERROR_RT_CONTEXT_NULL: i32 = 107002;
    /// ACL_ERROR_RT_MEMORY_ALLOCATION.
    pub const ACL_ERROR_RT_MEMORY_ALLOCATION: i32 = 207001;
    /// ACL_ERROR_INTERNAL_ERROR (a panic in the simulator).
    pub const ACL_ERROR_INTERNAL_ERROR: i32 = 500000;
    /// ACL_ERROR_RT_AICORE_EXCEPTION (an op failed while running at synchronisation).
    pub const ACL_ERROR_RT_AICORE_EXCEPTION: i32 = 507015;
    /// ACL_ERROR_RT_DRV_INTERNAL_ERROR: the simulator's code for a race it caught (memory read,
    /// overwritten or freed while queued work on a stream has not been synchronised).
    pub const ACL_ERROR_RT_DRV_INTERNAL_ERROR: i32 = 507899;
    /// ACLNN_ERR_PARAM_NULLPTR.
    pub const ACLNN_ERR_PARAM_NULLPTR: i32 = 161001;
    /// ACLNN_ERR_PARAM_INVALID.
    pub const ACLNN_ERR_PARAM_INVALID: i32 = 161002;
    /// ACLNN_ERR_INNER (a panic in an aclnn function).
    pub const ACLNN_ERR_INNER: i32 = 561000;
    /// DCMI_ERR_CODE_INVALID_PARAMETER.
    pub const DCMI_ERR_CODE_INVALID_PARAMETER: i32 = -8001;
    /// DCMI_ERR_CODE_INNER_ERR.
    pub const DCMI_ERR_CODE_INNER_ERR: i32 = -8005;
    /// DCMI_ERR_CODE_INVALID_DEVICE_ID.
    pub const DCMI_ERR_CODE_INVALID_DEVICE_ID: i32 = -8007;
}

/// A failed call: its status code and what went wrong (without the function name).
#[derive(Debug)]
pub(crate) struct SimError {
    pub code: i32,
    pub msg: String,
}

pub(crate) type SimResult<T> = Result<T, SimError>;

macro_rules! err {
    ($code:expr, $($arg:tt)*) => {
        $crate::error::SimError { code: $code, msg: format!($($arg)*) }
    };
}
macro_rules! bail {
    ($code:expr, $($arg:tt)*) => {
        return Err($crate::error::err!($code, $($arg)*))
    };
}
pub(crate) use {bail, err};

thread_local! {
    /// The newest error of this thread, not yet fetched.
    static LAST: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// The message last returned by `aclGetRecentErrMsg`; kept so that its pointer stays valid.
    static RETURNED: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records `func: msg` as this thread's newest error.
pub(crate) fn set_error(func: &str, code: i32, msg: &str) {
    let text = format!("{func}: {msg} (error {code})").replace('\0', " ");
    let c = CString::new(text).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = Some(c));
}

/// Moves the newest error out (clear on read) and returns a pointer valid until the next call on
/// this thread; NULL when there was no error since the last fetch.
pub(crate) fn take_error_ptr() -> *const c_char {
    let msg = LAST.with(|l| l.borrow_mut().take());
    RETURNED.with(|r| {
        let mut r = r.borrow_mut();
        *r = msg;
        r.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
    })
}

fn panic_code(func: &str) -> i32 {
    if func.starts_with("aclnn") {
        codes::ACLNN_ERR_INNER
    } else if func.starts_with("dcmi") {
        codes::DCMI_ERR_CODE_INNER_ERR
    } else {
        codes::ACL_ERROR_INTERNAL_ERROR
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs an export's body: never lets a panic unwind into C, records errors for
/// `aclGetRecentErrMsg` and returns the status code.
pub(crate) fn guard(func: &'static str, f: impl FnOnce() -> SimResult<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_error(func, e.code, &e.msg);
            e.code
        }
        Err(p) => {
            let code = panic_code(func);
            set_error(func, code, &format!("internal simulator panic: {}", panic_text(p.as_ref())));
            code
        }
    }
}

/// Like [`guard`] for exports that return a pointer: NULL on error.
pub(crate) fn guard_ptr<T>(func: &'static str, f: impl FnOnce() -> SimResult<*mut T>) -> *mut T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            set_error(func, e.code, &e.msg);
            std::ptr::null_mut()
        }
        Err(p) => {
            set_error(func, panic_code(func), &format!("internal simulator panic: {}", panic_text(p.as_ref())));
            std::ptr::null_mut()
        }
    }
}
