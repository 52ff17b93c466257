//! Hub downloads for real, over HTTP, from a local stand-in for the hub (support/fake_hub.rs)
//! serving the tiny golden pipeline (fixtures/golden/pipeline): what lands in the cache, what is
//! left on the hub, that the downloaded pipeline generates what diffusers generated, offline
//! mode, an unreachable hub, gated and unknown repositories.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use pixart_core::Error;
use pixart_pipeline::hub::{DownloadProgress, HubConfig};
use pixart_pipeline::{
    generate, ComponentOptions, ComponentPaths, Generated, GenerationRequest, OutputKind, PipelineComponents,
    SeededNoise,
};

#[path = "support/fake_hub.rs"]
mod fake_hub;
use fake_hub::{FakeHub, FakeRepo};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixtures() -> PathBuf {
    pixart_core::testing::fixtures_root().join("golden/pipeline")
}

/// A fresh folder; unique per call, since tests running in parallel build the same repos.
fn tempdir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("pixart-hub-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tiny pipeline as a hub repository: the T5 weights split into two shards with an index
/// (as the real T5-XXL is), and files generation does not need beside it (the golden cases, a
/// README, an fp16 variant, an original checkpoint).
fn tiny_repo(id: &str) -> FakeRepo {
    let mut repo = FakeRepo::from_dir(id, SHA, &fixtures());
    let whole = repo.files.remove("text_encoder/model.safetensors").unwrap();
    let tensors = candle_core::safetensors::load_buffer(&whole, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let tmp = tempdir(&format!("shards-{}", id.replace('/', "-")));
    let mut weight_map = serde_json::Map::new();
    for (k, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", k + 1);
        let map: std::collections::HashMap<String, Tensor> =
            part.iter().map(|n| (n.to_string(), tensors[*n].clone())).collect();
        candle_core::safetensors::save(&map, tmp.join(&shard)).unwrap();
        repo.files.insert(
            format!("text_encoder/{shard}"),
            std::fs::read(tmp.join(&shard)).unwrap(),
        );
        for n in part {
            weight_map.insert(n.to_string(), shard.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    repo.files.insert(
        "text_encoder/model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    );
    repo.files.insert("README.md".into(), b"# tiny".to_vec());
    repo.files.insert(
        "transformer/diffusion_pytorch_model.fp16.safetensors".into(),
        b"variant".to_vec(),
    );
    repo.files.insert("tiny-original.pth".into(), b"checkpoint".to_vec());
    std::fs::remove_dir_all(&tmp).ok();
    repo
}

/// Only the transformer/ folder (and a README), as the 256/512/2K PixArt-Σ repositories.
fn transformer_repo(id: &str) -> FakeRepo {
    let mut repo = tiny_repo(id);
    repo.files
        .retain(|f, _| f.starts_with("transformer/") || f == "README.md");
    repo
}

/// The files a generation needs, as laid out in the snapshot.
const NEEDED: [&str; 13] = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model-00001-of-00002.safetensors",
    "text_encoder/model-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/spiece.model",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

fn needed() -> BTreeSet<String> {
    NEEDED.iter().map(|f| f.to_string()).collect()
}

fn files_under(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn config(cache: &Path, endpoint: &str) -> HubConfig {
    HubConfig {
        cache: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        offline: false,
        token: None,
    }
}

/// An endpoint nothing listens on.
fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// Records what a download reports.
#[derive(Default)]
struct Recorder {
    started: Vec<(String, String, u64)>,
    bytes: u64,
    finished: usize,
    notes: Vec<String>,
}

impl DownloadProgress for Recorder {
    fn start(&mut self, repo: &str, file: &str, size: u64) {
        self.started.push((repo.into(), file.into(), size));
    }
    fn advance(&mut self, bytes: u64) {
        self.bytes += bytes;
    }
    fn finish(&mut self) {
        self.finished += 1;
    }
    fn note(&mut self, message: &str) {
        self.notes.push(message.into());
    }
}

fn model(spec: &str) -> ComponentPaths {
    ComponentPaths {
        model: spec.into(),
        ..Default::default()
    }
}

#[test]
fn download_lays_out_the_cache_and_the_pipeline_generates() {
    let repo = tiny_repo("pixart-test/tiny");
    let hub = FakeHub::start(vec![repo.clone()]);
    let cache = tempdir("full");
    let cfg = config(&cache, &hub.url);
    let mut rec = Recorder::default();
    let resolved = model("pixart-test/tiny").resolve_with(&cfg, &mut rec).unwrap();

    // The cache layout: refs/main → commit, snapshot files linking to blobs with the served bytes.
    let dir = cache.join("models--pixart-test--tiny");
    assert_eq!(std::fs::read_to_string(dir.join("refs/main")).unwrap(), SHA);
    let snap = dir.join("snapshots").join(SHA);
    assert_eq!(files_under(&snap), needed());
    for f in needed() {
        let link = std::fs::read_link(snap.join(&f)).unwrap();
        assert!(link.to_string_lossy().contains("blobs/"), "{f} -> {}", link.display());
        assert_eq!(std::fs::read(snap.join(&f)).unwrap(), repo.files[&f], "{f}");
    }
    assert!(resolved.transformer.starts_with(&snap) && resolved.text_encoder.starts_with(&snap));
    // Nothing else was downloaded; each needed file once.
    for f in ["cases.json", "cases.safetensors", "README.md", "tiny-original.pth"] {
        assert_eq!(hub.downloads_of(f), 0, "{f}");
    }
    assert_eq!(
        hub.downloads_of("transformer/diffusion_pytorch_model.fp16.safetensors"),
        0
    );
    for f in needed() {
        assert_eq!(hub.downloads_of(&f), 1, "{f}");
    }
    // The progress display saw every file with its size, and every byte.
    let started: BTreeSet<String> = rec.started.iter().map(|(_, f, _)| f.clone()).collect();
    assert_eq!(started, needed());
    for (r, f, size) in &rec.started {
        assert_eq!(r, "pixart-test/tiny");
        assert_eq!(*size as usize, repo.files[f].len(), "{f}");
    }
    let total: usize = needed().iter().map(|f| repo.files[f].len()).sum();
    assert_eq!(rec.bytes as usize, total);
    assert_eq!(rec.finished, needed().len());

    // The downloaded pipeline makes what diffusers made (golden case, as in golden_pipeline.rs).
    let c = PipelineComponents::load_resolved(resolved, &ComponentOptions::default()).unwrap();
    let io = candle_core::safetensors::load(fixtures().join("cases.safetensors"), &Device::Cpu).unwrap();
    let req = GenerationRequest {
        prompts: vec!["a red cube on a table".into(), "Two Cats".into()],
        negative_prompt: "blurry".into(),
        width: Some(64),
        height: Some(48),
        steps: Some(3),
        guidance: Some(1.0),
        resolution_binning: false,
        latents: Some(io["no_cfg_two_prompts.latents_in"].clone()),
        output: OutputKind::Latent,
        ..Default::default()
    }
    .validate(&c.geometry())
    .unwrap();
    let out = match generate(&c, &req, &mut SeededNoise::new(0), &mut |_| {}, &AtomicBool::new(false)).unwrap() {
        Generated::Finished(o) => o,
        Generated::Cancelled { .. } => panic!("cancelled"),
    };
    let want = &io["no_cfg_two_prompts.latents_out"];
    let (diff, _) = pixart_core::testing::max_abs_diff(&out.latents, want);
    let (scale, _) = pixart_core::testing::max_abs_diff(want, &want.zeros_like().unwrap());
    assert!(diff / scale <= 1e-5, "latents relative diff {:.3e}", diff / scale);

    // Again: everything is cached, so only the file list is asked for.
    let before = hub.requests().len();
    let mut rec = Recorder::default();
    model("pixart-test/tiny").resolve_with(&cfg, &mut rec).unwrap();
    let after = hub.requests();
    assert_eq!(after.len() - before, 1, "{:?}", &after[before..]);
    assert!(after[before].starts_with("/api/models/pixart-test/tiny/revision/main"));
    assert!(rec.started.is_empty());
    // Offline, from the cache alone: no request.
    let offline = HubConfig {
        offline: true,
        ..cfg.clone()
    };
    let r = model("pixart-test/tiny").resolve_with(&offline, &mut ()).unwrap();
    assert!(r.vae.starts_with(&snap));
    assert_eq!(hub.requests().len(), after.len());
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn transformer_only_repo_takes_the_rest_from_a_hub_base() {
    let hub = FakeHub::start(vec![
        tiny_repo("pixart-test/tiny"),
        transformer_repo("pixart-test/tiny-512"),
    ]);
    let cache = tempdir("base");
    let paths = ComponentPaths {
        model: "pixart-test/tiny-512".into(),
        base: Some("pixart-test/tiny".into()),
        ..Default::default()
    };
    let resolved = paths.resolve_with(&config(&cache, &hub.url), &mut ()).unwrap();
    let only = cache.join("models--pixart-test--tiny-512/snapshots").join(SHA);
    assert_eq!(
        files_under(&only),
        BTreeSet::from([
            "transformer/config.json".to_string(),
            "transformer/diffusion_pytorch_model.safetensors".to_string()
        ])
    );
    // The base gives everything but its transformer.
    let base = cache.join("models--pixart-test--tiny/snapshots").join(SHA);
    let want: BTreeSet<String> = needed()
        .into_iter()
        .filter(|f| !f.starts_with("transformer/"))
        .collect();
    assert_eq!(files_under(&base), want);
    assert!(resolved.transformer.starts_with(&only) && resolved.vae.starts_with(&base));
    PipelineComponents::load_resolved(resolved, &ComponentOptions::default()).unwrap();
    // A local --vae override: the base no longer gives a VAE, and a new cache shows it.
    let cache2 = tempdir("base-vae");
    let paths = ComponentPaths {
        vae: Some(fixtures().join("vae")),
        ..paths
    };
    paths.resolve_with(&config(&cache2, &hub.url), &mut ()).unwrap();
    let base2 = cache2.join("models--pixart-test--tiny/snapshots").join(SHA);
    assert!(!base2.join("vae").exists() && base2.join("text_encoder/config.json").is_file());
    // A hub --text-encoder for a local pipeline: only its text encoder and tokenizer come.
    let cache3 = tempdir("text-encoder");
    let paths = ComponentPaths {
        model: fixtures(),
        text_encoder: Some("pixart-test/tiny".into()),
        ..Default::default()
    };
    let r = paths.resolve_with(&config(&cache3, &hub.url), &mut ()).unwrap();
    let snap3 = cache3.join("models--pixart-test--tiny/snapshots").join(SHA);
    let want: BTreeSet<String> = needed()
        .into_iter()
        .filter(|f| f == "model_index.json" || f.starts_with("text_encoder/") || f.starts_with("tokenizer/"))
        .collect();
    assert_eq!(files_under(&snap3), want);
    assert!(r.text_encoder.starts_with(&snap3) && r.vae.starts_with(fixtures()));
    for d in [cache, cache2, cache3] {
        std::fs::remove_dir_all(d).ok();
    }
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn offline_and_unreachable_hub_fail_cleanly() {
    let hub = FakeHub::start(vec![tiny_repo("pixart-test/tiny")]);
    let cache = tempdir("offline");
    let offline = HubConfig {
        offline: true,
        ..config(&cache, &hub.url)
    };
    // Nothing cached, offline: a usage error naming the repo and the cache; no request made.
    let e = model("pixart-test/tiny").resolve_with(&offline, &mut ()).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    let m = message(e);
    assert!(
        m.contains("`pixart-test/tiny` is not in the HF cache") && m.contains("HF_HUB_OFFLINE"),
        "{m}"
    );
    assert!(m.contains(&cache.display().to_string()), "{m}");
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    // Unreachable hub, nothing cached: one line saying so, a run-time (not usage) error.
    let unreachable = config(&cache, &closed_endpoint());
    let e = model("pixart-test/tiny")
        .resolve_with(&unreachable, &mut ())
        .unwrap_err();
    assert!(matches!(e, Error::Hub(_)), "{e:?}");
    let m = message(e);
    assert!(m.starts_with("cannot reach the Hugging Face hub ("), "{m}");
    assert!(
        m.ends_with(&format!(
            "the model `pixart-test/tiny` is not in the cache at {}; set HF_HUB_OFFLINE=1 to use only the cache",
            cache.display()
        )),
        "{m}"
    );
    assert!(!m.contains('\n'));

    // Cached (downloaded once), then the hub goes away: the cache is used, with a note.
    model("pixart-test/tiny")
        .resolve_with(&config(&cache, &hub.url), &mut ())
        .unwrap();
    let mut rec = Recorder::default();
    model("pixart-test/tiny").resolve_with(&unreachable, &mut rec).unwrap();
    assert_eq!(rec.notes.len(), 1);
    assert!(
        rec.notes[0].contains("using `pixart-test/tiny` from the cache"),
        "{:?}",
        rec.notes
    );

    // A cached snapshot missing a file, offline: the file is named.
    let snap = cache.join("models--pixart-test--tiny/snapshots").join(SHA);
    std::fs::remove_file(snap.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let m = message(model("pixart-test/tiny").resolve_with(&offline, &mut ()).unwrap_err());
    assert!(
        m.contains("lacks vae/diffusion_pytorch_model.safetensors") && m.contains("HF_HUB_OFFLINE"),
        "{m}"
    );
    // Online again, only that file is fetched back.
    let before = hub.downloads_of("vae/diffusion_pytorch_model.safetensors");
    model("pixart-test/tiny")
        .resolve_with(&config(&cache, &hub.url), &mut ())
        .unwrap();
    assert_eq!(hub.downloads_of("vae/diffusion_pytorch_model.safetensors"), before + 1);
    assert_eq!(hub.downloads_of("transformer/diffusion_pytorch_model.safetensors"), 1);
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn gated_unknown_and_bad_revision() {
    let mut gated = tiny_repo("pixart-test/gated");
    gated.token = Some("hf_secret".into());
    let hub = FakeHub::start(vec![gated, tiny_repo("pixart-test/tiny")]);
    let cache = tempdir("gated");
    let cfg = config(&cache, &hub.url);
    let err = |spec: &str, cfg: &HubConfig| {
        let e = model(spec).resolve_with(cfg, &mut ()).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
        message(e)
    };
    let m = err("pixart-test/gated", &cfg);
    assert!(m.contains("gated or private") && m.contains("set HF_TOKEN"), "{m}");
    let wrong = HubConfig {
        token: Some("hf_wrong".into()),
        ..cfg.clone()
    };
    let m = err("pixart-test/gated", &wrong);
    assert!(m.contains("refused the token"), "{m}");
    let right = HubConfig {
        token: Some("hf_secret".into()),
        ..cfg.clone()
    };
    let r = model("pixart-test/gated").resolve_with(&right, &mut ()).unwrap();
    assert!(r.transformer.starts_with(cache.join("models--pixart-test--gated")));

    let m = err("pixart-test/nope", &cfg);
    assert!(m.contains("`pixart-test/nope`: no such model repository"), "{m}");
    let m = err("pixart-test/tiny@v9", &cfg);
    assert!(m.contains("has no revision `v9`"), "{m}");
    // A revision given as the commit works, and is cached under it.
    let r = model(&format!("pixart-test/tiny@{SHA}"))
        .resolve_with(&cfg, &mut ())
        .unwrap();
    assert!(r
        .vae
        .starts_with(cache.join("models--pixart-test--tiny/snapshots").join(SHA)));
    std::fs::remove_dir_all(&cache).ok();
}
