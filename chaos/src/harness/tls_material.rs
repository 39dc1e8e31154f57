//! Certificates made by a test, never committed: a certificate authority of
//! the test's own and a server certificate it signed for `127.0.0.1` and
//! `localhost`, written as PEM files into a temporary directory (removed on
//! drop), for the TLS listeners of a Kafka cluster and a PostgreSQL server
//! of the test. A second, unrelated authority shows that verification
//! refuses a server it did not sign.
//!
//! Guarantee: the keys are fresh for every [`TlsMaterial::generate`]; files
//! holding private keys are readable by their owner only.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::error::{Context, Result};

/// A test CA, a server certificate it signed, and an unrelated CA.
#[derive(Debug)]
pub struct TlsMaterial {
    dir: tempfile::TempDir,
    /// the CA's certificate (what clients trust)
    pub ca_certificate: PathBuf,
    /// the server's certificate
    pub server_certificate: PathBuf,
    /// the server's private key (PKCS#8)
    pub server_key: PathBuf,
    /// the server's key then its certificate, in one file (Kafka's PEM keystore)
    pub server_key_and_certificate: PathBuf,
    /// the certificate of a CA that signed nothing here
    pub other_ca_certificate: PathBuf,
}

impl TlsMaterial {
    /// Fresh keys and certificates in a temporary directory.
    pub fn generate() -> Result<TlsMaterial> {
        let dir = tempfile::Builder::new()
            .prefix("onceflow-tls-")
            .tempdir()
            .context("cannot create a directory for certificates")?;
        let (ca_pem, ca_params, ca_key) = certificate_authority("onceflow test CA")?;
        let (other_ca_pem, _, _) = certificate_authority("onceflow unrelated CA")?;

        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .context("server certificate parameters")?;
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server_key = KeyPair::generate().context("server key")?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let server_certificate = server
            .signed_by(&server_key, &issuer)
            .context("signing the server certificate")?;

        let material = TlsMaterial {
            ca_certificate: dir.path().join("ca.pem"),
            server_certificate: dir.path().join("server.pem"),
            server_key: dir.path().join("server.key"),
            server_key_and_certificate: dir.path().join("server-keystore.pem"),
            other_ca_certificate: dir.path().join("other-ca.pem"),
            dir,
        };
        write(&material.ca_certificate, &ca_pem, false)?;
        write(&material.other_ca_certificate, &other_ca_pem, false)?;
        write(
            &material.server_certificate,
            &server_certificate.pem(),
            false,
        )?;
        write(&material.server_key, &server_key.serialize_pem(), true)?;
        write(
            &material.server_key_and_certificate,
            &format!("{}{}", server_key.serialize_pem(), server_certificate.pem()),
            true,
        )?;
        Ok(material)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A self-signed CA: its certificate (PEM), parameters and key.
fn certificate_authority(name: &str) -> Result<(String, CertificateParams, KeyPair)> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().context("CA key")?;
    let certificate = params.self_signed(&key).context("self-signing the CA")?;
    Ok((certificate.pem(), params, key))
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let mode = if private { 0o600 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(())
}
