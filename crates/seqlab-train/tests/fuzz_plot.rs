//! Fuzz-style test of `seqlab plot`'s input (issue 13): metrics.jsonl files of generated
//! lines, with values at the edges of f64 (the subnormal 5e-324 made the log axis run
//! forever), zero, negatives, huge steps, null (NaN), strings and torn lines. Reading and
//! drawing must end (each case runs under a time limit) with a picture or a clear error.

use proptest::prelude::*;
use seqlab_train::plot::{line_chart, series_from_logs};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "5e-324",
            "0",
            "-0.0",
            "-1",
            "1e308",
            "-1.7976931348623157e308",
            "1e-310",
            "2.2250738585072014e-308",
            "null",
            "\"x\"",
            "3.5",
            "1e400",
            "1e300",
            "1e-300",
            "12",
            "true",
            "[]",
        ])
        .prop_map(str::to_string),
        any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:e}") } else { "null".into() }),
        (-3.0..6.0f64).prop_map(|f| f.to_string()),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (number(), number(), prop::sample::select(vec!["train", "valid", ""]), any::<bool>()).prop_map(
            |(step, loss, split, with_split)| {
                let split = if with_split { format!(",\"split\":\"{split}\"") } else { String::new() };
                format!("{{\"step\":{step},\"loss\":{loss}{split}}}")
            }
        ),
        1 => "[ -~]{0,12}",
        1 => Just("{\"step\":1,\"lo".to_string()),
    ]
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqlab-plot-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{:?}-{name}", std::thread::current().id()))
}

/// Reads and draws `body` as a metrics file on another thread; fails if it takes over 60 s.
fn plot_in_time(body: String, log_y: bool, svg: bool) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let metrics = scratch("metrics.jsonl");
    let out = scratch(if svg { "p.svg" } else { "p.png" });
    std::thread::spawn(move || {
        std::fs::write(&metrics, body).unwrap();
        let r = series_from_logs(&[metrics.as_path()], "loss")
            .and_then(|s| line_chart(&out, "t", "step", "loss", &s, log_y))
            .map_err(|e| format!("{e:#}"));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(r) => r,
        Err(_) => panic!("plotting did not finish within 60 s (a hang)"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_metrics_file_plots_or_fails_cleanly(
        lines in prop::collection::vec(line(), 0..12),
        log_y in any::<bool>(),
        svg in any::<bool>(),
    ) {
        if let Err(e) = plot_in_time(lines.join("\n"), log_y, svg) {
            prop_assert!(!e.is_empty());
        }
    }
}

/// The example and its relatives: each draws a picture.
#[test]
fn edge_values_draw() {
    for values in [
        vec!["3.6", "5e-324"],
        vec!["0", "1", "10"],
        vec!["-5", "-1", "2"],
        vec!["1e-310", "1e-309"],
        vec!["1e300", "-1e300"],
        vec!["2.5", "2.5"],
        vec!["1", "1.0000000000000002"],
        vec!["1e-30", "1e30"],
    ] {
        let body: String = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{{\"step\":{},\"split\":\"train\",\"loss\":{v}}}\n", i + 1))
            .collect();
        for log_y in [true, false] {
            plot_in_time(body.clone(), log_y, true).unwrap_or_else(|e| panic!("{values:?}: {e}"));
        }
    }
    // Nothing drawable is an error that says so.
    let e = plot_in_time("{\"step\":1,\"loss\":null}\n".into(), true, true).unwrap_err();
    assert!(e.contains("no record with both `loss` and `step`"), "{e}");
}
