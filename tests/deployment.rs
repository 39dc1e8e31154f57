//! What a platform running onceflow relies on: a configuration error
//! (`OTEL_PROPAGATORS` naming a propagator onceflow lacks included) exits
//! 78 with one line naming the setting (a failure exits 1:
//! `tests/failures.rs`, the fenced zombie); a pod with the variables
//! Kubernetes injects and a numeric instance id runs exactly once; a wedged
//! pipeline turns `/healthz` to 503, a hung Kafka transaction included;
//! and `deploy/kubernetes/` agrees with what the binary accepts.

mod common;
mod service;

use std::process::Stdio;
use std::time::Duration;

/// Runs `onceflow run` with `env` (and nothing else of the caller's
/// `ONCEFLOW_*`), expecting it to stop at once; its exit code and stderr.
async fn run_to_exit(env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let mut command = tokio::process::Command::new(service::bin());
    command.arg("run");
    for (key, _) in std::env::vars() {
        if key.starts_with("ONCEFLOW_") {
            command.env_remove(key);
        }
    }
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        command
            .envs(env.iter().copied())
            .env("ONCEFLOW_HTTP_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .output(),
    )
    .await??;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn a_configuration_error_exits_78_with_one_line_naming_the_setting() -> anyhow::Result<()> {
    let database = (
        "ONCEFLOW_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    for (env, named) in [
        (
            vec![database, ("ONCEFLOW_COMMIT_INTERVAL_MS", "0")],
            "commit_interval_ms",
        ),
        (
            vec![database, ("ONCEFLOW_COMMIT_INTERVALL_MS", "5")],
            "commit_intervall_ms",
        ),
        (
            vec![database, ("ONCEFLOW_LOG_FORMAT", "xml")],
            "ONCEFLOW_LOG_FORMAT",
        ),
        (vec![], "database_url"),
        (
            vec![database, ("ONCEFLOW_HTTP_ADDR_UNUSED", "x")],
            "http_addr_unused",
        ),
        (
            vec![database, ("OTEL_PROPAGATORS", "tracecontext,b3")],
            "OTEL_PROPAGATORS=\"tracecontext,b3\": `b3` is not supported",
        ),
    ] {
        let (code, stderr) = run_to_exit(&env).await?;
        assert_eq!(code, Some(78), "{env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{env:?}: one line, not {stderr}");
        assert!(lines[0].contains(named), "{env:?}: {stderr}");
    }
    Ok(())
}

/// What Kubernetes injects into every pod of a namespace with a Service
/// named `onceflow` (port 9464 named `http`).
const KUBERNETES_SERVICE_VARIABLES: [(&str, &str); 8] = [
    ("ONCEFLOW_SERVICE_HOST", "10.96.12.7"),
    ("ONCEFLOW_SERVICE_PORT", "9464"),
    ("ONCEFLOW_SERVICE_PORT_HTTP", "9464"),
    ("ONCEFLOW_PORT", "tcp://10.96.12.7:9464"),
    ("ONCEFLOW_PORT_9464_TCP", "tcp://10.96.12.7:9464"),
    ("ONCEFLOW_PORT_9464_TCP_PROTO", "tcp"),
    ("ONCEFLOW_PORT_9464_TCP_PORT", "9464"),
    ("ONCEFLOW_PORT_9464_TCP_ADDR", "10.96.12.7"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_kubernetes_variables_and_a_numeric_instance_id_runs_exactly_once()
-> anyhow::Result<()> {
    let scenario = common::Scenario::new(service::bin(), 3).await?;
    scenario.produce(2_000, 31).await?;
    let mut env: Vec<(&str, &str)> = KUBERNETES_SERVICE_VARIABLES.to_vec();
    env.push(("ONCEFLOW_INSTANCE_ID", "1"));
    env.push(("ONCEFLOW_LOG_FORMAT", "json"));
    let service = scenario.start(&env)?;
    scenario
        .wait_caught_up_with_input(Duration::from_secs(120))
        .await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert_eq!(exit.code(), Some(0));
    scenario.verdict().await?.assert_holds();
    // The instance id is the text "1": it names the owner of the partitions.
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT owner_instance FROM consumer_offsets")
            .fetch_all(&scenario.pool)
            .await?;
    assert_eq!(owners, vec!["1".to_owned()]);
    scenario.drop_database().await?;
    Ok(())
}

/// A cycle that never ends (held at a kill point after its database
/// commit) wedges the pipeline: `/healthz` says so, so a liveness probe
/// restarts it; the restart loses nothing.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_pipeline_is_seen_by_healthz_and_a_restart_loses_nothing() -> anyhow::Result<()> {
    a_wedge_is_seen_by_healthz_and_a_restart_loses_nothing(
        "coordinator-after-db-commit=1*off->sleep(600000)",
        41,
    )
    .await
}

/// A Kafka transaction that hangs after it sent the input offsets: the
/// broker then answers a `read_committed` client's offset fetch only once
/// that transaction ends, so the lag behind `/healthz`'s wedge check is
/// read with a client of its own, or this wedge would never be seen.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_hung_after_sending_offsets_is_seen_by_healthz() -> anyhow::Result<()> {
    a_wedge_is_seen_by_healthz_and_a_restart_loses_nothing(
        "coordinator-during-kafka-commit=1*off->sleep(600000)",
        43,
    )
    .await
}

/// Holds the second cycle at `failpoints` (the first commits), expects
/// `/healthz` to turn 503 with the wedge's reason, kills the instance as a
/// liveness probe would, starts it again and judges the run. The harness's
/// batches of 200 records per partition make the 3,000 records at least
/// five cycles: records wait behind the held one.
#[cfg(feature = "failpoints")]
async fn a_wedge_is_seen_by_healthz_and_a_restart_loses_nothing(
    failpoints: &str,
    seed: u64,
) -> anyhow::Result<()> {
    let scenario = common::Scenario::new(service::bin(), 3).await?;
    scenario.produce(3_000, seed).await?;
    let wedged = scenario.start(&[
        ("FAILPOINTS", failpoints),
        // 100 commit intervals of 100 ms: 10 s without a commit, counted
        // from start-up, so a slow first cycle is not taken for a wedge.
        ("ONCEFLOW_WEDGED_AFTER_INTERVALS", "100"),
    ])?;
    service::wait_for_progress(&scenario, Duration::from_secs(60)).await?;
    let (code, body) = scenario.http_get("/healthz").await?;
    assert_eq!(
        (code, body.as_str()),
        (200, "ok\n"),
        "healthy while it commits"
    );
    // Well inside the transaction timeout (60 s): once the broker aborts a
    // hung transaction, even a reader that waits for stable offsets sees
    // the lag, and this would no longer tell the readers apart.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (code, body) = scenario.http_get("/healthz").await?;
        if code == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reported wedged: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(body.starts_with("wedged: no cycle committed"), "{body}");
    // What a liveness probe leads to: the pod is killed and started again.
    wedged.sigkill().await?;
    let service = scenario.start(&[])?;
    scenario
        .wait_caught_up_with_input(Duration::from_secs(120))
        .await?;
    let (code, _) = scenario.http_get("/healthz").await?;
    assert_eq!(code, 200);
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert_eq!(exit.code(), Some(0));
    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

/// A graceful stop that hangs (held at a kill point) is ended by the
/// binary's 10 s deadline with exit 75, or at once by a second signal with
/// 128 + its number; neither loses anything.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shutdown_exits_75_by_its_deadline_and_130_on_a_second_sigint()
-> anyhow::Result<()> {
    let scenario = common::Scenario::new(service::bin(), 3).await?;
    let hanging = [("FAILPOINTS", "pipeline-graceful-stop=return")];

    scenario.produce(1_000, 51).await?;
    let service = scenario.start(&hanging)?;
    service::wait_for_progress(&scenario, Duration::from_secs(60)).await?;
    service.signal("TERM").await?;
    let exit = service.wait_exit(Duration::from_secs(30)).await?;
    assert_eq!(exit.code(), Some(75), "forced by the deadline: {exit:?}");

    scenario.produce(1_000, 52).await?;
    let service = scenario.start(&hanging)?;
    let log_path = service.log_path.clone();
    // Running (its signal handlers long installed): ready.
    let ready_by = std::time::Instant::now() + Duration::from_secs(60);
    while !matches!(scenario.http_get("/readyz").await, Ok((200, _))) {
        assert!(std::time::Instant::now() < ready_by, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the point where the graceful stop hangs: SIGTERM was logged.
    service.signal("TERM").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)?.contains("SIGTERM received") {
        assert!(std::time::Instant::now() < deadline, "SIGTERM never logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.signal("INT").await?;
    let exit = service.wait_exit(Duration::from_secs(8)).await?;
    assert_eq!(
        exit.code(),
        Some(130),
        "forced by a second signal (SIGINT): {exit:?}"
    );

    let service = scenario.start(&[])?;
    scenario
        .wait_caught_up_with_input(Duration::from_secs(120))
        .await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert_eq!(exit.code(), Some(0), "a graceful shutdown");
    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

mod kubernetes_manifests {
    //! `deploy/kubernetes/` against what the binary accepts: the pod's
    //! settings load as `onceflow run` loads them (with the variables
    //! Kubernetes injects, the ConfigMap's file and the Secret's files), the
    //! instance id is the pod's name, probes and ports name the binary's
    //! endpoints, and the selectors agree.

    use std::collections::BTreeMap;
    use std::path::Path;

    use onceflow_actors::settings::Settings;
    use serde::Deserialize;
    use serde_json::Value;

    const DIR: &str = "deploy/kubernetes";

    fn documents(file: &str) -> Vec<Value> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR).join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        serde_norway::Deserializer::from_str(&text)
            .map(|document| {
                Value::deserialize(document)
                    .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            })
            .collect()
    }

    /// Every object of the kustomization's resources, by kind.
    fn objects() -> BTreeMap<String, Vec<Value>> {
        let kustomization = &documents("kustomization.yaml")[0];
        let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for resource in kustomization["resources"].as_array().expect("resources") {
            for object in documents(resource.as_str().expect("a file name")) {
                let kind = object["kind"].as_str().expect("a kind").to_owned();
                by_kind.entry(kind).or_default().push(object);
            }
        }
        by_kind
    }

    fn one<'a>(objects: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> &'a Value {
        let of_kind = &objects[kind];
        assert_eq!(of_kind.len(), 1, "one {kind}");
        &of_kind[0]
    }

    #[test]
    // figment's `Jail` closure returns figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn the_pod_settings_load_as_onceflow_run_loads_them() {
        let objects = objects();
        let statefulset = one(&objects, "StatefulSet");
        let pod = &statefulset["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let config_map = one(&objects, "ConfigMap");
        let secret = &documents("secret.example.yaml")[0];
        assert!(
            !documents("kustomization.yaml")[0]["resources"]
                .as_array()
                .expect("resources")
                .iter()
                .any(|resource| resource == "secret.example.yaml"),
            "the example Secret is not applied"
        );

        // Where the ConfigMap and the Secret are mounted.
        let mounts: BTreeMap<String, (String, Option<String>)> = container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|mount| {
                (
                    mount["name"].as_str().expect("name").to_owned(),
                    (
                        mount["mountPath"].as_str().expect("path").to_owned(),
                        mount["subPath"].as_str().map(str::to_owned),
                    ),
                )
            })
            .collect();

        let mut env: Vec<(String, String)> = Vec::new();
        let mut instance_from_pod_name = false;
        for variable in container["env"].as_array().expect("env") {
            let name = variable["name"].as_str().expect("name").to_owned();
            if let Some(value) = variable["value"].as_str() {
                env.push((name, value.to_owned()));
            } else if variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
                assert_eq!(name, "ONCEFLOW_INSTANCE_ID");
                instance_from_pod_name = true;
                env.push((name, "onceflow-0".to_owned()));
            } else {
                panic!("{name}: an unexpected valueFrom");
            }
        }
        assert!(instance_from_pod_name, "the instance id is the pod's name");
        for (name, _) in &env {
            assert!(
                name.starts_with("ONCEFLOW_") || name == "RUST_LOG" || name.starts_with("OTEL_"),
                "{name} is read by nobody"
            );
        }
        let value_of = |name: &str| {
            env.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        assert!(matches!(
            value_of("ONCEFLOW_LOG_FORMAT").as_deref(),
            Some("json" | "text")
        ));

        figment::Jail::expect_with(|jail| {
            // The config file where the pod has it, by the ConfigMap.
            let config_path = value_of("ONCEFLOW_CONFIG").expect("ONCEFLOW_CONFIG");
            let (mount, sub_path) = &mounts["config"];
            assert_eq!(
                Path::new(mount),
                Path::new(&config_path),
                "ONCEFLOW_CONFIG names the mounted file"
            );
            let file_name = sub_path.as_deref().expect("mounted by subPath");
            let toml = config_map["data"][file_name].as_str().expect("the file");
            jail.create_file("onceflow.toml", toml)?;
            // The Secret's files, where the pod has them.
            let (secret_dir, _) = &mounts["secrets"];
            let mut expected_secrets = BTreeMap::new();
            for (name, value) in &env {
                if name.ends_with("_FILE") {
                    let relative = Path::new(value)
                        .strip_prefix(secret_dir)
                        .unwrap_or_else(|_| panic!("{name} points outside the Secret's mount"));
                    let key = relative.to_string_lossy().into_owned();
                    let content = secret["stringData"][&key]
                        .as_str()
                        .unwrap_or_else(|| panic!("the Secret has no {key}"));
                    jail.create_file(&key, content)?;
                    expected_secrets.insert(name.clone(), content.to_owned());
                }
            }
            for (name, value) in &env {
                let value = if name.ends_with("_FILE") {
                    Path::new(value)
                        .file_name()
                        .expect("a file")
                        .to_string_lossy()
                        .into_owned()
                } else {
                    value.clone()
                };
                jail.set_env(name, value);
            }
            for (name, value) in super::KUBERNETES_SERVICE_VARIABLES {
                jail.set_env(name, value);
            }
            let settings = Settings::load(Some(Path::new("onceflow.toml")))
                .map_err(|error| error.to_string())?;
            settings
                .required_database_url()
                .map_err(|error| error.to_string())?;
            assert_eq!(settings.instance_id.as_deref(), Some("onceflow-0"));
            assert_eq!(
                settings.database_url.as_deref(),
                expected_secrets
                    .get("ONCEFLOW_DATABASE_URL_FILE")
                    .map(String::as_str)
            );
            assert_eq!(
                settings.kafka.get("sasl.password"),
                expected_secrets.get("ONCEFLOW_KAFKA_SASL_PASSWORD_FILE")
            );
            // Probes and ports name the binary's endpoint.
            let port = container["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .find(|port| port["name"] == "http")
                .expect("a port named http")["containerPort"]
                .as_u64()
                .expect("a number");
            assert_eq!(port, u64::from(settings.http_addr.port()));
            assert!(
                settings.http_addr.ip().is_unspecified(),
                "reachable from the kubelet"
            );
            Ok(())
        });

        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(container[probe]["httpGet"]["port"], "http");
        }
        // SIGTERM ends within 10 s (the contract); the pod waits longer.
        assert!(pod["terminationGracePeriodSeconds"].as_u64().expect("set") > 10);
        assert!(container["resources"]["requests"]["memory"].is_string());
        assert!(container["resources"]["limits"]["memory"].is_string());
    }

    #[test]
    fn selectors_agree_and_the_instance_names_are_stable() {
        let objects = objects();
        let statefulset = one(&objects, "StatefulSet");
        let pod_labels = &statefulset["spec"]["template"]["metadata"]["labels"];
        let selector = &statefulset["spec"]["selector"]["matchLabels"];
        let labels = |value: &Value| -> BTreeMap<String, String> {
            value
                .as_object()
                .expect("labels")
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().expect("text").to_owned()))
                .collect()
        };
        let pod = labels(pod_labels);
        let selects = |selector: &Value| {
            labels(selector)
                .iter()
                .all(|(key, value)| pod.get(key) == Some(value))
        };
        assert!(selects(selector), "the StatefulSet selects its pods");
        let budget = one(&objects, "PodDisruptionBudget");
        assert!(selects(&budget["spec"]["selector"]["matchLabels"]));
        let services = &objects["Service"];
        for service in services {
            assert!(
                selects(&service["spec"]["selector"]),
                "{}",
                service["metadata"]["name"]
            );
        }
        // The governing Service is headless; the one named `onceflow` is the
        // one whose variables Kubernetes injects (tested above).
        let governing = statefulset["spec"]["serviceName"]
            .as_str()
            .expect("serviceName");
        let headless = services
            .iter()
            .find(|service| service["metadata"]["name"] == governing)
            .expect("the governing Service exists");
        assert_eq!(headless["spec"]["clusterIP"], "None");
        assert!(
            services
                .iter()
                .any(|service| service["metadata"]["name"] == "onceflow")
        );
    }
}
