//! Shared by the API and browser tests: a minimal HTTP/1.1 client (so the tests see raw
//! status codes and headers), a server on an ephemeral loopback port, and tiny models
//! trained in seconds.
#![allow(dead_code)]

use seqlab_serve::server::App;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {}", self.status, self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Undoes `Transfer-Encoding: chunked`.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Whether `buf` holds a whole response with a `Content-Length`.
fn complete(buf: &[u8]) -> bool {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| buf.len() >= split + 4 + n)
}

/// One request on a fresh connection (`Connection: close`), bounded by `timeout`.
pub async fn request_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        // The server may answer (413) before reading a large body and close: a failed
        // write is then not the test's failure, the answer is.
        let _ = s.write_all(body).await;
        // An early answer (413) may be followed by a reset for the unread body: keep what
        // arrived before it.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) if !buf.is_empty() => break,
                Err(e) => return Err(e),
            }
            // Some servers (Chromium's DevTools) keep the connection open: stop at the end
            // of a body of known length.
            if complete(&buf) {
                break;
            }
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, work).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{method} {path}: no answer in {timeout:?}"),
        )
    })??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header in {:?}", String::from_utf8_lossy(&buf))))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Answer { status, headers, body })
}

/// `request_raw` that panics on a transport error, 30 s bound.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Answer {
    request_raw(addr, method, path, body, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub async fn post(addr: SocketAddr, path: &str, body: serde_json::Value) -> Answer {
    request(addr, "POST", path, body.to_string().as_bytes()).await
}

/// A running server: its address, the switch that stops it, and its task.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Starts `app` on 127.0.0.1 with an ephemeral port.
    pub async fn start(app: App) -> Self {
        let app = Arc::new(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(seqlab_serve::server::serve(listener, app.clone(), async {
            let _ = rx.await;
        }));
        Self {
            addr,
            app,
            stop: Some(tx),
            task,
        }
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stops and waits (bounded) for the server to finish.
    pub async fn stop(mut self) {
        self.signal_stop();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the server did not stop within 60 s")
            .unwrap()
            .unwrap();
    }
}

/// A fresh scratch folder.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seqlab-serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const WORDS: [&str; 8] = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"];

fn pick(rng: &mut seqlab_nn::SeqRng, n: usize) -> usize {
    (rng.unit_f32() * n as f32) as usize % n
}

/// `src<TAB>tgt`: a few words and the same words upper-cased (a task a tiny model learns in
/// a hundred steps).
fn upper_pairs(path: &Path, n: usize, seed: u64) {
    let mut rng = seqlab_nn::SeqRng::new(seed);
    let mut out = String::new();
    for _ in 0..n {
        let len = 2 + pick(&mut rng, 3);
        let w: Vec<&str> = (0..len).map(|_| WORDS[pick(&mut rng, 8)]).collect();
        out.push_str(&format!("{}\t{}\n", w.join(" "), w.join(" ").to_uppercase()));
    }
    std::fs::write(path, out).unwrap();
}

fn train_mt(dir: &Path) -> PathBuf {
    let (train, valid) = (dir.join("mt-train.tsv"), dir.join("mt-valid.tsv"));
    upper_pairs(&train, 400, 1);
    upper_pairs(&valid, 20, 2);
    // Greedy decoding (beam_size 1): the test compares batched with one-at-a-time decoding.
    train_task(
        dir,
        "mt",
        &format!(
            "[data]\ntrain = {train:?}\nvalid = {valid:?}\nvocab_size = 60\nbatch_tokens = 256\nvalid_bleu_sentences = 0\n[model]\nd_model = 32\nnhead = 2\nnum_encoder_layers = 1\nnum_decoder_layers = 2\ndim_feedforward = 64\ndropout = 0.0\n[schedule]\nkind = \"constant\"\nlr = 3e-3\n[decode]\nbeam_size = 1\n[train]\nmax_steps = 120\neval_every = 120\nlog_every = 60\nprogress = false\nseed = 5\n"
        ),
    )
}

/// Trains a run of `task` from its TOML tables (`[data]` ...) through the registry, as
/// `seqlab train --config` does.
fn train_task(dir: &Path, task: &str, tables: &str) -> PathBuf {
    let run_dir = dir.join(format!("{task}-run"));
    let config = dir.join(format!("{task}.toml"));
    std::fs::write(&config, format!("task = {task:?}\nrun_dir = {run_dir:?}\n{tables}")).unwrap();
    let mut registry = seqlab_train::Registry::new();
    seqlab_tasks::register(&mut registry);
    seqlab_mt::register(&mut registry);
    registry
        .train(&seqlab_train::TrainRequest {
            config,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("training the {task} fixture: {e:#}"));
    run_dir
}

/// The folder all fixtures of this test binary live in.
fn fixture_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| scratch("fixtures"))
}

/// A tiny translation run (upper-casing words), trained on first use.
pub fn mt() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| train_mt(fixture_dir()))
}

/// A tiny character LSTM language model.
pub fn lm() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = fixture_dir();
        let mut rng = seqlab_nn::SeqRng::new(3);
        let mut lm_text = String::new();
        for _ in 0..300 {
            let w: Vec<&str> = (0..5).map(|_| WORDS[pick(&mut rng, 8)]).collect();
            lm_text.push_str(&w.join(" "));
            lm_text.push('\n');
        }
        let lm_file = dir.join("lm.txt");
        std::fs::write(&lm_file, &lm_text).unwrap();
        train_task(
            dir,
            "lm",
            &format!(
                "[data]\ntrain = {lm_file:?}\nvalid = {lm_file:?}\nbatch_size = 8\nbptt = 32\n[model]\nkind = \"lstm\"\nembed_dim = 16\nhidden_size = 32\nnum_layers = 1\ndropout = 0.0\n[train]\nmax_steps = 40\neval_every = 40\nlog_every = 20\nprogress = false\n"
            ),
        )
    })
}

/// A tiny GRU classifier: colours vs animals.
pub fn classifier() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = fixture_dir();
        let mut rng = seqlab_nn::SeqRng::new(4);
        let mut cls = String::new();
        for i in 0..200 {
            let animal = i % 2 == 0;
            let pool: &[&str] = if animal { &["cat", "dog", "bird", "fish"] } else { &["red", "green", "blue", "pink"] };
            let w: Vec<&str> = (0..3).map(|_| pool[pick(&mut rng, 4)]).collect();
            cls.push_str(&format!("{}\t{}\n", w.join(" "), if animal { "animal" } else { "colour" }));
        }
        let cls_file = dir.join("cls.tsv");
        std::fs::write(&cls_file, &cls).unwrap();
        train_task(
            dir,
            "classify",
            &format!(
                "[data]\ntrain = {cls_file:?}\nvalid = {cls_file:?}\ntokenizer = \"word\"\nbatch_tokens = 256\n[model]\nkind = \"gru\"\nembed_dim = 16\nhidden_size = 16\nnum_layers = 1\ndropout = 0.0\n[train]\nmax_steps = 40\neval_every = 40\nlog_every = 20\nprogress = false\n"
            ),
        )
    })
}

/// A tiny GRU forecaster of a sine wave with period 12 (input_len 12, horizon 3).
pub fn forecaster() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = fixture_dir();
        let mut csv = String::from("t,value\n");
        for t in 0..300 {
            csv.push_str(&format!("{t},{}\n", 10.0 + 5.0 * (t as f64 * std::f64::consts::TAU / 12.0).sin()));
        }
        let csv_file = dir.join("series.csv");
        std::fs::write(&csv_file, &csv).unwrap();
        train_task(
            dir,
            "forecast",
            &format!(
                "[data]\ntrain = {csv_file:?}\ncolumn = \"value\"\ninput_len = 12\nhorizon = 3\nbatch_size = 16\n[model]\nkind = \"gru\"\nhidden_size = 16\nnum_layers = 1\ndropout = 0.0\n[train]\nmax_steps = 40\neval_every = 40\nlog_every = 20\nprogress = false\n"
            ),
        )
    })
}

/// Hand-made word vectors: "cat" and "dog" close, "sun" and "moon" close.
pub fn vectors() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let words = ["cat", "dog", "sun", "moon", "tree"];
        let vecs: [[f32; 3]; 5] = [
            [1.0, 0.1, 0.0],
            [0.9, 0.2, 0.0],
            [0.0, 1.0, 0.1],
            [0.1, 0.9, 0.2],
            [0.0, 0.0, 1.0],
        ];
        // word2vec text format. Eight columns with four decimals: the loader tells text from
        // binary by the first 4 × dim bytes after the first word, which must be all numbers.
        let mut vt = format!("{} 8\n", words.len());
        for (w, v) in words.iter().zip(vecs) {
            let cols: Vec<String> = (0..8)
                .map(|k| format!("{:.4}", if k < 3 { v[k] } else { 0.0 }))
                .collect();
            vt.push_str(&format!("{w} {}\n", cols.join(" ")));
        }
        let path = fixture_dir().join("vectors.txt");
        std::fs::write(&path, vt).unwrap();
        path
    })
}
