//! Load test for `pixart serve`: a bounded number of requests from a bounded number of
//! concurrent clients to a server on this machine; reports throughput and latency percentiles.
//!
//! ```sh
//! cargo run --release -p pixart-cli --example serve_load -- --addr 127.0.0.1:8080 \
//!     --requests 64 --concurrency 4 --steps 4 --size 256x256 [--route openai|jobs|a1111]
//! ```
//! (tools/bench/serve_load.sh starts a server on the tiny test pipeline and runs this.)
//!
//! `openai` sends `POST /v1/images/generations` and times the answer; `jobs` sends
//! `POST /v1/jobs` and follows `/v1/jobs/{id}/events` to the `done` event. Refusals (429) are
//! counted, not retried; `a1111` sends `POST /sdapi/v1/txt2img` (AUTOMATIC1111's API, the same
//! request in its fields). Prints a table and one JSON line.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pixart_server::client::{self, Events};
use serde_json::json;

struct Args {
    addr: SocketAddr,
    requests: usize,
    concurrency: usize,
    steps: usize,
    size: String,
    route: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?,
        requests: 32,
        concurrency: 4,
        steps: 4,
        size: "256x256".into(),
        route: "openai".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--addr" => a.addr = v.parse().map_err(|_| format!("--addr: not HOST:PORT: {v}"))?,
            "--requests" => a.requests = num(&v)?,
            "--concurrency" => a.concurrency = num(&v)?,
            "--steps" => a.steps = num(&v)?,
            "--size" => a.size = v,
            "--route" if ["openai", "jobs", "a1111"].contains(&v.as_str()) => a.route = v,
            _ => return Err(format!("unknown flag or value: {flag} {v}")),
        }
    }
    if !a.addr.ip().is_loopback() {
        return Err(format!("--addr {}: this load test only targets the loopback", a.addr));
    }
    if a.requests == 0 || a.concurrency == 0 || a.requests > 10_000 || a.concurrency > 256 {
        return Err("--requests must be 1..=10000 and --concurrency 1..=256".into());
    }
    Ok(a)
}

/// Percentile `p` (0..=100) of sorted values, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[derive(Default)]
struct Tally {
    ok_latencies: Vec<f64>,
    rejected: usize,
    failed: Vec<String>,
}

fn one(a: &Args, seed: usize) -> Result<(), String> {
    let body = if a.route == "a1111" {
        let (w, h) = a.size.split_once('x').unwrap_or(("256", "256"));
        json!({"prompt": format!("load test {seed}"), "steps": a.steps, "seed": seed,
               "width": w.parse::<u64>().unwrap_or(256), "height": h.parse::<u64>().unwrap_or(256)})
    } else {
        json!({"prompt": format!("load test {seed}"), "steps": a.steps, "size": a.size, "seed": seed})
    };
    let body = body.to_string();
    let timeout = Duration::from_secs(600);
    let path = match a.route.as_str() {
        "openai" => "/v1/images/generations",
        "a1111" => "/sdapi/v1/txt2img",
        _ => "/v1/jobs",
    };
    let r = client::request(a.addr, "POST", path, Some(body.as_bytes()), timeout).map_err(|e| e.to_string())?;
    match (a.route.as_str(), r.status) {
        (_, 429) => Err("429".into()),
        ("openai" | "a1111", 200) => Ok(()),
        ("jobs", 202) => {
            let id = r.json()["id"].as_str().unwrap_or_default().to_string();
            let mut ev = Events::open(a.addr, &format!("/v1/jobs/{id}/events"), timeout).map_err(|e| e.to_string())?;
            while let Some(e) = ev.next_event().map_err(|e| e.to_string())? {
                if e.event == "done" {
                    let v: serde_json::Value = serde_json::from_str(&e.data).map_err(|e| e.to_string())?;
                    // Free the server's memory for the result.
                    let _ = client::request(a.addr, "DELETE", &format!("/v1/jobs/{id}"), None, timeout);
                    return if v["status"] == "succeeded" {
                        Ok(())
                    } else {
                        Err(format!("job {}", v["status"]))
                    };
                }
            }
            Err("event stream ended without `done`".into())
        }
        (_, s) => Err(format!("HTTP {s}: {}", r.text())),
    }
}

fn main() {
    let a = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let threads: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (a, next, tally) = (a.clone(), next.clone(), tally.clone());
            std::thread::spawn(move || loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= a.requests {
                    break;
                }
                let t = Instant::now();
                let r = one(&a, k);
                let secs = t.elapsed().as_secs_f64();
                let mut tl = tally.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(()) => tl.ok_latencies.push(secs),
                    Err(e) if e == "429" => tl.rejected += 1,
                    Err(e) => tl.failed.push(e),
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let wall = start.elapsed().as_secs_f64();
    let mut tl = tally.lock().unwrap_or_else(|e| e.into_inner());
    tl.ok_latencies.sort_by(f64::total_cmp);
    let l = &tl.ok_latencies;
    let ok = l.len();
    let mean = if ok > 0 {
        l.iter().sum::<f64>() / ok as f64
    } else {
        f64::NAN
    };
    println!(
        "route {} | {} requests, concurrency {}, {} steps at {} | ok {ok}, 429 {}, failed {} | {:.2} s wall",
        a.route,
        a.requests,
        a.concurrency,
        a.steps,
        a.size,
        tl.rejected,
        tl.failed.len(),
        wall
    );
    println!(
        "throughput {:.2} images/s | latency s: mean {mean:.3}, p50 {:.3}, p90 {:.3}, p99 {:.3}, max {:.3}",
        ok as f64 / wall,
        percentile(l, 50.0),
        percentile(l, 90.0),
        percentile(l, 99.0),
        percentile(l, 100.0)
    );
    println!(
        "{}",
        json!({
            "route": a.route, "requests": a.requests, "concurrency": a.concurrency, "steps": a.steps, "size": a.size,
            "ok": ok, "rejected_429": tl.rejected, "failed": tl.failed.len(), "wall_seconds": wall,
            "throughput_per_second": ok as f64 / wall,
            "latency_seconds": {"mean": mean, "p50": percentile(l, 50.0), "p90": percentile(l, 90.0),
                                "p99": percentile(l, 99.0), "max": percentile(l, 100.0)},
        })
    );
    if let Some(e) = tl.failed.first() {
        eprintln!("first failure: {e}");
        std::process::exit(1);
    }
}
