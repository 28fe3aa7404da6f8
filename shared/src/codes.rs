//! The retailer's own identifiers: store ids and SKUs (`[A-Za-z0-9._-]{1,64}`, api.md).

use crate::problem::Validation;

/// Whether `code` is a store id or SKU: `[A-Za-z0-9._-]{1,64}`.
pub fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a store id or SKU field.
pub fn check_code(v: &mut Validation, field: &str, code: &str) {
    if !is_code(code) {
        v.add(field, "must match [A-Za-z0-9._-]{1,64}");
    }
}

#[cfg(test)]
mod tests {
    use super::is_code;

    #[test]
    fn codes_are_short_and_plain() {
        assert!(is_code("PAR-LOUVRE"));
        assert!(is_code("sku_1.2"));
        assert!(!is_code(""));
        assert!(!is_code("a b"));
        assert!(!is_code("é"));
        assert!(!is_code(&"x".repeat(65)));
    }
}
