//! ggml's block formats: dequantization of every type we read, quantization of the ones
//! gguf-py can write (BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1).
//!
//! Both follow gguf-py 0.19.0 `gguf/quants.py` (llama.cpp's Python port of
//! `ggml/src/ggml-quants.c`, `dequantize_row_*` and `quantize_row_*_ref`) operation for
//! operation, in f32 and without fused multiply-adds, so the results are bit for bit those of
//! gguf-py (tests/gguf_golden.rs checks every type against its output). The code is our own;
//! where a bit layout is not obvious the comment gives gguf-py's reshape it mirrors.
use half::{bf16, f16};
use pixart_core::gguf::{GgmlType, QK_K};

/// The f16 at `b[at..at + 2]`, as f32.
#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `data` (whole blocks of `ty`) into `out`, one f32 per element.
///
/// Errors (no panic) when `data` is not a whole number of blocks or `out` does not have one
/// slot per element.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !data.len().is_multiple_of(ts) || data.len() / ts * bs != out.len() {
        return Err(format!(
            "{} bytes of {ty} do not hold {} elements",
            data.len(),
            out.len()
        ));
    }
    for (b, o) in data.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        dequantize_block(ty, b, o);
    }
    Ok(())
}

/// Dequantizes one block `b` (`ty.type_size()` bytes) into `o` (`ty.block_size()` values).
#[inline]
pub fn dequantize_block(ty: GgmlType, b: &[u8], o: &mut [f32]) {
    match ty {
        GgmlType::F32 => o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => o[0] = f16_at(b, 0),
        GgmlType::BF16 => o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => {
            // qs (n, 1, 1, 16) >> [0, 4]: element j from the low nibble of qs[j], 16 + j high.
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                o[j] = d * ((qs[j] & 0x0F) as i8 - 8) as f32;
                o[j + 16] = d * ((qs[j] >> 4) as i8 - 8) as f32;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qs = &b[4..20];
            for j in 0..16 {
                o[j] = d * (qs[j] & 0x0F) as f32 + m;
                o[j + 16] = d * (qs[j] >> 4) as f32 + m;
            }
        }
        GgmlType::Q5_0 => {
            // qh: a little-endian u32, bit j the fifth bit of element j.
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for j in 0..16 {
                let lo = (qs[j] & 0x0F) | (((qh >> j) & 1) as u8) << 4;
                let hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) as u8) << 4;
                o[j] = d * (lo as i8 - 16) as f32;
                o[j + 16] = d * (hi as i8 - 16) as f32;
            }
        }
        GgmlType::Q5_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for j in 0..16 {
                let lo = (qs[j] & 0x0F) | (((qh >> j) & 1) as u8) << 4;
                let hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) as u8) << 4;
                o[j] = d * lo as f32 + m;
                o[j + 16] = d * hi as f32 + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                *o = (q as i8) as f32 * d;
            }
        }
        GgmlType::Q2_K => {
            // scales[16] | qs[64] | d | dmin. qs (n, 2, 1, 32) >> [0, 2, 4, 6]: element
            // 128 h + 32 s + j is bits 2s of qs[32 h + j]; groups of 16 share a scale.
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (e, o) in o.iter_mut().enumerate().take(QK_K) {
                let (h, s, j) = (e / 128, (e / 32) % 4, e % 32);
                let q = (qs[32 * h + j] >> (2 * s)) & 3;
                let sc = scales[e / 16];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                *o = dl * q as f32 - ml;
            }
        }
        GgmlType::Q3_K => {
            // hmask[32] | qs[64] | scales[12] | d. Sixteen 6-bit scales: the low 4 bits from
            // scales[0..8] (low nibbles first), the high 2 from scales[8..12] (bits 2s of byte j
            // for scale 4 s + j). The high bit of element 32 s + j is bit s of hmask[j]; it
            // *subtracts* 4 when it is 0.
            let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = f16_at(b, 108);
            let mut dl = [0f32; 16];
            for (i, dl) in dl.iter_mut().enumerate() {
                let lo = if i < 8 { sc[i] & 0x0F } else { sc[i - 8] >> 4 };
                let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
                let scale = (lo | (hi << 4)) as i8 - 32;
                *dl = d * scale as f32;
            }
            for (e, o) in o.iter_mut().enumerate().take(QK_K) {
                let (h, s, j) = (e / 128, (e / 32) % 4, e % 32);
                let ql = ((qs[32 * h + j] >> (2 * s)) & 3) as i8;
                let qh = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
                let q = ql - (qh << 2) as i8;
                *o = dl[e / 16] * q as f32;
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // d | dmin | scales[12] | (Q5_K: qh[32]) | qs[128]. Element 64 c + 32 s + j is
            // nibble s of qs[32 c + j] (plus, for Q5_K, bit c·2 + s of qh[j] as the fifth bit).
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, mn) = k_scale_min(&b[4..16]);
            let (qh, qs) = match ty {
                GgmlType::Q5_K => (Some(&b[16..48]), &b[48..176]),
                _ => (None, &b[16..144]),
            };
            for (e, o) in o.iter_mut().enumerate().take(QK_K) {
                let (c, s, j) = (e / 64, (e / 32) % 2, e % 32);
                let mut q = (qs[32 * c + j] >> (4 * s)) & 0x0F;
                if let Some(qh) = qh {
                    q |= ((qh[j] >> (e / 32)) & 1) << 4;
                }
                let sub = e / 32;
                let dl = d * sc[sub] as f32;
                let dm = dmin * mn[sub] as f32;
                *o = dl * q as f32 - dm;
            }
        }
        GgmlType::Q6_K => {
            // ql[128] | qh[64] | scales[16] (i8) | d. Element 128 h + 64 s + j (j < 64): nibble s
            // of ql[64 h + j]; its top two bits: element 128 h + 32 t + j (j < 32) takes bits 2t
            // of qh[32 h + j].
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for (e, o) in o.iter_mut().enumerate().take(QK_K) {
                let (h, r) = (e / 128, e % 128);
                let lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
                let hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
                let q = (lo | (hi << 4)) as i8 - 32;
                let dl = d * (scales[e / 16] as i8) as f32;
                *o = dl * q as f32;
            }
        }
    }
}

/// The eight 6-bit scales and mins of a Q4_K / Q5_K block from their 12 packed bytes (gguf-py
/// `Q4_K.get_scale_min`, ggml `get_scale_min_k4`).
#[inline]
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Whether [`quantize`] can write `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
    )
}

/// Quantizes `src` (a whole number of `ty` blocks) to `ty`, appending the bytes to `out`.
pub fn quantize(ty: GgmlType, src: &[f32], out: &mut Vec<u8>) -> Result<(), String> {
    let bs = ty.block_size();
    if !src.len().is_multiple_of(bs) {
        return Err(format!(
            "{} values are not a whole number of {ty} blocks of {bs}",
            src.len()
        ));
    }
    if !can_quantize(ty) {
        return Err(format!("quantizing to {ty} is not implemented"));
    }
    out.reserve(src.len() / bs * ty.type_size());
    for x in src.chunks_exact(bs) {
        quantize_block(ty, x, out);
    }
    Ok(())
}

/// `1 / d`, or 0 when `d` is 0 (gguf-py's `np.where(d == 0, 0, 1 / d)`).
#[inline]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// The value of largest magnitude, the first one on a tie (numpy `argmax` of `abs`).
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = x[0];
    for &v in &x[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}

fn quantize_block(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) {
    match ty {
        GgmlType::F32 => out.extend_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => out.extend_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        GgmlType::BF16 => {
            // ggml_compute_fp32_to_bf16: NaN made quiet, otherwise round to nearest even.
            let n = x[0].to_bits();
            let h = if n & 0x7fff_ffff > 0x7f80_0000 {
                ((n & 0xffff_0000) | (64 << 16)) >> 16
            } else {
                ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u32
            };
            out.extend_from_slice(&(h as u16).to_le_bytes());
        }
        GgmlType::Q8_0 => {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = inverse(d);
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            // np_roundf: round half away from zero, which is f32::round.
            out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
        }
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let (levels, top) = if ty == GgmlType::Q4_0 {
                (-8.0f32, 15u8)
            } else {
                (-16.0, 31)
            };
            let d = signed_absmax(x) / levels;
            let id = inverse(d);
            let offset = -levels + 0.5;
            let q: Vec<u8> = x.iter().map(|&v| ((v * id + offset).trunc() as u8).min(top)).collect();
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            push_nibbles(ty == GgmlType::Q5_0, &q, out);
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let top = if ty == GgmlType::Q4_1 { 15u8 } else { 31 };
            let (min, max) = min_max(x);
            let d = (max - min) / top as f32;
            let id = inverse(d);
            let q: Vec<u8> = x
                .iter()
                .map(|&v| (((v - min) * id + 0.5).trunc() as u8).min(top))
                .collect();
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
            push_nibbles(ty == GgmlType::Q5_1, &q, out);
        }
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            unreachable!("can_quantize is checked by quantize")
        }
    }
}

/// The 32 quants of a Q4/Q5 block: (Q5: the fifth bits as a little-endian u32, then) the low
/// nibbles, element j in the low half of byte j and element 16 + j in its high half.
fn push_nibbles(fifth_bit: bool, q: &[u8], out: &mut Vec<u8>) {
    if fifth_bit {
        let qh = q
            .iter()
            .enumerate()
            .fold(0u32, |h, (j, &v)| h | (u32::from(v >> 4) << j));
        out.extend_from_slice(&qh.to_le_bytes());
    }
    out.extend((0..16).map(|j| (q[j] & 0x0F) | (q[j + 16] << 4)));
}

/// An `float8_e4m3fn` value (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no
/// infinities, S.1111.111 is NaN) as f32, exactly (as torch's `.float()`).
#[inline]
pub fn f8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let (exp, man) = ((b >> 3) & 0x0F, b & 0x07);
    if exp == 0x0F && man == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        // Subnormal: man / 8 * 2^-6.
        return sign * man as f32 * (1.0 / 512.0);
    }
    let bits = (u32::from(exp) + 127 - 7) << 23 | u32::from(man) << 20;
    sign * f32::from_bits(bits)
}

/// An `float8_e5m2` value (IEEE-like: 1 sign, 5 exponent bits, 2 mantissa bits: the top byte
/// of an f16) as f32, exactly.
#[inline]
pub fn f8_e5m2_to_f32(b: u8) -> f32 {
    f16::from_bits(u16::from(b) << 8).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_decoding_matches_the_formats() {
        // e4m3fn: 0x38 = 2^0, 0x7e = 448 (the largest), 0x01 = 2^-9, 0xb8 = -1, 0x7f NaN.
        assert_eq!(f8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3_to_f32(0x7e), 448.0);
        assert_eq!(f8_e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(f8_e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(f8_e4m3_to_f32(0xb8), -1.0);
        assert!(f8_e4m3_to_f32(0x7f).is_nan());
        // e5m2: 0x3c = 1, 0x7b = 57344, 0x7c = inf.
        assert_eq!(f8_e5m2_to_f32(0x3c), 1.0);
        assert_eq!(f8_e5m2_to_f32(0x7b), 57344.0);
        assert_eq!(f8_e5m2_to_f32(0x7c), f32::INFINITY);
    }
}
