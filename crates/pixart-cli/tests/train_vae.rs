//! `pixart train-vae`: bad configs give a one-line error naming the key and exit code 2.
use std::path::PathBuf;
use std::process::Command;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-cli-train-vae-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train_vae(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixart"))
        .args(["train-vae", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), err)
}

const CONFIG: &str = r#"
[model]
block_out_channels = [8, 16]
norm_num_groups = 4
sample_size = 16
[data]
jsonl = "train.jsonl"
[train]
batch_size = 2
steps = 2
lr = 1e-3
[output]
dir = "out"
"#;

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let dir = tempdir("bad");
    let (code, err) = train_vae(&dir.join("missing.toml"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
    std::fs::write(dir.join("train.jsonl"), "{\"path\": \"a.png\"}\n").unwrap();
    for (from, to, key) in [
        ("lr = 1e-3", "lr = 1e-3\nlearning_rate = 1.0", "learning_rate"),
        ("batch_size = 2", "batch_size = 0", "train.batch_size"),
        ("jsonl = \"train.jsonl\"", "jsonl = \"nope.jsonl\"", "data.jsonl"),
        // Sizes that cannot be allocated: refused up front, not "memory allocation failed".
        ("batch_size = 2", "batch_size = 100000000", "train.batch_size"),
        (
            "block_out_channels = [8, 16]",
            "block_out_channels = [8000000, 8000000]",
            "model.block_out_channels",
        ),
        // TOML errors: one line with the position, not the toml crate's snippet.
        (
            "[output]",
            "[optimizer]\ntype = \"came\"\nbetas = [0.9]\n[output]",
            "c.toml: line 12, column 1: ",
        ),
        ("lr = 1e-3", "lr = \"fast\"", "c.toml: line 11, column 6: train.lr: "),
    ] {
        let cfg = dir.join("c.toml");
        std::fs::write(&cfg, CONFIG.replace(from, to)).unwrap();
        let (code, err) = train_vae(&cfg);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(err.contains(key) && err.trim().lines().count() == 1, "{to}: {err}");
    }
    // A folder as --config.
    let (code, err) = train_vae(&dir);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a folder, not a config file"), "{err}");
    // Every image unreadable: a run-time failure naming the data file.
    std::fs::write(dir.join("c.toml"), CONFIG).unwrap();
    let (code, err) = train_vae(&dir.join("c.toml"));
    assert_ne!(code, 0);
    assert!(err.contains("train.jsonl") && err.contains("a.png"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
