//! `pixart demo-data` and `pixart eval demo` end to end: determinism, resume, the files'
//! contents, the evaluation on the tiny random pipeline (fixtures/golden/pipeline), and bad
//! input giving a one-line error with exit code 2.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pixart_core::testing::fixtures_root;
use pixart_demo::dataset::{read_eval, read_train, DatasetInfo};
use pixart_demo::{check, render};
use pixart_pipeline::RgbImage;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixart"))
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn demo_data(out: &Path, args: &[&str]) -> Output {
    bin()
        .arg("demo-data")
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_one_line_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn demo_data_is_deterministic_resumable_and_checkable() {
    let root = tempdir("data");
    let (a, b) = (root.join("a"), root.join("b"));
    for d in [&a, &b] {
        let o = demo_data(d, &["--count", "60", "--size", "48", "--seed", "5"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for f in [
        "train.jsonl",
        "eval.jsonl",
        "dataset.json",
        "images/000000.png",
        "images/000059.png",
    ] {
        assert_eq!(read(&a.join(f)), read(&b.join(f)), "{f} differs between two runs");
    }
    assert!(!a.join("images/000060.png").exists());
    let info: DatasetInfo = serde_json::from_slice(&read(&a.join("dataset.json"))).unwrap();
    assert_eq!((info.seed, info.size, info.count, info.eval_count), (5, 48, 60, 36));
    assert_eq!(info.held_out.len(), 18);

    // Every image shows its record, and the record renders the same scene at 128 px.
    let train = read_train(&a.join("train.jsonl")).unwrap();
    assert_eq!(train.len(), 60);
    for r in &train {
        assert!(!r.attributes.combo().is_held_out());
        let img = RgbImage::from_png(&read(&a.join(&r.path)), &r.path).unwrap();
        assert_eq!((img.width, img.height), (48, 48));
        let c = check(&img, &r.attributes).unwrap();
        assert!(c.all(), "{}: {c:?}", r.path);
        let big = render(&r.attributes, &r.geometry, 128).unwrap();
        assert!(check(&big, &r.attributes).unwrap().all());
    }
    let eval = read_eval(&a.join("eval.jsonl")).unwrap();
    assert_eq!(eval.iter().filter(|e| e.heldout).count(), 18);
    // The training-data reader (pixart extract) takes the same file.
    let records = pixart_data::records::read_records(&a.join("train.jsonl")).unwrap();
    assert_eq!(records.len(), 60);
    assert_eq!(records[3].image, a.join(&train[3].path));
    assert_eq!(records[3].long_caption, train[3].long_caption);

    // A killed run: images lost and the jsonl files not yet written. Rerunning resumes.
    std::fs::remove_file(a.join("images/000007.png")).unwrap();
    std::fs::remove_file(a.join("train.jsonl")).unwrap();
    let o = demo_data(&a, &["--count", "60", "--size", "48", "--seed", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("wrote 1 images (59 already there)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read(&a.join("images/000007.png")), read(&b.join("images/000007.png")));
    assert_eq!(read(&a.join("train.jsonl")), read(&b.join("train.jsonl")));

    // Another seed into the same folder, or a folder with other files, is refused.
    let o = demo_data(&a, &["--count", "60", "--size", "48", "--seed", "6"]);
    assert_one_line_error(&o, 2, "other parameters");
    std::fs::write(root.join("c.txt"), b"x").unwrap();
    let o = demo_data(&root, &["--count", "3"]);
    assert_one_line_error(&o, 2, "holds no dataset.json");
    let o = demo_data(&root.join("d"), &["--size", "8"]);
    assert_one_line_error(&o, 2, "--size 8");
    let o = demo_data(&root.join("d"), &["--count", "0"]);
    assert_one_line_error(&o, 2, "--count 0");
}

fn eval_demo(args: &[&str]) -> Output {
    bin().args(["eval", "demo"]).args(args).output().unwrap()
}

/// `eval demo` of the first 5 prompts of `data` with 2 steps on the tiny random pipeline.
fn eval_tiny(data: &Path, sheet: &Path, extra: &[&str]) -> Output {
    let pipeline = fixtures_root().join("golden/pipeline");
    let (pipeline, data, sheet) = (
        pipeline.to_str().unwrap(),
        data.to_str().unwrap(),
        sheet.to_str().unwrap(),
    );
    let args = [
        "--model", pipeline, "--data", data, "--steps", "2", "--limit", "5", "--out", sheet,
    ];
    eval_demo(&[&args[..], extra].concat())
}

/// A fresh temporary folder `name` holding a demo dataset of `count` images at `size` px in
/// data/; returns (the folder, data/).
fn dataset(name: &str, count: &str, size: &str) -> (PathBuf, PathBuf) {
    let root = tempdir(name);
    let data = root.join("data");
    let o = demo_data(&data, &["--count", count, "--size", size]);
    assert!(o.status.success(), "{}", stderr(&o));
    (root, data)
}

#[test]
fn eval_demo_on_the_tiny_random_pipeline() {
    let (root, data) = dataset("eval", "2", "32");
    let (sheet, json) = (root.join("sheet.png"), root.join("results.json"));
    let eval_jsonl = data.join("eval.jsonl");
    let o = eval_tiny(&eval_jsonl, &sheet, &["--batch", "2", "--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", stderr(&o));
    // The table: a header, held-out and seen rows with their counts, the targets.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[1].split_whitespace().eq([
            "prompts",
            "n",
            "background",
            "color",
            "shape",
            "size",
            "position",
            "all"
        ]),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("held-out") && lines[2].split_whitespace().nth(1) == Some("3"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("seen") && lines[3].split_whitespace().nth(1) == Some("2"),
        "{stdout}"
    );
    assert!(
        lines[4].contains("≥90%") && lines[4].contains("≥80%") && lines[4].contains("≥70%"),
        "{stdout}"
    );

    // The sheet: 5 images of the pipeline's native 256 px in 4 columns, 2 rows, framed.
    let img = RgbImage::from_png(&read(&sheet), "sheet.png").unwrap();
    let cell = 256 + 2 * 8 + 2;
    assert_eq!((img.width, img.height), (4 * cell + 2, 2 * cell + 2));
    let frame = img.pixel(2, 2).unwrap();
    assert!(frame == [0, 200, 0] || frame == [220, 0, 0], "{frame:?}");

    // The JSON agrees with the table and holds every prompt's verdict.
    let j: serde_json::Value = serde_json::from_slice(&read(&json)).unwrap();
    assert_eq!(j["heldout"]["n"], 3);
    assert_eq!(j["seen"]["n"], 2);
    let results = j["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[4]["seed"], 4);
    let eval = read_eval(&data.join("eval.jsonl")).unwrap();
    assert_eq!(results[0]["prompt"], eval[0].long_caption.as_str());
    let all_ok = results
        .iter()
        .filter(|r| r["heldout"] == true && r["correct"]["all"] == true)
        .count();
    assert_eq!(j["heldout"]["all"].as_f64().unwrap(), all_ok as f64 / 3.0);
    // Reproducible, whatever the batch size.
    let o = eval_tiny(&eval_jsonl, &root.join("sheet2.png"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read(&sheet),
        read(&root.join("sheet2.png")),
        "batching changed the images"
    );
}

#[test]
fn eval_demo_pools_several_seeds() {
    let (root, data) = dataset("eval-seeds", "2", "32");
    let eval_jsonl = data.join("eval.jsonl");
    let json = root.join("results.json");
    let extra = ["--seeds", "0,7", "--json", json.to_str().unwrap()];
    let o = eval_tiny(&eval_jsonl, &root.join("sheet.png"), &extra);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", stderr(&o));
    assert!(
        stdout.contains("seeds 0, 7") && stdout.contains("seed 7: held-out"),
        "{stdout}"
    );
    // Two passes of the 5 prompts, pooled: prompt i of the second pass uses seed 7 + i.
    let j: serde_json::Value = serde_json::from_slice(&read(&json)).unwrap();
    assert_eq!(j["seeds"], serde_json::json!([0, 7]));
    assert_eq!(
        (j["heldout"]["n"].as_u64(), j["seen"]["n"].as_u64()),
        (Some(6), Some(4))
    );
    let seeds: Vec<u64> = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]);

    let o = eval_tiny(&eval_jsonl, &root.join("s2.png"), &["--seeds", "3,3"]);
    assert_one_line_error(&o, 2, "--seeds lists seed 3 twice");
    let o = eval_tiny(&eval_jsonl, &root.join("s2.png"), &["--seeds", "3", "--seed", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn eval_demo_bad_input() {
    let root = tempdir("eval-bad");
    let pipeline = fixtures_root().join("golden/pipeline");
    let model = pipeline.to_str().unwrap();
    let out = root.join("s.png");
    let out = out.to_str().unwrap();
    let missing = root.join("missing.jsonl");
    let o = eval_demo(&["--model", model, "--data", missing.to_str().unwrap(), "--out", out]);
    assert_one_line_error(&o, 2, "missing.jsonl: no such file");

    let good = r#"{"caption":"a red circle","long_caption":"a small red circle at the center on a blue background","attributes":{"shape":"circle","color":"red","background":"blue","size":"small","position":"center"},"heldout":false}"#;
    let bad = root.join("bad.jsonl");
    std::fs::write(&bad, format!("{good}\n{{\"caption\": 3}}\n")).unwrap();
    let o = eval_demo(&["--model", model, "--data", bad.to_str().unwrap(), "--out", out]);
    assert_one_line_error(&o, 2, "bad.jsonl:2: bad record");
    std::fs::write(&bad, good.replace("\"shape\":\"circle\"", "\"shape\":\"hexagon\"")).unwrap();
    let o = eval_demo(&["--model", model, "--data", bad.to_str().unwrap(), "--out", out]);
    assert_one_line_error(&o, 2, "unknown variant `hexagon`");
    std::fs::write(&bad, good.replace("\"background\":\"blue\"", "\"background\":\"red\"")).unwrap();
    let o = eval_demo(&["--model", model, "--data", bad.to_str().unwrap(), "--out", out]);
    assert_one_line_error(&o, 2, "bad.jsonl:1: the object colour equals the background");
    std::fs::write(&bad, "\n").unwrap();
    let o = eval_demo(&["--model", model, "--data", bad.to_str().unwrap(), "--out", out]);
    assert_one_line_error(&o, 2, "holds no records");

    let ok = root.join("ok.jsonl");
    std::fs::write(&ok, format!("{good}\n")).unwrap();
    let ok = ok.to_str().unwrap();
    let o = eval_demo(&["--model", model, "--data", ok, "--out", out, "--caption", "medium"]);
    assert_one_line_error(&o, 2, "--caption medium");
    let o = eval_demo(&["--model", model, "--data", ok, "--out", "/no/such/dir/s.png"]);
    assert_one_line_error(&o, 2, "the output folder does not exist");
    let o = eval_demo(&[
        "--model",
        root.join("nope").to_str().unwrap(),
        "--data",
        ok,
        "--out",
        out,
    ]);
    assert_one_line_error(&o, 2, "no such model folder");
    let o = eval_demo(&["--model", model, "--data", ok, "--out", out, "--steps", "0"]);
    assert_one_line_error(&o, 2, "--steps must be at least 1");
    // No --model and no built-in model there: a clear error naming the flag.
    let o = bin()
        .args(["eval", "demo", "--data", ok, "--out", out])
        .env("PIXART_BUILTIN", root.join("no-builtin"))
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "pass --model");
}

/// `eval vae` on the tiny random fixture VAE: the originals read back right (the checker on
/// rendered images), the random VAE's reconstructions are counted, and the sheet is written.
#[test]
fn eval_vae_reads_originals_and_reconstructions() {
    let (root, data) = dataset("eval-vae", "6", "64");
    let sheet = root.join("recon.png");
    let o = bin()
        .args(["eval", "vae", "--limit", "5", "--batch", "2", "--vae"])
        .arg(fixtures_root().join("golden/vae/small"))
        .arg("--data")
        .arg(data.join("train.jsonl"))
        .arg("--out")
        .arg(&sheet)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", stderr(&o));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("5 images") && lines[0].contains("PSNR"),
        "{stdout}"
    );
    let originals: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        originals,
        ["originals", "100.0%", "100.0%", "100.0%", "100.0%", "100.0%", "100.0%"],
        "{stdout}"
    );
    assert!(lines[3].starts_with("reconstructions"), "{stdout}");
    // The per size-and-shape counts cover every image once.
    let kinds = lines[4]
        .strip_prefix("shape read back from the reconstructions: ")
        .unwrap_or_else(|| panic!("{stdout}"));
    let counted: usize = kinds
        .split(", ")
        .map(|k| {
            let (ok, n) = k.rsplit(' ').next().unwrap().split_once('/').unwrap();
            assert!(ok.parse::<usize>().unwrap() <= n.parse::<usize>().unwrap(), "{k}");
            n.parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(counted, 5, "{stdout}");
    let img = RgbImage::from_png(&read(&sheet), "recon.png").unwrap();
    assert!(img.width > 5 * 64 && img.height > 64, "{}x{}", img.width, img.height);
    let o = bin()
        .args(["eval", "vae", "--limit", "0", "--data"])
        .arg(data.join("train.jsonl"))
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "--limit");
}
