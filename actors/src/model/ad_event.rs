//! The ad event of the contract and its validation.
//!
//! Guarantees: [`parse_ad_event`] accepts exactly the records the contract
//! calls valid and rejects every other one with an [`InvalidRecord`] whose
//! kind is the contract's DLQ error kind and whose reason is one line. A
//! valid event can be stored by every store: its ids hold no NUL (which
//! PostgreSQL text cannot hold) and its `occurred_at` lies, in UTC, within
//! the years 0000 to 9999 (what both stores' timestamp formats can hold);
//! its billed minute is a calendar truncation, exact for every such time.

use chrono::{DateTime, Datelike, Timelike, Utc};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::event_fields::{EventFields, FieldValue, JsonValue};

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
    /// campaign billed (inline up to 24 bytes: no allocation for a short id)
    pub campaign_id: CompactString,
    /// ad shown or clicked (as `campaign_id`)
    pub ad_id: CompactString,
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
        truncate_to_minute(self.occurred_at)
    }
}

/// `at` with its seconds and fraction set to zero: calendar arithmetic, no
/// nanosecond count, so it is exact for any year chrono holds (a leap
/// second belongs to the minute it ends). Zeroing the seconds of a UTC time
/// always gives a valid time, so the fallback to `at` is never taken (a
/// property test checks it over the years 0000 to 9999).
pub fn truncate_to_minute(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(0)
        .and_then(|at| at.with_second(0))
        .unwrap_or(at)
}

/// Whether `at`, in UTC, lies within the years 0000 to 9999: the range in
/// which both stores hold a timestamp and its RFC 3339 text has four year
/// digits. An RFC 3339 time with an offset can fall outside it once in UTC
/// (`0000-01-01T00:00:00+01:00`, `9999-12-31T23:59:59-01:00`).
pub fn within_storable_years(at: DateTime<Utc>) -> bool {
    (0..=9999).contains(&at.year())
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

fn invalid_event(reason: impl Into<String>) -> InvalidRecord {
    InvalidRecord {
        kind: DeadLetterKind::InvalidEvent,
        reason: reason.into(),
    }
}

fn required_string<'a>(
    field: &'static str,
    value: &'a Option<FieldValue<'_>>,
) -> Result<&'a str, InvalidRecord> {
    match value {
        None => Err(invalid_event(format!("missing field `{field}`"))),
        Some(FieldValue::String(text)) => Ok(text),
        Some(_) => Err(invalid_event(format!("field `{field}` must be a string"))),
    }
}

fn bounded_id(
    field: &'static str,
    value: &Option<FieldValue<'_>>,
) -> Result<CompactString, InvalidRecord> {
    let text = required_string(field, value)?;
    if text.is_empty() {
        return Err(invalid_event(format!("field `{field}` must not be empty")));
    }
    if text.contains('\0') {
        return Err(invalid_event(format!(
            "field `{field}` contains a NUL character (U+0000)"
        )));
    }
    if text.chars().count() > MAX_ID_CHARS {
        return Err(invalid_event(format!(
            "field `{field}` is longer than {MAX_ID_CHARS} characters"
        )));
    }
    Ok(CompactString::from(text))
}

/// Parses and validates one record value.
pub fn parse_ad_event(payload: Option<&[u8]>) -> Result<AdEvent, InvalidRecord> {
    let bytes = payload.unwrap_or_default();
    let text = std::str::from_utf8(bytes).map_err(|error| InvalidRecord {
        kind: DeadLetterKind::InvalidUtf8,
        reason: format!("value is not utf-8: {error}"),
    })?;
    let raw = match EventFields::read(text).map_err(|error| InvalidRecord {
        kind: DeadLetterKind::InvalidJson,
        reason: format!("value is not json: {error}"),
    })? {
        JsonValue::Object(fields) => fields,
        JsonValue::NotObject => return Err(invalid_event("value is not a json object")),
    };

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
        None => return Err(invalid_event("missing field `cost_micros`")),
        Some(FieldValue::Integer(number)) => *number,
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
    if !within_storable_years(occurred_at) {
        return Err(invalid_event(
            "field `occurred_at` is outside the years 0000 to 9999 once in UTC",
        ));
    }
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

    /// The reader before [`EventFields`], as far as reading goes: the whole
    /// value into a JSON tree, then the contract's fields out of it, each as
    /// a [`FieldValue`]. The oracle of the differential test; validation,
    /// which both share, is not copied.
    fn fields_via_tree(text: &str) -> Result<JsonValue<'static>, String> {
        let tree: serde_json::Value =
            serde_json::from_str(text).map_err(|error| error.to_string())?;
        let Some(object) = tree.as_object() else {
            return Ok(JsonValue::NotObject);
        };
        let field = |name: &str| -> Option<FieldValue<'static>> {
            match object.get(name)? {
                serde_json::Value::Null => None,
                serde_json::Value::String(text) => {
                    Some(FieldValue::String(std::borrow::Cow::Owned(text.clone())))
                }
                serde_json::Value::Number(number) => Some(
                    number
                        .as_i64()
                        .map_or(FieldValue::OtherNumber, FieldValue::Integer),
                ),
                _ => Some(FieldValue::Other),
            }
        };
        Ok(JsonValue::Object(EventFields {
            event_id: field("event_id"),
            campaign_id: field("campaign_id"),
            ad_id: field("ad_id"),
            kind: field("kind"),
            cost_micros: field("cost_micros"),
            occurred_at: field("occurred_at"),
        }))
    }

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
    fn a_nul_in_an_id_is_invalid_with_a_one_line_reason() {
        for field in ["campaign_id", "ad_id"] {
            for text in ["c-\u{0}", "\u{0}", "\u{0}x"] {
                let error = parse_ad_event(Some(&with(field, text.into()))).expect_err("has a NUL");
                assert_eq!(error.kind, DeadLetterKind::InvalidEvent);
                assert_eq!(
                    error.reason,
                    format!("field `{field}` contains a NUL character (U+0000)")
                );
            }
        }
    }

    #[test]
    fn ids_of_128_characters_are_valid_and_129_are_not() {
        for field in ["campaign_id", "ad_id"] {
            // multi-byte characters: the limit counts characters, not bytes
            let event = parse_ad_event(Some(&with(field, "é".repeat(128).into()))).expect("128");
            let stored = if field == "ad_id" {
                &event.ad_id
            } else {
                &event.campaign_id
            };
            assert_eq!(stored.chars().count(), 128);
            let error =
                parse_ad_event(Some(&with(field, "é".repeat(129).into()))).expect_err("129");
            assert_eq!(error.kind, DeadLetterKind::InvalidEvent, "{}", error.reason);
        }
    }

    #[test]
    fn far_dates_are_valid_and_truncate_to_their_minute() {
        for (occurred_at, minute) in [
            ("9999-12-31T23:59:59Z", "9999-12-31T23:59:00Z"),
            ("9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:00Z"),
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"),
            ("1600-02-29T12:34:56.5+01:00", "1600-02-29T11:34:00Z"),
            ("2300-06-01T00:00:30Z", "2300-06-01T00:00:00Z"),
            ("2016-12-31T23:59:60.5Z", "2016-12-31T23:59:00Z"),
        ] {
            let event =
                parse_ad_event(Some(&with("occurred_at", occurred_at.into()))).expect(occurred_at);
            assert_eq!(
                event
                    .billed_minute()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                minute,
                "{occurred_at}"
            );
        }
    }

    #[test]
    fn times_outside_the_years_0000_to_9999_in_utc_are_invalid() {
        for occurred_at in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"] {
            let error = parse_ad_event(Some(&with("occurred_at", occurred_at.into())))
                .expect_err(occurred_at);
            assert_eq!(error.kind, DeadLetterKind::InvalidEvent);
            assert!(error.reason.contains("0000 to 9999"), "{}", error.reason);
        }
    }

    /// JSON texts of every shape validation tells apart: objects with the
    /// contract's keys (escaped ones too), repeated keys, extra keys, values
    /// of every type (strings with escapes and lone surrogates, integers at
    /// and past `i64`, fractions, exponents, nested values), other top-level
    /// values, and texts cut short or trailed by garbage.
    fn json_texts() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let keys = prop::sample::select(vec![
            r#""event_id""#,
            r#""campaign_id""#,
            r#""ad_id""#,
            r#""kind""#,
            r#""cost_micros""#,
            r#""occurred_at""#,
            r#""event\u005fid""#,
            r#""extra""#,
        ]);
        let values = prop::sample::select(vec![
            r#""1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b""#,
            r#""1B4E28BA-2FA1-4D3B-A3F5-EF19B5A7633B""#,
            r#""nope""#,
            r#""""#,
            r#""c-17""#,
            r#""c\"1\u00e9""#,
            r#""ad/\u00fc""#,
            r#""\u0000""#,
            r#""x\ud800""#,
            r#""\ud83d\ude00""#,
            r#""impression""#,
            r#""click""#,
            r#""view""#,
            r#""2026-11-26T10:15:30.123Z""#,
            r#""2026-11-26T10:15:30+02:00""#,
            r#""0000-01-01T00:00:00+01:00""#,
            r#""yesterday""#,
            "0",
            "-0",
            "-1",
            "250000",
            "1000000000000",
            "1000000000001",
            "1.5",
            "1e3",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
            "null",
            "true",
            r#"[1,"\ud800"]"#,
            r#"{"a":[1,{"b":null}]}"#,
        ]);
        let long_id = Just(format!(r#""{}""#, "é".repeat(129)));
        let value = prop_oneof![8 => values.prop_map(str::to_owned), 1 => long_id];
        let object = prop::collection::vec((keys, value), 0..9).prop_map(|pairs| {
            let body: Vec<String> = pairs
                .into_iter()
                .map(|(key, value)| format!("{key}:{value}"))
                .collect();
            format!("{{{}}}", body.join(","))
        });
        let top = prop_oneof![
            12 => object,
            1 => Just("[1,2]".to_owned()),
            1 => Just(r#""text""#.to_owned()),
            1 => Just("42".to_owned()),
            1 => Just("null".to_owned()),
            1 => Just("not json".to_owned()),
        ];
        (top, 0_u8..10, any::<prop::sample::Index>()).prop_map(|(text, damage, at)| match damage {
            0 => {
                let mut cut = at.index(text.len() + 1);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text[..cut].to_owned()
            }
            1 => format!("{text} x"),
            2 => format!(" {text}\n"),
            _ => text,
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// The one-pass reader reads every text exactly as the JSON tree
        /// reader it replaced: the same fields (strings compared by text,
        /// borrowed or not), or the same error, word for word (its message
        /// is the dead letter's reason).
        #[test]
        fn the_one_pass_reader_agrees_with_the_tree_reader(text in json_texts()) {
            let one_pass = EventFields::read(&text).map_err(|error| error.to_string());
            let tree = fields_via_tree(&text);
            proptest::prop_assert_eq!(one_pass, tree, "{}", text);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Calendar truncation is exact over the whole storable range: the
        /// minute has no seconds, is not after the time and is less than a
        /// minute before it.
        #[test]
        fn billed_minute_is_exact_for_every_storable_time(
            seconds in -62_167_219_200_i64..=253_402_300_799_i64,
            nanos in 0_u32..1_000_000_000,
        ) {
            let at = DateTime::from_timestamp(seconds, nanos).expect("in chrono's range");
            let minute = truncate_to_minute(at);
            proptest::prop_assert_eq!((minute.second(), minute.nanosecond()), (0, 0));
            proptest::prop_assert!(minute <= at);
            proptest::prop_assert!(at - minute < chrono::TimeDelta::minutes(1));
            proptest::prop_assert!(within_storable_years(at));
        }
    }

    #[test]
    fn boundaries_are_valid() {
        assert!(parse_ad_event(Some(&with("campaign_id", "x".repeat(128).into()))).is_ok());
        assert!(parse_ad_event(Some(&with("cost_micros", 0.into()))).is_ok());
        assert!(parse_ad_event(Some(&with("cost_micros", MAX_COST_MICROS.into()))).is_ok());
    }
}
