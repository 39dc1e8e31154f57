//! TLS and SASL end to end, with certificates made here (a CA of the test's
//! own): onceflow against Kafka's `SASL_SSL` listeners with SCRAM-SHA-512
//! and its `SSL` listeners, and against a PostgreSQL server that refuses
//! anything but TLS, by `sslmode` (`require`, `verify-ca`, `verify-full`)
//! and `sslrootcert`; a wrong password or an unknown CA is refused with a
//! clear line, and no secret reaches the log.

mod common;
mod service;

use std::time::Duration;

use common::{ExtraListeners, KafkaCluster, Scenario, TlsMaterial, TlsPostgres};

const CATCH_UP: Duration = Duration::from_secs(120);

/// A password no log may hold.
const PASSWORD: &str = "pw-4f1d9c-never-logged";

/// Waits until `log` of `service` holds one of `needles`; the log.
async fn wait_for_log(service: &common::Service, needles: &[&str]) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = service.log();
        if needles.iter().any(|needle| log.contains(needle)) {
            return Ok(log);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("none of {needles:?} in the log within 60 s:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A config file with `[kafka]` client settings.
fn kafka_config(dir: &std::path::Path, settings: &[(&str, String)]) -> anyhow::Result<String> {
    let mut text = String::from("[kafka]\n");
    for (key, value) in settings {
        text.push_str(&format!("{key:?} = {value:?}\n"));
    }
    let path = dir.join("onceflow.toml");
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_sasl_ssl_with_scram_and_over_ssl_is_exactly_once() -> anyhow::Result<()> {
    let material = TlsMaterial::generate()?;
    let cluster = KafkaCluster::start_own_with(ExtraListeners {
        tls: Some(&material),
        ..ExtraListeners::default()
    })
    .await?;
    cluster.add_scram_user("onceflow", PASSWORD).await?;
    let listeners = cluster.tls_listeners().expect("TLS listeners").clone();
    let scenario = Scenario::on_cluster(service::bin(), cluster, 3).await?;
    scenario.produce(3_000, 11).await?;
    let ca = material.ca_certificate.to_string_lossy().into_owned();

    // SASL_SSL, SCRAM-SHA-512, the CA of the test.
    let config = kafka_config(
        material.dir(),
        &[
            ("security.protocol", "SASL_SSL".to_owned()),
            ("sasl.mechanisms", "SCRAM-SHA-512".to_owned()),
            ("sasl.username", "onceflow".to_owned()),
            ("sasl.password", PASSWORD.to_owned()),
            ("ssl.ca.location", ca.clone()),
        ],
    )?;
    let service = scenario.start(&[
        ("ONCEFLOW_CONFIG", config.as_str()),
        (
            "ONCEFLOW_KAFKA_BROKERS",
            listeners.sasl_ssl_bootstrap.as_str(),
        ),
    ])?;
    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    let log_path = service.log_path.clone();
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert_eq!(exit.code(), Some(0));
    let log = std::fs::read_to_string(&log_path)?;
    assert!(
        !log.contains(PASSWORD),
        "the password reached the log:\n{log}"
    );

    // SSL only, more input.
    scenario.produce(1_000, 12).await?;
    let config = kafka_config(
        material.dir(),
        &[
            ("security.protocol", "SSL".to_owned()),
            ("ssl.ca.location", ca.clone()),
        ],
    )?;
    let service = scenario.start(&[
        ("ONCEFLOW_CONFIG", config.as_str()),
        ("ONCEFLOW_KAFKA_BROKERS", listeners.ssl_bootstrap.as_str()),
    ])?;
    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert_eq!(exit.code(), Some(0));
    scenario.verdict().await?.assert_holds();

    // A wrong password is refused by the broker, and said so; neither
    // password is logged.
    let wrong = format!("{PASSWORD}-wrong");
    let config = kafka_config(
        material.dir(),
        &[
            ("security.protocol", "SASL_SSL".to_owned()),
            ("sasl.mechanisms", "SCRAM-SHA-512".to_owned()),
            ("sasl.username", "onceflow".to_owned()),
            ("sasl.password", wrong.clone()),
            ("ssl.ca.location", ca),
        ],
    )?;
    let refused = scenario.start(&[
        ("ONCEFLOW_CONFIG", config.as_str()),
        (
            "ONCEFLOW_KAFKA_BROKERS",
            listeners.sasl_ssl_bootstrap.as_str(),
        ),
    ])?;
    let log = wait_for_log(
        &refused,
        &["Authentication failed", "SASL authentication error"],
    )
    .await?;
    assert!(
        !log.contains(PASSWORD),
        "a password reached the log:\n{log}"
    );
    let _ = refused.sigkill().await;
    scenario.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_by_sslmode_and_sslrootcert() -> anyhow::Result<()> {
    let material = TlsMaterial::generate()?;
    let server = TlsPostgres::start(&material).await?;
    let ca = material.ca_certificate.to_string_lossy().into_owned();
    let other_ca = material.other_ca_certificate.to_string_lossy().into_owned();
    let verify_full = server.url(&format!("sslmode=verify-full&sslrootcert={ca}"));

    // The pipeline on the TLS server: the scenario's tables are read there.
    let mut scenario = Scenario::new(service::bin(), 3).await?;
    scenario.database_url = verify_full.clone();
    scenario.pool = sqlx::PgPool::connect(&verify_full).await?;
    scenario.produce(2_000, 21).await?;
    let service = scenario.start(&[])?;
    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert_eq!(exit.code(), Some(0));
    scenario.verdict().await?.assert_holds();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&scenario.pool)
            .await?;
    assert!(encrypted);

    // require and verify-ca work too; each run picks up where the last one
    // stopped.
    for parameters in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
    ] {
        scenario.produce(500, 22).await?;
        let url = server.url(&parameters);
        let service = scenario.start(&[("ONCEFLOW_DATABASE_URL", url.as_str())])?;
        scenario.wait_caught_up_with_input(CATCH_UP).await?;
        let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
        assert_eq!(exit.code(), Some(0), "{parameters}");
    }
    scenario.verdict().await?.assert_holds();

    // Refused, and said so: a server the CA did not sign (verify-full with
    // another CA), and plaintext (the server accepts TLS only).
    for (parameters, said) in [
        (
            format!("sslmode=verify-full&sslrootcert={other_ca}"),
            &["certificate verify failed"][..],
        ),
        // The server's own refusal of a plaintext connection.
        ("sslmode=disable".to_owned(), &["no encryption"][..]),
    ] {
        // With a password in the URL: it must not reach the log.
        let url =
            server
                .url(&parameters)
                .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
        let refused = scenario.start(&[("ONCEFLOW_DATABASE_URL", url.as_str())])?;
        let log = wait_for_log(&refused, said).await?;
        assert!(
            !log.contains(PASSWORD),
            "the password reached the log:\n{log}"
        );
        let _ = refused.sigkill().await;
    }
    scenario.drop_database().await?;
    Ok(())
}
