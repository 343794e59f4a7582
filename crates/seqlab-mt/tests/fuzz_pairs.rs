//! Fuzz-style test of the parallel-text reader (issue 13): generated `source<TAB>target`
//! files with stray tabs, CR, blank lines, empty sides and invalid UTF-8. None panics; each
//! gives pairs (non-empty, trimmed, with true line numbers) or an error naming the file.

use proptest::prelude::*;
use seqlab_mt::parallel::read_pairs;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parallel_text_reader(pieces in prop::collection::vec(prop::sample::select(vec![
        &b"red"[..], b"cat", b" ", b"\t", b"\n", b"\r\n", b"\r", b"\xff", b"\xc3", "é東".as_bytes(), b"\x00", b"  \t  ",
    ]), 0..40)) {
        let bytes = pieces.concat();
        let dir = std::env::temp_dir().join(format!("seqlab-mt-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{:?}.tsv", std::thread::current().id()));
        std::fs::write(&p, &bytes).unwrap();
        match read_pairs(&p) {
            Ok(pairs) => {
                let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
                for pair in pairs {
                    prop_assert!(!pair.src.is_empty() && !pair.tgt.is_empty());
                    prop_assert_eq!(pair.src.trim(), pair.src.as_str());
                    let line = String::from_utf8_lossy(lines[pair.line - 1]).into_owned();
                    prop_assert!(line.contains(&pair.src) && line.contains(&pair.tgt), "line {} is {:?}", pair.line, line);
                }
            }
            Err(e) => prop_assert!(e.to_string().contains(".tsv"), "error does not name the file: {}", e),
        }
    }
}
