//! The ad event of the contract and its validation.
//!
//! Guarantees: [`parse_ad_event`] accepts exactly the records the contract
//! calls valid and rejects every other one with an [`InvalidRecord`] whose
//! kind is the contract's DLQ error kind and whose reason is one line.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Largest valid `cost_micros`.
pub const MAX_COST_MICROS: i64 = 1_000_000_000_000;
/// Longest valid `campaign_id` or `ad_id`, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Impression or click.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdEventKind {
    /// the ad was shown
    Impression,
    /// the ad was clicked
    Click,
}

impl AdEventKind {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AdEventKind::Impression => "impression",
            AdEventKind::Click => "click",
        }
    }
}

/// A valid ad event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdEvent {
    /// upstream id: equal ids are the same event
    pub event_id: Uuid,
    /// campaign billed
    pub campaign_id: String,
    /// ad shown or clicked
    pub ad_id: String,
    /// impression or click
    pub kind: AdEventKind,
    /// cost in millionths of the currency unit
    pub cost_micros: i64,
    /// when it happened
    pub occurred_at: DateTime<Utc>,
}

impl AdEvent {
    /// `occurred_at` truncated to the minute: the billing bucket.
    pub fn billed_minute(&self) -> DateTime<Utc> {
        self.occurred_at
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or(self.occurred_at)
    }
}

/// The DLQ error kinds of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// the value is not UTF-8
    InvalidUtf8,
    /// the value is not JSON
    InvalidJson,
    /// JSON, but not a valid ad event
    InvalidEvent,
    /// processing failed repeatedly
    Processing,
}

impl DeadLetterKind {
    /// The `onceflow-error-kind` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::InvalidUtf8 => "invalid-utf8",
            DeadLetterKind::InvalidJson => "invalid-json",
            DeadLetterKind::InvalidEvent => "invalid-event",
            DeadLetterKind::Processing => "processing",
        }
    }

    /// All kinds, for metrics.
    pub const ALL: [DeadLetterKind; 4] = [
        DeadLetterKind::InvalidUtf8,
        DeadLetterKind::InvalidJson,
        DeadLetterKind::InvalidEvent,
        DeadLetterKind::Processing,
    ];
}

/// Why a record is not a valid ad event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    /// contract error kind
    pub kind: DeadLetterKind,
    /// one-line reason
    pub reason: String,
}

#[derive(Deserialize)]
struct RawAdEvent {
    event_id: Option<serde_json::Value>,
    campaign_id: Option<serde_json::Value>,
    ad_id: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
    cost_micros: Option<serde_json::Value>,
    occurred_at: Option<serde_json::Value>,
}

fn invalid_event(reason: impl Into<String>) -> InvalidRecord {
    InvalidRecord {
        kind: DeadLetterKind::InvalidEvent,
        reason: reason.into(),
    }
}

fn required_string<'a>(
    field: &'static str,
    value: &'a Option<serde_json::Value>,
) -> Result<&'a str, InvalidRecord> {
    match value {
        None | Some(serde_json::Value::Null) => {
            Err(invalid_event(format!("missing field `{field}`")))
        }
        Some(serde_json::Value::String(text)) => Ok(text),
        Some(_) => Err(invalid_event(format!("field `{field}` must be a string"))),
    }
}

fn bounded_id(
    field: &'static str,
    value: &Option<serde_json::Value>,
) -> Result<String, InvalidRecord> {
    let text = required_string(field, value)?;
    if text.is_empty() {
        return Err(invalid_event(format!("field `{field}` must not be empty")));
    }
    if text.chars().count() > MAX_ID_CHARS {
        return Err(invalid_event(format!(
            "field `{field}` is longer than {MAX_ID_CHARS} characters"
        )));
    }
    Ok(text.to_owned())
}

/// Parses and validates one record value.
pub fn parse_ad_event(payload: Option<&[u8]>) -> Result<AdEvent, InvalidRecord> {
    let bytes = payload.unwrap_or_default();
    let text = std::str::from_utf8(bytes).map_err(|error| InvalidRecord {
        kind: DeadLetterKind::InvalidUtf8,
        reason: format!("value is not utf-8: {error}"),
    })?;
    let json: serde_json::Value = serde_json::from_str(text).map_err(|error| InvalidRecord {
        kind: DeadLetterKind::InvalidJson,
        reason: format!("value is not json: {error}"),
    })?;
    if !json.is_object() {
        return Err(invalid_event("value is not a json object"));
    }
    let raw: RawAdEvent = serde_json::from_value(json)
        .map_err(|error| invalid_event(format!("unexpected shape: {error}")))?;

    let event_id_text = required_string("event_id", &raw.event_id)?;
    let event_id = Uuid::parse_str(event_id_text)
        .map_err(|_| invalid_event("field `event_id` is not a uuid"))?;
    let campaign_id = bounded_id("campaign_id", &raw.campaign_id)?;
    let ad_id = bounded_id("ad_id", &raw.ad_id)?;
    let kind = match required_string("kind", &raw.kind)? {
        "impression" => AdEventKind::Impression,
        "click" => AdEventKind::Click,
        other => {
            return Err(invalid_event(format!(
                "field `kind` must be impression or click, not {:?}",
                truncate(other, 40)
            )));
        }
    };
    let cost_micros = match &raw.cost_micros {
        None | Some(serde_json::Value::Null) => {
            return Err(invalid_event("missing field `cost_micros`"));
        }
        Some(serde_json::Value::Number(number)) => number
            .as_i64()
            .ok_or_else(|| invalid_event("field `cost_micros` must be an integer"))?,
        Some(_) => return Err(invalid_event("field `cost_micros` must be an integer")),
    };
    if !(0..=MAX_COST_MICROS).contains(&cost_micros) {
        return Err(invalid_event(format!(
            "field `cost_micros` must be from 0 to {MAX_COST_MICROS}, not {cost_micros}"
        )));
    }
    let occurred_at_text = required_string("occurred_at", &raw.occurred_at)?;
    let occurred_at = DateTime::parse_from_rfc3339(occurred_at_text)
        .map_err(|_| invalid_event("field `occurred_at` is not rfc 3339"))?
        .with_timezone(&Utc);
    Ok(AdEvent {
        event_id,
        campaign_id,
        ad_id,
        kind,
        cost_micros,
        occurred_at,
    })
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b","campaign_id":"c-17","ad_id":"ad-942","kind":"click","cost_micros":250000,"occurred_at":"2026-11-26T10:15:30.123Z","extra":true}"#;

    fn with(field: &str, value: serde_json::Value) -> Vec<u8> {
        let mut json: serde_json::Value = serde_json::from_str(VALID).expect("fixture is json");
        json[field] = value;
        serde_json::to_vec(&json).expect("serializes")
    }

    fn without(field: &str) -> Vec<u8> {
        let mut json: serde_json::Value = serde_json::from_str(VALID).expect("fixture is json");
        json.as_object_mut().expect("object").remove(field);
        serde_json::to_vec(&json).expect("serializes")
    }

    #[test]
    fn accepts_the_contract_example_and_ignores_extra_fields() {
        let event = parse_ad_event(Some(VALID.as_bytes())).expect("valid");
        assert_eq!(event.kind, AdEventKind::Click);
        assert_eq!(event.cost_micros, 250_000);
        assert_eq!(
            event.billed_minute().to_rfc3339(),
            "2026-11-26T10:15:00+00:00"
        );
    }

    #[test]
    fn rejects_each_kind_of_invalid_record() {
        let cases: Vec<(Option<Vec<u8>>, DeadLetterKind)> = vec![
            (Some(vec![0xff, 0xfe, 0x00]), DeadLetterKind::InvalidUtf8),
            (None, DeadLetterKind::InvalidJson),
            (Some(b"not json".to_vec()), DeadLetterKind::InvalidJson),
            (Some(b"[1,2]".to_vec()), DeadLetterKind::InvalidEvent),
            (Some(without("event_id")), DeadLetterKind::InvalidEvent),
            (
                Some(with("event_id", "nope".into())),
                DeadLetterKind::InvalidEvent,
            ),
            (
                Some(with("campaign_id", "".into())),
                DeadLetterKind::InvalidEvent,
            ),
            (
                Some(with("campaign_id", "x".repeat(129).into())),
                DeadLetterKind::InvalidEvent,
            ),
            (Some(with("ad_id", 7.into())), DeadLetterKind::InvalidEvent),
            (
                Some(with("kind", "view".into())),
                DeadLetterKind::InvalidEvent,
            ),
            (
                Some(with("cost_micros", (-1).into())),
                DeadLetterKind::InvalidEvent,
            ),
            (
                Some(with("cost_micros", 1_000_000_000_001_i64.into())),
                DeadLetterKind::InvalidEvent,
            ),
            (
                Some(with("cost_micros", 1.5.into())),
                DeadLetterKind::InvalidEvent,
            ),
            (
                Some(with("cost_micros", "5".into())),
                DeadLetterKind::InvalidEvent,
            ),
            (
                Some(with("occurred_at", "yesterday".into())),
                DeadLetterKind::InvalidEvent,
            ),
            (Some(without("occurred_at")), DeadLetterKind::InvalidEvent),
        ];
        for (payload, expected_kind) in cases {
            let error = parse_ad_event(payload.as_deref()).expect_err("must be invalid");
            assert_eq!(error.kind, expected_kind, "{payload:?}: {}", error.reason);
            assert!(!error.reason.contains('\n'));
        }
    }

    #[test]
    fn boundaries_are_valid() {
        assert!(parse_ad_event(Some(&with("campaign_id", "x".repeat(128).into()))).is_ok());
        assert!(parse_ad_event(Some(&with("cost_micros", 0.into()))).is_ok());
        assert!(parse_ad_event(Some(&with("cost_micros", MAX_COST_MICROS.into()))).is_ok());
    }
}
