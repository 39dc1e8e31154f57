//! Service configuration: defaults, then the TOML file, then `ONCEFLOW_*`
//! environment variables (the environment wins; see `environment` for how
//! a platform's variables are read: text as text, `*_FILE` secrets, the
//! Kubernetes service variables skipped).
//!
//! Guarantees: unknown keys are rejected; every setting is validated before
//! anything starts, and a bad one yields a single [`SettingsError`] line that
//! names the setting and says why. Kafka pass-through values may hold secrets:
//! [`Settings::redacted_kafka_keys`] is the only view of them meant for logs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod environment;
mod guarantee;
mod text;
mod validation;

pub use guarantee::Guarantee;

/// The broker's default `transaction.max.timeout.ms` (15 minutes): a
/// transactional producer asking for more is refused by the broker.
pub const BROKER_MAX_TRANSACTION_TIMEOUT_MS: u64 = 900_000;

/// A setting is missing or wrong. Retrying never helps: fix the setting.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or the environment could not be read or parsed.
    #[error("configuration: {0}")]
    Load(String),
    /// A setting has a value that cannot work.
    #[error("setting `{setting}`: {reason}")]
    Invalid {
        /// the setting's key, as written in the file
        setting: &'static str,
        /// why the value cannot work
        reason: String,
    },
}

impl SettingsError {
    /// Configuration errors are never transient.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

/// Every setting of `onceflow run`. Field names are the TOML keys; the
/// environment variable of a field is `ONCEFLOW_` + its name in upper case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Bootstrap servers of the Kafka cluster.
    #[serde(deserialize_with = "text::string")]
    pub kafka_brokers: String,
    /// Database URL; required by `run`: PostgreSQL (`postgres://…`,
    /// `postgresql://…`) or an embedded SQLite file (`sqlite:///abs/path.db`,
    /// `sqlite:relative.db`).
    #[serde(default, deserialize_with = "text::optional")]
    pub database_url: Option<String>,
    /// Consumer group shared by all instances.
    #[serde(deserialize_with = "text::string")]
    pub group_id: String,
    /// Stable id of this instance: `group.instance.id` and part of the
    /// `transactional.id`. Defaults to the host name.
    #[serde(default, deserialize_with = "text::optional")]
    pub instance_id: Option<String>,
    /// Topic the ad events are read from.
    #[serde(deserialize_with = "text::string")]
    pub input_topic: String,
    /// Topic the billed events are written to.
    #[serde(deserialize_with = "text::string")]
    pub output_topic: String,
    /// Topic invalid records are written to.
    #[serde(deserialize_with = "text::string")]
    pub dlq_topic: String,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub http_addr: SocketAddr,
    /// How often a commit cycle starts (key `commit_interval_ms`, like every
    /// duration here: milliseconds in the file and the environment).
    #[serde(rename = "commit_interval_ms", with = "millis")]
    pub commit_interval: Duration,
    /// `transaction.timeout.ms` of the transactional producer.
    #[serde(rename = "transaction_timeout_ms", with = "millis")]
    pub transaction_timeout: Duration,
    /// Timeout of one Kafka call (init, send offsets, commit, abort).
    #[serde(rename = "kafka_call_timeout_ms", with = "millis")]
    pub kafka_call_timeout: Duration,
    /// Most records a partition hands to one commit cycle while it keeps up.
    pub max_batch_records: usize,
    /// Most records a partition hands to one commit cycle under a backlog:
    /// once it holds at least this many beyond its batches in flight, it
    /// hands over this many at once (see
    /// [`crate::model::batch_limits`]). Set, it must lie between
    /// `max_batch_records` and `max_buffered_records` (equal to
    /// `max_batch_records`, it turns the larger batches off); unset, it is
    /// [`Settings::backlog_batch_records`]: 10,000 with the defaults.
    #[serde(default)]
    pub backlog_batch_records: Option<usize>,
    /// Most uncommitted records a partition holds before it pauses
    /// fetching, its batches in flight included: room for two batches in
    /// flight and the next one, so three backlog batches by default.
    pub max_buffered_records: usize,
    /// Number of database writer actors (each holds at most one transaction).
    pub db_writers: usize,
    /// Connections in the PostgreSQL pool.
    pub db_max_connections: u32,
    /// `statement_timeout` of every database session.
    #[serde(rename = "db_statement_timeout_ms", with = "millis")]
    pub db_statement_timeout: Duration,
    /// Longest wait for a database connection; while the database refuses
    /// connections, each operation fails after this long (and counts against
    /// the circuit breaker).
    #[serde(rename = "db_acquire_timeout_ms", with = "millis")]
    pub db_acquire_timeout: Duration,
    /// `idle_in_transaction_session_timeout` of every database session: a
    /// frozen process (a zombie) cannot hold a partition's row lock longer.
    #[serde(rename = "db_idle_in_transaction_timeout_ms", with = "millis")]
    pub db_idle_in_transaction_timeout: Duration,
    /// Restarts a supervisor allows per child within `restart_window_ms`
    /// before it gives up and escalates.
    pub restart_budget: u32,
    /// The window of the restart budget.
    #[serde(rename = "restart_window_ms", with = "millis")]
    pub restart_window: Duration,
    /// First restart delay; doubles on each further restart in the window.
    #[serde(rename = "restart_backoff_initial_ms", with = "millis")]
    pub restart_backoff_initial: Duration,
    /// Longest restart delay.
    #[serde(rename = "restart_backoff_max_ms", with = "millis")]
    pub restart_backoff_max: Duration,
    /// A transaction open longer than this is logged as a warning.
    #[serde(rename = "open_txn_warn_ms", with = "millis")]
    pub open_txn_warn: Duration,
    /// Attempts of one database write while its errors are transient.
    pub db_retry_attempts: u32,
    /// First delay between database write attempts (doubles, with jitter).
    #[serde(rename = "db_retry_backoff_ms", with = "millis")]
    pub db_retry_backoff: Duration,
    /// Consecutive failed database writes that open the circuit breaker.
    pub breaker_failure_threshold: u32,
    /// First wait before the open breaker probes the database.
    #[serde(rename = "breaker_cooldown_ms", with = "millis")]
    pub breaker_cooldown: Duration,
    /// Longest wait between probes (the wait doubles after a failed probe).
    #[serde(rename = "breaker_max_cooldown_ms", with = "millis")]
    pub breaker_max_cooldown: Duration,
    /// `/healthz` reports the pipeline wedged (503) once no cycle has
    /// committed for this many commit intervals while input waits (lag
    /// above zero) and the database breaker is not open.
    pub wedged_after_intervals: u32,
    /// The delivery guarantee of the outputs: `exactly-once` (default) or
    /// `at-least-once` (no Kafka transaction; see [`Guarantee`]).
    pub guarantee: Guarantee,
    /// librdkafka settings passed through unchanged (SASL/SSL included).
    #[serde(deserialize_with = "text::table")]
    pub kafka: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kafka_brokers: "127.0.0.1:9092".to_owned(),
            database_url: None,
            group_id: "onceflow".to_owned(),
            instance_id: None,
            input_topic: "ad-events".to_owned(),
            output_topic: "ad-events-billed".to_owned(),
            dlq_topic: "ad-events-dlq".to_owned(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            commit_interval: Duration::from_millis(100),
            transaction_timeout: Duration::from_millis(60_000),
            kafka_call_timeout: Duration::from_millis(10_000),
            max_batch_records: 5_000,
            backlog_batch_records: None,
            max_buffered_records: 30_000,
            db_writers: 4,
            db_max_connections: 8,
            db_statement_timeout: Duration::from_millis(30_000),
            db_idle_in_transaction_timeout: Duration::from_millis(10_000),
            db_acquire_timeout: Duration::from_millis(2_000),
            restart_budget: 10,
            restart_window: Duration::from_millis(60_000),
            restart_backoff_initial: Duration::from_millis(100),
            restart_backoff_max: Duration::from_millis(5_000),
            open_txn_warn: Duration::from_millis(10_000),
            db_retry_attempts: 3,
            db_retry_backoff: Duration::from_millis(50),
            breaker_failure_threshold: 3,
            breaker_cooldown: Duration::from_millis(1_000),
            breaker_max_cooldown: Duration::from_millis(5_000),
            wedged_after_intervals: 600,
            guarantee: Guarantee::ExactlyOnce,
            kafka: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` (if any), then the environment, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Settings::load_over(Settings::default(), file)
    }

    /// As [`Settings::load`], with `defaults` in place of the built-in
    /// defaults (a command with tuning of its own, such as the demo).
    pub fn load_over(defaults: Settings, file: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = file {
            if !path.exists() {
                return Err(SettingsError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(environment::EnvironmentLayer(environment::layer(
            std::env::vars(),
        )?));
        let settings: Settings = figment
            .extract()
            .map_err(|error| SettingsError::Load(one_line(&error.to_string())))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The backlog batch limit: the configured one, else twice
    /// `max_batch_records` within a third of `max_buffered_records` (room
    /// for two batches in flight and the next), never below
    /// `max_batch_records`. Derived rather than a fixed default, so a
    /// configuration that set only the other two still starts.
    pub fn backlog_batch_records(&self) -> usize {
        self.backlog_batch_records.unwrap_or_else(|| {
            self.max_batch_records
                .saturating_mul(2)
                .min(self.max_buffered_records / 3)
                .max(self.max_batch_records)
        })
    }

    /// The instance id: the configured one, else the host name.
    pub fn instance_id(&self) -> String {
        match &self.instance_id {
            Some(id) => id.clone(),
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        }
    }

    /// `transactional.id` of this instance: `{group}-{instance}`.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.group_id, self.instance_id())
    }

    /// The database URL, required by `run`.
    pub fn required_database_url(&self) -> Result<&str, SettingsError> {
        self.database_url.as_deref().ok_or(SettingsError::Invalid {
            setting: "database_url",
            reason: "required: set ONCEFLOW_DATABASE_URL or database_url in the config file"
                .to_owned(),
        })
    }

    /// How long without a committed cycle (while input waits) makes the
    /// pipeline wedged: `wedged_after_intervals` commit intervals.
    pub fn wedged_after(&self) -> Duration {
        self.commit_interval
            .saturating_mul(self.wedged_after_intervals)
    }

    /// The keys (never the values) of the Kafka pass-through settings, for logs.
    pub fn redacted_kafka_keys(&self) -> Vec<&str> {
        self.kafka.keys().map(String::as_str).collect()
    }
}

/// Durations as whole milliseconds, the unit of every `_ms` key.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Settings::default().validate().is_ok());
    }

    #[test]
    // figment's `Jail` closure returns figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn file_then_environment_with_unknown_keys_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "onceflow.toml",
                "group_id = \"from-file\"\ninput_topic = \"in\"\n[kafka]\n\"sasl.password\" = \"secret\"\n",
            )?;
            jail.set_env("ONCEFLOW_GROUP_ID", "from-env");
            let settings = Settings::load(Some(Path::new("onceflow.toml")))
                .map_err(|error| error.to_string())?;
            assert_eq!(settings.group_id, "from-env");
            assert_eq!(settings.input_topic, "in");
            assert_eq!(settings.redacted_kafka_keys(), vec!["sasl.password"]);

            jail.create_file("bad.toml", "comit_interval_ms = 5\n")?;
            let error = Settings::load(Some(Path::new("bad.toml")))
                .expect_err("unknown key must be refused")
                .to_string();
            assert!(error.contains("comit_interval_ms"), "{error}");
            assert!(!error.contains('\n'));
            Ok(())
        });
    }

    #[test]
    // figment's `Jail` closure returns figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn the_backlog_batch_limit_loads_from_file_and_environment_or_follows_the_others() {
        figment::Jail::expect_with(|jail| {
            let settings = Settings::load(None).map_err(|error| error.to_string())?;
            assert_eq!(settings.backlog_batch_records, None);
            assert_eq!(settings.backlog_batch_records(), 10_000);

            jail.create_file("onceflow.toml", "backlog_batch_records = 7000\n")?;
            let settings = Settings::load(Some(Path::new("onceflow.toml")))
                .map_err(|error| error.to_string())?;
            assert_eq!(settings.backlog_batch_records(), 7_000);

            jail.set_env("ONCEFLOW_BACKLOG_BATCH_RECORDS", "400");
            jail.set_env("ONCEFLOW_MAX_BATCH_RECORDS", "200");
            jail.set_env("ONCEFLOW_MAX_BUFFERED_RECORDS", "800");
            let settings = Settings::load(Some(Path::new("onceflow.toml")))
                .map_err(|error| error.to_string())?;
            assert_eq!(
                settings.backlog_batch_records(),
                400,
                "the environment wins"
            );

            jail.set_env("ONCEFLOW_BACKLOG_BATCH_RECORDS", "900");
            let error = Settings::load(None)
                .expect_err("above the buffer")
                .to_string();
            assert!(
                error.starts_with("setting `backlog_batch_records`"),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    // figment's `Jail` closure returns figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn platform_variables_numeric_text_and_secret_files_load() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "onceflow.toml",
                "output_topic = 42\n[kafka]\n\"linger.ms\" = 5\n\"sasl.username\" = \"u\"\n",
            )?;
            jail.create_file("password", "from-a-file\n")?;
            jail.set_env("ONCEFLOW_INSTANCE_ID", "1");
            jail.set_env("ONCEFLOW_GROUP_ID", "2024");
            jail.set_env("ONCEFLOW_SERVICE_HOST", "10.0.0.7");
            jail.set_env("ONCEFLOW_SERVICE_PORT_HTTP", "9464");
            jail.set_env("ONCEFLOW_PORT_9464_TCP_ADDR", "10.0.0.7");
            jail.set_env("ONCEFLOW_KAFKA_SASL_PASSWORD_FILE", "password");
            let settings = Settings::load(Some(Path::new("onceflow.toml")))
                .map_err(|error| error.to_string())?;
            assert_eq!(settings.instance_id.as_deref(), Some("1"));
            assert_eq!(settings.group_id, "2024");
            assert_eq!(settings.output_topic, "42");
            assert_eq!(settings.kafka["linger.ms"], "5");
            assert_eq!(settings.kafka["sasl.username"], "u");
            assert_eq!(settings.kafka["sasl.password"], "from-a-file");

            // Any other unknown ONCEFLOW_* variable is still refused.
            jail.set_env("ONCEFLOW_SERVICE_NAME", "x");
            let error = Settings::load(None).expect_err("refused").to_string();
            assert!(error.contains("service_name"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn missing_database_url_names_the_setting() {
        let error = Settings::default()
            .required_database_url()
            .expect_err("required")
            .to_string();
        assert!(error.starts_with("setting `database_url`"), "{error}");
    }

    #[test]
    // figment's `Jail` closure returns figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn durations_keep_their_ms_keys_in_files_environment_and_serialisation() {
        let defaults = serde_json::to_value(Settings::default()).expect("serialises");
        assert_eq!(defaults["commit_interval_ms"], 100);
        assert_eq!(defaults["breaker_max_cooldown_ms"], 5_000);
        assert!(defaults.get("commit_interval").is_none(), "{defaults}");
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "onceflow.toml",
                "breaker_cooldown_ms = 300\nrestart_window_ms = 7000\n",
            )?;
            jail.set_env("ONCEFLOW_COMMIT_INTERVAL_MS", "250");
            let settings = Settings::load(Some(Path::new("onceflow.toml")))
                .map_err(|error| error.to_string())?;
            assert_eq!(settings.commit_interval, Duration::from_millis(250));
            assert_eq!(settings.breaker_cooldown, Duration::from_millis(300));
            assert_eq!(settings.restart_window, Duration::from_secs(7));
            jail.create_file("renamed.toml", "commit_interval = 5\n")?;
            let error = Settings::load(Some(Path::new("renamed.toml")))
                .expect_err("the field name is not a key")
                .to_string();
            assert!(error.contains("commit_interval"), "{error}");
            Ok(())
        });
    }
}
