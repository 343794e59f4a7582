//! The web page in real headless Chromium, driven over the Chrome DevTools Protocol: type a
//! sentence, press Translate, wait for the attention heat map, check its cells, labels,
//! title, colour bar and hover text against the API, and save a screenshot.
//!
//! Needs Chromium (`apt-get install chromium` on Debian; another binary via
//! `SEQLAB_CHROMIUM=/path`). Without it the test fails and says so, unless
//! `SEQLAB_SKIP_BROWSER_TEST=1` is set.

mod common;

use base64::Engine;
use common::{post, request, Running};
use seqlab_serve::batcher::BatchConfig;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SEQLAB_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The browser process, killed when dropped, so a failing test leaves none behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A page in headless Chromium and its DevTools socket.
struct Browser {
    ws: WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    // Dropped last: the socket closes before the process is killed.
    _process: Process,
}

impl Browser {
    /// Starts headless Chromium on `url` and connects to that page's DevTools socket.
    fn open(exe: &Path, profile: &Path, url: &str) -> Browser {
        let child = Command::new(exe)
            .args([
                "--headless=new",
                "--no-sandbox", // tests run as root in CI containers
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--window-size=1280,1400",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut process = Process(child);
        // Chromium writes its DevTools port to this file once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let t0 = Instant::now();
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("Chromium exited at start ({status})");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "Chromium did not open DevTools in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let ws_url = loop {
            let list = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(common::request_raw(
                    ([127, 0, 0, 1], port).into(),
                    "GET",
                    "/json/list",
                    b"",
                    Duration::from_secs(10),
                ));
            let page = list.ok().and_then(|a| {
                let targets: Value = serde_json::from_slice(&a.body).ok()?;
                targets
                    .as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(u) = page {
                break u;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no page target in Chromium");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("DevTools websocket");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Browser {
            ws,
            next_id: 0,
            _process: process,
        }
    }

    /// One DevTools command; returns its `result`, skipping events.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).expect("DevTools send");
        loop {
            let m = self.ws.read().unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise) → its JSON value.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("JavaScript failed: {e}\n{js}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it is true (bounded); an exception (page still loading) is false.
    fn wait_for(&mut self, js: &str, what: &str, limit: Duration) {
        let t0 = Instant::now();
        let probe = format!("(() => {{ try {{ return ({js}) === true; }} catch (e) {{ return false; }} }})()");
        while self.eval(&probe) != Value::Bool(true) {
            assert!(t0.elapsed() < limit, "waited {limit:?} for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn the_page_translates_and_draws_the_attention_heat_map() {
    let Some(exe) = find_chromium() else {
        if std::env::var("SEQLAB_SKIP_BROWSER_TEST").as_deref() == Ok("1") {
            eprintln!("SKIPPED: Chromium not found and SEQLAB_SKIP_BROWSER_TEST=1");
            return;
        }
        panic!(
            "Chromium not found: the browser test needs it. Install it (Debian/Ubuntu: `apt-get install chromium`), \
             or point SEQLAB_CHROMIUM at a Chrome/Chromium binary, or set SEQLAB_SKIP_BROWSER_TEST=1 to skip this test."
        );
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = seqlab_serve::ServeConfig {
        checkpoints: vec![
            ("upper".into(), common::mt().to_path_buf()),
            ("words".into(), common::lm().to_path_buf()),
        ],
        vectors: vec![("vec".into(), common::vectors().to_path_buf())],
        addr: "127.0.0.1:0".parse().unwrap(),
        batch: BatchConfig::default(),
        max_body_bytes: 65536,
        device: candle_core::Device::Cpu,
    };
    let app = seqlab_serve::load_app(&cfg).unwrap();
    let server = rt.block_on(Running::start(app));
    let addr = server.addr;
    let dir = common::scratch("browser");
    let mut b = Browser::open(&exe, &dir.join("profile"), &format!("http://{addr}/"));

    b.wait_for(
        "document.getElementById('panel-translate').hidden === false",
        "the translation panel",
        Duration::from_secs(30),
    );
    let sentence = "red cat moon";
    b.eval(&format!(
        "document.getElementById('translate-text').value = {}; document.getElementById('translate-button').click(); true",
        json!(sentence)
    ));
    b.wait_for(
        "document.querySelectorAll('#heatmap rect.cell').length > 0",
        "the heat map",
        Duration::from_secs(60),
    );
    let dom = b.eval(
        r#"(() => {
        const svg = document.getElementById('heatmap-svg');
        const box = svg.getBoundingClientRect();
        const inside = (e) => { const r = e.getBoundingClientRect();
            return r.left >= box.left - 0.5 && r.right <= box.right + 0.5 && r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5; };
        const texts = (sel) => [...svg.querySelectorAll(sel)].map((e) => e.textContent);
        const title = svg.querySelector('text.title');
        const cell = svg.querySelector('rect.cell');
        const ev = new MouseEvent('mousemove', {clientX: 100, clientY: 100, bubbles: true});
        cell.dispatchEvent(ev);
        const tip = document.getElementById('tooltip');
        return {
            translation: document.getElementById('translation').textContent,
            cells: svg.querySelectorAll('rect.cell').length,
            source: texts('text.src-label'),
            target: texts('text.tgt-label'),
            title: title.textContent,
            title_inside: inside(title),
            labels_inside: [...svg.querySelectorAll('text.label')].every(inside),
            src_rotated: [...svg.querySelectorAll('text.src-label')].every((e) => (e.getAttribute('transform') || '').startsWith('rotate(')),
            cell_px: Number(cell.getAttribute('width')),
            colour_bar: !!svg.querySelector('#colour-bar'),
            tooltip: tip.hidden ? null : tip.textContent,
            first_weight: Number(cell.getAttribute('data-weight')),
            layers: document.getElementById('attention-layer').options.length,
            heads: document.getElementById('attention-head').options.length,
            pe_drawn: !!document.querySelector('#pe-svg image'),
            pe_title_inside: (() => { const b = document.getElementById('pe-svg').getBoundingClientRect();
                const t = document.querySelector('#pe-svg text.title').getBoundingClientRect(); return t.right <= b.right + 0.5; })(),
            generate_shown: !document.getElementById('panel-generate').hidden,
            similar_shown: !document.getElementById('panel-similar').hidden,
            classify_shown: !document.getElementById('panel-classify').hidden,
            forecast_shown: !document.getElementById('panel-forecast').hidden,
        };
    })()"#,
    );
    let api = rt.block_on(post(
        addr,
        "/v1/translate",
        json!({"text": sentence, "attention": true}),
    ));
    assert_eq!(api.status, 200, "{}", api.text());
    let api = api.json();
    let att = &api["attention"];
    let (src, tgt) = (att["source"].as_array().unwrap(), att["target"].as_array().unwrap());
    assert_eq!(dom["translation"], api["translation"], "{dom}");
    assert_eq!(dom["source"].as_array().unwrap(), src, "column labels");
    assert_eq!(dom["target"].as_array().unwrap(), tgt, "row labels");
    assert_eq!(dom["cells"].as_u64().unwrap() as usize, src.len() * tgt.len());
    // The default view: the last layer, mean over heads.
    let title = dom["title"].as_str().unwrap();
    assert!(
        title.contains("layer 1") && title.contains("mean over heads"),
        "{title}"
    );
    assert_eq!(dom["title_inside"], true, "the title is clipped");
    assert_eq!(dom["labels_inside"], true, "a token label is clipped");
    assert_eq!(dom["src_rotated"], true);
    assert!(dom["cell_px"].as_f64().unwrap() >= 14.0);
    assert_eq!(dom["colour_bar"], true);
    let heads = &att["weights"][1];
    let n_heads = heads.as_array().unwrap().len();
    let mean: f64 = heads
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0][0].as_f64().unwrap())
        .sum::<f64>()
        / n_heads as f64;
    assert!(
        (dom["first_weight"].as_f64().unwrap() - mean).abs() < 1e-3,
        "{dom} vs mean {mean}"
    );
    let tip = dom["tooltip"].as_str().expect("hovering a cell shows a tooltip");
    assert!(
        tip.contains(src[0].as_str().unwrap()) && tip.contains(tgt[0].as_str().unwrap()) && tip.contains("weight"),
        "{tip}"
    );
    assert_eq!(dom["layers"], 2);
    assert_eq!(dom["heads"].as_u64().unwrap() as usize, n_heads + 1, "mean + each head");
    assert_eq!(dom["pe_drawn"], true);
    assert_eq!(dom["pe_title_inside"], true, "the positional-encoding title is clipped");
    assert_eq!(
        (
            &dom["generate_shown"],
            &dom["similar_shown"],
            &dom["classify_shown"],
            &dom["forecast_shown"]
        ),
        (&json!(true), &json!(true), &json!(false), &json!(false)),
        "panels follow the loaded models"
    );

    // Choosing a head redraws that head's map.
    let first = b.eval(
        "const h = document.getElementById('attention-head'); h.value = '0'; h.dispatchEvent(new Event('change')); \
         [document.querySelector('#heatmap-svg text.title').textContent, Number(document.querySelector('#heatmap rect.cell').getAttribute('data-weight'))]",
    );
    assert!(first[0].as_str().unwrap().contains("head 0"), "{first}");
    assert!(
        (first[1].as_f64().unwrap() - heads[0][0][0].as_f64().unwrap()).abs() < 1e-3,
        "{first}"
    );
    b.eval("const h2 = document.getElementById('attention-head'); h2.value = 'mean'; h2.dispatchEvent(new Event('change')); true");

    // Nearest words through the page.
    b.eval("document.getElementById('similar-word').value = 'cat'; document.querySelector('#similar-form button').click(); true");
    b.wait_for(
        "document.querySelectorAll('#similar-list li').length === 4",
        "nearest words",
        Duration::from_secs(30),
    );
    let first_word = b.eval("document.querySelector('#similar-list li').textContent");
    assert!(first_word.as_str().unwrap().starts_with("dog"), "{first_word}");

    let shot = b.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true}),
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    let out = dir.join("attention-page.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    drop(b);
    let health = rt.block_on(request(addr, "GET", "/health", b""));
    assert_eq!(health.status, 200);
    rt.block_on(server.stop());
}
