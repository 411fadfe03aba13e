//! One certificate authority per installation and the certificates it issues: what `logdb up`
//! makes in its data dir (and the operator in Secrets) so every part can speak TLS and prove who
//! it is. Pure in-memory issuing (`Ca::create`, `Ca::issue`) plus a thin file layer that keeps
//! the CA across restarts and re-issues a leaf before it expires.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("issuing a certificate failed: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a certificate authority this installation made: {why}")]
    BadCa { path: PathBuf, why: String },
}

/// How long a CA is valid for, and a leaf.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// A leaf is re-issued once less than this is left of it.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A server's certificate (the PostgreSQL port).
    Server,
    /// A client's certificate.
    Client,
    /// A part that both serves and calls others (storage, compute, config store members).
    Peer,
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// When the certificate stops being valid (seconds since the Unix epoch).
    pub not_after_unix: u64,
}

/// The installation's certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    key_pem: String,
}

fn ca_name(installation: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "logdb");
    dn.push(DnType::CommonName, format!("logdb CA {installation}"));
    dn
}

fn ca_params(installation: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = ca_name(installation);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn validity(p: &mut CertificateParams, for_: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack behind for clocks that disagree.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::seconds(for_.as_secs() as i64);
}

impl Ca {
    /// A new CA for `installation` (its name goes into the CA's subject).
    pub fn create(installation: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(installation);
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of `cert_pem`/`key_pem`, as made by [`Ca::create`] for the same installation.
    pub fn from_pem(installation: &str, cert_pem: &str, key_pem: &str) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca {
            issuer: Issuer::new(ca_params(installation), key),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA's private key (PEM), for whoever keeps the CA (a file, a Secret).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `common_name`, valid for the host names and IP addresses in `names`.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        usage: Usage,
    ) -> Result<Issued, PkiError> {
        self.issue_for(common_name, names, usage, LEAF_VALIDITY)
    }

    pub fn issue_for(
        &self,
        common_name: &str,
        names: &[String],
        usage: Usage,
        valid_for: Duration,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "logdb");
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        // ECDSA keys sign; key encipherment is for RSA key exchange (RFC 5480 forbids it here).
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, valid_for);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after_unix: p.not_after.unix_timestamp().max(0) as u64,
        })
    }
}

/// A random password of 24 letters and digits (~142 bits), from the system's random source.
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        let b = random_bytes(1)[0] as usize;
        // Rejection sampling keeps every letter equally likely.
        if b < 256 - 256 % ALPHABET.len() {
            out.push(ALPHABET[b % ALPHABET.len()] as char);
        }
    }
    out
}

/// `n` bytes from the system's random source (salts, keys, passwords).
pub fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut b = vec![0; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source");
    b
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` through a temporary file, readable by the owner only when
/// `secret`.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    // A temporary name of this file's own (a key and its certificate never share one), made
    // afresh: a leftover of a crash is removed, not reused with its old mode, and a symlink
    // planted there is not followed.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    let mode = if secret { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // The umask may have taken bits away, never added any; set exactly what is meant.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Where a directory of certificates keeps the CA and each named leaf.
#[derive(Clone, Debug)]
pub struct CertDir {
    pub dir: PathBuf,
}

/// The paths of one leaf's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> CertDir {
        CertDir { dir: dir.into() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn leaf(&self, name: &str) -> LeafFiles {
        LeafFiles {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        }
    }

    /// The directory's CA, made (and written) the first time.
    pub fn ca(&self, installation: &str) -> Result<Ca, PkiError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let (cert, key) = (self.ca_cert(), self.ca_key());
        if cert.exists() && key.exists() {
            let cert_pem = std::fs::read_to_string(&cert).map_err(io(&cert))?;
            let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
            return Ca::from_pem(installation, &cert_pem, &key_pem).map_err(|e| PkiError::BadCa {
                path: key.clone(),
                why: e.to_string(),
            });
        }
        let ca = Ca::create(installation)?;
        write_file(&key, &ca.key_pem, true)?;
        write_file(&cert, &ca.cert_pem, false)?;
        Ok(ca)
    }

    /// Issues leaf `name` (for `common_name` and `names`) and writes it, every time: a restart
    /// renews every leaf, so none runs out while the CA lives.
    pub fn issue(
        &self,
        ca: &Ca,
        name: &str,
        common_name: &str,
        names: &[String],
        usage: Usage,
    ) -> Result<LeafFiles, PkiError> {
        let issued = ca.issue(common_name, names, usage)?;
        let files = self.leaf(name);
        write_file(&files.key, &issued.key_pem, true)?;
        write_file(&files.cert, &issued.cert_pem, false)?;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_ca_issues_certificates_that_chain_to_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path().join("tls"));
        let ca = certs.ca("vol").unwrap();
        let again = certs.ca("vol").unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem, "the CA is kept, not remade");
        let leaf = again
            .issue(
                "server",
                &["localhost".into(), "127.0.0.1".into()],
                Usage::Server,
            )
            .unwrap();
        crate::tls::verify_chain(&ca.cert_pem, &leaf.cert_pem, "127.0.0.1").unwrap();
        crate::tls::verify_chain(&ca.cert_pem, &leaf.cert_pem, "localhost").unwrap();
        assert!(crate::tls::verify_chain(&ca.cert_pem, &leaf.cert_pem, "other.host").is_err());
        let stranger = Ca::create("vol").unwrap();
        assert!(
            crate::tls::verify_chain(&stranger.cert_pem, &leaf.cert_pem, "localhost").is_err(),
            "another CA of the same name does not vouch for it"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(certs.dir.join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the CA key is private to its owner");
        }
    }
}
