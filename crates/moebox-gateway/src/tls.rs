//! TLS for the listener: rustls (TLS 1.2 and 1.3, the ring provider's safe defaults), with
//! ALPN offering HTTP/2 and HTTP/1.1, and the certificate and key from `gateway.tls_*`.
//!
//! On first boot neither file exists: the gateway generates a self-signed pair for the host's
//! names (and `gateway.tls_names`) and writes it there, the key readable by its owner only.
//! Admins replace the pair with one from their own CA and restart. Exactly one of the two
//! files present is an error: it means a half-finished replacement, not a first boot.

use std::{
    io::Write,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use moebox_config::GatewayConfig;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// How long a generated certificate is valid. Clients pin or trust it explicitly (there is no
/// CA to renew it against), so it outlives the hardware's amortisation.
pub const SELF_SIGNED_VALIDITY_DAYS: i64 = 3_650;
/// The names every generated certificate holds besides the host name.
pub const SELF_SIGNED_BASE_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("gateway.tls_certificate {path}: {cause}")]
    Certificate {
        path: PathBuf,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("gateway.tls_private_key {path}: {cause}")]
    PrivateKey {
        path: PathBuf,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "{present} exists but {missing} does not: put both files in place (or remove both to \
         have a self-signed pair generated)"
    )]
    HalfPair { present: PathBuf, missing: PathBuf },
    #[error("neither {certificate} nor {private_key} exists, and gateway.tls_self_signed = false")]
    Missing {
        certificate: PathBuf,
        private_key: PathBuf,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What [`server_config`] did to get the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairSource {
    Loaded,
    Generated,
}

/// The rustls configuration for `config`, generating the pair first when this is the first
/// boot.
pub fn server_config(config: &GatewayConfig) -> Result<(Arc<ServerConfig>, PairSource), TlsError> {
    let certificate = &config.tls_certificate;
    let private_key = &config.tls_private_key;
    let source = match (certificate.exists(), private_key.exists()) {
        (true, true) => PairSource::Loaded,
        (false, false) if config.tls_self_signed => {
            generate(certificate, private_key, &config.tls_names)?;
            PairSource::Generated
        }
        (false, false) => {
            return Err(TlsError::Missing {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
            });
        }
        (true, false) => {
            return Err(TlsError::HalfPair {
                present: certificate.clone(),
                missing: private_key.clone(),
            });
        }
        (false, true) => {
            return Err(TlsError::HalfPair {
                present: private_key.clone(),
                missing: certificate.clone(),
            });
        }
    };
    let certificate_error =
        |cause: Box<dyn std::error::Error + Send + Sync>| TlsError::Certificate {
            path: certificate.clone(),
            cause,
        };
    let chain = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| certificate_error(Box::new(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| certificate_error(Box::new(e)))?;
    if chain.is_empty() {
        return Err(certificate_error("no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| TlsError::PrivateKey {
        path: private_key.clone(),
        cause: Box::new(e),
    })?;
    let mut server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(server), source))
}

/// Writes a new self-signed pair: the key first (mode 0600), the certificate last, each
/// through a temporary file and a rename, so a crash leaves no half-written file.
fn generate(
    certificate: &Path,
    private_key: &Path,
    extra_names: &[String],
) -> Result<(), TlsError> {
    let mut names: Vec<String> = SELF_SIGNED_BASE_NAMES
        .iter()
        .map(|&n| n.to_owned())
        .collect();
    if let Some(host) = host_name() {
        names.insert(0, host);
    }
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(
        names
            .iter()
            .filter(|name| name.parse::<IpAddr>().is_err())
            .cloned()
            .collect::<Vec<_>>(),
    )?;
    for address in names.iter().filter_map(|name| name.parse::<IpAddr>().ok()) {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(address));
    }
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, names[0].clone());
    subject.push(
        rcgen::DnType::OrganizationName,
        "moebox appliance (self-signed)",
    );
    params.distinguished_name = subject;
    let now = unix_now();
    params.not_before = rcgen::date_time_ymd(year_of(now - 86_400), 1, 1);
    params.not_after = {
        let end = now + SELF_SIGNED_VALIDITY_DAYS * 86_400;
        rcgen::date_time_ymd(year_of(end), 12, 31)
    };
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;
    write_private(private_key, key_pair.serialize_pem().as_bytes(), 0o600).map_err(|cause| {
        TlsError::PrivateKey {
            path: private_key.to_owned(),
            cause: Box::new(cause),
        }
    })?;
    write_private(certificate, cert.pem().as_bytes(), 0o644).map_err(|cause| {
        TlsError::Certificate {
            path: certificate.to_owned(),
            cause: Box::new(cause),
        }
    })?;
    Ok(())
}

fn write_private(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name != "localhost").then(|| name.to_owned())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The civil (UTC) year of a Unix time, from the ledger's calendar arithmetic.
fn year_of(unix: i64) -> i32 {
    let stamp = moebox_ledger::UnixSeconds(unix).to_rfc3339();
    stamp
        .get(..4)
        .and_then(|year| year.parse().ok())
        .unwrap_or(2026)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path) -> GatewayConfig {
        GatewayConfig {
            tls_certificate: dir.join("tls/cert.pem"),
            tls_private_key: dir.join("tls/key.pem"),
            tls_names: vec!["moebox.example.internal".to_owned(), "10.0.0.7".to_owned()],
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn first_boot_generates_a_private_pair_then_loads_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_in(dir.path());
        let (_, source) = server_config(&config).expect("generated");
        assert_eq!(source, PairSource::Generated);
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("exists")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&config.tls_private_key), 0o600);
        assert_eq!(mode(dir.path().join("tls").as_path()), 0o700);
        let pem = std::fs::read_to_string(&config.tls_certificate).expect("cert");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let before = std::fs::read(&config.tls_private_key).expect("key");
        let (server, source) = server_config(&config).expect("loaded");
        assert_eq!(source, PairSource::Loaded);
        assert_eq!(
            std::fs::read(&config.tls_private_key).expect("key"),
            before,
            "a second start keeps the pair"
        );
        assert_eq!(
            server.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn half_a_pair_or_no_generation_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config_in(dir.path());
        config.tls_self_signed = false;
        let error = server_config(&config).expect_err("nothing to load");
        assert!(
            error.to_string().contains("tls_self_signed = false"),
            "{error}"
        );
        config.tls_self_signed = true;
        server_config(&config).expect("generated");
        std::fs::remove_file(&config.tls_private_key).expect("remove key");
        let error = server_config(&config).expect_err("half a pair");
        assert!(matches!(error, TlsError::HalfPair { .. }), "{error}");
        assert!(error.to_string().contains("key.pem"), "{error}");
    }

    #[test]
    fn garbage_files_name_the_key_at_fault() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_in(dir.path());
        std::fs::create_dir_all(dir.path().join("tls")).expect("dir");
        std::fs::write(&config.tls_certificate, "not a certificate").expect("write");
        std::fs::write(&config.tls_private_key, "not a key").expect("write");
        let error = server_config(&config).expect_err("garbage");
        assert!(
            error.to_string().starts_with("gateway.tls_certificate"),
            "{error}"
        );
    }
}
