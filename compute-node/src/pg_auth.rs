//! Who may talk to the PostgreSQL port and how they prove it: the users (from a file, or one
//! user and password from the environment — a Kubernetes Secret), the method (SCRAM-SHA-256 by
//! default; md5 only if asked for; trust only with `--insecure`), TLS from PEM files, and
//! `hostssl`-style refusal of plaintext. The session code only asks this module for a startup
//! handler.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use pgwire::api::auth::md5pass::hash_md5_password;
use pgwire::api::auth::sasl::scram::{
    gen_salted_password, ScramAuth, ScramSecret, SCRAM_ITERATIONS,
};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    ScramSha256,
    Md5,
    Trust,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("{path}: {why}")]
    UsersFile { path: PathBuf, why: String },
    #[error("{path} line {line}: {why}")]
    UsersLine {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Tls(#[from] logdb_common::tls::TlsError),
}

/// A user's stored secret: a SCRAM verifier always, the password itself only when it was given
/// in the clear (md5 needs it).
#[derive(Clone)]
struct Secret {
    salt: Vec<u8>,
    iterations: usize,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    password: Option<String>,
}

impl Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

use logdb_common::pki::random_bytes;

impl Secret {
    fn from_password(password: &str) -> Secret {
        let salt = random_bytes(16);
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        let ScramSecret::Verifier {
            salt,
            iterations,
            stored_key,
            server_key,
        } = ScramSecret::verifier_from_salted_password(salt, salted, SCRAM_ITERATIONS)
        else {
            unreachable!("verifier_from_salted_password makes a verifier")
        };
        Secret {
            salt,
            iterations,
            stored_key,
            server_key,
            password: Some(password.to_string()),
        }
    }

    /// PostgreSQL's stored form: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    fn from_verifier(v: &str) -> Result<Secret, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let rest = v
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or("not a SCRAM-SHA-256 verifier")?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or("expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")?;
        let (iters, salt) = params
            .split_once(':')
            .ok_or("expected <iterations>:<salt>")?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or("expected <StoredKey>:<ServerKey>")?;
        let iterations: usize = iters
            .parse()
            .map_err(|_| format!("iteration count {iters:?} is not a number"))?;
        if iterations < SCRAM_ITERATIONS {
            return Err(format!(
                "iteration count {iterations} is below SCRAM's minimum of {SCRAM_ITERATIONS}"
            ));
        }
        let decode = |what: &str, s: &str| {
            b64.decode(s)
                .map_err(|e| format!("{what} is not base64: {e}"))
        };
        let (salt, stored_key, server_key) = (
            decode("salt", salt)?,
            decode("StoredKey", stored)?,
            decode("ServerKey", server)?,
        );
        if stored_key.len() != 32 || server_key.len() != 32 {
            return Err("StoredKey and ServerKey must be 32 bytes (SHA-256)".into());
        }
        Ok(Secret {
            salt,
            iterations,
            stored_key,
            server_key,
            password: None,
        })
    }

    fn scram(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// The users the server knows, by name.
#[derive(Clone, Debug, Default)]
pub struct Users {
    users: HashMap<String, Secret>,
}

impl Users {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn add_password(&mut self, user: &str, password: &str) {
        self.users
            .insert(user.to_string(), Secret::from_password(password));
    }

    /// A users file: one `name:password` or `name:SCRAM-SHA-256$...` (PostgreSQL's stored
    /// verifier) per line; blank lines and lines starting with `#` are skipped.
    pub fn load(path: &Path) -> Result<Users, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthConfigError::UsersFile {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let mut users = Users::default();
        for (i, line) in text.lines().enumerate() {
            let bad = |why: String| AuthConfigError::UsersLine {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            };
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (name, secret) = line
                .split_once(':')
                .ok_or_else(|| bad("expected name:password".into()))?;
            if name.is_empty() || secret.is_empty() {
                return Err(bad("empty user name or password".into()));
            }
            let secret = if secret.starts_with("SCRAM-SHA-256$") {
                Secret::from_verifier(secret).map_err(bad)?
            } else {
                Secret::from_password(secret)
            };
            if users.users.insert(name.to_string(), secret).is_some() {
                return Err(bad(format!("user {name:?} appears twice")));
            }
        }
        if users.is_empty() {
            return Err(AuthConfigError::UsersFile {
                path: path.to_path_buf(),
                why: "names no user".into(),
            });
        }
        Ok(users)
    }
}

/// The answer for a user who does not exist or cannot use the method: the same
/// "password authentication failed" as a wrong password, so a client cannot tell which.
#[derive(Debug)]
pub struct UserLookup {
    users: Arc<Users>,
    /// Makes the verifier of a user who does not exist: no password matches it, and its salt
    /// is fixed per name (PostgreSQL's mock salt) so probing twice does not tell an unknown
    /// name from a real one.
    mock: ring::hmac::Key,
}

#[async_trait]
impl AuthSource for UserLookup {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // md5: a fresh salt per attempt, and the hash of the real password; an unknown user (or
        // one with only a verifier) gets a hash nothing can match.
        let user = login.user().unwrap_or("");
        let salt = random_bytes(4);
        let hashed = match self.users.users.get(user).and_then(|s| s.password.as_ref()) {
            Some(p) => hash_md5_password(user, p, &salt),
            None => hex(&random_bytes(16)),
        };
        Ok(Password::new(Some(salt), hashed.into_bytes()))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or("");
        let secret = match self.users.users.get(user) {
            Some(s) => s.scram(),
            None => self.mock_secret(user),
        };
        Ok((secret, None))
    }
}

impl UserLookup {
    fn mock_secret(&self, user: &str) -> ScramSecret {
        let derive = |what: &str| {
            let tag = ring::hmac::sign(&self.mock, format!("{what}\0{user}").as_bytes());
            tag.as_ref().to_vec()
        };
        ScramSecret::Verifier {
            salt: derive("salt")[..16].to_vec(),
            iterations: SCRAM_ITERATIONS,
            stored_key: derive("stored"),
            server_key: derive("server"),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// TLS on the PostgreSQL port: the server's certificate and key (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the server authenticates clients, fixed at start.
pub struct PgAuth {
    pub method: Method,
    lookup: Arc<UserLookup>,
    /// SCRAM for plaintext clients: SCRAM-SHA-256 only (libpq refuses a server that offers
    /// channel binding over a connection that has none).
    scram_plain: ScramAuth,
    /// SCRAM for TLS clients: also SCRAM-SHA-256-PLUS, bound to the server certificate.
    scram_tls: ScramAuth,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Plaintext clients are refused (PostgreSQL's `hostssl`).
    pub require_tls: bool,
}

/// The refusal of a wrong password or an unknown user, worded as PostgreSQL's (28P01).
pub fn password_failed(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "28P01".into(),
        format!("password authentication failed for user \"{user}\""),
    )))
}

/// SQLSTATE of a client refused before authentication (`invalid_authorization_specification`).
pub const INVALID_AUTHORIZATION: &str = "28000";

impl PgAuth {
    /// Checks the combination is safe: trust needs `insecure`, a password method needs users,
    /// plaintext-only needs `insecure`, and requiring TLS needs a certificate.
    pub fn new(
        method: Method,
        mut users: Users,
        tls: Option<TlsFiles>,
        require_tls: bool,
        insecure: bool,
    ) -> Result<PgAuth, AuthConfigError> {
        let refuse = |s: &str| Err(AuthConfigError::Refused(s.to_string()));
        match method {
            Method::Trust if !insecure => {
                return refuse("trust authentication lets every client in without a password: pass --insecure to run it that way")
            }
            Method::ScramSha256 | Method::Md5 if users.is_empty() => {
                return refuse("no users: give --password (and --user), or --users-file; or --auth trust --insecure")
            }
            _ => {}
        }
        if method == Method::Md5 {
            // md5 needs the password itself; a user stored as a SCRAM verifier could never log in.
            if let Some(name) = users
                .users
                .iter()
                .find(|(_, s)| s.password.is_none())
                .map(|(n, _)| n)
            {
                return Err(AuthConfigError::Refused(format!(
                    "user {name:?} is stored as a SCRAM verifier, which md5 cannot check: give its password, or use --auth scram-sha-256"
                )));
            }
        } else {
            // Only md5 needs a password in the clear; SCRAM keeps the verifier alone.
            for s in users.users.values_mut() {
                s.password = None;
            }
        }
        if tls.is_none() && !insecure {
            return refuse("no TLS certificate: give --tls-cert and --tls-key, or pass --insecure to serve plaintext");
        }
        if require_tls && tls.is_none() {
            return refuse("--require-tls needs --tls-cert and --tls-key");
        }
        let lookup = Arc::new(UserLookup {
            users: Arc::new(users),
            mock: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &random_bytes(32)),
        });
        let scram_plain = ScramAuth::new(Arc::clone(&lookup) as Arc<dyn AuthSource>);
        let (acceptor, scram_tls) = match &tls {
            Some(files) => {
                let mut config = logdb_common::tls::server_config(&files.cert, &files.key, None)?;
                Arc::get_mut(&mut config)
                    .expect("just built")
                    .alpn_protocols = vec![b"postgresql".to_vec()];
                let mut scram = ScramAuth::new(Arc::clone(&lookup) as Arc<dyn AuthSource>);
                // Channel binding (SCRAM-SHA-256-PLUS) ties the password proof to this TLS
                // session, so a man in the middle cannot relay it.
                let pem = std::fs::read(&files.cert).map_err(|e| {
                    AuthConfigError::Tls(logdb_common::tls::TlsError::File {
                        path: files.cert.clone(),
                        why: e.to_string(),
                    })
                })?;
                if let Err(e) = scram.configure_certificate(&pem) {
                    tracing::warn!(error = %e, "no SCRAM channel binding for this certificate");
                }
                (Some(tokio_rustls::TlsAcceptor::from(config)), scram)
            }
            None => (None, scram_plain.clone()),
        };
        Ok(PgAuth {
            method,
            lookup,
            scram_plain,
            scram_tls,
            tls: acceptor,
            require_tls,
        })
    }

    /// The SCRAM mechanisms to offer a client on a TLS (`secure`) or plaintext connection.
    pub(crate) fn scram(&self, secure: bool) -> ScramAuth {
        if secure {
            self.scram_tls.clone()
        } else {
            self.scram_plain.clone()
        }
    }

    pub(crate) fn md5_source(&self) -> Arc<UserLookup> {
        Arc::clone(&self.lookup)
    }

    /// The refusal of a plaintext client when TLS is required, or `None`.
    pub fn plaintext_refusal(&self, secure: bool, login: &LoginInfo) -> Option<PgWireError> {
        (self.require_tls && !secure).then(|| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                INVALID_AUTHORIZATION.into(),
                format!(
                    "no encryption: this server accepts only TLS connections (hostssl); user \"{}\" must connect with sslmode=require or verify-full",
                    login.user().unwrap_or("")
                ),
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_file_takes_passwords_and_postgres_verifiers_and_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        // The verifier of password "pencil" with PostgreSQL's format (salt "c2FsdA==").
        let salt = b"salt".to_vec();
        let salted = gen_salted_password("pencil", &salt, 4096);
        let ScramSecret::Verifier {
            stored_key,
            server_key,
            ..
        } = ScramSecret::verifier_from_salted_password(salt, salted, 4096)
        else {
            unreachable!()
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let verifier = format!(
            "SCRAM-SHA-256$4096:c2FsdA==${}:{}",
            b64.encode(&stored_key),
            b64.encode(&server_key)
        );
        std::fs::write(&path, format!("# users\napp:s3cret\n\nreader:{verifier}\n")).unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.users["app"].password.is_some());
        assert_eq!(users.users["reader"].stored_key, stored_key);
        assert!(users.users["reader"].password.is_none());

        std::fs::write(&path, "app:x\nbroken\n").unwrap();
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("name:password"), "{e}");
        std::fs::write(&path, "a:SCRAM-SHA-256$10:c2FsdA==$AA==:AA==\n").unwrap();
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(e.contains("below SCRAM's minimum"), "{e}");
        std::fs::write(&path, "a:x\na:y\n").unwrap();
        assert!(Users::load(&path)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        std::fs::write(&path, "# nobody\n").unwrap();
        assert!(Users::load(&path)
            .unwrap_err()
            .to_string()
            .contains("names no user"));
    }

    #[test]
    fn an_unknown_user_looks_like_a_real_one_to_a_prober() {
        let mut users = Users::default();
        users.add_password("logdb", "pw");
        let auth = PgAuth::new(Method::ScramSha256, users, None, false, true).unwrap();
        let salt = |s: ScramSecret| match s {
            ScramSecret::Verifier {
                salt, iterations, ..
            } => (salt, iterations),
            _ => unreachable!(),
        };
        let (a, ia) = salt(auth.lookup.mock_secret("mallory"));
        let (b, _) = salt(auth.lookup.mock_secret("mallory"));
        let (c, _) = salt(auth.lookup.mock_secret("eve"));
        assert_eq!(a, b, "the same unknown name gets the same salt every time");
        assert_ne!(a, c, "different names get different salts");
        let (real, ir) = salt(auth.lookup.users.users["logdb"].scram());
        assert_eq!(
            (a.len(), ia),
            (real.len(), ir),
            "same salt length and iterations as a real user"
        );
    }

    #[test]
    fn unsafe_combinations_are_refused_at_start() {
        let mut users = Users::default();
        let err = |r: Result<PgAuth, AuthConfigError>| r.err().expect("refused").to_string();
        assert!(err(PgAuth::new(
            Method::Trust,
            Users::default(),
            None,
            false,
            false
        ))
        .contains("--insecure"));
        assert!(err(PgAuth::new(
            Method::ScramSha256,
            Users::default(),
            None,
            false,
            true
        ))
        .contains("no users"));
        users.add_password("logdb", "pw");
        assert!(err(PgAuth::new(
            Method::ScramSha256,
            users.clone(),
            None,
            false,
            false
        ))
        .contains("no TLS certificate"));
        assert!(err(PgAuth::new(
            Method::ScramSha256,
            users.clone(),
            None,
            true,
            true
        ))
        .contains("--require-tls"));
        let scram = PgAuth::new(Method::ScramSha256, users.clone(), None, false, true).unwrap();
        assert!(
            scram
                .lookup
                .users
                .users
                .values()
                .all(|s| s.password.is_none()),
            "SCRAM keeps no password in the clear"
        );
        let md5 = PgAuth::new(Method::Md5, users.clone(), None, false, true).unwrap();
        assert!(md5.lookup.users.users["logdb"].password.is_some());
        let mut verifier_only = users;
        verifier_only.users.get_mut("logdb").unwrap().password = None;
        assert!(
            err(PgAuth::new(Method::Md5, verifier_only, None, false, true))
                .contains("SCRAM verifier")
        );
    }
}
