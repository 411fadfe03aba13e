//! The PostgreSQL port's edge with real clients: psql over TLS with `sslmode=verify-full`
//! against the installation's CA and SCRAM-SHA-256 (with channel binding), and each refusal —
//! a wrong password, an unknown user, a plaintext client where TLS is required, a server
//! certificate from another CA, the connection past `max_connections` — with its message. The
//! writer and its storage nodes speak mutual TLS to each other here, as `logdb up` runs them.

mod common;

use std::path::{Path, PathBuf};

use common::{psql_at as psql, Cluster, Writer, PASSWORD};
use logdb_common::peer_tls::Role;
use logdb_common::pki::{Ca, CertDir, Usage};
use logdb_storage::testkit::TestPki;

struct Tls {
    _dir: tempfile::TempDir,
    /// The certificates of the parts (the writer's and its storage nodes').
    peers: TestPki,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certificates() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertDir::new(dir.path());
    let ca = certs.ca("test").unwrap();
    let leaf = certs
        .issue(
            &ca,
            "server",
            "server",
            &["localhost".into(), "127.0.0.1".into()],
            Usage::Server,
        )
        .unwrap();
    Tls {
        ca: certs.ca_cert(),
        cert: leaf.cert,
        key: leaf.key,
        _dir: dir,
        peers: TestPki::new(),
    }
}

/// Six storage nodes that take records only from the installation's compute parts.
fn cluster(tls: &Tls) -> Cluster {
    let args = tls.peers.args(Role::Storage);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Cluster::start_opts(1, 256, 8192, &args)
}

fn start(cluster: &Cluster, tls: &Tls, extra: &[&str]) -> Writer {
    let layout = cluster.layout_path.to_str().unwrap();
    let base = [
        "--layout",
        layout,
        "--tls-cert",
        tls.cert.to_str().unwrap(),
        "--tls-key",
        tls.key.to_str().unwrap(),
    ];
    let peer = tls.peers.args(Role::Compute);
    let peer: Vec<&str> = peer.iter().map(String::as_str).collect();
    Writer::start_with(&[&base[..], &peer, extra].concat())
}

fn conninfo(port: u16, user: &str, extra: &str) -> String {
    format!("host=localhost port={port} user={user} dbname=vol1 {extra}")
}

fn verify_full(ca: &Path) -> String {
    format!("sslmode=verify-full sslrootcert={}", ca.display())
}

#[test]
fn psql_verify_full_with_scram_works_and_every_bad_client_is_refused_with_a_reason() {
    let tls = certificates();
    let cluster = cluster(&tls);
    let w = start(&cluster, &tls, &["--require-tls"]);
    let secure = conninfo(w.port, "logdb", &verify_full(&tls.ca));

    // TLS verified against the CA, SCRAM with channel binding required by the client.
    let info = psql(
        &format!("{secure} channel_binding=require"),
        PASSWORD,
        "CREATE TABLE t (x); INSERT INTO t VALUES (1); SELECT count(*) FROM t",
    )
    .unwrap();
    assert_eq!(info.trim(), "1");
    let conn = psql(&secure, PASSWORD, "\\conninfo").unwrap();
    assert!(conn.contains("SSL connection (protocol: TLSv1."), "{conn}");

    // A wrong password and an unknown user read the same refusal.
    for (user, pw) in [("logdb", "wrong"), ("mallory", PASSWORD)] {
        let err = psql(
            &conninfo(w.port, user, &verify_full(&tls.ca)),
            pw,
            "SELECT 1",
        )
        .unwrap_err();
        assert!(
            err.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{user}: {err}"
        );
    }

    // A plaintext client is refused before authentication, saying TLS is required.
    let err = psql(
        &conninfo(w.port, "logdb", "sslmode=disable"),
        PASSWORD,
        "SELECT 1",
    )
    .unwrap_err();
    assert!(
        err.contains("no encryption") && err.contains("sslmode=require"),
        "{err}"
    );

    // A server certificate from another CA fails verify-full.
    let other = tempfile::tempdir().unwrap();
    let stranger = other.path().join("ca.crt");
    std::fs::write(&stranger, Ca::create("test").unwrap().cert_pem).unwrap();
    let err = psql(
        &conninfo(w.port, "logdb", &verify_full(&stranger)),
        PASSWORD,
        "SELECT 1",
    )
    .unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    // ... and so does a host name the certificate does not name.
    let err = psql(
        &format!(
            "host=db.example hostaddr=127.0.0.1 port={} user=logdb dbname=vol1 {}",
            w.port,
            verify_full(&tls.ca)
        ),
        PASSWORD,
        "SELECT 1",
    )
    .unwrap_err();
    assert!(err.contains("does not match host name"), "{err}");

    // What the accepted sessions wrote is there.
    assert_eq!(
        psql(&secure, PASSWORD, "SELECT count(*) FROM t")
            .unwrap()
            .trim(),
        "1"
    );
}

#[test]
fn without_require_tls_plaintext_and_tls_clients_both_log_in_with_scram() {
    // A server with a certificate offers channel binding only over TLS: libpq refuses a
    // server that offers SCRAM-SHA-256-PLUS on a plaintext connection.
    let tls = certificates();
    let cluster = cluster(&tls);
    let w = start(&cluster, &tls, &[]);
    let plain = conninfo(w.port, "logdb", "sslmode=disable");
    assert_eq!(psql(&plain, PASSWORD, "SELECT 1").unwrap().trim(), "1");
    let secure = format!(
        "{} channel_binding=require",
        conninfo(w.port, "logdb", &verify_full(&tls.ca))
    );
    assert_eq!(psql(&secure, PASSWORD, "SELECT 2").unwrap().trim(), "2");
    let err = psql(&plain, "wrong", "SELECT 1").unwrap_err();
    assert!(
        err.contains("password authentication failed for user \"logdb\""),
        "{err}"
    );
}

#[test]
fn md5_only_when_asked_for_and_the_refusal_past_max_connections_goes_over_tls() {
    let tls = certificates();
    let cluster = cluster(&tls);
    let w = start(&cluster, &tls, &["--auth", "md5", "--max-connections", "1"]);
    let secure = conninfo(w.port, "logdb", &verify_full(&tls.ca));
    // md5 works when configured (channel binding cannot, so a client that requires it fails).
    assert_eq!(psql(&secure, PASSWORD, "SELECT 7").unwrap().trim(), "7");
    let err = psql(
        &format!("{secure} channel_binding=require"),
        PASSWORD,
        "SELECT 1",
    )
    .unwrap_err();
    assert!(err.contains("channel binding"), "{err}");

    // Hold the only session (once an earlier client's place is free: its permit goes a moment
    // after psql exits); the next TLS client reads 53300 through TLS.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut held = loop {
        use std::io::{BufRead, Write};
        let mut p = std::process::Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-d", &secure])
            .env("PGPASSWORD", PASSWORD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        writeln!(p.stdin.as_mut().unwrap(), "SELECT 'held';").unwrap();
        let mut line = String::new();
        let _ = std::io::BufReader::new(p.stdout.as_mut().unwrap()).read_line(&mut line);
        if line.trim() == "held" {
            break p;
        }
        let _ = p.wait();
        assert!(
            std::time::Instant::now() < deadline,
            "the only session never opened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let err = psql(&secure, PASSWORD, "SELECT 1").unwrap_err();
    assert!(
        err.contains("too many clients") && err.contains("--max-connections"),
        "{err}"
    );
    drop(held.stdin.take());
    held.wait().unwrap();
}

#[test]
fn an_unsafe_configuration_does_not_start() {
    // Refused before the volume is even looked at.
    let layout = "/nonexistent/layout.json";
    let tls = certificates();
    let (cert, key) = (tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
    for (args, says) in [
        (vec!["--auth", "trust"], "--insecure"),
        (vec!["--password", "x"], "no TLS certificate"),
        (
            vec!["--password", "x", "--tls-cert", cert, "--tls-key", key],
            "no certificate for the connections between logdb's parts",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logdb-compute"))
            .args(["--layout", layout, "--listen", "127.0.0.1:0"])
            .args(&args)
            .env_remove("LOGDB_PASSWORD")
            .env_remove("LOGDB_PEER_CA")
            .env_remove("LOGDB_PEER_CERT")
            .env_remove("LOGDB_PEER_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
