//! `--text-encoder FILE`: the built-in model's T5 encoder converted to a llama.cpp-named GGUF
//! runs in the pipeline (the tokenizer still from the pipeline's `tokenizer/`): in F32 the images
//! are the bytes the folder gives, in Q8_0 they are close.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use pixart_core::gguf::{GgmlType, GgufWriter};
use pixart_core::weights::WeightFile;
use pixart_pipeline::{
    builtin_model_dir, generate, ComponentOptions, ComponentPaths, Generated, GenerationRequest, PipelineComponents,
    RgbImage, SeededNoise,
};

/// The built-in encoder as a GGUF at `out`, matrices in `ty` where their rows are whole blocks.
fn write_gguf(out: &Path, ty: GgmlType) {
    let dir = pixart_text::loading::text_encoder_dir(&builtin_model_dir().unwrap()).unwrap();
    let file = WeightFile::open(&pixart_text::loading::locate_weights(&dir).unwrap()).unwrap();
    let mut w = GgufWriter::new();
    for name in file.infos().keys() {
        let Some(llama) = pixart_text::single_file::llama_cpp_name(name) else {
            continue;
        };
        let t = file.load(name, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let shape = t.dims().to_vec();
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ty = match ty {
            t if shape.len() == 2 && shape[1].is_multiple_of(t.block_size()) && !llama.contains("rel_b") => t,
            _ => GgmlType::F32,
        };
        let mut bytes = Vec::new();
        pixart_kernels::cpu::quant::quantize(ty, &values, &mut bytes).unwrap();
        w.add_tensor(llama, &shape, ty, bytes).unwrap();
    }
    w.write(out).unwrap();
}

fn images(text_encoder: Option<PathBuf>) -> Vec<RgbImage> {
    let paths = ComponentPaths {
        model: builtin_model_dir().unwrap(),
        text_encoder,
        ..Default::default()
    };
    let c = PipelineComponents::load(&paths, &ComponentOptions::default()).unwrap();
    let req = GenerationRequest {
        prompts: vec!["a large red circle at the top left on a blue background".into()],
        steps: Some(4),
        seed: 5,
        ..Default::default()
    }
    .validate(&c.geometry())
    .unwrap();
    match generate(&c, &req, &mut SeededNoise::new(5), &mut |_| {}, &AtomicBool::new(false)).unwrap() {
        Generated::Finished(out) => out.images,
        _ => panic!("cancelled"),
    }
}

#[test]
fn a_gguf_text_encoder_runs_in_the_pipeline() {
    let tmp = std::env::temp_dir().join(format!("pixart-te-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (f32_file, q8_file) = (tmp.join("te-f32.gguf"), tmp.join("te-q8_0.gguf"));
    write_gguf(&f32_file, GgmlType::F32);
    write_gguf(&q8_file, GgmlType::Q8_0);
    let want = images(None);
    assert_eq!(images(Some(f32_file)), want, "F32 GGUF: the folder's images");
    let q8 = images(Some(q8_file));
    let diff = q8[0]
        .data
        .iter()
        .zip(&want[0].data)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    eprintln!("Q8_0 text encoder: largest pixel difference {diff}/255");
    assert!(diff <= 64, "{diff}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
