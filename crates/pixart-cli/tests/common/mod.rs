//! A `pixart serve` process on the tiny golden pipeline, for the server tests.
#![allow(dead_code)]
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use pixart_server::client::{self, Events, Response};
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn pipeline() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/golden/pipeline")
        .canonicalize()
        .unwrap()
}

/// A JPEG next to the PNG of the same image: the JPEG's (width, height), the mean absolute
/// difference of their RGB values, and the text of the JPEG's COM segment.
pub fn jpeg_against_png(jpeg: &[u8], png: &[u8]) -> ((u32, u32), f64, String) {
    let rgb = |bytes: &[u8], f| image::load_from_memory_with_format(bytes, f).unwrap().to_rgb8();
    let (got, want) = (rgb(jpeg, image::ImageFormat::Jpeg), rgb(png, image::ImageFormat::Png));
    let diff = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / got.as_raw().len() as f64;
    let com = jpeg.windows(2).position(|w| w == [0xFF, 0xFE]).expect("a COM segment");
    let len = u16::from_be_bytes([jpeg[com + 2], jpeg[com + 3]]) as usize;
    let text = String::from_utf8(jpeg[com + 4..com + 2 + len].to_vec()).unwrap();
    (got.dimensions(), diff, text)
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `pixart serve --model <tiny pipeline> --port 0 ARGS`, once it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_model(&pipeline(), args)
    }

    pub fn start_with_model(model: &std::path::Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pixart"));
        cmd.arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--port", "0"])
            .args(args);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (mut child, rx) = spawn_watching(&mut cmd, "listening on http://", Some(log.clone()));
        let addr = match rx.recv_timeout(TIMEOUT) {
            Ok(a) => a.parse::<SocketAddr>().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", log.lock().unwrap());
            }
        };
        Self { child, addr, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn get(&self, path: &str) -> Response {
        client::request(self.addr, "GET", path, None, TIMEOUT).unwrap()
    }

    pub fn delete(&self, path: &str) -> Response {
        client::request(self.addr, "DELETE", path, None, TIMEOUT).unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        client::request(self.addr, "POST", path, Some(body.to_string().as_bytes()), TIMEOUT).unwrap()
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> Response {
        client::request(self.addr, "POST", path, Some(body), TIMEOUT).unwrap()
    }

    pub fn events(&self, id: &str) -> Events {
        Events::open(self.addr, &format!("/v1/jobs/{id}/events"), TIMEOUT).unwrap()
    }

    /// A metric's value from /metrics (labels included in `name`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// Polls `cond` every 20 ms for up to `secs`.
    pub fn wait_until(&self, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}; server log:\n{}", self.log());
    }

    /// Waits until job `id` reports at least one finished step.
    pub fn wait_running(&self, id: &str) {
        self.wait_until(30, "the job to run", || {
            let j = self.get(&format!("/v1/jobs/{id}")).json();
            j["status"] == "running" && j["step"].as_u64().unwrap_or(0) >= 1
        });
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader thread drain stderr.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("server did not exit in {secs} s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns `cmd` (stdin and stdout closed, stderr piped); sends the rest of the first stderr
/// line starting with `prefix` on the returned channel, and keeps every line in `log`.
pub fn spawn_watching(
    cmd: &mut Command,
    prefix: &'static str,
    log: Option<Arc<Mutex<Vec<String>>>>,
) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.to_string());
            }
            if let Some(l) = &log {
                l.lock().unwrap().push(line);
            }
        }
    });
    (child, rx)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A job that takes a while on the tiny model (≈ 10 ms per step), for queue and cancel tests.
pub fn slow_job() -> Value {
    serde_json::json!({"prompt": "a slow job", "steps": 1000, "size": "256x256", "seed": 1})
}
