//! Mutual TLS on the storage port against the real binary: a compute part of the installation
//! writes; a process without the installation's certificate (plaintext, no certificate, a
//! certificate of another CA) is refused before any request is served; another part's
//! certificate may not write records or install an epoch, nor may a compute part of another
//! volume; and a node given no certificate does not start unless told `--insecure`.

mod common;

use common::*;
use logdb_common::peer_tls::{Mutual, Role, Transport};
use logdb_storage::testkit::TestPki;
use logdb_types::proto::storage_service_client::StorageServiceClient;
use logdb_types::proto::InstallEpochRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// A client of `addr` over `endpoint`; `Err` if the connection (with its handshake) fails.
async fn client(endpoint: Endpoint) -> Result<StorageServiceClient<Channel>, String> {
    let ch = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    Ok(StorageServiceClient::new(ch))
}

/// What a process without a usable certificate gets: no connection, or a refused write.
async fn refused_write(endpoint: Endpoint, who: &str) {
    let outcome = match client(endpoint).await {
        Err(e) => Err(e),
        Ok(mut c) => write(&mut c, 1, 1, &[delta(2, 1, 1, 0, b"evil")])
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}")),
    };
    assert!(outcome.is_err(), "{who}: a write was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_installations_compute_parts_may_write_records() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let args = pki.args(Role::Storage);
    let node = StorageNode::start(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let mut compute = client(pki.transport(Role::Compute).endpoint(&node.grpc).unwrap())
        .await
        .expect("a compute part connects");
    create_segment(&mut compute, VOL, SEG, 0, 100).await;
    write(&mut compute, 1, 0, &[delta(1, 0, 1, 0, b"a")])
        .await
        .unwrap();

    // Another kind of part of the installation does not write, fence or even look.
    let mut peer = client(pki.transport(Role::Storage).endpoint(&node.grpc).unwrap())
        .await
        .unwrap();
    let err = peer
        .get_segment_state(logdb_types::proto::SegmentRef {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = write(&mut peer, 1, 1, &[delta(2, 1, 1, 0, b"b")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("WriteRecords is only served to a compute part")
            && err.message().contains("certificate is for storage"),
        "{}",
        err.message()
    );
    let err = peer
        .install_epoch(InstallEpochRequest {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
            epoch: u64::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A compute part of another volume is not served for this one; of this one, it is.
    let mut other = client(
        pki.transport_for(Role::Compute, "shop-carts")
            .endpoint(&node.grpc)
            .unwrap(),
    )
    .await
    .unwrap();
    let err = write(&mut other, 1, 1, &[delta(2, 1, 1, 0, b"c")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("for volume \"vol1\"") && err.message().contains("another volume"),
        "{}",
        err.message()
    );
    let mut own = client(
        pki.transport_for(Role::Compute, VOL)
            .endpoint(&node.grpc)
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(state(&mut own).await.highest_lsn, 1);
    // A config store member sees every segment's state, and writes none.
    let mut member = client(pki.transport(Role::Config).endpoint(&node.grpc).unwrap())
        .await
        .unwrap();
    assert_eq!(state(&mut member).await.highest_lsn, 1);
    let err = write(&mut member, 1, 1, &[delta(2, 1, 1, 0, b"d")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Plaintext.
    refused_write(
        Transport::Plaintext.endpoint(&node.grpc).unwrap(),
        "plaintext",
    )
    .await;
    // TLS that trusts the node but presents no certificate.
    let ca = std::fs::read(pki.certs.ca_cert()).unwrap();
    let anonymous = Endpoint::from_shared(format!("https://{}", node.grpc))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)))
        .unwrap();
    refused_write(anonymous, "no client certificate").await;
    // A compute certificate of another installation's CA.
    let stranger = TestPki::new();
    let foreign = stranger.certs.leaf(Role::Compute.name());
    let forged = Transport::Mutual(std::sync::Arc::new(
        Mutual::load(&pki.certs.ca_cert(), &foreign.cert, &foreign.key).unwrap(),
    ));
    refused_write(
        forged.endpoint(&node.grpc).unwrap(),
        "another CA's certificate",
    )
    .await;

    let st = state(&mut compute).await;
    assert_eq!(
        (st.highest_lsn, st.epoch),
        (1, 1),
        "nothing of a refused request was applied"
    );
}

#[test]
fn a_node_without_its_certificate_does_not_start_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_logdb-storage"))
            .args(["--listen", "127.0.0.1:0", "--node-id", "n1", "--zone", "z1"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .env_remove("LOGDB_PEER_CA")
            .env_remove("LOGDB_PEER_CERT")
            .env_remove("LOGDB_PEER_KEY")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--peer-ca") && err.contains("--insecure"),
        "{err}"
    );

    // A certificate of the CA that names no part (the PostgreSQL port's kind) is not a part's.
    let pki = TestPki::new();
    let ca = pki.certs.ca("test").unwrap();
    let server = pki
        .certs
        .issue(
            &ca,
            "server",
            "server",
            &["127.0.0.1".into()],
            logdb_common::pki::Usage::Server,
        )
        .unwrap();
    let ca_path = pki.certs.ca_cert();
    let out = run(&[
        "--peer-ca",
        ca_path.to_str().unwrap(),
        "--peer-cert",
        server.cert.to_str().unwrap(),
        "--peer-key",
        server.key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a logdb part's certificate"), "{err}");
}
