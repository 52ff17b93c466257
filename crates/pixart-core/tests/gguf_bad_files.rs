//! Broken GGUF files: each is refused with one line naming the file and the tensor (or key) at
//! fault, before anything the header claims is allocated or read.
use std::path::PathBuf;

use pixart_core::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};

/// Offsets in [`good_file`]: 24 bytes of header, the key-value `k` (17 bytes), then the info
/// of tensor `w` (name 9, dimension count 4, two dimensions 16, type id 4, offset 8).
const NAME_LEN: usize = 41;
const N_DIMS: usize = 50;
const DIM0: usize = 54;
const DIM1: usize = 62;
const TYPE_ID: usize = 70;
const OFFSET: usize = 74;
const DATA: usize = 96;

/// A valid file: metadata `k` = 7u32 and one Q8_0 tensor `w` of shape (2, 64).
fn good_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_meta("k", MetaValue::U32(7));
    w.add_tensor("w", &[2, 64], GgmlType::Q8_0, vec![0u8; 4 * 34]).unwrap();
    let bytes = w.to_bytes();
    // The data padded to the alignment (32).
    assert_eq!(bytes.len(), DATA + 160);
    assert_eq!(&bytes[NAME_LEN..NAME_LEN + 8], &1u64.to_le_bytes());
    assert_eq!(&bytes[TYPE_ID..TYPE_ID + 4], &8u32.to_le_bytes());
    bytes
}

fn path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pixart-bad-gguf-{}-{tag}.gguf", std::process::id()))
}

/// Opens `bytes` written to a file and returns the error line, checked to be one line that
/// names the file and contains `expected`.
fn error_of(tag: &str, bytes: &[u8], expected: &str) -> String {
    let p = path(tag);
    std::fs::write(&p, bytes).unwrap();
    let result = GgufFile::open(&p);
    std::fs::remove_file(&p).unwrap();
    let e = result.expect_err(tag).to_string();
    assert!(!e.contains('\n'), "{tag}: not one line: {e}");
    assert!(
        e.contains(&p.display().to_string()),
        "{tag}: does not name the file: {e}"
    );
    assert!(e.contains(expected), "{tag}: {e:?} does not say {expected:?}");
    e
}

fn patched(at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = good_file();
    b[at..at + value.len()].copy_from_slice(value);
    b
}

#[test]
fn the_good_file_reads() {
    let p = path("good");
    std::fs::write(&p, good_file()).unwrap();
    let f = GgufFile::open(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let t = f.tensor("w").unwrap();
    assert_eq!(
        (t.shape.as_slice(), t.dtype, t.offset, t.n_bytes),
        (&[2, 64][..], GgmlType::Q8_0, DATA, 136)
    );
    assert_eq!(f.meta("k"), Some(&MetaValue::U32(7)));
}

#[test]
fn a_truncated_file_names_the_tensor() {
    let good = good_file();
    error_of("cut-data", &good[..DATA + 4 * 34 - 1], "tensor `w`: data out of bounds");
    error_of("cut-info", &good[..OFFSET + 3], "tensor `w`: truncated");
    error_of("cut-meta", &good[..40], "metadata key `k`: truncated");
    error_of("cut-header", &good[..20], "truncated GGUF header");
    error_of("empty", &[], "truncated GGUF header");
}

#[test]
fn an_unknown_or_unsupported_type_id_names_the_tensor() {
    error_of(
        "type-99",
        &patched(TYPE_ID, &99u32.to_le_bytes()),
        "tensor `w`: unknown tensor type id 99",
    );
    error_of(
        "type-iq4",
        &patched(TYPE_ID, &20u32.to_le_bytes()),
        "tensor `w`: tensor type IQ4_NL (id 20) is not supported",
    );
}

#[test]
fn data_out_of_bounds_names_the_tensor() {
    error_of(
        "offset",
        &patched(OFFSET, &(1u64 << 40).to_le_bytes()),
        "tensor `w`: data out of bounds",
    );
    // An offset that wraps around when added to the data start.
    error_of(
        "wrap",
        &patched(OFFSET, &(u64::MAX - 31).to_le_bytes()),
        "tensor `w`: data out of bounds",
    );
    // Dimensions that need more bytes than the file has.
    error_of(
        "dims",
        &patched(DIM1, &1000u64.to_le_bytes()),
        "tensor `w`: data out of bounds",
    );
}

#[test]
fn a_misaligned_offset_names_the_tensor() {
    error_of(
        "misaligned",
        &patched(OFFSET, &3u64.to_le_bytes()),
        "tensor `w`: data offset 3 is not a multiple of the alignment 32",
    );
    // Rows that are not whole Q8_0 blocks.
    error_of(
        "row",
        &patched(DIM0, &48u64.to_le_bytes()),
        "tensor `w`: rows of 48 elements are not a whole number of Q8_0 blocks",
    );
}

#[test]
fn absurd_sizes_are_refused_without_allocating() {
    error_of(
        "count",
        &patched(8, &u64::MAX.to_le_bytes()),
        "tensor count 18446744073709551615 cannot fit",
    );
    error_of("kv-count", &patched(16, &(1u64 << 50).to_le_bytes()), "metadata count");
    error_of(
        "name",
        &patched(NAME_LEN, &(1u64 << 60).to_le_bytes()),
        "tensor info 0: string length",
    );
    error_of(
        "huge-dims",
        &patched(DIM0, &(1u64 << 42).to_le_bytes()),
        "tensor `w`: absurd dimensions",
    );
    let mut b = patched(DIM0, &(1u64 << 32).to_le_bytes());
    b[DIM1..DIM1 + 8].copy_from_slice(&(1u64 << 32).to_le_bytes());
    error_of("overflow", &b, "tensor `w`: absurd dimensions");
    error_of(
        "n-dims",
        &patched(N_DIMS, &7u32.to_le_bytes()),
        "tensor `w`: 7 dimensions (at most 4)",
    );
    error_of(
        "zero-dim",
        &patched(DIM1, &0u64.to_le_bytes()),
        "tensor `w`: a dimension of 0",
    );
    // A metadata array claiming 2^40 elements.
    let mut w = GgufWriter::new();
    w.add_meta("tokens", MetaValue::Array(vec![MetaValue::U32(1)]));
    let mut arr = w.to_bytes();
    // 24 header + key (8 + 6) + type 4 + element type 4, then the count.
    arr[46..54].copy_from_slice(&(1u64 << 40).to_le_bytes());
    error_of(
        "array",
        &arr,
        "metadata key `tokens`: array length 1099511627776 cannot fit",
    );
}

#[test]
fn not_a_gguf_file_or_another_version() {
    error_of("magic", &patched(0, b"GGML"), "not a GGUF file");
    error_of(
        "v1",
        &patched(4, &1u32.to_le_bytes()),
        "GGUF version 1 is not supported",
    );
    error_of("big-endian", &patched(4, &3u32.to_be_bytes()), "big-endian");
    error_of("v9", &patched(4, &9u32.to_le_bytes()), "unknown GGUF version 9");
    error_of(
        "alignment",
        &{
            let mut w = GgufWriter::new();
            w.add_meta("general.alignment", MetaValue::U32(24));
            w.to_bytes()
        },
        "metadata key `general.alignment`",
    );
}
