//! Pure rules: what each message says in each language, and when to try again.

use crate::push::{Notification, Urgency};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The languages messages are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// French (`fr`, `fr-FR`, `fr-BE`…).
    French,
    /// English, also for every language we have no text in.
    English,
}

impl Language {
    /// The language of a locale tag: French for `fr…`, English otherwise.
    pub fn of(locale: Option<&str>) -> Self {
        match locale {
            Some(tag) if tag.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("fr")) => {
                Language::French
            }
            _ => Language::English,
        }
    }
}

/// What a delivery is about, stored with it (`deliveries.context`) and rendered at send
/// time in the device's language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "about", rename_all = "snake_case")]
pub enum Context {
    /// A change of an order.
    Order {
        /// The order.
        order_id: String,
        /// `confirmed`, `ready_for_pickup`, `pickup_reminder`, `cancelled`, `rejected`,
        /// `expired`.
        event: String,
        /// The pickup store.
        store_id: String,
        /// Its name.
        store_name: String,
        /// The store's IANA time zone (deadlines are given in local time).
        timezone: String,
        /// The customer's locale at checkout.
        locale: Option<String>,
        /// For ready and reminder.
        pickup_code: Option<String>,
        /// For ready and reminder.
        pickup_deadline: Option<DateTime<Utc>>,
    },
    /// A back-in-stock alert that fired.
    BackInStock {
        /// The alert.
        alert_id: String,
        /// The store.
        store_id: String,
        /// Its name.
        store_name: String,
        /// The SKU.
        sku: String,
        /// The product's name as the customer saw it, when the app gave it.
        product_name: Option<String>,
        /// Units available when it fired.
        available: i64,
        /// The locale the alert was asked in.
        locale: Option<String>,
    },
}

/// The order events that reach customers, by their short name.
pub const ORDER_EVENTS: &[&str] = &[
    "confirmed",
    "ready_for_pickup",
    "pickup_reminder",
    "cancelled",
    "rejected",
    "expired",
];

/// How long a push service may keep a message for an offline device.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

impl Context {
    /// The locale the context itself carries (used when the device has none).
    pub fn locale(&self) -> Option<&str> {
        match self {
            Context::Order { locale, .. } | Context::BackInStock { locale, .. } => {
                locale.as_deref()
            }
        }
    }

    /// The message, in the device's language when it has one, else the context's.
    pub fn render(&self, device_locale: Option<&str>, now: DateTime<Utc>) -> Notification {
        let lang = Language::of(device_locale.or(self.locale()));
        match self {
            Context::Order {
                order_id,
                event,
                store_id,
                store_name,
                timezone,
                pickup_code,
                pickup_deadline,
                ..
            } => {
                let code = pickup_code.as_deref().unwrap_or("");
                let by = pickup_deadline
                    .map(|d| local_time(&d, timezone, lang))
                    .unwrap_or_default();
                let (title, body) = order_text(lang, event, store_name, code, &by);
                let mut data = BTreeMap::from([
                    ("order_id".to_owned(), order_id.clone()),
                    ("event_type".to_owned(), event.clone()),
                    ("store_id".to_owned(), store_id.clone()),
                ]);
                if let Some(code) = pickup_code {
                    data.insert("pickup_code".into(), code.clone());
                }
                if let Some(deadline) = pickup_deadline {
                    data.insert("pickup_deadline".into(), deadline.to_rfc3339());
                }
                let urgent = matches!(event.as_str(), "ready_for_pickup" | "pickup_reminder");
                // A ready order is worth nothing to the phone after its deadline.
                let ttl = match pickup_deadline {
                    Some(d) if urgent => (*d - now)
                        .to_std()
                        .unwrap_or_default()
                        .max(Duration::from_secs(60)),
                    _ => DEFAULT_TTL,
                };
                Notification {
                    title,
                    body,
                    data,
                    urgency: if urgent {
                        Urgency::High
                    } else {
                        Urgency::Normal
                    },
                    ttl,
                    // A push sent again (a lease taken over) replaces itself on screen; two
                    // statuses of one order never replace each other (they may arrive out
                    // of order).
                    collapse_key: Some(format!("order-{order_id}-{event}")),
                }
            }
            Context::BackInStock {
                alert_id,
                store_id,
                store_name,
                sku,
                product_name,
                available,
                ..
            } => {
                let product = product_name.as_deref().unwrap_or(sku);
                let (title, body) = match lang {
                    Language::French => (
                        "De retour en stock".to_owned(),
                        format!("{product} est de nouveau disponible chez {store_name}."),
                    ),
                    Language::English => (
                        "Back in stock".to_owned(),
                        format!("{product} is available again at {store_name}."),
                    ),
                };
                Notification {
                    title,
                    body,
                    data: BTreeMap::from([
                        ("alert_id".to_owned(), alert_id.clone()),
                        ("event_type".to_owned(), "back_in_stock".to_owned()),
                        ("store_id".to_owned(), store_id.clone()),
                        ("sku".to_owned(), sku.clone()),
                        ("available".to_owned(), available.to_string()),
                    ]),
                    urgency: Urgency::Normal,
                    ttl: DEFAULT_TTL,
                    collapse_key: Some(format!("alert-{alert_id}")),
                }
            }
        }
    }
}

fn order_text(lang: Language, event: &str, store: &str, code: &str, by: &str) -> (String, String) {
    let (title, body) = match (lang, event) {
        (Language::French, "confirmed") => (
            "Commande confirmée",
            format!(
                "Votre commande chez {store} est confirmée. Nous vous prévenons dès qu'elle est prête."
            ),
        ),
        (Language::French, "ready_for_pickup") => (
            "Votre commande est prête",
            format!("Retirez-la chez {store} avec le code {code}, avant le {by}."),
        ),
        (Language::French, "pickup_reminder") => (
            "Votre commande vous attend",
            format!("N'oubliez pas : retirez-la chez {store} avec le code {code}, avant le {by}."),
        ),
        (Language::French, "cancelled") => (
            "Commande annulée",
            format!("Votre commande chez {store} a été annulée."),
        ),
        (Language::French, "rejected") => (
            "Commande non acceptée",
            format!(
                "Désolés : {store} n'a pas pu mettre votre commande de côté, des articles manquent."
            ),
        ),
        (Language::French, "expired") => (
            "Commande non retirée",
            format!("Votre commande chez {store} n'a pas été retirée à temps ; elle est annulée."),
        ),
        (_, "confirmed") => (
            "Order confirmed",
            format!("Your order at {store} is confirmed. We will tell you when it is ready."),
        ),
        (_, "ready_for_pickup") => (
            "Your order is ready",
            format!("Collect it at {store} with code {code} by {by}."),
        ),
        (_, "pickup_reminder") => (
            "Your order is waiting",
            format!("Reminder: collect it at {store} with code {code} by {by}."),
        ),
        (_, "cancelled") => (
            "Order cancelled",
            format!("Your order at {store} has been cancelled."),
        ),
        (_, "rejected") => (
            "Order not accepted",
            format!("Sorry: {store} could not set your order aside, some items are out of stock."),
        ),
        (_, "expired") => (
            "Order not collected",
            format!("Your order at {store} was not collected in time and has been cancelled."),
        ),
        (_, other) => ("Order update", format!("Your order at {store}: {other}.")),
    };
    (title.to_owned(), body)
}

/// A deadline in the store's local time, as a customer of that language reads it.
fn local_time(at: &DateTime<Utc>, timezone: &str, lang: Language) -> String {
    let tz: chrono_tz::Tz = timezone.parse().unwrap_or(chrono_tz::UTC);
    let local = at.with_timezone(&tz);
    match lang {
        Language::French => local.format("%d/%m/%Y à %H:%M").to_string(),
        Language::English => local.format("%-d %b %Y, %H:%M").to_string(),
    }
}

/// When to try again after `attempts` attempts: exponential from `base`, capped at `max`,
/// with jitter (a random point in the upper half, so a burst of failures spreads out), and
/// never sooner than the push service's `Retry-After`.
pub fn next_delay(
    attempts: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    let jittered = half + half.mul_f64(rand::rng().random::<f64>());
    // A Retry-After longer than our cap is still honoured, up to an hour.
    jittered.max(
        retry_after
            .unwrap_or_default()
            .min(Duration::from_secs(3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(locale: &str) -> Context {
        Context::Order {
            order_id: "0193".into(),
            event: "ready_for_pickup".into(),
            store_id: "PAR-LOUVRE".into(),
            store_name: "Paris Louvre".into(),
            timezone: "Europe/Paris".into(),
            locale: Some(locale.into()),
            pickup_code: Some("042917".into()),
            pickup_deadline: "2026-12-03T17:00:00Z".parse().ok(),
        }
    }

    #[test]
    fn ready_for_pickup_names_the_store_the_code_and_the_local_deadline_in_french()
    -> Result<(), Box<dyn std::error::Error>> {
        let now = "2026-12-01T17:00:00Z".parse()?;
        let n = ready("fr-FR").render(None, now);
        assert_eq!(n.title, "Votre commande est prête");
        assert_eq!(
            n.body,
            "Retirez-la chez Paris Louvre avec le code 042917, avant le 03/12/2026 à 18:00."
        );
        assert_eq!(n.urgency, Urgency::High);
        assert_eq!(n.ttl, Duration::from_secs(48 * 3600));
        assert_eq!(n.data["pickup_code"], "042917");
        Ok(())
    }

    #[test]
    fn the_device_locale_wins_over_the_order_locale() -> Result<(), Box<dyn std::error::Error>> {
        let now = "2026-12-01T17:00:00Z".parse()?;
        let n = ready("fr-FR").render(Some("en-GB"), now);
        assert_eq!(
            n.body,
            "Collect it at Paris Louvre with code 042917 by 3 Dec 2026, 18:00."
        );
        Ok(())
    }

    #[test]
    fn every_order_event_has_a_text_in_both_languages() {
        for event in ORDER_EVENTS {
            for lang in [Language::French, Language::English] {
                let (title, body) = order_text(lang, event, "S", "1", "d");
                assert_ne!(title, "Order update", "{event}");
                assert!(body.contains('S'), "{event}");
            }
        }
    }

    #[test]
    fn back_in_stock_names_the_product_or_else_the_sku() {
        let alert = Context::BackInStock {
            alert_id: "a".into(),
            store_id: "PAR-LOUVRE".into(),
            store_name: "Paris Louvre".into(),
            sku: "SKU-1".into(),
            product_name: Some("Doliprane 1000".into()),
            available: 3,
            locale: None,
        };
        let now = Utc::now();
        assert_eq!(
            alert.render(Some("fr"), now).body,
            "Doliprane 1000 est de nouveau disponible chez Paris Louvre."
        );
        let mut unnamed = alert.clone();
        if let Context::BackInStock { product_name, .. } = &mut unnamed {
            *product_name = None;
        }
        assert_eq!(
            unnamed.render(None, now).body,
            "SKU-1 is available again at Paris Louvre."
        );
    }

    #[test]
    fn backoff_doubles_within_its_cap_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let d1 = next_delay(1, base, max, None);
            assert!((Duration::from_millis(50)..=base).contains(&d1));
            let d3 = next_delay(3, base, max, None);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&d3));
            assert!(next_delay(30, base, max, None) <= max);
        }
        assert_eq!(
            next_delay(1, base, max, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn languages_are_read_from_locale_tags() {
        assert_eq!(Language::of(Some("fr")), Language::French);
        assert_eq!(Language::of(Some("FR-be")), Language::French);
        assert_eq!(Language::of(Some("de-DE")), Language::English);
        assert_eq!(Language::of(None), Language::English);
    }
}
