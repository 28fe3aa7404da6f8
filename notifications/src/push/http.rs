//! What the three providers share about HTTP answers: `Retry-After`, short body excerpts
//! for the delivery log, and sorting transport failures.

use super::Outcome;
use std::time::{Duration, SystemTime};

/// The most of a response body that goes into a delivery-log reason.
const EXCERPT_CHARS: usize = 200;

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past
/// means "now".
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The start of a response body, on one line, for a reason string.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    if text.chars().count() > EXCERPT_CHARS {
        line.push('…');
    }
    line.trim().to_owned()
}

/// A request that got no HTTP answer (timeout, refused connection, reset): always worth
/// another try. The URL is left out (a Web Push endpoint is a capability).
pub fn transport_failure(service: &str, err: reqwest::Error) -> Outcome {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let err = err.without_url();
    let mut reason = format!("{service} {what}: {err}");
    // Append the underlying causes (hyper, io) that reqwest's own message leaves out.
    let mut next = std::error::Error::source(&err);
    while let Some(inner) = next {
        reason.push_str(": ");
        reason.push_str(&inner.to_string());
        next = inner.source();
    }
    Outcome::Retry {
        reason,
        retry_after: None,
    }
}

/// Answers that mean "try again later" for every provider: 429 and 5xx.
pub fn is_transient(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() -> Result<(), Box<dyn std::error::Error>>
    {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        let later = SystemTime::now() + Duration::from_secs(3600);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later))?,
        );
        let delay = retry_after(&headers).ok_or("a Retry-After")?;
        assert!(delay > Duration::from_secs(3590) && delay <= Duration::from_secs(3600));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        Ok(())
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt(b"  bad\nrequest "), "bad request");
        let long = "x".repeat(500);
        assert_eq!(excerpt(long.as_bytes()).chars().count(), EXCERPT_CHARS + 1);
    }
}
