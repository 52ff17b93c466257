//! The IDDPM objective against a PyTorch reference of PixArt's `training_losses`
//! (tools/golden/gen_iddpm.py): per-sample loss, mse and vb, and the gradient of the mean loss
//! with respect to the model output (which checks the stop-gradient on ε in vb).
use candle_core::{DType, Device, Var};
use pixart_core::testing::{fixtures_root, max_abs_diff};
use pixart_train::diffusion::GaussianDiffusion;

#[test]
fn iddpm_losses_and_gradient_match_pytorch() {
    let path = fixtures_root().join("golden/train/iddpm.safetensors");
    let g = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let d = GaussianDiffusion::linear(1000).unwrap();
    let betas: Vec<f64> = g["betas"].to_vec1().unwrap();
    let ac: Vec<f64> = g["alphas_cumprod"].to_vec1().unwrap();
    for i in 0..1000 {
        assert!((betas[i] - d.betas[i]).abs() < 1e-15, "beta {i}");
        assert!((ac[i] - d.alphas_cumprod[i]).abs() < 1e-12, "alphas_cumprod {i}");
    }
    let t: Vec<usize> = g["t"].to_vec1::<i64>().unwrap().iter().map(|&v| v as usize).collect();
    let x_t = d.q_sample(&g["x0"], &t, &g["noise"]).unwrap();
    let (dx, _) = max_abs_diff(&x_t, &g["x_t"]);
    assert!(dx < 1e-6, "x_t differs by {dx}");
    let out = Var::from_tensor(&g["model_output"]).unwrap();
    let l = d
        .training_losses(out.as_tensor(), &g["x0"], &x_t, &g["noise"], &t)
        .unwrap();
    for (name, ours) in [("loss", &l.loss), ("mse", &l.mse), ("vb", &l.vb)] {
        let r = &g[name];
        let (diff, i) = max_abs_diff(ours, r);
        let scale = r.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * scale.max(1.0), "{name}[{i}] differs by {diff}");
    }
    let grads = l.loss.mean_all().unwrap().backward().unwrap();
    let grad = grads.get(out.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
    let r = &g["grad_model_output"];
    let (diff, i) = max_abs_diff(&grad, r);
    let scale = r.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-5 * scale, "grad[{i}] differs by {diff} (scale {scale})");
    // The stop-gradient: vb alone sends nothing into the ε channels.
    let gv = l.vb.sum_all().unwrap().backward().unwrap();
    let g_eps = gv.get(out.as_tensor()).unwrap().narrow(1, 0, 4).unwrap();
    let z = g_eps.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(z, 0.0, "vb must not train the ε prediction");
}
