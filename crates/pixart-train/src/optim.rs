//! Optimisers with savable state, the learning-rate schedule, gradient clipping and EMA.
//!
//! - [`AdamW`]: PyTorch `torch.optim.AdamW` semantics (decoupled weight decay, bias correction).
//! - [`Came`]: CAME (Luo et al., ACL 2023), as `came-pytorch` 0.1.3 `CAME.step` implements it
//!   and PixArt-Σ trains with it: factored second moments for tensors of rank ≥ 2, update
//!   clipping by RMS, and a factored confidence (residual) estimate; betas (0.9, 0.999, 0.9999),
//!   eps (1e-30, 1e-16).
//! - [`warmup_factor`]: diffusers' `get_constant_schedule_with_warmup`.
//! - [`clip_grad_norm`]: `torch.nn.utils.clip_grad_norm_` (global L2 norm, coefficient
//!   max / (norm + 1e-6) clamped to 1).
//!
//! Parameters are `Var`s keyed by their checkpoint names; optimiser state is a flat map of
//! tensors (`<param>.<slot>`) so that checkpoints store it in safetensors.
use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var, D};
use pixart_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Gradients by parameter name.
pub type Grads = BTreeMap<String, Tensor>;

/// Which optimiser, and its hyper-parameters (`[optimizer]` in a training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    AdamW {
        #[serde(default = "default_betas2")]
        betas: [f64; 2],
        #[serde(default = "default_adam_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Came {
        #[serde(default = "default_betas3")]
        betas: [f64; 3],
        #[serde(default = "default_came_eps")]
        eps: [f64; 2],
        #[serde(default)]
        weight_decay: f64,
    },
}

/// A finite value above zero (also the training config's checks use it).
pub(crate) fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn default_betas2() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_betas3() -> [f64; 3] {
    [0.9, 0.999, 0.9999]
}
fn default_came_eps() -> [f64; 2] {
    [1e-30, 1e-16]
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::AdamW {
            betas: default_betas2(),
            eps: default_adam_eps(),
            weight_decay: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// Rejects impossible values, naming the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let beta_ok = |b: f64| (0.0..1.0).contains(&b);
        match self {
            OptimizerConfig::AdamW {
                betas,
                eps,
                weight_decay,
            } => {
                if !betas.iter().all(|&b| beta_ok(b)) {
                    return Err(format!("optimizer.betas must be in [0, 1), got {betas:?}"));
                }
                if !positive(*eps) {
                    return Err(format!("optimizer.eps must be positive, got {eps}"));
                }
                if weight_decay.is_nan() || *weight_decay < 0.0 {
                    return Err(format!("optimizer.weight_decay must be ≥ 0, got {weight_decay}"));
                }
            }
            OptimizerConfig::Came {
                betas,
                eps,
                weight_decay,
            } => {
                if !betas.iter().all(|&b| beta_ok(b)) {
                    return Err(format!("optimizer.betas must be in [0, 1), got {betas:?}"));
                }
                if !eps.iter().all(|&e| positive(e)) {
                    return Err(format!("optimizer.eps must be positive, got {eps:?}"));
                }
                if weight_decay.is_nan() || *weight_decay < 0.0 {
                    return Err(format!("optimizer.weight_decay must be ≥ 0, got {weight_decay}"));
                }
            }
        }
        Ok(())
    }

    /// Builds the optimiser over `params`.
    pub fn build(&self, params: BTreeMap<String, Var>) -> Box<dyn Optimizer> {
        match *self {
            OptimizerConfig::AdamW {
                betas,
                eps,
                weight_decay,
            } => Box::new(AdamW {
                params,
                betas,
                eps,
                weight_decay,
                step: 0,
                state: HashMap::new(),
            }),
            OptimizerConfig::Came {
                betas,
                eps,
                weight_decay,
            } => Box::new(Came {
                params,
                betas,
                eps,
                weight_decay,
                step: 0,
                state: HashMap::new(),
            }),
        }
    }
}

/// An optimiser over named `Var`s whose state can be saved and restored exactly.
pub trait Optimizer: Send {
    /// Applies one update with learning rate `lr`; parameters without a gradient are skipped.
    fn step(&mut self, grads: &Grads, lr: f64) -> Result<()>;
    /// Updates applied so far.
    fn steps(&self) -> u64;
    /// The state as named tensors (`<param>.<slot>`) plus the step count.
    fn state(&self) -> (HashMap<String, Tensor>, u64);
    /// Restores a state from [`Optimizer::state`]; every slot must fit its parameter.
    fn load_state(&mut self, state: HashMap<String, Tensor>, steps: u64) -> Result<()>;
    /// The parameters.
    fn params(&self) -> &BTreeMap<String, Var>;
}

fn check_state(params: &BTreeMap<String, Var>, state: &HashMap<String, Tensor>) -> Result<()> {
    for key in state.keys() {
        let owner = key.rsplit_once('.').map(|(p, _)| p).unwrap_or(key);
        if !params.contains_key(owner) {
            return Err(Error::InvalidInput(format!(
                "optimizer state `{key}` belongs to no parameter of this model (a checkpoint of another architecture?)"
            )));
        }
    }
    Ok(())
}

/// AdamW (see the module docs).
pub struct AdamW {
    params: BTreeMap<String, Var>,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    step: u64,
    state: HashMap<String, Tensor>,
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let [b1, b2] = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        for (name, var) in &self.params {
            let Some(g) = grads.get(name) else { continue };
            let g = g.to_dtype(DType::F32)?;
            let p = var.as_tensor().to_dtype(DType::F32)?;
            let m_key = format!("{name}.exp_avg");
            let v_key = format!("{name}.exp_avg_sq");
            let m = match self.state.get(&m_key) {
                Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                None => (&g * (1.0 - b1))?,
            };
            let v = match self.state.get(&v_key) {
                Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                None => (g.sqr()? * (1.0 - b2))?,
            };
            let p = if self.weight_decay > 0.0 {
                (&p * (1.0 - lr * self.weight_decay))?
            } else {
                p
            };
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            let p = (p - (upd * lr)?)?;
            var.set(&p.to_dtype(var.dtype())?)?;
            self.state.insert(m_key, m);
            self.state.insert(v_key, v);
        }
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.step
    }

    fn state(&self) -> (HashMap<String, Tensor>, u64) {
        (self.state.clone(), self.step)
    }

    fn load_state(&mut self, state: HashMap<String, Tensor>, steps: u64) -> Result<()> {
        check_state(&self.params, &state)?;
        self.state = state;
        self.step = steps;
        Ok(())
    }

    fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }
}

/// CAME (see the module docs).
pub struct Came {
    params: BTreeMap<String, Var>,
    betas: [f64; 3],
    eps: [f64; 2],
    weight_decay: f64,
    step: u64,
    state: HashMap<String, Tensor>,
}

/// `_approx_sq_grad`: rsqrt(row / mean(row)) ⊗ rsqrt(col). row: (..., r), col: (..., c)
/// -> (..., r, c).
fn approx_sq_grad(row: &Tensor, col: &Tensor) -> Result<Tensor> {
    let r = row
        .broadcast_div(&row.mean_keepdim(D::Minus1)?)?
        .sqrt()?
        .recip()?
        .unsqueeze(D::Minus1)?; // (..., r, 1)
    let c = col.unsqueeze(D::Minus2)?.sqrt()?.recip()?; // (..., 1, c)
    Ok(r.broadcast_mul(&c)?)
}

/// Exponential moving average of a state slot: `old·β + new·(1−β)`, or `new·(1−β)` from zero.
fn ema_slot(state: &HashMap<String, Tensor>, key: &str, new: &Tensor, beta: f64) -> Result<Tensor> {
    Ok(match state.get(key) {
        Some(old) => ((old * beta)? + (new * (1.0 - beta))?)?,
        None => (new * (1.0 - beta))?,
    })
}

fn rms(t: &Tensor) -> Result<f64> {
    let n = t.elem_count().max(1) as f64;
    let s = t.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((s / n).sqrt())
}

impl Optimizer for Came {
    fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let [b1, b2, b3] = self.betas;
        let [eps1, eps2] = self.eps;
        for (name, var) in &self.params {
            let Some(g) = grads.get(name) else { continue };
            let g = g.to_dtype(DType::F32)?;
            let factored = g.rank() >= 2;
            let key = |slot: &str| format!("{name}.{slot}");
            let sq = (g.sqr()? + eps1)?;
            let mut update = if factored {
                let row = ema_slot(&self.state, &key("exp_avg_sq_row"), &sq.mean(D::Minus1)?, b2)?;
                let col = ema_slot(&self.state, &key("exp_avg_sq_col"), &sq.mean(D::Minus2)?, b2)?;
                let u = approx_sq_grad(&row, &col)?.mul(&g)?;
                self.state.insert(key("exp_avg_sq_row"), row);
                self.state.insert(key("exp_avg_sq_col"), col);
                u
            } else {
                let v = ema_slot(&self.state, &key("exp_avg_sq"), &sq, b2)?;
                let u = v.sqrt()?.recip()?.mul(&g)?;
                self.state.insert(key("exp_avg_sq"), v);
                u
            };
            // clip_threshold 1.0: divide by max(rms(update), 1).
            let denom = rms(&update)?.max(1.0);
            update = (update / denom)?;
            let m = ema_slot(&self.state, &key("exp_avg"), &update, b1)?;
            let res = ((&update - &m)?.sqr()? + eps2)?;
            let update = if factored {
                let rr = ema_slot(&self.state, &key("exp_avg_res_row"), &res.mean(D::Minus1)?, b3)?;
                let rc = ema_slot(&self.state, &key("exp_avg_res_col"), &res.mean(D::Minus2)?, b3)?;
                let u = approx_sq_grad(&rr, &rc)?.mul(&m)?;
                self.state.insert(key("exp_avg_res_row"), rr);
                self.state.insert(key("exp_avg_res_col"), rc);
                u
            } else {
                m.clone()
            };
            self.state.insert(key("exp_avg"), m);
            let mut p = var.as_tensor().to_dtype(DType::F32)?;
            if self.weight_decay > 0.0 {
                p = (&p * (1.0 - self.weight_decay * lr))?;
            }
            let p = (p - (update * lr)?)?;
            var.set(&p.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.step
    }

    fn state(&self) -> (HashMap<String, Tensor>, u64) {
        (self.state.clone(), self.step)
    }

    fn load_state(&mut self, state: HashMap<String, Tensor>, steps: u64) -> Result<()> {
        check_state(&self.params, &state)?;
        self.state = state;
        self.step = steps;
        Ok(())
    }

    fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }
}

/// diffusers' `get_constant_schedule_with_warmup`: the LR factor at optimiser step `step`
/// (0-based): `step / warmup` during warm-up, then 1.
pub fn warmup_factor(step: u64, warmup: u64) -> f64 {
    LrSchedule::Constant.factor(step, warmup, u64::MAX)
}

/// `[train] lr_schedule`: how the learning rate moves after the linear warm-up, matching
/// diffusers' `optimization.py` (0.42.1) schedules of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Stays at `lr` (PixArt's; `get_constant_schedule_with_warmup`).
    #[default]
    Constant,
    /// Half a cosine from `lr` down to 0 at the last step (`get_cosine_schedule_with_warmup`).
    Cosine,
    /// A straight line from `lr` down to 0 at the last step (`get_linear_schedule_with_warmup`).
    Linear,
}

impl LrSchedule {
    /// The factor on the base LR for optimiser step `step` (0-based) of `total`.
    pub fn factor(self, step: u64, warmup: u64, total: u64) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        // The fraction of the post-warm-up steps done, 0 at the first.
        let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
            LrSchedule::Linear => (1.0 - progress).max(0.0),
        }
    }
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm`; returns the
/// norm before clipping. Non-finite norms are an error (the step would poison the weights).
pub fn clip_grad_norm(grads: &mut Grads, max_norm: Option<f64>) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.values() {
        total += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if !norm.is_finite() {
        return Err(Error::InvalidInput(format!(
            "the gradient norm is {norm}: training diverged (lower the learning rate)"
        )));
    }
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.values_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

/// An exponential moving average of the parameters.
pub struct Ema {
    pub decay: f64,
    pub shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    /// Starts from the current parameter values.
    pub fn new(decay: f64, params: &BTreeMap<String, Var>) -> Result<Self> {
        let shadow = params
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(DType::F32)?.copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self { decay, shadow })
    }

    /// `shadow ← decay·shadow + (1−decay)·param`.
    pub fn update(&mut self, params: &BTreeMap<String, Var>) -> Result<()> {
        for (k, v) in params {
            if let Some(s) = self.shadow.get_mut(k) {
                let p = v.as_tensor().detach().to_dtype(DType::F32)?;
                // Detached: otherwise each shadow keeps the op graph back to the first one
                // (the memory grew by the model's size every step).
                *s = ((&*s * self.decay)? + (p * (1.0 - self.decay))?)?.detach();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The shadow weights must not track ops: each would keep the graph back to the first
    /// update alive (a run with EMA grew by the model's size per step until the OOM killer).
    #[test]
    fn ema_shadow_is_detached_and_averages() -> Result<()> {
        let var = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &Device::Cpu)?)?;
        let params = BTreeMap::from([("w".to_string(), var.clone())]);
        let mut ema = Ema::new(0.5, &params)?;
        for _ in 0..3 {
            var.set(&Tensor::new(&[3f32, 6.0], &Device::Cpu)?)?;
            ema.update(&params)?;
            assert!(!ema.shadow["w"].track_op());
        }
        // 1 → 2 → 2.5 → 2.75, 2 → 4 → 5 → 5.5
        assert_eq!(ema.shadow["w"].to_vec1::<f32>()?, vec![2.75, 5.5]);
        Ok(())
    }
}
