//! The rules a setting must follow, checked in one order: the non-empty
//! names, then one table of rules between settings, then the Kafka keys
//! onceflow owns.
//!
//! Guarantees: the first broken rule is the error, naming its setting by
//! its key as written in the file (`commit_interval_ms`, not the field);
//! the messages and their order are the settings' contract with the
//! operator (README "Configuration").

use std::time::Duration;

use super::{BROKER_MAX_TRANSACTION_TIMEOUT_MS, Settings, SettingsError};
use crate::store::url::StoreBackend;

/// librdkafka keys onceflow sets itself: overriding them would break the
/// exactly-once protocol.
const KAFKA_KEYS_OWNED_BY_ONCEFLOW: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "enable.idempotence",
    "transaction.timeout.ms",
    "auto.offset.reset",
];

impl Settings {
    /// Checks every rule a setting must follow, in the order of
    /// [`Settings::rules`]; the first broken one is the error.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (setting, value) in [
            ("kafka_brokers", &self.kafka_brokers),
            ("group_id", &self.group_id),
            ("input_topic", &self.input_topic),
            ("output_topic", &self.output_topic),
            ("dlq_topic", &self.dlq_topic),
        ] {
            if value.trim().is_empty() {
                return Err(SettingsError::Invalid {
                    setting,
                    reason: "must not be empty".to_owned(),
                });
            }
        }
        if let Some((setting, reason)) = self
            .rules()
            .into_iter()
            .find_map(|(setting, broken)| Some((setting, broken?)))
        {
            return Err(SettingsError::Invalid { setting, reason });
        }
        for key in self.kafka.keys() {
            if KAFKA_KEYS_OWNED_BY_ONCEFLOW.contains(&key.as_str()) {
                return Err(SettingsError::Invalid {
                    setting: "kafka",
                    reason: format!("`{key}` is set by onceflow itself and cannot be overridden"),
                });
            }
        }
        Ok(())
    }

    /// The rules between settings, in the order they are checked: each
    /// names its setting and, if broken, says why.
    fn rules(&self) -> [(&'static str, Option<String>); 22] {
        let at_least_one = |positive: bool| (!positive).then(|| "must be at least 1".to_owned());
        let broken = |broken: bool, reason: &str| broken.then(|| reason.to_owned());
        let broker_max = Duration::from_millis(BROKER_MAX_TRANSACTION_TIMEOUT_MS);
        [
            (
                "input_topic",
                broken(
                    self.input_topic == self.output_topic || self.input_topic == self.dlq_topic,
                    "must differ from output_topic and dlq_topic (onceflow would read its own output)",
                ),
            ),
            (
                "dlq_topic",
                broken(self.output_topic == self.dlq_topic, "must differ from output_topic"),
            ),
            (
                "instance_id",
                broken(
                    self.instance_id
                        .as_ref()
                        .is_some_and(|instance| instance.trim().is_empty()),
                    "must not be empty when set",
                ),
            ),
            (
                "database_url",
                self.database_url
                    .as_deref()
                    .and_then(|url| StoreBackend::of_url(url).err())
                    .map(|error| error.to_string()),
            ),
            ("commit_interval_ms", at_least_one(!self.commit_interval.is_zero())),
            (
                "transaction_timeout_ms",
                (self.transaction_timeout > broker_max).then(|| {
                    format!(
                        "{} exceeds the broker's default transaction.max.timeout.ms ({BROKER_MAX_TRANSACTION_TIMEOUT_MS})",
                        self.transaction_timeout.as_millis()
                    )
                }),
            ),
            (
                "commit_interval_ms",
                (self.commit_interval.saturating_mul(10) > self.transaction_timeout).then(|| {
                    format!(
                        "{} ms is not well below transaction_timeout_ms ({} ms): keep it at most a tenth",
                        self.commit_interval.as_millis(),
                        self.transaction_timeout.as_millis()
                    )
                }),
            ),
            (
                "kafka_call_timeout_ms",
                broken(
                    self.kafka_call_timeout.is_zero()
                        || self.kafka_call_timeout >= self.transaction_timeout,
                    "must be at least 1 and below transaction_timeout_ms",
                ),
            ),
            ("max_batch_records", at_least_one(self.max_batch_records > 0)),
            (
                "max_buffered_records",
                (self.max_buffered_records < self.max_batch_records).then(|| {
                    format!(
                        "must be at least max_batch_records ({})",
                        self.max_batch_records
                    )
                }),
            ),
            (
                "backlog_batch_records",
                self.backlog_batch_records.and_then(|backlog| {
                    (backlog < self.max_batch_records || backlog > self.max_buffered_records)
                        .then(|| {
                            format!(
                                "must be at least max_batch_records ({}) and at most max_buffered_records ({})",
                                self.max_batch_records, self.max_buffered_records
                            )
                        })
                }),
            ),
            ("db_writers", at_least_one(self.db_writers > 0)),
            (
                "db_max_connections",
                ((self.db_max_connections as usize) < self.db_writers + 1)
                    .then(|| format!("must be more than db_writers ({})", self.db_writers)),
            ),
            (
                "db_statement_timeout_ms",
                at_least_one(!self.db_statement_timeout.is_zero()),
            ),
            (
                "db_acquire_timeout_ms",
                at_least_one(!self.db_acquire_timeout.is_zero()),
            ),
            (
                "db_idle_in_transaction_timeout_ms",
                at_least_one(!self.db_idle_in_transaction_timeout.is_zero()),
            ),
            ("restart_budget", at_least_one(self.restart_budget > 0)),
            (
                "restart_backoff_initial_ms",
                broken(
                    self.restart_backoff_initial.is_zero()
                        || self.restart_backoff_initial > self.restart_backoff_max,
                    "must be at least 1 and at most restart_backoff_max_ms",
                ),
            ),
            ("db_retry_attempts", at_least_one(self.db_retry_attempts > 0)),
            (
                "breaker_failure_threshold",
                at_least_one(self.breaker_failure_threshold > 0),
            ),
            (
                "breaker_cooldown_ms",
                broken(
                    self.breaker_cooldown.is_zero()
                        || self.breaker_cooldown > self.breaker_max_cooldown,
                    "must be at least 1 and at most breaker_max_cooldown_ms",
                ),
            ),
            (
                "wedged_after_intervals",
                at_least_one(self.wedged_after_intervals > 0),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_interval_must_be_well_below_transaction_timeout() {
        let settings = Settings {
            commit_interval: Duration::from_millis(10_000),
            transaction_timeout: Duration::from_millis(60_000),
            ..Settings::default()
        };
        let error = settings
            .validate()
            .expect_err("must be refused")
            .to_string();
        assert!(error.starts_with("setting `commit_interval_ms`"), "{error}");
    }

    #[test]
    fn transaction_timeout_above_broker_maximum_is_refused() {
        let settings = Settings {
            transaction_timeout: Duration::from_millis(BROKER_MAX_TRANSACTION_TIMEOUT_MS + 1),
            ..Settings::default()
        };
        let error = settings
            .validate()
            .expect_err("must be refused")
            .to_string();
        assert!(error.contains("transaction_timeout_ms"), "{error}");
    }

    #[test]
    fn protocol_owned_kafka_keys_are_refused() {
        let mut settings = Settings::default();
        settings
            .kafka
            .insert("isolation.level".to_owned(), "read_uncommitted".to_owned());
        let error = settings
            .validate()
            .expect_err("must be refused")
            .to_string();
        assert!(error.contains("isolation.level"), "{error}");
    }

    #[test]
    fn database_url_accepts_postgres_and_sqlite_files_only() {
        for url in [
            "postgres://onceflow@db/onceflow",
            "postgresql://onceflow@db/onceflow",
            "sqlite:///var/lib/onceflow/onceflow.db",
            "sqlite:onceflow.db",
        ] {
            let settings = Settings {
                database_url: Some(url.to_owned()),
                ..Settings::default()
            };
            assert!(settings.validate().is_ok(), "{url}");
        }
        for url in ["mysql://db/onceflow", "onceflow.db", "sqlite::memory:"] {
            let settings = Settings {
                database_url: Some(url.to_owned()),
                ..Settings::default()
            };
            let error = settings
                .validate()
                .expect_err("must be refused")
                .to_string();
            assert!(error.starts_with("setting `database_url`"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let error = Settings {
            database_url: Some("mysql://db/onceflow".to_owned()),
            ..Settings::default()
        }
        .validate()
        .expect_err("must be refused")
        .to_string();
        assert!(
            error.contains("postgres://") && error.contains("sqlite:"),
            "{error}"
        );
    }

    #[test]
    fn each_count_and_duration_must_be_at_least_one_and_names_itself() {
        type Zero = fn(&mut Settings);
        let cases: [(&str, Zero); 12] = [
            ("commit_interval_ms", |s| s.commit_interval = Duration::ZERO),
            ("kafka_call_timeout_ms", |s| {
                s.kafka_call_timeout = Duration::ZERO
            }),
            ("max_batch_records", |s| s.max_batch_records = 0),
            ("db_writers", |s| s.db_writers = 0),
            ("db_statement_timeout_ms", |s| {
                s.db_statement_timeout = Duration::ZERO
            }),
            ("db_acquire_timeout_ms", |s| {
                s.db_acquire_timeout = Duration::ZERO
            }),
            ("db_idle_in_transaction_timeout_ms", |s| {
                s.db_idle_in_transaction_timeout = Duration::ZERO
            }),
            ("restart_budget", |s| s.restart_budget = 0),
            ("restart_backoff_initial_ms", |s| {
                s.restart_backoff_initial = Duration::ZERO
            }),
            ("db_retry_attempts", |s| s.db_retry_attempts = 0),
            ("breaker_failure_threshold", |s| {
                s.breaker_failure_threshold = 0
            }),
            ("breaker_cooldown_ms", |s| {
                s.breaker_cooldown = Duration::ZERO
            }),
        ];
        for (setting, zero) in cases {
            let mut settings = Settings::default();
            zero(&mut settings);
            let error = settings.validate().expect_err(setting).to_string();
            assert!(
                error.starts_with(&format!("setting `{setting}`: must be at least 1")),
                "{setting}: {error}"
            );
        }
    }

    #[test]
    fn a_backlog_batch_limit_set_must_lie_between_the_batch_and_the_buffer() {
        let refused = |settings: Settings| settings.validate().expect_err("refused").to_string();
        for backlog in [4_999, 30_001] {
            let error = refused(Settings {
                backlog_batch_records: Some(backlog),
                ..Settings::default()
            });
            assert_eq!(
                error,
                "setting `backlog_batch_records`: must be at least max_batch_records (5000) \
                 and at most max_buffered_records (30000)"
            );
        }
        for backlog in [5_000, 30_000] {
            let settings = Settings {
                backlog_batch_records: Some(backlog),
                ..Settings::default()
            };
            assert!(settings.validate().is_ok(), "{backlog}");
            assert_eq!(settings.backlog_batch_records(), backlog);
        }
    }

    #[test]
    fn an_unset_backlog_batch_limit_follows_the_other_two() {
        assert_eq!(Settings::default().backlog_batch_records(), 10_000);
        let only_the_buffer = Settings {
            max_buffered_records: 8_000,
            ..Settings::default()
        };
        assert!(
            only_the_buffer.validate().is_ok(),
            "set before, starts still"
        );
        assert_eq!(
            only_the_buffer.backlog_batch_records(),
            5_000,
            "no room for three larger batches: off"
        );
        let only_the_batch = Settings {
            max_batch_records: 12_000,
            ..Settings::default()
        };
        assert!(only_the_batch.validate().is_ok());
        assert_eq!(only_the_batch.backlog_batch_records(), 12_000);
    }

    proptest::proptest! {
        /// Whatever a configuration sets of the other two, an unset backlog
        /// limit starts and lies between them.
        #[test]
        fn an_unset_backlog_batch_limit_is_always_valid(
            max_batch_records in 1usize..50_000,
            extra in 0usize..100_000,
        ) {
            let settings = Settings {
                max_batch_records,
                max_buffered_records: max_batch_records + extra,
                ..Settings::default()
            };
            proptest::prop_assert!(settings.validate().is_ok());
            let backlog = settings.backlog_batch_records();
            proptest::prop_assert!(backlog >= max_batch_records);
            proptest::prop_assert!(backlog <= settings.max_buffered_records);
        }
    }

    #[test]
    fn the_first_broken_rule_in_order_is_reported() {
        // Both broken: the topics rule comes first, as before the table.
        let settings = Settings {
            output_topic: "ad-events".to_owned(),
            db_writers: 0,
            ..Settings::default()
        };
        let error = settings.validate().expect_err("refused").to_string();
        assert!(error.starts_with("setting `input_topic`"), "{error}");
        let settings = Settings {
            breaker_cooldown: Duration::from_secs(10),
            ..Settings::default()
        };
        let error = settings.validate().expect_err("refused").to_string();
        assert_eq!(
            error,
            "setting `breaker_cooldown_ms`: must be at least 1 and at most breaker_max_cooldown_ms"
        );
        let settings = Settings {
            commit_interval: Duration::from_millis(7_000),
            ..Settings::default()
        };
        let error = settings.validate().expect_err("refused").to_string();
        assert_eq!(
            error,
            "setting `commit_interval_ms`: 7000 ms is not well below transaction_timeout_ms (60000 ms): keep it at most a tenth"
        );
    }
}
