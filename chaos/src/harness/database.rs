//! A new, empty PostgreSQL database per run, so nothing is shared through
//! fixed names.

use crate::error::{Context, Result};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;
use uuid::Uuid;

/// A new empty database `onceflow_t_<uuid>` on the test server
/// (`$CHAOS_ADMIN_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`):
/// its URL and a pool on it. It stays until [`drop_database`] (a test or
/// scenario that passed drops it; a failed one leaves it for inspection).
pub async fn fresh_database() -> Result<(String, PgPool)> {
    let admin_url = admin_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&admin_url)
        .await
        .with_context(|| format!("cannot connect to the test postgres at {admin_url}"))?;
    let name = format!("onceflow_t_{}", Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    admin.close().await;
    let url = with_database(&admin_url, &name)?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .with_context(|| format!("cannot connect to the new database {name}"))?;
    Ok((url, pool))
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("not a postgres url: {url}"))?;
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// `$CHAOS_ADMIN_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
pub fn admin_url() -> String {
    std::env::var("CHAOS_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Drops the database of `url` (made by [`fresh_database`]), ending its
/// sessions first. Only `onceflow_t_*` databases are dropped.
pub async fn drop_database(url: &str) -> Result<()> {
    let name = url
        .split('?')
        .next()
        .and_then(|base| base.rsplit('/').next())
        .unwrap_or_default();
    if !name.starts_with("onceflow_t_")
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        crate::bail!("refusing to drop {name:?}: not a database made by fresh_database");
    }
    let admin_url = admin_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&admin_url)
        .await
        .with_context(|| format!("cannot connect to the test postgres at {admin_url}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .with_context(|| format!("cannot drop database {name}"))?;
    admin.close().await;
    Ok(())
}
