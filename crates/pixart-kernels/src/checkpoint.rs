//! Gradient checkpointing (candle has none; candle issue #1423), used per transformer block.
//!
//! A checkpointed function of three tracked tensors (for a block: the hidden states (b, n, c),
//! the modulation `t0` (b, 6c) and the cross-attention keys and values stacked
//! (2, b, heads, l, d)) is one `CustomOp3`. Its forward runs the function and keeps only the
//! output, so the graph holds no activations inside it. Its backward runs the function again
//! on fresh `Var`s, backpropagates `sum(out · grad_out)` locally, returns the input gradients
//! and adds the gradients of the model's parameters to a [`GradSink`], which the trainer
//! merges with the outer backward's gradients.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, TensorId, Var};

/// Gradients of parameters that checkpointed blocks computed in their own backward.
pub struct GradSink {
    vars: Vec<Var>,
    grads: Mutex<HashMap<TensorId, Tensor>>,
}

impl std::fmt::Debug for GradSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradSink")
            .field("vars", &self.vars.len())
            .finish_non_exhaustive()
    }
}

impl GradSink {
    /// A sink for the gradients of `vars` (the trainable parameters).
    pub fn new(vars: Vec<Var>) -> Self {
        Self {
            vars,
            grads: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the gradients collected since the last call, by the parameter's tensor id.
    pub fn take(&self) -> HashMap<TensorId, Tensor> {
        self.grads
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default()
    }

    fn add(&self, id: TensorId, g: Tensor) -> candle_core::Result<()> {
        let mut all = self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink poisoned".into()))?;
        let g = match all.remove(&id) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        all.insert(id, g);
        Ok(())
    }
}

/// The function a checkpoint recomputes: three tensors in, one out.
pub type Checkpointed = Arc<dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync>;

struct CheckpointOp {
    f: Checkpointed,
    sink: Arc<GradSink>,
}

/// A CPU tensor (untracked) holding the data of a contiguous storage.
fn tensor_of(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("checkpoint: input not contiguous".into()))?;
    let shape = l.shape().clone();
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], shape, &Device::Cpu),
        CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], shape, &Device::Cpu),
        CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], shape, &Device::Cpu),
        _ => Err(candle_core::Error::Msg("checkpoint: unsupported dtype".into())),
    }
}

fn storage_of(t: &Tensor) -> candle_core::Result<CpuStorage> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => CpuStorage::F32(t.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(t.to_vec1()?),
        DType::F16 => CpuStorage::F16(t.to_vec1()?),
        d => return Err(candle_core::Error::Msg(format!("checkpoint: unsupported dtype {d:?}"))),
    })
}

impl CustomOp3 for CheckpointOp {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = (self.f)(&tensor_of(s1, l1)?, &tensor_of(s2, l2)?, &tensor_of(s3, l3)?)?;
        Ok((storage_of(&out)?, out.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t0: &Tensor,
        kv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xv, tv, kvv) = (
            Var::from_tensor(&x.detach())?,
            Var::from_tensor(&t0.detach())?,
            Var::from_tensor(&kv.detach())?,
        );
        let out = (self.f)(xv.as_tensor(), tv.as_tensor(), kvv.as_tensor())?;
        let s = out
            .to_dtype(DType::F32)?
            .mul(&grad.detach().to_dtype(DType::F32)?)?
            .sum_all()?;
        let grads = s.backward()?;
        for v in &self.sink.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                self.sink.add(v.as_tensor().id(), g.clone())?;
            }
        }
        let get = |v: &Var| grads.get(v.as_tensor()).cloned();
        Ok((get(&xv), get(&tv), get(&kvv)))
    }
}

/// `f(a, b, c)` checkpointed (see the module docs): the graph keeps the three inputs and the
/// output only; the parameters' gradients of the recomputation go to `sink`. CPU only.
pub fn checkpoint(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    f: Checkpointed,
    sink: &Arc<GradSink>,
) -> candle_core::Result<Tensor> {
    if !a.device().is_cpu() {
        candle_core::bail!("gradient checkpointing runs on the CPU only");
    }
    let op = CheckpointOp { f, sink: sink.clone() };
    a.contiguous()?.apply_op3(&b.contiguous()?, &c.contiguous()?, op)
}
