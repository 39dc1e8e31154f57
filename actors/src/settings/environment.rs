//! The `ONCEFLOW_*` environment as a settings layer, read as a platform
//! sets it:
//! - text settings (brokers, URLs, group, instance id, topics, address) are
//!   taken as written, whatever they look like (`ONCEFLOW_INSTANCE_ID=1`,
//!   `ONCEFLOW_GROUP_ID=007`); other settings are parsed as values
//!   (numbers, `ONCEFLOW_KAFKA={…}` dictionaries);
//! - `ONCEFLOW_<KEY>_FILE=/path` reads the setting `<KEY>` from a file
//!   (a mounted secret; one trailing newline dropped); under `KAFKA_` the
//!   rest names a librdkafka key with `_` for `.`
//!   (`ONCEFLOW_KAFKA_SASL_PASSWORD_FILE` → `[kafka] "sasl.password"`);
//! - the variables Kubernetes injects for a Service named `onceflow`
//!   (`ONCEFLOW_SERVICE_HOST`, `ONCEFLOW_SERVICE_PORT*`, `ONCEFLOW_PORT*`)
//!   and those the binary reads itself are no settings and are skipped;
//!   every other name goes on, so an unknown one is still refused.
//!
//! Guarantee: a secret read from a file is never part of an error message
//! (errors name the variable and the path only).

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::SettingsError;

/// Variables read by the binary itself rather than by the settings (the
/// `--config` path, the log format), as keys after `ONCEFLOW_`.
const KEYS_READ_BY_THE_BINARY: &[&str] = &["config", "log_format"];

/// Settings whose values are text, whatever they look like.
const TEXT_SETTINGS: &[&str] = &[
    "kafka_brokers",
    "database_url",
    "group_id",
    "instance_id",
    "input_topic",
    "output_topic",
    "dlq_topic",
    "http_addr",
];

/// Whether `key` (lower case, after `ONCEFLOW_`) is one Kubernetes injects
/// for a Service named `onceflow`: `SERVICE_HOST`, `SERVICE_PORT`,
/// `SERVICE_PORT_<NAME>`, `PORT`, `PORT_<P>_<PROTO>[_ADDR|_PORT|_PROTO]`.
pub(super) fn is_platform_variable(key: &str) -> bool {
    key == "service_host"
        || key == "service_port"
        || key.starts_with("service_port_")
        || key == "port"
        || key.starts_with("port_")
}

/// The layer of `variables` (name, value) whose names start with `ONCEFLOW_`.
pub(super) fn layer(
    variables: impl Iterator<Item = (String, String)>,
) -> Result<Dict, SettingsError> {
    let mut layer = Dict::new();
    let mut kafka = Dict::new();
    for (name, raw) in variables {
        let Some(rest) = name.strip_prefix("ONCEFLOW_") else {
            continue;
        };
        let key = rest.to_ascii_lowercase();
        if KEYS_READ_BY_THE_BINARY.contains(&key.as_str()) || is_platform_variable(&key) {
            continue;
        }
        if let Some(target) = key.strip_suffix("_file") {
            let value = read_secret(&name, &raw)?;
            match target.strip_prefix("kafka_") {
                Some(kafka_key) => {
                    kafka.insert(kafka_key.replace('_', "."), Value::from(value));
                }
                None => {
                    layer.insert(target.to_owned(), Value::from(value));
                }
            }
            continue;
        }
        let value = if TEXT_SETTINGS.contains(&key.as_str()) {
            Value::from(raw)
        } else {
            raw.parse::<Value>().unwrap_or_else(|_| Value::from(raw))
        };
        layer.insert(key, value);
    }
    if !kafka.is_empty() {
        // Merged with a `[kafka]` table of the file and `ONCEFLOW_KAFKA`.
        match layer.remove("kafka") {
            Some(Value::Dict(_, mut table)) => {
                table.extend(kafka);
                layer.insert("kafka".to_owned(), Value::from(table));
            }
            Some(other) => {
                layer.insert("kafka".to_owned(), other);
            }
            None => {
                layer.insert("kafka".to_owned(), Value::from(kafka));
            }
        }
    }
    Ok(layer)
}

/// The layer as a figment provider whose errors name the variable
/// (`ONCEFLOW_COMMIT_INTERVALL_MS`), as figment's own `Env` does.
pub(super) struct EnvironmentLayer(pub(super) Dict);

impl Provider for EnvironmentLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable")
            .interpolater(|_, keys| format!("ONCEFLOW_{}", keys.join("_").to_ascii_uppercase()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// The contents of the file `path` names, without one trailing newline.
fn read_secret(variable: &str, path: &str) -> Result<String, SettingsError> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|error| SettingsError::Load(format!("{variable}: cannot read {path}: {error}")))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn kubernetes_service_variables_are_skipped_and_others_kept() {
        let layer = layer(vars(&[
            ("ONCEFLOW_SERVICE_HOST", "10.0.0.7"),
            ("ONCEFLOW_SERVICE_PORT", "9464"),
            ("ONCEFLOW_SERVICE_PORT_HTTP", "9464"),
            ("ONCEFLOW_PORT", "tcp://10.0.0.7:9464"),
            ("ONCEFLOW_PORT_9464_TCP", "tcp://10.0.0.7:9464"),
            ("ONCEFLOW_PORT_9464_TCP_PROTO", "tcp"),
            ("ONCEFLOW_PORT_9464_TCP_PORT", "9464"),
            ("ONCEFLOW_PORT_9464_TCP_ADDR", "10.0.0.7"),
            ("ONCEFLOW_CONFIG", "/etc/onceflow.toml"),
            ("ONCEFLOW_LOG_FORMAT", "json"),
            ("ONCEFLOW_SERVICE_NAME", "kept: not a Kubernetes variable"),
            ("OTHER_PORT", "1"),
        ]))
        .expect("a layer");
        let keys: Vec<&String> = layer.keys().collect();
        assert_eq!(keys, vec!["service_name"]);
    }

    #[test]
    fn text_settings_stay_text_and_numbers_stay_numbers() {
        let layer = layer(vars(&[
            ("ONCEFLOW_INSTANCE_ID", "1"),
            ("ONCEFLOW_GROUP_ID", "007"),
            ("ONCEFLOW_INPUT_TOPIC", "true"),
            ("ONCEFLOW_OUTPUT_TOPIC", "1e3"),
            ("ONCEFLOW_MAX_BATCH_RECORDS", "200"),
        ]))
        .expect("a layer");
        assert_eq!(layer["instance_id"].as_str(), Some("1"));
        assert_eq!(layer["group_id"].as_str(), Some("007"));
        assert_eq!(layer["input_topic"].as_str(), Some("true"));
        assert_eq!(layer["output_topic"].as_str(), Some("1e3"));
        assert_eq!(layer["max_batch_records"].to_u128(), Some(200));
    }

    #[test]
    fn file_variables_read_the_secret_without_its_newline() {
        let dir = tempfile::tempdir().expect("dir");
        let url = dir.path().join("url");
        let password = dir.path().join("password");
        std::fs::write(&url, "postgres://u:secret@db/x\n").expect("write");
        std::fs::write(&password, "p@ss word\r\n").expect("write");
        let layer = layer(vars(&[
            ("ONCEFLOW_DATABASE_URL_FILE", &url.to_string_lossy()),
            (
                "ONCEFLOW_KAFKA_SASL_PASSWORD_FILE",
                &password.to_string_lossy(),
            ),
        ]))
        .expect("a layer");
        assert_eq!(
            layer["database_url"].as_str(),
            Some("postgres://u:secret@db/x")
        );
        let kafka = layer["kafka"].as_dict().expect("a table");
        assert_eq!(kafka["sasl.password"].as_str(), Some("p@ss word"));

        let missing = layer_error(&[("ONCEFLOW_DATABASE_URL_FILE", "/nonexistent/url")]);
        assert!(
            missing.contains("ONCEFLOW_DATABASE_URL_FILE") && missing.contains("/nonexistent/url"),
            "{missing}"
        );
    }

    fn layer_error(pairs: &[(&str, &str)]) -> String {
        layer(vars(pairs)).expect_err("refused").to_string()
    }
}
