//! A throw-away CA and the certificates signed by it, made with the openssl CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Files of the generated PKI.
pub struct Pki {
    pub ca_cert: PathBuf,
    /// Serving certificate for 127.0.0.1/localhost (Kafka, Mosquitto, kube-apiserver).
    pub server_cert: PathBuf,
    /// Its key, unencrypted PKCS#8 (what Kafka's PEM keystore wants).
    pub server_key: PathBuf,
    /// Key and certificate chain in one file, for Kafka's PEM keystore.
    pub server_keystore: PathBuf,
    /// A client certificate signed by the CA, for mutual-TLS tests.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Service-account token signing key pair for the control plane.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

pub fn generate(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let p = |name: &str| dir.join(name);
    let pki = Pki {
        ca_cert: p("ca.crt"),
        server_cert: p("server.crt"),
        server_key: p("server.key"),
        server_keystore: p("server-keystore.pem"),
        client_cert: p("client.crt"),
        client_key: p("client.key"),
        sa_key: p("sa.key"),
        sa_pub: p("sa.pub"),
    };
    let ca_key = p("ca.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-subj",
            "/CN=mqtt-kafka-testenv-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path(&ca_key),
            "-out",
            path(&pki.ca_cert),
        ],
    )?;
    sign(
        dir,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\n\
         extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n",
        &pki.server_key,
        &pki.server_cert,
        &ca_key,
        &pki.ca_cert,
    )?;
    sign(
        dir,
        "client",
        "/CN=bridge-test-client",
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n",
        &pki.client_key,
        &pki.client_cert,
        &ca_key,
        &pki.ca_cert,
    )?;
    let keystore = [
        std::fs::read_to_string(&pki.server_key)?,
        std::fs::read_to_string(&pki.server_cert)?,
        std::fs::read_to_string(&pki.ca_cert)?,
    ]
    .concat();
    std::fs::write(&pki.server_keystore, keystore)?;
    openssl(dir, &["genrsa", "-out", path(&pki.sa_key), "2048"])?;
    openssl(
        dir,
        &[
            "rsa",
            "-in",
            path(&pki.sa_key),
            "-pubout",
            "-out",
            path(&pki.sa_pub),
        ],
    )?;
    Ok(pki)
}

#[allow(clippy::too_many_arguments)]
fn sign(
    dir: &Path,
    name: &str,
    subject: &str,
    extensions: &str,
    key: &Path,
    cert: &Path,
    ca_key: &Path,
    ca_cert: &Path,
) -> Result<()> {
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(&ext, extensions)?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            path(key),
            "-out",
            path(&csr),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "3650",
            "-in",
            path(&csr),
            "-CA",
            path(ca_cert),
            "-CAkey",
            path(ca_key),
            "-CAcreateserial",
            "-extfile",
            path(&ext),
            "-out",
            path(cert),
        ],
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl (Debian package openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
