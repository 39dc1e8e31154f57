//! A PostgreSQL server of a test's own that speaks only TLS: `ssl = on` with
//! a server certificate of the test's CA ([`super::TlsMaterial`]), and a
//! `pg_hba.conf` with `hostssl` lines only, so a plaintext connection is
//! refused by the server itself. Made with the installed server's `initdb`
//! in a temporary directory on a free loopback port; stopped and removed on
//! drop.
//!
//! Guarantee: nothing of the machine's own PostgreSQL cluster is touched.
//! When the harness runs as root the server runs as `postgres` (PostgreSQL
//! refuses root).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::bail;
use crate::error::{Context, Result};

/// A running TLS-only PostgreSQL server.
#[derive(Debug)]
pub struct TlsPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl TlsPostgres {
    /// Starts a server with `material`'s server certificate.
    pub async fn start(material: &super::TlsMaterial) -> Result<TlsPostgres> {
        let bin = server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("onceflow-pg-tls-")
            .tempdir()
            .context("cannot create a directory for a PostgreSQL server")?;
        let data = dir.path().join("data");
        let as_root = is_root();
        if as_root {
            run("chown", &["postgres:postgres", &text(dir.path())], false).await?;
        }
        run(
            &text(&bin.join("initdb")),
            &[
                "-D",
                &text(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
            as_root,
        )
        .await?;
        for (from, name) in [
            (&material.server_certificate, "server.crt"),
            (&material.server_key, "server.key"),
        ] {
            let to = data.join(name);
            std::fs::copy(from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
            if as_root {
                run("chown", &["postgres:postgres", &text(&to)], false).await?;
            }
        }
        let port = super::free_port()?;
        let settings = format!(
            "\n# onceflow test: TLS only\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\nfsync = off\n",
            text(dir.path())
        );
        append(&data.join("postgresql.conf"), &settings)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "# onceflow test: TLS only, on loopback\n\
             hostssl all all 127.0.0.1/32 trust\n",
        )
        .context("cannot write pg_hba.conf")?;
        run(
            &text(&bin.join("pg_ctl")),
            &[
                "-D",
                &text(&data),
                "-l",
                &text(&dir.path().join("server.log")),
                "-w",
                "-t",
                "30",
                "start",
            ],
            as_root,
        )
        .await?;
        Ok(TlsPostgres { dir, bin, port })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL of its `postgres` database with these query parameters
    /// (`sslmode=verify-full&sslrootcert=…`).
    pub fn url(&self, parameters: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{parameters}",
            self.port
        )
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let mut command = if is_root() {
            let mut command = std::process::Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            command
        } else {
            std::process::Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The newest installed server's `bin` directory (Debian's layout).
fn server_bin() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| format!("no PostgreSQL server under {}", root.display()))?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no PostgreSQL server with initdb under {}", root.display()),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Runs `program` (as `postgres` when `as_postgres`), failing with its output.
async fn run(program: &str, args: &[&str], as_postgres: bool) -> Result<()> {
    let mut command = if as_postgres {
        let mut command = tokio::process::Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        tokio::process::Command::new(program)
    };
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        command.args(args).stdin(Stdio::null()).output(),
    )
    .await
    .with_context(|| format!("{program} did not finish within 60 s"))?
    .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
