//! Kafka: the input consumer, the transactional producer and the lag
//! monitor's reader ([`clients`]), blocking calls bounded in time
//! ([`blocking_call`]), the rebalance context ([`rebalance`]), the records a
//! cycle produces ([`records`], pure), producing inside the open
//! transaction ([`send`]) and counting its acknowledgements ([`delivery`]),
//! the transaction's steps ([`transaction`]), the header names
//! ([`headers`]) and the classification of failures ([`error`]).
//!
//! Guarantees: no file here knows an actor type; offsets are committed
//! only through the producer's transaction.

pub mod blocking_call;
pub mod clients;
pub mod delivery;
pub mod error;
pub mod headers;
pub mod rebalance;
pub mod records;
pub mod send;
pub mod transaction;
