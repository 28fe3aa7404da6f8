//! Pure order rules: the life cycle, pickup codes, request checks. No I/O.

/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Largest quantity of one line.
pub const MAX_QUANTITY: i64 = 1_000_000_000;
/// Largest unit price (10 million in the currency's unit).
pub const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000;
/// Wrong pickup codes allowed before the order needs a staff override.
pub const MAX_CODE_ATTEMPTS: i32 = 5;
/// Most orders in one page of a list.
pub const MAX_PAGE: u64 = 100;

/// Every status of the life cycle (product.md).
pub const STATUSES: [&str; 8] = [
    "pending",
    "confirmed",
    "rejected",
    "picking",
    "ready_for_pickup",
    "collected",
    "cancelled",
    "expired",
];

/// The states an order may be cancelled from (by its customer or its store's staff).
pub const CANCELLABLE: [&str; 4] = ["pending", "confirmed", "picking", "ready_for_pickup"];

/// The states in which an order holds stock in inventory.
pub const HOLDING: [&str; 3] = ["confirmed", "picking", "ready_for_pickup"];

pub use shared::codes::{check_code, is_code, locale};

/// A fresh 6-digit pickup code from the operating system's random source.
pub fn pickup_code() -> String {
    use rand::Rng;
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

/// Compares a presented code with the order's in time independent of where they differ.
pub fn code_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, &x) in b.iter().enumerate() {
        diff |= x ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickup_codes_are_six_digits() {
        for _ in 0..1000 {
            let code = pickup_code();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn a_code_matches_only_itself() {
        assert!(code_matches("012345", "012345"));
        assert!(!code_matches("012346", "012345"));
        assert!(!code_matches("01234", "012345"));
        assert!(!code_matches("0123456", "012345"));
        assert!(!code_matches("", "012345"));
    }
}
