//! Pure inventory rules: identifiers, quantities, availability, reservation requests. No I/O.

use shared::problem::Validation;

/// Largest quantity accepted in one line or movement (keeps sums far from overflow).
pub const MAX_QUANTITY: i64 = 1_000_000_000;
/// Longest reservation hold: 14 days.
pub const MAX_TTL_SECONDS: i64 = 14 * 24 * 3600;
/// Most lines in one reservation or sale.
pub const MAX_LINES: usize = 100;
/// Most items in one bulk import.
pub const MAX_BULK_ITEMS: usize = 10_000;
/// Most stores, and most SKUs, in one availability batch.
pub const MAX_BATCH_SIDE: usize = 100;

pub use shared::codes::{check_code, is_code};

/// Checks a positive quantity.
pub fn check_quantity(v: &mut Validation, field: &str, quantity: i64) {
    if quantity <= 0 {
        v.add(field, "must be a positive integer");
    } else if quantity > MAX_QUANTITY {
        v.add(field, format!("must be at most {MAX_QUANTITY}"));
    }
}

/// `max(0, on_hand - reserved - safety_stock)`.
pub fn available(on_hand: i64, reserved: i64, safety_stock: i64) -> i64 {
    (on_hand - reserved - safety_stock).max(0)
}

/// Display status of an availability under a store's low-stock threshold.
pub fn status(available: i64, low_stock_threshold: i64) -> &'static str {
    if available <= 0 {
        "out_of_stock"
    } else if available <= low_stock_threshold {
        "low_stock"
    } else {
        "in_stock"
    }
}

/// Adds up lines naming the same SKU and sorts them by SKU: the order rows are locked in.
/// Sums saturate, so unchecked input (an order event's lines) cannot overflow.
pub fn merge_lines(lines: impl IntoIterator<Item = (String, i64)>) -> Vec<(String, i64)> {
    let mut merged: std::collections::BTreeMap<String, i64> = Default::default();
    for (sku, quantity) in lines {
        let sum = merged.entry(sku).or_insert(0);
        *sum = sum.saturating_add(quantity);
    }
    merged.into_iter().collect()
}

/// Why an order's lines cannot be reserved as sent, if they cannot: no lines, too many,
/// a malformed SKU, or a quantity that is not positive or too large (each line, and each
/// SKU's merged total).
pub fn order_lines_problem(lines: &[(String, i64)]) -> Option<String> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Some(format!("an order must hold 1..={MAX_LINES} lines"));
    }
    if let Some((sku, _)) = lines.iter().find(|(sku, _)| !is_code(sku)) {
        return Some(format!("SKU {sku:?} is not a code"));
    }
    if let Some((sku, quantity)) = lines
        .iter()
        .cloned()
        .chain(merge_lines(lines.iter().cloned()))
        .find(|(_, q)| !(1..=MAX_QUANTITY).contains(q))
    {
        return Some(format!(
            "quantity {quantity} of {sku} is not 1..={MAX_QUANTITY}"
        ));
    }
    None
}

/// Great-circle distance in kilometres (haversine, mean Earth radius).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_retailers_format() {
        assert!(is_code("STORE-01.a_b"));
        assert!(!is_code(""));
        assert!(!is_code("a b"));
        assert!(!is_code(&"x".repeat(65)));
        assert!(!is_code("é"));
    }

    #[test]
    fn available_never_goes_negative_and_status_follows_the_threshold() {
        assert_eq!(available(10, 3, 2), 5);
        assert_eq!(available(1, 3, 0), 0);
        assert_eq!(status(0, 5), "out_of_stock");
        assert_eq!(status(5, 5), "low_stock");
        assert_eq!(status(6, 5), "in_stock");
    }

    #[test]
    fn two_lines_of_one_sku_count_together() {
        let merged = merge_lines([("B".into(), 1), ("A".into(), 2), ("B".into(), 3)]);
        assert_eq!(merged, vec![("A".into(), 2), ("B".into(), 4)]);
    }

    #[test]
    fn merging_lines_of_unchecked_orders_saturates_instead_of_overflowing() {
        let merged = merge_lines([("A".into(), i64::MAX), ("A".into(), 1)]);
        assert_eq!(merged, vec![("A".into(), i64::MAX)]);
    }

    #[test]
    fn order_lines_must_be_codes_with_positive_bounded_quantities() {
        let line = |sku: &str, q: i64| (sku.to_owned(), q);
        assert_eq!(order_lines_problem(&[line("A", 1), line("A", 2)]), None);
        assert!(order_lines_problem(&[]).is_some());
        assert!(order_lines_problem(&[line("A", 0)]).is_some());
        assert!(order_lines_problem(&[line("A", -3)]).is_some());
        assert!(order_lines_problem(&[line("a b", 1)]).is_some());
        assert!(order_lines_problem(&[line("A", MAX_QUANTITY), line("A", 1)]).is_some());
        assert!(order_lines_problem(&vec![line("A", 1); MAX_LINES + 1]).is_some());
    }

    #[test]
    fn quantities_must_be_positive_and_bounded() {
        let mut v = Validation::new();
        check_quantity(&mut v, "a", 0);
        check_quantity(&mut v, "b", -1);
        check_quantity(&mut v, "c", MAX_QUANTITY + 1);
        check_quantity(&mut v, "d", 1);
        assert!(v.finish().is_err());
    }

    #[test]
    fn distance_between_two_paris_landmarks_is_about_four_km() {
        let d = distance_km(48.8584, 2.2945, 48.8606, 2.3376);
        assert!((d - 3.2).abs() < 0.3, "{d}");
    }
}
