//! Attention masks as the tokenizer makes them: one row per text, 1 for a kept position.

/// The length of a row that keeps a prefix of positions (ones, then zeros only), or `None`
/// when it keeps none or has a hole.
pub fn prefix_len(row: &[f32]) -> Option<usize> {
    let n = row.iter().take_while(|&&v| v != 0.0).count();
    (n > 0 && row[n..].iter().all(|&v| v == 0.0)).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::prefix_len;

    #[test]
    fn prefixes_holes_and_empty_rows() {
        assert_eq!(prefix_len(&[1.0, 1.0, 0.0]), Some(2));
        assert_eq!(prefix_len(&[1.0, 1.0]), Some(2));
        assert_eq!(prefix_len(&[1.0, 0.0, 1.0]), None);
        assert_eq!(prefix_len(&[0.0, 0.0]), None);
    }
}
