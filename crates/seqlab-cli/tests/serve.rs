//! `seqlab serve` as a process: flags and their defaults in --help, a clear error for nothing
//! to serve, and SIGTERM while requests are in flight → every one answered, exit status 0.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn help_lists_every_flag_with_its_default() {
    let o = seqlab().args(["serve", "--help"]).output().unwrap();
    assert!(o.status.success());
    // Help is wrapped to the terminal: compare with whitespace runs collapsed.
    let h = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for s in [
        "--checkpoint <NAME=RUN_DIR>",
        "--vectors <NAME=FILE>",
        "[default: 127.0.0.1]",
        "[default: 8080]",
        "[default: 32]",
        "[default: 5]",
        "[default: 256]",
        "[default: 65536]",
        "--threads",
        "default: all cores",
    ] {
        assert!(h.contains(s), "{s:?} missing from\n{h}");
    }
    let o = seqlab().args(["serve", "--port", "0"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to serve"));
    let o = seqlab()
        .args(["serve", "--checkpoint", "no-equals-sign"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected NAME=PATH"));
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_accepted_requests_and_exits_zero() {
    let dir = std::env::temp_dir().join(format!("seqlab-cli-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vectors = dir.join("v.txt");
    // Eight columns with four decimals, so the loader sees text (it probes 4 × dim bytes).
    std::fs::write(
        &vectors,
        "3 8\nking 1.0000 0.5000 0.0000 0.0000 0.0000 0.0000 0.0000 0.0000\n\
         queen 0.9000 0.6000 0.0000 0.0000 0.0000 0.0000 0.0000 0.0000\n\
         apple 0.0000 0.0000 1.0000 0.0000 0.0000 0.0000 0.0000 0.0000\n",
    )
    .unwrap();
    let (mut child, mut err, port) = start_serve(&[
        "--max-wait-ms".into(),
        "200".into(),
        "--vectors".into(),
        format!("v={}", vectors.display()),
    ]);
    let (status, body) = post(port, "/v1/similar", r#"{"word": "king", "n": 1}"#);
    assert!(status.contains("200"), "{status} {body}");
    assert!(body.contains("\"queen\""), "{body}");
    // Requests waiting for their batch (200 ms) when SIGTERM arrives are still answered.
    let clients: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || post(port, "/v1/similar", r#"{"word": "apple", "n": 2}"#)))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for c in clients {
        let (status, body) = c.join().unwrap();
        assert!(status.contains("200"), "{status} {body}");
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "seqlab serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("every accepted request was answered"), "{rest}");
    std::fs::remove_dir_all(&dir).ok();
}
