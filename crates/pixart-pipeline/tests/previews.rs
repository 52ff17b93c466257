//! Live previews ([`Previews`]) on the built-in model: each preview is the image the step's
//! denoised estimate decodes to, the last one (after DPM-Solver++'s final step, whose result is
//! that estimate) is the final image, and asking for previews changes nothing in the output.
use std::sync::atomic::AtomicBool;

use pixart_pipeline::{
    builtin_model_dir, generate, ComponentOptions, ComponentPaths, Generated, GenerationRequest, Output,
    PipelineComponents, Previews, Progress, RgbImage, SeededNoise,
};

fn builtin() -> PipelineComponents {
    let paths = ComponentPaths {
        model: builtin_model_dir().unwrap(),
        ..Default::default()
    };
    PipelineComponents::load(&paths, &ComponentOptions::default()).unwrap()
}

fn request(previews: Previews, steps: usize) -> GenerationRequest {
    GenerationRequest {
        prompts: vec![
            "a large red circle at the top left on a blue background".into(),
            "a small white square at the center on a green background".into(),
        ],
        steps: Some(steps),
        seed: 7,
        previews,
        ..Default::default()
    }
}

/// The output and every preview as (step, total, images).
fn run(c: &PipelineComponents, req: GenerationRequest) -> (Output, Vec<(usize, usize, Vec<RgbImage>)>) {
    let req = req.validate(&c.geometry()).unwrap();
    let mut previews = Vec::new();
    let mut on = |p: Progress| {
        if let Progress::Preview { done, total, images } = p {
            previews.push((done, total, images.as_ref().clone()));
        }
    };
    let out = generate(
        c,
        &req,
        &mut SeededNoise::new(req.seed),
        &mut on,
        &AtomicBool::new(false),
    )
    .unwrap();
    let Generated::Finished(out) = out else {
        panic!("cancelled")
    };
    (out, previews)
}

fn mean_abs(a: &RgbImage, b: &RgbImage) -> f64 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| x.abs_diff(*y) as f64)
        .sum::<f64>()
        / a.data.len() as f64
}

#[test]
fn previews_show_the_denoised_estimate_and_change_nothing() {
    let c = builtin();
    let (plain, none) = run(&c, request(Previews::Off, 8));
    assert!(none.is_empty());
    let (out, previews) = run(&c, request(Previews::Every(1), 8));
    // The output does not depend on the previews.
    assert_eq!(out.images, plain.images);
    assert_eq!(out.timings.previews.len(), 8);
    assert_eq!(
        previews.iter().map(|(d, t, _)| (*d, *t)).collect::<Vec<_>>(),
        (1..=8).map(|d| (d, 8)).collect::<Vec<_>>()
    );
    for (_, _, images) in &previews {
        assert_eq!(images.len(), 2);
        assert!(images.iter().all(|i| (i.width, i.height) == (64, 64)));
    }
    // DPM-Solver++'s last step returns its data prediction: the last preview is the image.
    let last = &previews[7].2;
    for (k, (preview, image)) in last.iter().zip(&out.images).enumerate() {
        let d = mean_abs(preview, image);
        assert!(d < 0.01, "image {k}: the last preview differs by {d} on average");
    }
    // The estimates move to the image: the first preview is far from it, the one before the
    // last close. (They need not get closer at every step: this small model's data prediction
    // swings under guidance 4.5, e.g. image 1's background at steps 4 to 6;
    // docs/images/previews.png.)
    for k in 0..2 {
        let first = mean_abs(&previews[0].2[k], &out.images[k]);
        let before_last = mean_abs(&previews[6].2[k], &out.images[k]);
        eprintln!("image {k}: preview 1 differs by {first:.2}, preview 7 by {before_last:.2} (of 255)");
        assert!(
            first > 10.0 && before_last < 5.0,
            "image {k}: {first} then {before_last}"
        );
    }
}

#[test]
fn previews_every_n_steps_and_within_the_budget() {
    let c = builtin();
    let (_, every3) = run(&c, request(Previews::Every(3), 8));
    assert_eq!(every3.iter().map(|p| p.0).collect::<Vec<_>>(), vec![3, 6]);
    // Auto: the first after step 1, none after the last step.
    let (out, auto) = run(&c, request(Previews::Auto, 12));
    assert_eq!(auto.first().map(|p| p.0), Some(1));
    assert!(
        auto.iter().all(|p| p.0 < 12),
        "{:?}",
        auto.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    let spent: f64 = out.timings.previews.iter().sum();
    let denoise: f64 = out.timings.steps.iter().sum();
    eprintln!(
        "auto: {} previews at steps {:?}, {spent:.3} s against {denoise:.3} s of steps",
        auto.len(),
        auto.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    // Within a quarter of the denoising time, give or take the one preview the rule allows
    // before anything was measured.
    let first = out.timings.previews.first().copied().unwrap_or(0.0);
    assert!(spent - first <= 0.25 * denoise + 1e-3, "{spent} s of previews");
    assert!(GenerationRequest {
        previews: Previews::Every(0),
        ..request(Previews::Off, 4)
    }
    .validate(&c.geometry())
    .unwrap_err()
    .to_string()
    .contains("previews every 0 steps"));
}
