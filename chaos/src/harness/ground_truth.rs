//! The contract's validity rule, written independently of onceflow, and the
//! ground truth of a workload recomputed from the input topic itself.

use super::*;
use crate::error::Result;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// The `onceflow-error-kind` the contract implies for an invalid record.
pub const INVALID_UTF8: &str = "invalid-utf8";
pub const INVALID_JSON: &str = "invalid-json";
pub const INVALID_EVENT: &str = "invalid-event";

/// A valid input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEvent {
    pub event_id: Uuid,
    pub campaign_id: String,
    pub ad_id: String,
    /// `impression` or `click`.
    pub kind: String,
    pub cost_micros: i64,
    /// `occurred_at` in microseconds since the epoch.
    pub occurred_at_micros: i64,
    /// `billed_minute`: `occurred_at` (UTC) truncated to the minute, in
    /// seconds since the epoch.
    pub minute: i64,
}

/// Applies the contract's validity rule to a record value; an invalid one
/// gives the error kind the contract implies and a reason. Read from the
/// contract's text: `event_id` a UUID; `campaign_id` and `ad_id` non-empty
/// strings of at most 128 characters (Unicode scalar values) without NUL;
/// `kind` `impression` or `click`; `cost_micros` an integer from 0 to
/// 10^12; `occurred_at` RFC 3339; extra fields ignored.
pub fn check_event(
    value: Option<&[u8]>,
) -> std::result::Result<ValidEvent, (&'static str, String)> {
    let bytes = value.unwrap_or_default();
    let text = std::str::from_utf8(bytes).map_err(|e| (INVALID_UTF8, e.to_string()))?;
    let json: Value = serde_json::from_str(text).map_err(|e| (INVALID_JSON, e.to_string()))?;
    let bad = |reason: String| (INVALID_EVENT, reason);
    let object = json
        .as_object()
        .ok_or_else(|| bad("not a json object".to_owned()))?;
    let string = |name: &str| -> std::result::Result<&str, (&'static str, String)> {
        object
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{name} missing or not a string")))
    };
    let bounded = |name: &str| -> std::result::Result<String, (&'static str, String)> {
        let value = string(name)?;
        let chars = value.chars().count();
        if chars == 0 || chars > 128 {
            return Err(bad(format!("{name} has {chars} characters")));
        }
        if value.contains('\u{0}') {
            return Err(bad(format!("{name} contains NUL (U+0000)")));
        }
        Ok(value.to_owned())
    };
    let event_id = Uuid::parse_str(string("event_id")?)
        .map_err(|e| bad(format!("event_id is not a uuid: {e}")))?;
    let campaign_id = bounded("campaign_id")?;
    let ad_id = bounded("ad_id")?;
    let kind = string("kind")?;
    if kind != "impression" && kind != "click" {
        return Err(bad(format!("kind {kind:?}")));
    }
    let cost_micros = object
        .get("cost_micros")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("cost_micros missing or not an integer".to_owned()))?;
    if !(0..=1_000_000_000_000).contains(&cost_micros) {
        return Err(bad(format!("cost_micros {cost_micros} out of range")));
    }
    let occurred_at = string("occurred_at")?;
    let occurred_at = chrono::DateTime::parse_from_rfc3339(occurred_at)
        .map_err(|e| bad(format!("occurred_at {occurred_at:?}: {e}")))?;
    let seconds = occurred_at.timestamp();
    Ok(ValidEvent {
        event_id,
        campaign_id,
        ad_id,
        kind: kind.to_owned(),
        cost_micros,
        occurred_at_micros: occurred_at.timestamp_micros(),
        minute: seconds - seconds.rem_euclid(60),
    })
}

/// Impressions, clicks and spend of a set of distinct events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub impressions: u64,
    pub clicks: u64,
    pub spend_micros: i64,
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} impressions, {} clicks, {} micros",
            self.impressions, self.clicks, self.spend_micros
        )
    }
}

impl Totals {
    pub(crate) fn add(&mut self, kind: &str, cost_micros: i64) {
        if kind == "click" {
            self.clicks += 1;
        } else {
            self.impressions += 1;
        }
        self.spend_micros += cost_micros;
    }

    pub(crate) fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// An invalid input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    pub error_kind: &'static str,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// The ground truth, recomputed from the input topic.
#[derive(Debug, Clone, Default)]
pub struct InputTruth {
    pub records: u64,
    pub valid_records: u64,
    pub distinct_events: u64,
    pub repeats: u64,
    pub invalid: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub spend_micros_total: i64,
    pub per_campaign: BTreeMap<String, Totals>,
    /// Per `(campaign_id, billed_minute in epoch seconds)`.
    pub per_minute: BTreeMap<(String, i64), Totals>,
    /// Each distinct valid event (its first copy by partition, offset).
    pub events: HashMap<Uuid, ValidEvent>,
    /// Every distinct content sent under each event id, first copy first:
    /// one entry unless upstream sent conflicting repeats. The store keeps
    /// whichever copy its first database commit held, so the verdict takes
    /// the stored variant (it must be one of these) as the event.
    pub variants: HashMap<Uuid, Vec<ValidEvent>>,
    /// Every input position `(partition, offset)` of each valid event.
    pub positions: HashMap<Uuid, Vec<(i32, i64)>>,
    /// Invalid records by `(partition, offset)`.
    pub invalid_records: BTreeMap<(i32, i64), InvalidRecord>,
    /// Repeats whose content differs from every earlier copy of their event
    /// id (see [`InputTruth::variants`]).
    pub conflicting_repeats: u64,
}

impl InputTruth {
    /// The truth of these input records (any order).
    pub fn from_records(records: &[TopicRecord]) -> InputTruth {
        let mut sorted: Vec<&TopicRecord> = records.iter().collect();
        sorted.sort_by_key(|r| (r.partition, r.offset));
        let mut truth = InputTruth::default();
        for record in sorted {
            truth.records += 1;
            match check_event(record.value.as_deref()) {
                Err((error_kind, reason)) => {
                    truth.invalid += 1;
                    truth.invalid_records.insert(
                        (record.partition, record.offset),
                        InvalidRecord {
                            error_kind,
                            reason,
                            key: record.key.clone(),
                            value: record.value.clone(),
                        },
                    );
                }
                Ok(event) => {
                    truth.valid_records += 1;
                    truth
                        .positions
                        .entry(event.event_id)
                        .or_default()
                        .push((record.partition, record.offset));
                    if truth.events.contains_key(&event.event_id) {
                        truth.repeats += 1;
                        let variants = truth.variants.entry(event.event_id).or_default();
                        if !variants.contains(&event) {
                            truth.conflicting_repeats += 1;
                            variants.push(event);
                        }
                        continue;
                    }
                    truth.variants.insert(event.event_id, vec![event.clone()]);
                    truth.distinct_events += 1;
                    if event.kind == "click" {
                        truth.clicks += 1;
                    } else {
                        truth.impressions += 1;
                    }
                    truth.spend_micros_total += event.cost_micros;
                    truth
                        .per_campaign
                        .entry(event.campaign_id.clone())
                        .or_default()
                        .add(&event.kind, event.cost_micros);
                    truth
                        .per_minute
                        .entry((event.campaign_id.clone(), event.minute))
                        .or_default()
                        .add(&event.kind, event.cost_micros);
                    truth.events.insert(event.event_id, event);
                }
            }
        }
        truth
    }
}

/// The ground truth of `topic`, read with [`read_committed`].
pub async fn input_truth(bootstrap: &str, topic: &str) -> Result<InputTruth> {
    Ok(InputTruth::from_records(
        &read_committed(bootstrap, topic).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(campaign: &str, ad: &str) -> String {
        serde_json::json!({
            "event_id": "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b",
            "campaign_id": campaign,
            "ad_id": ad,
            "kind": "click",
            "cost_micros": 1,
            "occurred_at": "9999-12-31T23:59:59Z",
        })
        .to_string()
    }

    #[test]
    fn the_128_character_boundary_counts_characters_not_bytes() {
        let at_limit = "é".repeat(128);
        let over = "é".repeat(129);
        assert!(check_event(Some(event(&at_limit, "a").as_bytes())).is_ok());
        let refused = check_event(Some(event(&over, "a").as_bytes()));
        assert_eq!(refused.map_err(|(kind, _)| kind), Err(INVALID_EVENT));
        assert!(check_event(Some(event("c", &"x".repeat(129)).as_bytes())).is_err());
        assert!(check_event(Some(event("", "a").as_bytes())).is_err());
    }

    #[test]
    fn a_nul_in_campaign_or_ad_id_is_an_invalid_event() {
        for (campaign, ad) in [("c\u{0}1", "a"), ("c", "\u{0}")] {
            let refused = check_event(Some(event(campaign, ad).as_bytes()));
            assert_eq!(refused.map_err(|(kind, _)| kind), Err(INVALID_EVENT));
        }
    }
}
