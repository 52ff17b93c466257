//! Vectorised f32 row kernels shared by the transformer, the text encoder and the VAE: e^x,
//! softmax over a row, tanh-GELU and SiLU. Plain loops written so that the compiler vectorises
//! them, compiled for AVX-512F or AVX2+FMA and chosen at run time (scalar elsewhere). candle
//! runs the same operations with scalar libm calls.

/// How `a·b + c` is computed: [`Fused`] (one rounding, a single instruction where the caller is
/// compiled with FMA) or [`Separate`] (a multiply and an add; without FMA hardware `mul_add`
/// would be a slow library call).
pub trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `a.mul_add(b, c)`: for code compiled with the `fma` target feature.
pub struct Fused;

/// `a * b + c`.
pub struct Separate;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// e^x for f32 with a relative error of about 1e-7 (range reduction to |r| <= ln2/2 and a
/// degree-7 polynomial). Inputs below -87.3 give ~1e-38 instead of 0, which is immaterial for
/// softmax and GELU.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_with::<Separate>(x)
}

/// [`exp_f32`] with the multiply-adds of `M`.
#[inline(always)]
pub fn exp_with<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let x = x.clamp(-87.3, 88.7);
    let kr = M::mul_add(x, LOG2E, ROUND); // its low mantissa bits hold round(x·log2 e) + 2^22
    let k = kr - ROUND;
    let r = M::mul_add(-k, LN2_LO, M::mul_add(-k, LN2_HI, x));
    let mut p = 1.0 / 5040.0;
    p = M::mul_add(p, r, 1.0 / 720.0);
    p = M::mul_add(p, r, 1.0 / 120.0);
    p = M::mul_add(p, r, 1.0 / 24.0);
    p = M::mul_add(p, r, 1.0 / 6.0);
    p = M::mul_add(p, r, 0.5);
    p = M::mul_add(p, r, 1.0);
    p = M::mul_add(p, r, 1.0);
    // 2^k from the bits of `kr` (integer lanes; an `as i32` cast would be a saturating
    // conversion that the compiler does not vectorise).
    let scale = f32::from_bits(kr.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    p * scale
}

/// Lanes of the reductions (max, sum): one AVX-512 vector, so that they vectorise.
const LANES: usize = 16;

/// Replaces `row` by e^(x - max(row)) and returns 1 / their sum.
#[inline(always)]
pub(crate) fn exp_sum<M: MulAdd>(row: &mut [f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            if *v > *m {
                *m = *v;
            }
        }
    }
    let mut max = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max = lanes.iter().copied().fold(max, f32::max);
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *v = exp_with::<M>(*v - max);
            *s += *v;
        }
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_with::<M>(*v - max);
        tail += *v;
    }
    1.0 / (sums.iter().sum::<f32>() + tail)
}

#[inline(always)]
fn softmax_row<M: MulAdd>(row: &mut [f32]) {
    let inv = exp_sum::<M>(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn gelu_slice<M: MulAdd>(xs: &mut [f32]) {
    // 0.5·x·(1 + tanh(u)) = x · sigmoid(2u), u = √(2/π)·(x + 0.044715·x³)
    const K: f32 = 0.797_884_6; // √(2/π)
    for v in xs.iter_mut() {
        let x = *v;
        let u = K * (x + 0.044_715 * x * x * x);
        *v = x / (1.0 + exp_with::<M>(-2.0 * u));
    }
}

#[inline(always)]
fn silu_slice<M: MulAdd>(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        *v /= 1.0 + exp_with::<M>(-*v);
    }
}

/// The widest vector level the CPU offers for these loops, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Scalar,
    Avx2,
    Avx512,
}

fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Scalar
    })
}

/// Whether the CPU has AVX2 and FMA (the loops here and the fused norms use them).
pub fn has_avx2() -> bool {
    level() != Level::Scalar
}

/// Defines `pub fn $name(xs: &mut [f32])` running `$body` compiled for the CPU's level.
macro_rules! dispatched {
    ($(#[$doc:meta])* $name:ident => $body:ident) => {
        $(#[$doc])*
        pub fn $name(xs: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512(xs: &mut [f32]) {
                    $body::<Fused>(xs)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2(xs: &mut [f32]) {
                    $body::<Fused>(xs)
                }
                match level() {
                    // SAFETY: the CPU reports the features each function is compiled for.
                    Level::Avx512 => return unsafe { avx512(xs) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { avx2(xs) },
                    Level::Scalar => {}
                }
            }
            $body::<Separate>(xs)
        }
    };
}

dispatched!(
    /// Softmax of one row in place (max-subtracted, f32).
    softmax_in_place => softmax_row
);

dispatched!(
    /// tanh-approximated GELU (`gelu_new`, PyTorch's `approximate="tanh"`) in place.
    gelu_tanh_in_place => gelu_slice
);

dispatched!(
    /// SiLU (`x · sigmoid(x)`) in place.
    silu_in_place => silu_slice
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        // Both forms of the multiply-adds (the fused one as the vector kernels use it).
        for (name, exp) in [("separate", exp_f32 as fn(f32) -> f32), ("fused", exp_with::<Fused>)] {
            let mut worst = 0f64;
            let mut x = -87.0f32;
            while x < 88.0 {
                let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
                worst = worst.max(rel);
                x += 0.0137;
            }
            assert!(worst < 5e-7, "{name}: worst relative error {worst}");
        }
    }

    #[test]
    fn softmax_and_gelu_match_f64() {
        let xs: Vec<f32> = (0..333).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.17).collect();
        let mut s = xs.clone();
        softmax_in_place(&mut s);
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = xs.iter().map(|&x| (x as f64 - max).exp()).sum();
        for (&x, &y) in xs.iter().zip(&s) {
            let want = (x as f64 - max).exp() / sum;
            assert!(
                (y as f64 - want).abs() < 1e-6 * want.max(1e-3),
                "softmax({x}) = {y}, want {want}"
            );
        }
        let mut si = xs.clone();
        silu_in_place(&mut si);
        for (&x, &y) in xs.iter().zip(&si) {
            let want = x as f64 / (1.0 + (-x as f64).exp());
            assert!(
                (y as f64 - want).abs() < 1e-6 * want.abs().max(1.0),
                "silu({x}) = {y}, want {want}"
            );
        }
        let mut g = xs.clone();
        gelu_tanh_in_place(&mut g);
        for (&x, &y) in xs.iter().zip(&g) {
            let x = x as f64;
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!(
                (y as f64 - want).abs() < 2e-6 * want.abs().max(1.0),
                "gelu({x}) = {y}, want {want}"
            );
        }
    }
}
