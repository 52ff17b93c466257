//! A local stand-in for the Hugging Face hub, for download tests: a `std::net::TcpListener`
//! on 127.0.0.1 answering, in a thread, the routes hf-hub 0.4.3's sync API calls
//! (`src/api/sync.rs`): `GET /api/models/{id}/revision/{rev}` (JSON `sha` + `siblings`) and
//! `GET /{id}/resolve/{rev}/{file}` honouring `Range: bytes=a-` / `bytes=a-b` with `206`,
//! `Content-Range`, `ETag` and `X-Repo-Commit`, as the hub does for files it serves itself.
//! Unknown repositories, revisions and files get `404` with the hub's `X-Error-Code`; a
//! repository with a token answers `401` (`GatedRepo`) to requests without `Authorization:
//! Bearer <token>`. Every request line is logged for the tests to inspect.
//!
//! Shared by the pipeline's and the CLI's tests (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One repository the fake hub serves.
#[derive(Clone, Debug)]
pub struct FakeRepo {
    pub id: String,
    pub sha: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// When set, requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl FakeRepo {
    /// Every file under `dir` (relative `/` paths), at commit `sha`.
    pub fn from_dir(id: &str, sha: &str, dir: &Path) -> Self {
        fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), &format!("{name}/"), out);
                } else {
                    out.insert(name, std::fs::read(e.path()).unwrap());
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(dir, "", &mut files);
        Self {
            id: id.into(),
            sha: sha.into(),
            files,
            token: None,
        }
    }
}

/// The running fake hub.
pub struct FakeHub {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    pub fn start(repos: Vec<FakeRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (repos, seen) = (Arc::new(repos), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, seen) = (repos.clone(), seen.clone());
                std::thread::spawn(move || serve(stream, &repos, &seen));
            }
        });
        Self { url, log }
    }

    /// The request paths answered so far.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many content downloads (`resolve` with a range other than `bytes=0-0`) hit `file`.
    pub fn downloads_of(&self, file: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.contains("/resolve/") && r.ends_with(&format!("/{file} content")))
            .count()
    }
}

/// A 40-hex-digit stand-in for the hub's ETag (git blob sha1 or LFS sha256): FNV-1a over the
/// bytes, widened; distinct files get distinct blobs.
fn etag(data: &[u8]) -> String {
    let mut out = String::new();
    for seed in [0xcbf2_9ce4_8422_2325u64, 0x1000_0000_01b3, 0x9e37_79b9_7f4a_7c15] {
        let mut h = seed;
        for &b in data {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(40);
    out
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn not_found(stream: &mut TcpStream, code: &str) {
    respond(
        stream,
        "404 Not Found",
        &[("X-Error-Code", code.to_string())],
        b"{\"error\":\"not found\"}",
    );
}

fn serve(mut stream: TcpStream, repos: &[FakeRepo], log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let range = headers.get("range").cloned().unwrap_or_default();
    let what = if range == "bytes=0-0" { "metadata" } else { "content" };
    log.lock().unwrap().push(format!("{path} {what}"));

    // /api/models/{owner}/{name}/revision/{rev}, or /{owner}/{name}/resolve/{rev}/{file}
    let (api, rest) = match path.strip_prefix("/api/models/") {
        Some(rest) => (true, rest),
        None => (false, path.trim_start_matches('/')),
    };
    let mut parts = rest.splitn(5, '/');
    let id = format!("{}/{}", parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (verb, rev, file) = (parts.next(), parts.next().unwrap_or(""), parts.next());
    let Some(repo) = repos.iter().find(|r| r.id == id) else {
        return not_found(&mut stream, "RepoNotFound");
    };
    if let Some(t) = &repo.token {
        if headers.get("authorization") != Some(&format!("Bearer {t}")) {
            return respond(
                &mut stream,
                "401 Unauthorized",
                &[("X-Error-Code", "GatedRepo".into())],
                b"{\"error\":\"gated\"}",
            );
        }
    }
    if rev != "main" && rev != repo.sha {
        return not_found(&mut stream, "RevisionNotFound");
    }
    match (api, verb, file) {
        (true, Some("revision"), None) => {
            let siblings: Vec<serde_json::Value> = repo
                .files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({ "id": repo.id, "sha": repo.sha, "siblings": siblings }).to_string();
            respond(
                &mut stream,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                body.as_bytes(),
            );
        }
        (false, Some("resolve"), Some(file)) => {
            let Some(data) = repo.files.get(file) else {
                return not_found(&mut stream, "EntryNotFound");
            };
            let size = data.len();
            let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
                Some((a, b)) => {
                    let a: usize = a.parse().unwrap_or(0);
                    let b: usize = b.parse().map(|b: usize| b.min(size - 1)).unwrap_or(size - 1);
                    (a, b)
                }
                None => (0, size - 1),
            };
            respond(
                &mut stream,
                "206 Partial Content",
                &[
                    ("Content-Range", format!("bytes {start}-{end}/{size}")),
                    ("ETag", format!("\"{}\"", etag(data))),
                    ("X-Repo-Commit", repo.sha.clone()),
                ],
                &data[start..=end],
            );
        }
        _ => not_found(&mut stream, "EntryNotFound"),
    }
}
