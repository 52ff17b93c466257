//! The caption features of a run: the T5 encoder either loaded for each run and dropped before
//! denoising (the default: the lowest peak memory, what one `pixart generate` wants) or kept
//! in memory ([`crate::ComponentOptions::keep_text_encoder`]: what a server wants, where
//! loading T5-XXL for every request would cost more than the request), and a small cache of
//! the features of recent texts, so that a text seen again (the empty negative prompt of every
//! request, a prompt tried with other seeds) is not encoded again — nor T5 loaded for it.
//!
//! A cached row is exactly what encoding would give: [`T5Encoder::forward_valid`] encodes each
//! text at its own length, independently of the others in the batch (its golden test checks
//! the bits), and the cache keeps those rows.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use pixart_core::{Error, Result};
use pixart_text::{Encoded, T5Encoder};

/// Texts whose features are kept (least recently used dropped first). A 20-token prompt of
/// T5-XXL in bf16 is 160 KB; a full 300-token one 2.4 MB.
pub const CACHED_TEXTS: usize = 64;

/// A text as the encoder sees it: its ids and attention mask.
type Key = (Vec<u32>, Vec<u32>);

/// Texts looked up in the cache: found, or encoded.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// The encoder (when kept) and the feature cache.
pub struct TextFeatures {
    resident: Option<T5Encoder>,
    /// Most recently used last: (text, its valid rows (1, n, d) in the encoder's dtype).
    cache: Mutex<VecDeque<(Key, Tensor)>>,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for TextFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextFeatures")
            .field("resident", &self.resident.is_some())
            .finish_non_exhaustive()
    }
}

fn key(e: &Encoded) -> Key {
    (e.ids.clone(), e.attention_mask.clone())
}

/// Positions a row's features cover: the mask's prefix of ones (what `forward_valid` computes;
/// the rest is zero), or the whole row when the mask is not such a prefix.
fn valid_len(e: &Encoded) -> usize {
    let n = e.attention_mask.iter().take_while(|&&m| m != 0).count();
    if n > 0 && e.attention_mask[n..].iter().all(|&m| m == 0) {
        n
    } else {
        e.attention_mask.len()
    }
}

impl TextFeatures {
    /// `resident`: the encoder to keep, or `None` to load one per run.
    pub fn new(resident: Option<T5Encoder>) -> Self {
        Self {
            resident,
            cache: Mutex::new(VecDeque::new()),
            stats: Arc::default(),
        }
    }

    /// The lookup counts (shared: a server reads them for `/metrics` while the worker runs).
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// The kept encoder, if any.
    pub fn resident(&self) -> Option<&T5Encoder> {
        self.resident.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Key, Tensor)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached features of each text, `None` where it is not cached (a hit becomes the most
    /// recently used).
    pub fn lookup(&self, texts: &[Encoded]) -> Vec<Option<Tensor>> {
        let mut cache = self.lock();
        let found: Vec<Option<Tensor>> = texts
            .iter()
            .map(|e| {
                let k = key(e);
                let at = cache.iter().position(|(c, _)| *c == k)?;
                let entry = cache.remove(at)?;
                let t = entry.1.clone();
                cache.push_back(entry);
                Some(t)
            })
            .collect();
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        self.stats.hits.fetch_add(hits, Ordering::Relaxed);
        self.stats
            .misses
            .fetch_add(found.len() as u64 - hits, Ordering::Relaxed);
        found
    }

    /// Keeps `features` (1, l, d) of `text` (its valid positions).
    fn store(&self, text: &Encoded, features: &Tensor) -> Result<()> {
        let rows = features.narrow(1, 0, valid_len(text))?.contiguous()?;
        let mut cache = self.lock();
        let k = key(text);
        cache.retain(|(c, _)| *c != k);
        cache.push_back((k, rows));
        while cache.len() > CACHED_TEXTS {
            cache.pop_front();
        }
        Ok(())
    }

    /// Texts cached now.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    /// The features (n, l, d) of `texts` (all of length l), padded positions zero: the cached
    /// rows, and the others through `encode` (ids and mask of the missing texts, in order ->
    /// (m, l, d)), which is not called when every text is cached. The new rows are cached.
    pub fn assemble(
        &self,
        texts: &[Encoded],
        cached: Vec<Option<Tensor>>,
        encode: impl FnOnce(&[Encoded]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let l = texts.first().map_or(0, |e| e.ids.len());
        let missing: Vec<Encoded> = texts
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(e, _)| e.clone())
            .collect();
        let fresh = if missing.is_empty() {
            None
        } else {
            let h = encode(&missing)?;
            if h.dim(0)? != missing.len() {
                return Err(Error::Shape(format!(
                    "the text encoder gave {} rows for {} texts",
                    h.dim(0)?,
                    missing.len()
                )));
            }
            Some(h)
        };
        let mut next_fresh = 0;
        let rows = texts
            .iter()
            .zip(cached)
            .map(|(text, c)| match c {
                Some(rows) => {
                    let n = rows.dim(1)?;
                    Ok(rows.pad_with_zeros(1, 0, l - n)?) // (1, n, d) -> (1, l, d)
                }
                None => {
                    let h = fresh
                        .as_ref()
                        .ok_or_else(|| Error::Shape("no features for an uncached text".into()))?;
                    let row = h.narrow(0, next_fresh, 1)?; // (1, l, d)
                    next_fresh += 1;
                    self.store(text, &row)?;
                    Ok(row)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?) // n × (1, l, d) -> (n, l, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn text(ids: &[u32], l: usize) -> Encoded {
        let mut e = Encoded {
            ids: ids.to_vec(),
            attention_mask: vec![1; ids.len()],
            truncated: 0,
        };
        e.ids.resize(l, 0);
        e.attention_mask.resize(l, 0);
        e
    }

    /// A stand-in encoder: row i of text t is (first id, position) in every feature, zero past
    /// the valid length.
    fn fake(texts: &[Encoded]) -> Result<Tensor> {
        let (l, d) = (texts[0].ids.len(), 3);
        let mut v = Vec::new();
        for t in texts {
            let n = valid_len(t);
            for p in 0..l {
                for _ in 0..d {
                    v.push(if p < n { (t.ids[0] * 100 + p as u32) as f32 } else { 0.0 });
                }
            }
        }
        Ok(Tensor::from_vec(v, (texts.len(), l, d), &Device::Cpu)?)
    }

    #[test]
    fn cached_rows_equal_encoded_ones_and_skip_the_encoder() {
        let f = TextFeatures::new(None);
        let (a, b, c) = (text(&[5, 1], 6), text(&[7, 8, 1], 6), text(&[9, 1], 6));
        let all = [a.clone(), b.clone()];
        let first = f.assemble(&all, f.lookup(&all), fake).unwrap();
        assert_eq!(
            first.to_vec3::<f32>().unwrap(),
            fake(&[a.clone(), b.clone()]).unwrap().to_vec3::<f32>().unwrap()
        );
        assert_eq!(f.cached(), 2);
        let counts = |f: &TextFeatures| {
            (
                f.stats().hits.load(Ordering::Relaxed),
                f.stats().misses.load(Ordering::Relaxed),
            )
        };
        assert_eq!(counts(&f), (0, 2));
        // All cached: the encoder is not called.
        let again = f
            .assemble(&all, f.lookup(&all), |_| panic!("encoded a cached text"))
            .unwrap();
        assert_eq!(again.to_vec3::<f32>().unwrap(), first.to_vec3::<f32>().unwrap());
        // Mixed: only the new text is encoded, and the order is kept.
        let mixed = [c.clone(), a.clone()];
        let got = f
            .assemble(&mixed, f.lookup(&mixed), |m| {
                assert_eq!(m.len(), 1);
                assert_eq!(m[0].ids, c.ids);
                fake(m)
            })
            .unwrap();
        assert_eq!(
            got.to_vec3::<f32>().unwrap(),
            fake(&[c.clone(), a.clone()]).unwrap().to_vec3::<f32>().unwrap()
        );
        assert_eq!(got.dtype(), DType::F32);
        // Hits and misses over the three lookups: 0 + 2 + 1 found, 2 + 0 + 1 encoded.
        assert_eq!(counts(&f), (3, 3));
    }

    #[test]
    fn the_least_recently_used_text_goes_first() {
        let f = TextFeatures::new(None);
        let texts: Vec<Encoded> = (0..CACHED_TEXTS as u32 + 1).map(|i| text(&[i + 2, 1], 4)).collect();
        f.assemble(&texts[..1], f.lookup(&texts[..1]), fake).unwrap();
        for t in &texts[1..CACHED_TEXTS] {
            let one = std::slice::from_ref(t);
            f.assemble(one, f.lookup(one), fake).unwrap();
        }
        // Use text 0 again, then add one more: text 1 is dropped, text 0 kept.
        assert!(f.lookup(&texts[..1])[0].is_some());
        let last = &texts[CACHED_TEXTS..];
        f.assemble(last, f.lookup(last), fake).unwrap();
        assert_eq!(f.cached(), CACHED_TEXTS);
        assert!(f.lookup(&texts[..1])[0].is_some());
        assert!(f.lookup(&texts[1..2])[0].is_none());
    }
}
