//! Feature extraction and the dataset reader on fixtures/golden/data (see
//! tools/golden/gen_data.py): features against diffusers / transformers, resume, skipped
//! images, batches.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use pixart_core::testing::{assert_close, fixtures_root};
use pixart_data::{extract, BucketMode, ExtractEvent, ExtractOptions, ExtractSummary, FeatureDataset, Index};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn data() -> PathBuf {
    fixtures_root().join("golden/data")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn options(out: &Path, buckets: BucketMode) -> ExtractOptions {
    ExtractOptions {
        data: data().join("train.jsonl"),
        vae: fixtures_root().join("golden/vae/small"),
        text_encoder: data().join("text_encoder"),
        tokenizer: data().join("tokenizer"),
        out: out.to_path_buf(),
        resolution: 16,
        buckets,
        max_length: 16,
        batch: 3,
        shard_size: 4,
        dtype: DType::F32,
        device: Device::Cpu,
    }
}

fn run(opts: &ExtractOptions) -> (ExtractSummary, Vec<ExtractEvent>) {
    let mut events = Vec::new();
    let s = extract(opts, &mut |e| events.push(e)).unwrap();
    (s, events)
}

fn shard(out: &Path, file: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(out.join(file), &Device::Cpu).unwrap()
}

#[test]
fn features_match_diffusers_and_transformers() {
    let out = tempdir("golden");
    let (s, _) = run(&options(&out, BucketMode::Square));
    assert_eq!(s.records, 10);
    assert_eq!(s.extracted, 8);
    assert_eq!(s.skipped, 2);
    let index = Index::read(&out).unwrap();
    assert!(index.complete);
    assert_eq!(index.scaling_factor, 0.18215);
    assert_eq!(index.latent_channels, 4);
    let want = candle_core::safetensors::load(data().join("features.safetensors"), &Device::Cpu).unwrap();
    let mut compared = 0;
    for r in &index.records {
        let stem = Path::new(&r.source).file_stem().unwrap().to_string_lossy().to_string();
        let Some(mean) = want.get(&format!("{stem}.latent_mean")) else {
            continue; // resized images have no exact reference (PIL's bicubic is not ours)
        };
        let got = shard(&out, &index.shards[r.shard].file);
        let row = |name: &str| got[name].get(r.row).unwrap();
        // Same tolerance as the VAE encode golden test; T5 as the encoder golden test.
        assert_close(&format!("{stem} mean"), &row("latent_mean"), mean, 1e-4);
        assert_close(
            &format!("{stem} std"),
            &row("latent_std"),
            &want[&format!("{stem}.latent_std")],
            1e-4,
        );
        for kind in ["short", "long"] {
            let f = &want[&format!("{stem}.{kind}_feature")];
            let n = f.dim(0).unwrap();
            let feat = row(&format!("{kind}_feature"));
            let mask = row(&format!("{kind}_mask")).to_dtype(DType::F32).unwrap();
            assert_close(&format!("{stem} {kind}"), &feat.narrow(0, 0, n).unwrap(), f, 1e-5);
            let l = feat.dim(0).unwrap();
            assert_eq!(mask.sum_all().unwrap().to_scalar::<f32>().unwrap() as usize, n);
            if l > n {
                let pad = feat.narrow(0, n, l - n).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(pad.to_scalar::<f32>().unwrap(), 0.0, "{stem} {kind} padding");
            }
        }
        compared += 1;
    }
    assert_eq!(compared, 7, "every 16x16 image compared");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn rerun_resumes_and_skipped_images_are_counted() {
    let out = tempdir("resume");
    let opts = options(&out, BucketMode::Square);
    let (first, events) = run(&opts);
    let skipped: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            ExtractEvent::Skipped { source, .. } => Some(source.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, ["images/000008.png", "images/000009.png"]);
    assert_eq!(first.skipped, 2);
    // 9 planned (the broken file has no readable header): shards of 4, 4, 1.
    assert_eq!(first.shards_written, 3);
    let index = Index::read(&out).unwrap();
    assert_eq!(index.skipped.len(), 2);
    assert!(index.skipped.iter().all(|s| !s.reason.is_empty()));
    assert_eq!(index.records.len(), 8);

    let before = std::fs::read(out.join("shard-00001.safetensors")).unwrap();
    let (again, _) = run(&opts);
    assert_eq!((again.shards_written, again.shards_reused), (0, 3));
    assert_eq!((again.extracted, again.reused, again.skipped), (0, 8, 2));

    // A lost shard is made again, and only that one.
    std::fs::remove_file(out.join("shard-00001.safetensors")).unwrap();
    let (third, _) = run(&opts);
    assert_eq!((third.shards_written, third.extracted), (1, 4));
    assert_eq!(std::fs::read(out.join("shard-00001.safetensors")).unwrap(), before);
    assert_eq!(Index::read(&out).unwrap(), index);
    // So is one cut short.
    std::fs::write(out.join("shard-00001.safetensors"), &before[..before.len() / 2]).unwrap();
    let (fourth, _) = run(&opts);
    assert_eq!((fourth.shards_written, fourth.extracted), (1, 4));
    assert_eq!(std::fs::read(out.join("shard-00001.safetensors")).unwrap(), before);

    // Another configuration in the same folder is refused, naming what differs.
    let mut other = options(&out, BucketMode::Square);
    other.max_length = 8;
    let err = extract(&other, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("another configuration") && err.contains("max_length"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn dataset_batches_round_trip_and_honour_the_ratio() {
    let out = tempdir("dataset");
    run(&options(&out, BucketMode::Square));
    let ds = FeatureDataset::open(&out).unwrap();
    assert_eq!(ds.len(), 8);
    let buckets = ds.buckets();
    assert_eq!(buckets.len(), 1);
    assert_eq!(
        (
            buckets[0].height,
            buckets[0].width,
            buckets[0].latent_height,
            buckets[0].len
        ),
        (16, 16, 8, 8)
    );
    let l = ds.caption_tokens();
    let index = Index::read(&out).unwrap();
    assert_eq!(
        l,
        index
            .shards
            .iter()
            .map(|s| s.long_tokens.max(s.short_tokens))
            .max()
            .unwrap()
    );

    let mut rng = StdRng::seed_from_u64(0);
    let b = ds.sample_batch(&mut rng, 5, 0.5).unwrap();
    assert_eq!(b.latent_mean.dims(), &[5, 4, 8, 8]);
    assert_eq!(b.latent_std.dims(), &[5, 4, 8, 8]);
    assert_eq!(b.caption.dims(), &[5, l, 32]);
    assert_eq!(b.mask.dims(), &[5, l]);
    // Without replacement: 5 distinct samples of the 8.
    let mut ids = b.samples.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    // Every row equals its shard row.
    for (i, &s) in b.samples.iter().enumerate() {
        let r = &ds.records()[s];
        let sh = shard(&out, &index.shards[r.shard].file);
        assert_close(
            "mean",
            &b.latent_mean.get(i).unwrap(),
            &sh["latent_mean"].get(r.row).unwrap(),
            0.0,
        );
        assert_close(
            "std",
            &b.latent_std.get(i).unwrap(),
            &sh["latent_std"].get(r.row).unwrap(),
            0.0,
        );
        let kind = if b.long_caption[i] { "long" } else { "short" };
        let f = sh[&format!("{kind}_feature")].get(r.row).unwrap();
        let t = f.dim(0).unwrap();
        assert_close("caption", &b.caption.get(i).unwrap().narrow(0, 0, t).unwrap(), &f, 0.0);
        let m = sh[&format!("{kind}_mask")]
            .get(r.row)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_close("mask", &b.mask.get(i).unwrap().narrow(0, 0, t).unwrap(), &m, 0.0);
        let rest = b.mask.get(i).unwrap().narrow(0, t, l - t).unwrap().sum_all().unwrap();
        assert_eq!(rest.to_scalar::<f32>().unwrap(), 0.0);
    }

    // The ratio: all short, all long, and about 30 % over many draws.
    assert!(ds
        .sample_batch(&mut rng, 8, 0.0)
        .unwrap()
        .long_caption
        .iter()
        .all(|&x| !x));
    assert!(ds
        .sample_batch(&mut rng, 8, 1.0)
        .unwrap()
        .long_caption
        .iter()
        .all(|&x| x));
    let mut long = 0;
    let draws = 500;
    for _ in 0..draws {
        long += ds
            .sample_batch(&mut rng, 8, 0.3)
            .unwrap()
            .long_caption
            .iter()
            .filter(|&&x| x)
            .count();
    }
    let frac = long as f64 / (8 * draws) as f64;
    assert!((frac - 0.3).abs() < 0.03, "long fraction {frac}");
    assert!(ds.sample_batch(&mut rng, 8, 1.5).is_err());
    assert!(ds.sample_batch(&mut rng, 0, 0.5).is_err());

    // An epoch covers every sample once in whole batches.
    let epoch = ds.epoch(&mut rng, 3).unwrap();
    assert_eq!(epoch.len(), 2);
    let mut seen: Vec<usize> = epoch.concat();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6);
    let b = ds.batch(&epoch[0], &mut rng, 0.5).unwrap();
    assert_eq!(b.samples, epoch[0]);

    // The trainer's trait gives the same batch for the same generator state.
    let mine = ds.sample_batch(&mut StdRng::seed_from_u64(9), 4, 0.5).unwrap();
    let theirs = pixart_train::TrainData::sample_batch(&ds, &mut StdRng::seed_from_u64(9), 4, 0.5).unwrap();
    assert_close("trait mean", &theirs.latent_mean, &mine.latent_mean, 0.0);
    assert_close("trait caption", &theirs.caption, &mine.caption, 0.0);
    assert_eq!(pixart_train::TrainData::len(&ds), 8);
    assert_eq!(pixart_train::TrainData::scaling_factor(&ds), Some(0.18215));

    let (null, null_mask) = ds.null_caption().unwrap();
    assert_eq!(null.dims(), &[1, l, 32]);
    assert_eq!(null_mask.sum_all().unwrap().to_scalar::<f32>().unwrap(), 1.0);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn multi_buckets_group_by_aspect_ratio() {
    let out = tempdir("multi");
    let (s, _) = run(&options(&out, BucketMode::Multi));
    // The 32x16 image (h/w 0.5) goes to the 0.5 bin: 704x1408 at 1024 -> 12x24 at 16 (multiples of 4).
    assert_eq!(s.buckets, vec![(16, 16, 7), (12, 24, 1)]);
    let ds = FeatureDataset::open(&out).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let mut wide = 0;
    let draws = 800;
    for _ in 0..draws {
        let b = ds.sample_batch(&mut rng, 2, 0.5).unwrap();
        if b.width == 24 {
            wide += 1;
            assert_eq!(b.latent_mean.dims(), &[2, 4, 6, 12]);
        } else {
            assert_eq!(b.latent_mean.dims(), &[2, 4, 8, 8]);
        }
    }
    // Buckets are drawn in proportion to their size: 1 of 8 samples.
    let frac = wide as f64 / draws as f64;
    assert!((frac - 1.0 / 8.0).abs() < 0.04, "wide bucket fraction {frac}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn damaged_folders_give_clear_errors() {
    let out = tempdir("damaged");
    let e = FeatureDataset::open(&out).unwrap_err().to_string();
    assert!(e.contains("index.json") && e.contains("pixart extract"), "{e}");
    run(&options(&out, BucketMode::Square));
    // A shard with a tensor of the wrong shape.
    let mut t = shard(&out, "shard-00000.safetensors");
    let m = t["latent_mean"].narrow(0, 0, 2).unwrap();
    t.insert("latent_mean".into(), m);
    pixart_core::weights::save_safetensors(&t, &out.join("shard-00000.safetensors")).unwrap();
    let e = FeatureDataset::open(&out).unwrap_err().to_string();
    assert!(
        e.contains("shard-00000.safetensors") && e.contains("latent_mean"),
        "{e}"
    );
    // An unfinished extraction.
    let mut index = Index::read(&out).unwrap();
    index.complete = false;
    index.write(&out).unwrap();
    let e = FeatureDataset::open(&out).unwrap_err().to_string();
    assert!(e.contains("not finished"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn tokenizer_retrained_from_the_captions_equals_the_committed_one() {
    let records = pixart_data::read_records(&data().join("train.jsonl")).unwrap();
    let texts = pixart_data::training_texts(&records);
    let opts = pixart_text::TrainOptions {
        vocab_size: 64,
        ..pixart_text::TrainOptions::default()
    };
    let trained = pixart_text::train_tokenizer(&texts, &opts).unwrap();
    let committed = std::fs::read_to_string(data().join("tokenizer/tokenizer.json")).unwrap();
    assert_eq!(trained.to_json().unwrap(), committed);
}

#[test]
fn no_readable_image_fails_and_leaves_nothing() {
    // Only undecodable images: one without a readable header (never planned), one whose
    // pixels do not decode (planned, fails in its shard).
    for (name, images) in [
        ("noheader", &["000008.png"][..]),
        ("nodecode", &["000009.png"][..]),
        ("neither", &["000008.png", "000009.png"][..]),
    ] {
        let src = tempdir(&format!("bad-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        let mut lines = String::new();
        for f in images {
            std::fs::copy(data().join("images").join(f), src.join(f)).unwrap();
            lines.push_str(&format!(
                "{{\"path\": \"{f}\", \"caption\": \"a\", \"long_caption\": \"b\"}}\n"
            ));
        }
        std::fs::write(src.join("train.jsonl"), lines).unwrap();
        let out = src.join("features");
        let mut opts = options(&out, BucketMode::Square);
        opts.data = src.join("train.jsonl");
        for _ in 0..2 {
            let e = extract(&opts, &mut |_| {}).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, pixart_core::Error::Io { .. }),
                "{name}: a run-time failure, not a usage error: {msg}"
            );
            assert!(
                msg.contains("train.jsonl") && msg.contains(&format!("no readable images ({} skipped)", images.len())),
                "{name}: {msg}"
            );
            assert!(!out.exists(), "{name}: {} left behind", out.display());
        }
        std::fs::remove_dir_all(&src).unwrap();
    }
}

#[test]
fn sizes_are_bounded_before_anything_is_written() {
    let out = tempdir("bounds");
    for (resolution, max_length, needle) in [
        (1_000_000, 16, "resolution 1000000 must be between 8 and 4096"),
        (4, 16, "resolution 4 must be between 8 and 4096"),
        (
            16,
            usize::MAX,
            "max length 18446744073709551615 must be between 1 and 4096",
        ),
        (16, 0, "max length 0 must be between 1 and 4096"),
    ] {
        let mut opts = options(&out, BucketMode::Square);
        opts.resolution = resolution;
        opts.max_length = max_length;
        let e = extract(&opts, &mut |_| {}).unwrap_err();
        assert!(matches!(e, pixart_core::Error::InvalidInput(_)), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
        assert!(!out.exists());
    }
}
