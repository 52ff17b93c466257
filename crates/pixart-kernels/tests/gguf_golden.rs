//! The GGUF reader and the block (de)quantizers against llama.cpp's gguf-py 0.19.0
//! (fixtures/golden/quant, made by tools/golden/gen_quant.py): a file written by
//! `gguf.GGUFWriter` holding every type we read, on odd shapes of several blocks, and what
//! `gguf.GGUFReader` + `gguf.quants.dequantize` read back from it. Everything is compared bit
//! for bit.
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use pixart_core::gguf::{GgmlType, GgufFile, MetaValue};
use pixart_kernels::cpu::quant;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/quant")
}

fn golden() -> (GgufFile, HashMap<String, Tensor>) {
    let file = GgufFile::open(&dir().join("blocks.gguf")).unwrap();
    let expected = candle_core::safetensors::load(dir().join("blocks.safetensors"), &Device::Cpu).unwrap();
    (file, expected)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn dequantized(file: &GgufFile, name: &str) -> Vec<f32> {
    let info = file.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut out = vec![0f32; info.elem_count()];
    quant::dequantize(info.dtype, file.data(name).unwrap(), &mut out).unwrap();
    out
}

/// Bitwise equality, reporting the first differing element.
fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} != gguf-py {w}");
    }
}

#[test]
fn every_type_dequantizes_as_gguf_py_does() {
    let (file, expected) = golden();
    for ty in GgmlType::ALL {
        let name = format!("deq.{}", ty.name());
        let info = file.tensor(&name).unwrap();
        assert_eq!(info.dtype, ty, "{name}");
        let want = &expected[&name];
        assert_eq!(&info.shape, want.dims(), "{name}: shape");
        assert_bits_eq(&name, &dequantized(&file, &name), &values(want));
    }
}

#[test]
fn quantization_writes_the_bytes_gguf_py_writes() {
    let (file, expected) = golden();
    for ty in [
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        let src = values(&expected[&format!("src.{}", ty.name())]);
        let mut ours = Vec::new();
        quant::quantize(ty, &src, &mut ours).unwrap();
        let theirs = file.data(&format!("q.{}", ty.name())).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ty}: byte count");
        if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
            let block = i / ty.type_size();
            panic!(
                "{ty}: byte {i} (block {block}) is {} where gguf-py wrote {}",
                ours[i], theirs[i]
            );
        }
        // And what gguf-py reads back from its own bytes is what we read back.
        let name = format!("q.{}", ty.name());
        assert_bits_eq(
            &name,
            &dequantized(&file, &name),
            &values(&expected[&format!("qdeq.{}", ty.name())]),
        );
    }
}

#[test]
fn the_metadata_reads_as_gguf_py_wrote_it() {
    let (file, _) = golden();
    assert_eq!(file.version(), 3);
    let m = |k: &str| file.meta(k).unwrap_or_else(|| panic!("{k} missing")).clone();
    assert_eq!(m("general.architecture"), MetaValue::String("pixart-golden".into()));
    assert_eq!(m("golden.u8"), MetaValue::U8(200));
    assert_eq!(m("golden.i8"), MetaValue::I8(-100));
    assert_eq!(m("golden.u16"), MetaValue::U16(60000));
    assert_eq!(m("golden.i16"), MetaValue::I16(-30000));
    assert_eq!(m("golden.u32"), MetaValue::U32(4_000_000_000));
    assert_eq!(m("golden.i32"), MetaValue::I32(-2_000_000_000));
    assert_eq!(m("golden.f32"), MetaValue::F32(0.25));
    assert_eq!(m("golden.bool"), MetaValue::Bool(true));
    assert_eq!(m("golden.string"), MetaValue::String("naïve façade".into()));
    assert_eq!(m("golden.u64"), MetaValue::U64((1 << 63) + 5));
    assert_eq!(m("golden.i64"), MetaValue::I64(-(1 << 62)));
    assert_eq!(m("golden.f64"), MetaValue::F64(-1.5));
    let ints = MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2), MetaValue::I32(3)]);
    assert_eq!(m("golden.array"), ints);
    let strs = ["a", "bc", ""].map(|s| MetaValue::String(s.into())).to_vec();
    assert_eq!(m("golden.strings"), MetaValue::Array(strs));
}

#[test]
fn a_version_2_file_reads_the_same() {
    // v2 and v3 differ only in that v3 may be big-endian: the same bytes with version 2.
    let mut bytes = std::fs::read(dir().join("blocks.gguf")).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let tmp = std::env::temp_dir().join(format!("pixart-gguf-v2-{}.gguf", std::process::id()));
    std::fs::write(&tmp, &bytes).unwrap();
    let v2 = GgufFile::open(&tmp).unwrap();
    let (v3, _) = golden();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.tensors(), v3.tensors());
    assert_eq!(v2.metadata(), v3.metadata());
    std::fs::remove_file(&tmp).unwrap();
}

#[test]
fn our_writer_round_trips_every_type() {
    let (file, _) = golden();
    let mut w = pixart_core::gguf::GgufWriter::new();
    w.add_meta("a.b", MetaValue::String("x".into()));
    for t in file.tensors() {
        w.add_tensor(&t.name, &t.shape, t.dtype, file.data(&t.name).unwrap().to_vec())
            .unwrap();
    }
    let tmp = std::env::temp_dir().join(format!("pixart-gguf-rt-{}.gguf", std::process::id()));
    w.write(&tmp).unwrap();
    let back = GgufFile::open(&tmp).unwrap();
    for t in file.tensors() {
        let b = back.tensor(&t.name).unwrap();
        assert_eq!((&b.shape, b.dtype), (&t.shape, t.dtype), "{}", t.name);
        assert_eq!(back.data(&t.name).unwrap(), file.data(&t.name).unwrap(), "{}", t.name);
    }
    std::fs::remove_file(&tmp).unwrap();
}
