//! The data passed between the stages of the pipeline: an ad event as the
//! contract defines it, a record as consumed and as processed, a partition
//! batch and its size limits, positioning tickets and the fetch credit of a route.
//!
//! Guarantees: plain data and small shared counters; nothing here does I/O
//! or knows an actor.

pub mod ad_event;
pub mod batch;
pub mod batch_limits;
pub mod event_fields;
pub mod fetch_credit;
pub mod position_ticket;
pub mod record;
