//! The one-pass reader of a record's JSON value: the contract's six ad
//! event fields, each kept as little as validation needs (a string
//! borrowed from the record when it has no escapes, an integer, or just its
//! JSON type), read straight from the text without building a JSON tree.
//!
//! Guarantees: what [`EventFields::read`] makes of a text is what reading it
//! into a `serde_json::Value` tree first made of it (the previous reader,
//! kept as the oracle of a differential property test in
//! [`crate::model::ad_event`]): the same texts are JSON and objects, the
//! last of repeated keys wins, `null` is an absent field, numbers are read
//! by serde_json's own rules (an integer within `i64`, else any other
//! number), and every value not kept (other keys, nested arrays and
//! objects) is still read whole into a tree, so a text the tree reader
//! refuses (a lone surrogate escape anywhere) is refused here too.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One field's value, as far as validation needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// a string, borrowed from the record unless it had escapes
    String(Cow<'a, str>),
    /// an integer that fits an `i64`
    Integer(i64),
    /// any other number: a fraction, an exponent, an integer beyond `i64`
    OtherNumber,
    /// a boolean, an array or an object
    Other,
}

/// The contract's fields of a JSON object (`None`: absent or `null`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventFields<'a> {
    /// `event_id`
    pub event_id: Option<FieldValue<'a>>,
    /// `campaign_id`
    pub campaign_id: Option<FieldValue<'a>>,
    /// `ad_id`
    pub ad_id: Option<FieldValue<'a>>,
    /// `kind`
    pub kind: Option<FieldValue<'a>>,
    /// `cost_micros`
    pub cost_micros: Option<FieldValue<'a>>,
    /// `occurred_at`
    pub occurred_at: Option<FieldValue<'a>>,
}

/// What a JSON text holds, as far as an ad event goes.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue<'a> {
    /// an object, with the contract's fields it has
    Object(EventFields<'a>),
    /// any other JSON value
    NotObject,
}

impl<'a> EventFields<'a> {
    /// Reads `text`; an error means it is not JSON (its message is
    /// serde_json's, position included).
    pub fn read(text: &'a str) -> Result<JsonValue<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// The keys kept; every other key is `Skipped`.
enum FieldName {
    EventId,
    CampaignId,
    AdId,
    Kind,
    CostMicros,
    OccurredAt,
    Skipped,
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FieldName, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = FieldName;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<FieldName, E> {
                Ok(match name {
                    "event_id" => FieldName::EventId,
                    "campaign_id" => FieldName::CampaignId,
                    "ad_id" => FieldName::AdId,
                    "kind" => FieldName::Kind,
                    "cost_micros" => FieldName::CostMicros,
                    "occurred_at" => FieldName::OccurredAt,
                    _ => FieldName::Skipped,
                })
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// A field's value; `None` for `null`.
struct MaybeField<'a>(Option<FieldValue<'a>>);

impl<'de> Deserialize<'de> for MaybeField<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MaybeField<'de>, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = MaybeField<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(Some(FieldValue::Other)))
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(Some(FieldValue::Integer(number))))
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(Some(
                    i64::try_from(number).map_or(FieldValue::OtherNumber, FieldValue::Integer),
                )))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(Some(FieldValue::OtherNumber)))
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                text: &'de str,
            ) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(Some(FieldValue::String(Cow::Borrowed(text)))))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(Some(FieldValue::String(Cow::Owned(
                    text.to_owned(),
                )))))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<MaybeField<'de>, E> {
                Ok(MaybeField(Some(FieldValue::String(Cow::Owned(text)))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeField<'de>, A::Error> {
                while seq.next_element::<serde_json::Value>()?.is_some() {}
                Ok(MaybeField(Some(FieldValue::Other)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeField<'de>, A::Error> {
                while map.next_entry::<String, serde_json::Value>()?.is_some() {}
                Ok(MaybeField(Some(FieldValue::Other)))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

impl<'de> Deserialize<'de> for JsonValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonValue<'de>, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = JsonValue<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonValue<'de>, A::Error> {
                let mut fields = EventFields::default();
                while let Some(name) = map.next_key::<FieldName>()? {
                    let slot = match name {
                        FieldName::EventId => &mut fields.event_id,
                        FieldName::CampaignId => &mut fields.campaign_id,
                        FieldName::AdId => &mut fields.ad_id,
                        FieldName::Kind => &mut fields.kind,
                        FieldName::CostMicros => &mut fields.cost_micros,
                        FieldName::OccurredAt => &mut fields.occurred_at,
                        FieldName::Skipped => {
                            map.next_value::<serde_json::Value>()?;
                            continue;
                        }
                    };
                    // The last of repeated keys wins, as in a JSON tree.
                    *slot = map.next_value::<MaybeField<'de>>()?.0;
                }
                Ok(JsonValue::Object(fields))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue<'de>, A::Error> {
                while seq.next_element::<serde_json::Value>()?.is_some() {}
                Ok(JsonValue::NotObject)
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonValue<'de>, E> {
                Ok(JsonValue::NotObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<JsonValue<'de>, E> {
                Ok(JsonValue::NotObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<JsonValue<'de>, E> {
                Ok(JsonValue::NotObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<JsonValue<'de>, E> {
                Ok(JsonValue::NotObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<JsonValue<'de>, E> {
                Ok(JsonValue::NotObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<JsonValue<'de>, E> {
                Ok(JsonValue::NotObject)
            }
        }
        deserializer.deserialize_any(TopVisitor)
    }
}
