//! The web page of `pixart serve` driven end to end in headless Chromium (Debian's `chromium`
//! package, installed by tools/ci/install-chromium.sh), over the DevTools protocol: fill the
//! form, generate, follow the live progress, see the image and the gallery, a server-side
//! validation error, cancel, and a reload that restores the gallery. A screenshot of the page
//! is written to `$CARGO_TARGET_TMPDIR/serve-page.png`.
//!
//! When build.rs finds no Chromium the tests are ignored (the summary says so); under CI they
//! always run: a missing Chromium is installed by the script, and a failed install fails them.
mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{client, Server, TIMEOUT};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// Chromium, installed by the project's script when missing; a failure when it cannot be had.
fn chromium() -> PathBuf {
    match find_chromium() {
        Some(p) => p,
        None => panic!(
            "chromium is not installed and tools/ci/install-chromium.sh could not install it: \
             the web page of `pixart serve` cannot be tested in a browser"
        ),
    }
}

fn find_chromium() -> Option<PathBuf> {
    const NAMES: [&str; 2] = ["chromium", "chromium-browser"];
    if let Some(p) = find_on_path(&NAMES) {
        return Some(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/ci/install-chromium.sh");
    eprintln!("chromium not found; running {}", script.display());
    let _ = Command::new("bash").arg(&script).status();
    find_on_path(&NAMES)
}

struct Browser {
    child: Child,
    profile: PathBuf,
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Starts headless Chromium on `url` and attaches to the page.
    fn open(exe: &Path, url: &str) -> Self {
        static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let profile = std::env::temp_dir().join(format!("pixart-chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut cmd = Command::new(exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1200,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url);
        let (child, rx) = common::spawn_watching(&mut cmd, "DevTools listening on ws://", None);
        let host = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium did not print its DevTools address");
        let devtools: SocketAddr = host.split('/').next().unwrap().parse().unwrap();
        // The page target (opened on `url`) and its WebSocket.
        let end = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            let list = client::request(devtools, "GET", "/json/list", None, TIMEOUT)
                .unwrap()
                .json();
            let page = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)))
                    .cloned()
            });
            if let Some(p) = page {
                break p["webSocketDebuggerUrl"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < end, "no page target for {url}: {list}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(devtools).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).unwrap();
        Self {
            child,
            profile,
            ws,
            next_id: 1,
        }
    }

    /// A DevTools command; returns its `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page (promises awaited); returns its value.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `js` until it returns true.
    fn wait_for(&mut self, js: &str, secs: u64, what: &str) {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(js) == json!(true) {
                return;
            }
            if Instant::now() > end {
                let state = self.eval("JSON.stringify({state: document.body && document.body.dataset.state, status: document.getElementById('status') && document.getElementById('status').textContent, error: document.getElementById('error') && document.getElementById('error').textContent})");
                panic!("timed out waiting for {what}: {state}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn state(&mut self) -> String {
        self.eval("document.body.dataset.state")
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn set_fields(b: &mut Browser, fields: &[(&str, &str)]) {
    for (id, v) in fields {
        b.eval(&format!(
            "document.getElementById({}).value = {}; true",
            json!(id),
            json!(v)
        ));
    }
}

/// Clicks Generate after clearing the page's state, so that a wait for `done` sees this job
/// end, not the previous one: the page sets `running` only after reading the files of the
/// form (asynchronously), and a wait that started before that saw the last job's `done`.
fn click_generate(b: &mut Browser) {
    b.eval("document.body.dataset.state = 'submitted'; document.getElementById('generate').click(); true");
}

/// Waits for the page's job to end, checks that it succeeded and that its image loaded.
fn wait_done_with_image(b: &mut Browser, what: &str) {
    b.wait_for("['done', 'error'].includes(document.body.dataset.state)", 60, what);
    assert_eq!(
        b.state(),
        "done",
        "{}",
        b.eval("document.getElementById('error').textContent")
    );
    b.wait_for(
        "(() => { const i = document.getElementById('result'); return !i.hidden && i.complete && i.naturalWidth > 0 && !i.src.includes('/preview'); })()",
        20,
        "the image to load",
    );
}

#[test]
#[cfg_attr(
    no_chromium,
    ignore = "no chromium on PATH (tools/ci/install-chromium.sh installs it)"
)]
fn the_web_page_generates_in_headless_chromium() {
    let exe = chromium();
    let server = Server::start(&["--max-steps", "1000"]);
    let url = format!("http://{}/", server.addr);
    let mut b = Browser::open(&exe, &url);
    b.wait_for(
        "document.body && document.body.dataset.state === 'idle'",
        30,
        "the page to load",
    );
    assert_eq!(b.eval("document.getElementById('width').value"), "256");
    assert_eq!(
        b.eval("document.getElementById('model').textContent"),
        "model: pipeline"
    );

    // 1. Generate: the progress bar follows the events, then the image and the gallery show.
    set_fields(
        &mut b,
        &[
            ("prompt", "a lighthouse at dusk"),
            ("negative", "blurry"),
            ("width", "320"),
            ("height", "192"),
            ("steps", "6"),
            ("guidance", "4.5"),
            ("seed", "42"),
        ],
    );
    click_generate(&mut b);
    wait_done_with_image(&mut b, "the generation");
    let p = b.eval("[document.getElementById('progress').value, document.getElementById('progress').max]");
    assert_eq!(p, json!([6, 6]));
    let size =
        b.eval("[document.getElementById('result').naturalWidth, document.getElementById('result').naturalHeight]");
    assert_eq!(size, json!([320, 192]));
    assert_eq!(b.eval("document.querySelectorAll('#gallery img').length"), 1);
    let status = b.eval("document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().starts_with("done in"), "{status}");
    // The page's job is the one the server ran, with the form's values.
    let id = b.eval("document.body.dataset.job");
    let job = server.get(&format!("/v1/jobs/{}", id.as_str().unwrap())).json();
    assert_eq!(
        (
            job["status"].as_str(),
            job["size"].as_str(),
            job["steps"].as_u64(),
            job["seed"].as_u64()
        ),
        (Some("succeeded"), Some("320x192"), Some(6), Some(42))
    );
    assert_eq!(job["negative_prompt"], "blurry");
    let shot = b.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let shot_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&shot_path, png).unwrap();
    eprintln!("screenshot: {}", shot_path.display());

    // 2. A request the server refuses: its message, naming the field, is shown.
    set_fields(&mut b, &[("steps", "0")]);
    // (dispatchEvent skips the browser's own form validation, so the server's is tested.)
    b.eval("document.getElementById('form').dispatchEvent(new Event('submit', {cancelable: true})); true");
    b.wait_for("document.body.dataset.state === 'error'", 20, "the error");
    let err = b.eval("document.getElementById('error').textContent");
    assert!(err.as_str().unwrap().contains("(steps)"), "{err}");

    // 3. A long job shows live previews (the checkbox is on by default); cancel it from the page.
    set_fields(&mut b, &[("steps", "1000"), ("width", "256"), ("height", "256")]);
    click_generate(&mut b);
    b.wait_for("document.getElementById('progress').value >= 1", 30, "progress");
    b.wait_for(
        "(() => { const i = document.getElementById('result'); return document.body.dataset.preview !== undefined \
         && i.src.includes('/preview?step=') && i.complete && i.naturalWidth === 256; })()",
        30,
        "a live preview",
    );
    let caption = b.eval("document.getElementById('caption').textContent");
    assert!(
        caption.as_str().unwrap().starts_with("preview after step "),
        "{caption}"
    );
    b.eval("document.getElementById('cancel').click(); true");
    b.wait_for("document.body.dataset.state === 'cancelled'", 20, "the cancel");
    let status = b.eval("document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().contains("cancelled after"), "{status}");
    assert_eq!(server.metric("pixart_jobs_running"), 0.0);

    // 4. A reload shows this run's finished images again.
    b.eval("location.reload(); true");
    std::thread::sleep(Duration::from_millis(200));
    b.wait_for(
        "document.body && document.body.dataset.state === 'idle'",
        30,
        "the reload",
    );
    b.wait_for(
        "document.querySelectorAll('#gallery img').length === 1",
        10,
        "the gallery",
    );

    // 5. The steps follow the sampler's default until the user types another count.
    let pick = |b: &mut Browser, name: &str| {
        b.eval(&format!(
            "(() => {{ const s = document.getElementById('scheduler'); s.value = {}; s.dispatchEvent(new Event('change')); return document.getElementById('steps').value; }})()",
            json!(name)
        ))
    };
    assert_eq!(pick(&mut b, "iddpm"), "100");
    assert_eq!(pick(&mut b, "sa-solver"), "25");
    assert_eq!(pick(&mut b, "dpm++"), "20");
    set_fields(&mut b, &[("steps", "7")]);
    assert_eq!(pick(&mut b, "iddpm"), "7");
    pick(&mut b, "dpm++");

    // 6. Image to image: a start picture chosen in the file field.
    let init = std::fs::read(common::pipeline().join("img2img_init.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(init);
    b.eval(&format!(
        "(() => {{ const bytes = Uint8Array.from(atob({}), c => c.charCodeAt(0)); const dt = new DataTransfer(); \
         dt.items.add(new File([bytes], 'init.png', {{type: 'image/png'}})); \
         document.getElementById('image').files = dt.files; return true; }})()",
        json!(b64)
    ));
    set_fields(
        &mut b,
        &[
            ("prompt", "a boat"),
            ("steps", "4"),
            ("strength", "0.5"),
            ("width", "128"),
            ("height", "96"),
            ("seed", "1"),
        ],
    );
    click_generate(&mut b);
    wait_done_with_image(&mut b, "the image-to-image generation");
    assert_eq!(image_job(&mut b, &server), (Some(0.5), Some(2), Some("128x96".into())));

    // 7. "Use as start image": the result on show becomes the start picture, at its size.
    b.eval("document.getElementById('image').value = ''; document.getElementById('width').value = 256; true");
    b.eval("document.getElementById('reuse').click(); true");
    b.wait_for(
        "document.getElementById('image').files.length === 1 && document.getElementById('width').value === '128'",
        20,
        "the start image from the result",
    );
    set_fields(&mut b, &[("seed", "2"), ("steps", "6")]);
    click_generate(&mut b);
    wait_done_with_image(&mut b, "the generation from the reused image");
    assert_eq!(image_job(&mut b, &server), (Some(0.5), Some(3), Some("128x96".into())));
}

/// The strength, steps run and size of the page's last job, as the server has it.
fn image_job(b: &mut Browser, server: &Server) -> (Option<f64>, Option<u64>, Option<String>) {
    let id = b.eval("document.body.dataset.job");
    let job = server.get(&format!("/v1/jobs/{}", id.as_str().unwrap())).json();
    (
        job["strength"].as_f64(),
        job["total_steps"].as_u64(),
        job["size"].as_str().map(String::from),
    )
}

#[test]
#[cfg_attr(
    no_chromium,
    ignore = "no chromium on PATH (tools/ci/install-chromium.sh installs it)"
)]
fn the_web_page_asks_for_the_api_key() {
    let exe = chromium();
    let key = "sk-browser-key-42";
    let server = Server::start(&["--api-key", key]);
    let url = format!("http://{}/", server.addr);
    let mut b = Browser::open(&exe, &url);
    b.wait_for(
        "document.body && document.body.dataset.state === 'auth'",
        30,
        "the key form",
    );
    assert_eq!(b.eval("document.getElementById('auth').hidden"), false);
    // A wrong key: asked again.
    set_fields(&mut b, &[("apikey", "sk-wrong-key-00")]);
    b.eval("document.getElementById('savekey').click(); true");
    b.wait_for(
        "document.body.dataset.state === 'auth' && !document.getElementById('auth').hidden",
        20,
        "the key form again",
    );
    // The right key: the page works, events and the image included (the cookie carries it).
    set_fields(&mut b, &[("apikey", key)]);
    b.eval("document.getElementById('savekey').click(); true");
    b.wait_for(
        "document.body.dataset.state === 'idle'",
        20,
        "the page to accept the key",
    );
    set_fields(&mut b, &[("prompt", "a red circle"), ("steps", "3"), ("seed", "5")]);
    click_generate(&mut b);
    wait_done_with_image(&mut b, "the generation");
}

#[test]
#[cfg_attr(
    no_chromium,
    ignore = "no chromium on PATH (tools/ci/install-chromium.sh installs it)"
)]
fn the_page_fits_1280x900_hides_the_key_box_and_shows_small_images_large() {
    let exe = chromium();
    let server = Server::start_with_model(Path::new("builtin"), &[]);
    let url = format!("http://{}/", server.addr);
    let mut b = Browser::open(&exe, &url);
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    );
    b.wait_for(
        "document.body && document.body.dataset.state === 'idle'",
        30,
        "the page",
    );
    // No key needed: the key box is not shown (`hidden` used to lose to `form { display: flex }`).
    assert_eq!(
        b.eval("getComputedStyle(document.getElementById('auth')).display"),
        "none"
    );
    // A prompt the built-in model can draw.
    let placeholder = b.eval("document.getElementById('prompt').placeholder");
    assert_eq!(
        placeholder,
        "a large yellow triangle at the center on a blue background"
    );
    // Every control lies within its form and the window.
    let cut = b.eval(
        "(() => { const out = []; const W = document.documentElement.clientWidth;
           for (const el of document.querySelectorAll('#form input, #form select, #form textarea, #form button')) {
             const r = el.getBoundingClientRect(); const f = el.form.getBoundingClientRect();
             if (r.width === 0) continue;
             if (r.left < f.left - 0.5 || r.right > f.right + 0.5 || r.right > W) out.push(`${el.id}: ${r.left}-${r.right} in ${f.left}-${f.right}`);
           }
           if (document.documentElement.scrollWidth > W) out.push(`page ${document.documentElement.scrollWidth} > ${W}`);
           return out; })()",
    );
    assert_eq!(cut, json!([]), "controls cut off at 1280x900");
    // A 64 px image is shown scaled up, pixelated.
    set_fields(
        &mut b,
        &[
            ("prompt", "a large red circle at the center"),
            ("steps", "4"),
            ("seed", "1"),
        ],
    );
    click_generate(&mut b);
    wait_done_with_image(&mut b, "the generation");
    let shown = b.eval(
        "(() => { const i = document.getElementById('result'); return [i.naturalWidth, i.getBoundingClientRect().width, getComputedStyle(i).imageRendering]; })()",
    );
    assert_eq!(shown[0], 64, "{shown}");
    assert!(shown[1].as_f64().unwrap() >= 256.0, "{shown}");
    assert_eq!(shown[2], "pixelated", "{shown}");
    // The running-jobs counter goes back to 0.
    b.wait_for(
        "document.getElementById('queue').textContent.includes('running 0')",
        10,
        "the counter back to 0",
    );
    let shot = b.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page-1280.png"), png);
}
