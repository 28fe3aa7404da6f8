//! The retailer's own identifiers, store ids and SKUs (`[A-Za-z0-9._-]{1,64}`, api.md),
//! and locale tags.

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

/// A locale tag such as `fr-FR` or `en` (`_` read as `-`); `None` when it is not one.
pub fn locale(tag: &str) -> Option<String> {
    let ok = (2..=35).contains(&tag.len())
        && tag.split(['-', '_']).all(|part| {
            (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        && tag.as_bytes()[..2].iter().all(u8::is_ascii_alphabetic);
    ok.then(|| tag.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::{is_code, locale};

    #[test]
    fn codes_are_short_and_plain() {
        assert!(is_code("PAR-LOUVRE"));
        assert!(is_code("sku_1.2"));
        assert!(!is_code(""));
        assert!(!is_code("a b"));
        assert!(!is_code("é"));
        assert!(!is_code(&"x".repeat(65)));
    }

    #[test]
    fn locales_are_language_tags() {
        assert_eq!(locale("fr").as_deref(), Some("fr"));
        assert_eq!(locale("fr_FR").as_deref(), Some("fr-FR"));
        assert_eq!(locale("en-GB").as_deref(), Some("en-GB"));
        assert_eq!(locale("x"), None);
        assert_eq!(locale("12-FR"), None);
        assert_eq!(locale("fr FR"), None);
    }
}
