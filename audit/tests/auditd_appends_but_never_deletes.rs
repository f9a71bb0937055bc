//! `govbox-auditd`, the real binary: 64 writers append through its socket, every entry is
//! durable with a distinct seq, and the export verifies; the protocol has no way to delete
//! (an unknown operation closes the connection, and a forced prune is refused); the store is
//! the writer's, so a second opener is locked out.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{request, start_auditd as start};
use govbox_audit::remote::AuditClient;
use govbox_audit::{AuditError, AuditHandle, ExportRange, verify_export};
use govbox_provisioning::SigningKey;

#[test]
fn sixty_four_writers_append_through_the_socket_and_the_export_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, socket) = start(dir.path());
    let client = Arc::new(AuditClient::connect(&socket).unwrap());
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let c = client.clone();
            std::thread::spawn(move || {
                (0..20).map(|i| c.append_blocking(request(t * 100 + i)).unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..1280).collect::<Vec<_>>());
    assert_eq!(client.tree_size(), 1280);
    let export = client.export(ExportRange::default()).unwrap();
    let r = verify_export(&export, None, Some(&client.public_key())).unwrap();
    assert!(r.ok && r.count == 1280, "{r:#?}");

    // The handle govboxd holds, in the client mode, hashes locally and appends remotely.
    let handle = AuditHandle::connect(&socket, govbox_audit::HmacKey::new(&[5u8; 32])).unwrap();
    assert_eq!(handle.append_blocking(request(9999)).unwrap(), 1280);
    assert_eq!(handle.tail(1).unwrap()[0].seq, 1280);
}

#[test]
fn nothing_on_the_socket_removes_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, socket) = start(dir.path());
    let client = AuditClient::connect(&socket).unwrap();
    for i in 0..3 {
        client.append_blocking(request(i)).unwrap();
    }
    // A forced prune (which removes unexported entries) is refused before it is sent.
    let err = client.prune(time::OffsetDateTime::now_utc(), true).unwrap_err();
    assert!(matches!(err, AuditError::Range { .. }) && err.to_string().contains("forced prune"), "{err}");
    // The retention prune keeps entries no export holds.
    let report = client.prune(time::OffsetDateTime::now_utc(), false).unwrap();
    assert_eq!(report.removed, 0, "{report:?}");

    // Operations the protocol does not have: refused, connection closed.
    for op in
        [r#"{"op":"delete","id":1,"seq":0}"#, r#"{"op":"prune","id":2,"before":"2999-01-01T00:00:00Z","force":true}"#]
    {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(s, "{op}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.contains("audit_bad_request"), "{op}: {line}");
    }
    assert_eq!(client.tail(10).unwrap().len(), 3);

    // The store is the server's: nobody else may open it while it runs.
    let keys = govbox_audit::AuditKeys::new(SigningKey::generate().unwrap(), [0; 32]);
    let err = govbox_audit::AuditLog::open(dir.path().join("audit"), keys, Default::default()).unwrap_err();
    assert_eq!(err.code(), "audit_locked", "{err}");
}

/// Connects as `uid` (through `setpriv`), sends a status request, prints what came back.
fn status_as(uid: u32, socket: &Path) -> String {
    const CLIENT: &str = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
        try:\n  s.sendall(b'{\"op\":\"status\",\"id\":1}\\n')\n  print(repr(s.recv(200)))\n\
        except OSError as e:\n  print('closed', e.errno)";
    let o = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "/usr/bin/python3", "-c", CLIENT])
        .arg(socket)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn only_the_allowed_uids_are_served() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: acting as another uid needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (_d, socket) = start(dir.path());
    // uid 0 runs the server: served. uid 65534 is not allowed: closed without an answer (the
    // send may already find it closed).
    assert!(status_as(0, &socket).contains("tree_size"));
    let refused = status_as(65534, &socket);
    assert!(refused.trim() == "b''" || refused.starts_with("closed"), "uid 65534 was answered: {refused}");
}
