//! The admin socket is mode 0666: any local user can send it lines, which govboxd parses as
//! `AdminRequest` before it checks the caller's role. Parsing any line (up to the socket's line
//! cap) never panics; a line that parses names its command and the role it needs, and writes back
//! to a line that parses to the same request. Answer lines (`Reply`) from a daemon parse or fail
//! cleanly too.
#![no_main]

use govbox_admin::protocol::{AdminRequest, Reply};
use govbox_admin::socket::MAX_REQUEST_LINE;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_REQUEST_LINE {
        return;
    }
    let _ = serde_json::from_slice::<Reply<serde_json::Value>>(data);
    let Ok(req) = serde_json::from_slice::<AdminRequest>(data) else { return };
    assert!(!req.name().is_empty());
    let _ = req.needs();
    let line = serde_json::to_vec(&req).expect("a parsed request serialises");
    let again: AdminRequest = serde_json::from_slice(&line).expect("a written request parses");
    assert_eq!(again.name(), req.name());
    assert_eq!(serde_json::to_vec(&again).expect("serialises"), line, "the request changed on a round trip");
});
