//! The T5 encoder kept between generations, and the cache of recent texts' features
//! (`pixart_pipeline::text`), on the built-in model: the images are the same bytes as with a
//! fresh encoder, and the encoder is loaded only when a text is new and none is kept.
use std::sync::atomic::AtomicBool;

use pixart_pipeline::{
    builtin_model_dir, generate, ComponentOptions, ComponentPaths, Generated, GenerationRequest, PipelineComponents,
    Progress, RgbImage, SeededNoise, Stage,
};

fn builtin(keep: bool) -> PipelineComponents {
    let paths = ComponentPaths {
        model: builtin_model_dir().unwrap(),
        ..Default::default()
    };
    let opts = ComponentOptions {
        keep_text_encoder: keep,
        ..Default::default()
    };
    PipelineComponents::load(&paths, &opts).unwrap()
}

/// The images and the stages that ran.
fn run(c: &PipelineComponents, prompts: &[&str]) -> (Vec<RgbImage>, Vec<Stage>) {
    let req = GenerationRequest {
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        steps: Some(4),
        seed: 11,
        ..Default::default()
    }
    .validate(&c.geometry())
    .unwrap();
    let mut stages = Vec::new();
    let mut on = |p: Progress| {
        if let Progress::Stage(s) = p {
            stages.push(s);
        }
    };
    let out = generate(c, &req, &mut SeededNoise::new(11), &mut on, &AtomicBool::new(false)).unwrap();
    let Generated::Finished(out) = out else {
        panic!("cancelled")
    };
    (out.images, stages)
}

const RED: &str = "a large red circle at the top left on a blue background";
const SQUARE: &str = "a small white square at the center on a green background";
const TRIANGLE: &str = "a large yellow triangle at the center on a black background";

#[test]
fn cached_and_kept_features_give_the_same_images() {
    // Reference: a fresh encoder for each run (no cache shared between the components).
    let (want_a, _) = run(&builtin(false), &[RED, SQUARE]);
    let (want_b, _) = run(&builtin(false), &[TRIANGLE, RED]);

    // Loaded per run: the first run loads T5 (3 texts with the empty negative prompt); the
    // same prompts again are all cached and load nothing; a new prompt loads it again.
    let c = builtin(false);
    let (a, stages) = run(&c, &[RED, SQUARE]);
    assert_eq!(a, want_a);
    assert!(stages.contains(&Stage::LoadTextEncoder), "{stages:?}");
    assert_eq!(c.text.cached(), 3);
    let (a, stages) = run(&c, &[RED, SQUARE]);
    assert_eq!(a, want_a);
    assert!(!stages.contains(&Stage::LoadTextEncoder), "{stages:?}");
    assert!(stages.contains(&Stage::EncodeText));
    let (b, stages) = run(&c, &[TRIANGLE, RED]);
    assert_eq!(b, want_b);
    assert!(stages.contains(&Stage::LoadTextEncoder), "{stages:?}");
    assert_eq!(c.text.cached(), 4);

    // Kept: never loaded during a run.
    let c = builtin(true);
    assert!(c.text.resident().is_some());
    for (prompts, want) in [([RED, SQUARE], &want_a), ([TRIANGLE, RED], &want_b)] {
        let (got, stages) = run(&c, &prompts);
        assert_eq!(&got, want);
        assert!(!stages.contains(&Stage::LoadTextEncoder), "{stages:?}");
    }
}
