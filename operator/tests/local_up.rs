//! `logdb up` driven the way a user drives it: the built `logdb` binary starts a volume (config
//! store, six storage processes, writer), psql talks to it, `logdb status` reports it, `logdb node
//! stop` takes storage nodes away while writes go on, `logdb down` stops it, and `up` again
//! resumes the same volume with every row. Every process is stopped even when a test fails.

mod common;

use common::local_up::{
    await_status, bin_dir, listening_ports, logdb, ok, port_free, psql, refused, status, Up,
};

#[test]
fn up_write_stop_two_nodes_down_and_up_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut up = Up::start(&dir, &["--port", "0"]);
    let url = up.psql_url();
    assert_eq!(up.ready["volume"], "demo");

    psql(&url, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)").unwrap();
    psql(&url, "INSERT INTO kv VALUES (1, 'one'), (2, 'two')").unwrap();
    assert_eq!(psql(&url, "SELECT v FROM kv WHERE k = 2").unwrap(), "two");
    // The URL verifies the server against the data dir's CA and takes the password from the
    // data dir; a plaintext client, or one without the password, is refused.
    let ca = dir.join("tls/ca.crt");
    assert!(
        url.contains("sslmode=verify-full")
            && url.contains(&format!("sslrootcert={}", ca.display())),
        "{url}"
    );
    let plain = url.replace("sslmode=verify-full", "sslmode=disable");
    let err = psql(&plain, "SELECT 1").unwrap_err();
    assert!(err.contains("no encryption"), "{err}");
    let no_password = url.split("&passfile=").next().unwrap().to_string();
    let err = psql(&no_password, "SELECT 1").unwrap_err();
    assert!(err.contains("password"), "{err}");

    let s = await_status(&dir, "six healthy nodes with the writes", |s| {
        s["healthy_nodes"] == 6
            && s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["segments"][0]["scl"].as_u64() > Some(0))
    });
    assert_eq!(s["phase"], "Ready");
    assert_eq!(s["epoch"], up.ready["epoch"]);
    assert!(s["epoch"].as_u64().unwrap() >= 1);
    assert_eq!(s["writer"]["process"], "running");
    assert!(s["writer"]["vdl"].as_u64().unwrap() > 0);
    let zones: Vec<&str> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["zone"].as_str().unwrap())
        .collect();
    assert_eq!(
        zones,
        ["zone-a", "zone-a", "zone-b", "zone-b", "zone-c", "zone-c"]
    );
    let table = ok(logdb(&dir, &["status"]));
    assert!(table.contains("storage nodes: 6/6 healthy"), "{table}");

    // The parts speak mutual TLS: a storage node serves a holder of the data dir's
    // certificates what its role may ask, and refuses a plaintext client.
    let node = s["nodes"][0]["address"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use logdb_common::peer_tls::{Mutual, Transport};
        use logdb_types::proto::storage_service_client::StorageServiceClient;
        let list = |t: Transport| {
            let node = node.clone();
            async move {
                let ch = t
                    .endpoint(&node)
                    .unwrap()
                    .connect()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                StorageServiceClient::new(ch)
                    .list_segments(logdb_types::proto::ListSegmentsRequest::default())
                    .await
                    .map(|r| r.into_inner().segments.len())
                    .map_err(|e| format!("{e:?}"))
            }
        };
        let tls = dir.join("tls");
        let part = |name: &str| {
            let m = Mutual::load(
                &tls.join("ca.crt"),
                &tls.join(format!("peer-{name}.crt")),
                &tls.join(format!("peer-{name}.key")),
            )
            .unwrap();
            Transport::Mutual(std::sync::Arc::new(m))
        };
        let segments = list(part("config")).await.unwrap();
        assert!(segments > 0);
        let err = list(part("compute")).await.unwrap_err();
        assert!(
            err.contains("PermissionDenied") && err.contains("only served to a config part"),
            "{err}"
        );
        assert!(
            list(Transport::Plaintext).await.is_err(),
            "a plaintext client was served"
        );
    });

    // A second `up` on the same data dir is refused while this one runs.
    let err = refused(logdb(
        &dir,
        &["up", "--bin-dir", bin_dir().to_str().unwrap()],
    ));
    assert!(err.contains("another `logdb up`"), "{err}");

    // Two storage nodes of two zones away: a write quorum (4/6) remains, writes commit.
    assert!(ok(logdb(&dir, &["node", "stop", "a1"])).contains("storage node a1 stopped"));
    ok(logdb(&dir, &["node", "stop", "b1"]));
    let err = refused(logdb(&dir, &["node", "stop", "b1"]));
    assert!(err.contains("storage node b1 is already stopped"), "{err}");
    let err = refused(logdb(&dir, &["node", "stop", "x9"]));
    assert!(err.contains("no storage node \"x9\""), "{err}");
    for k in 3..=12 {
        psql(&url, &format!("INSERT INTO kv VALUES ({k}, 'v{k}')")).unwrap();
    }
    let s = await_status(&dir, "two stopped nodes", |s| s["healthy_nodes"] == 4);
    assert_eq!(s["phase"], "Degraded");
    let a1 = &s["nodes"][0];
    assert_eq!(
        (
            a1["id"].as_str(),
            a1["process"].as_str(),
            a1["healthy"].as_bool()
        ),
        (Some("a1"), Some("stopped"), Some(false))
    );

    // One comes back and catches up.
    ok(logdb(&dir, &["node", "start", "a1"]));
    await_status(&dir, "a1 back", |s| s["healthy_nodes"] == 5);
    psql(&url, "INSERT INTO kv VALUES (13, 'v13')").unwrap();

    // The replica reads at the writer's VDL through the read-only endpoint.
    let ro = up.ready["read_only_psql"].as_str().unwrap().to_string();
    let vdl = psql(&url, "SELECT logdb_read_point()").unwrap();
    psql(&ro, &format!("SELECT logdb_wait_lsn({vdl})")).unwrap();
    assert_eq!(psql(&ro, "SELECT count(*) FROM kv").unwrap(), "13");
    let err = psql(&ro, "INSERT INTO kv VALUES (99, 'no')").unwrap_err();
    assert!(err.contains("read replica"), "{err}");

    // Failover: the replica becomes the writer; the read-write endpoint follows it.
    let out = logdb(&dir, &["failover"]);
    assert!(
        out.status.success(),
        "logdb failover failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::local_up::log_tails(&dir)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.starts_with("compute-1 is the writer"), "{out}");
    psql(&url, "INSERT INTO kv VALUES (14, 'after failover')").unwrap();
    assert_eq!(psql(&url, "SELECT count(*) FROM kv").unwrap(), "14");
    let s = await_status(&dir, "the old writer back as a replica", |s| {
        s["replicas"][0]["id"] == "compute-0" && s["replicas"][0]["read_point"].as_u64() > Some(0)
    });
    assert_eq!(s["writer"]["id"], "compute-1");
    let err = refused(logdb(&dir, &["failover", "--to", "compute-7"]));
    assert!(err.contains("no replica \"compute-7\""), "{err}");

    // `logdb down` stops everything and waits for it.
    let ports = listening_ports(&status(&dir));
    // Two endpoints, the config store, two compute nodes (PostgreSQL, metrics), the five storage
    // nodes still running (b1 stays stopped).
    assert_eq!(ports.len(), 2 + 1 + 2 * 2 + 5, "{ports:?}");
    assert!(ok(logdb(&dir, &["down"])).contains("stopped"));
    assert!(up.wait_exit().success());
    let busy: Vec<u16> = ports.into_iter().filter(|p| !port_free(*p)).collect();
    assert!(
        busy.is_empty(),
        "every process of the volume is gone, but {busy:?} are bound"
    );
    let err = refused(logdb(&dir, &["status"]));
    assert!(err.contains("no `logdb up` is running"), "{err}");
    drop(up);

    // Up again: the same volume, a new epoch, every row.
    let up = Up::start(&dir, &[]);
    assert_eq!(up.psql_url(), url, "the same address as before");
    assert!(
        up.ready["epoch"].as_u64() > s["epoch"].as_u64(),
        "recovery took a new epoch"
    );
    assert_eq!(
        psql(&url, "SELECT count(*), sum(k) FROM kv").unwrap(),
        "14|105"
    );
    let s = await_status(&dir, "six healthy nodes again", |s| s["healthy_nodes"] == 6);
    assert_eq!(s["phase"], "Ready");
}

/// The load the issue measured: a million TPC-B-like account rows (about 130 MB) in one
/// transaction into the default volume (64Mi segments, maxSize 8Gi). The volume grows on
/// demand while the transaction runs; the rows read back before and after a restart.
#[test]
fn a_million_account_rows_in_one_transaction_grow_the_default_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut up = Up::start(&dir, &["--port", "0"]);
    let url = up.psql_url();
    psql(
        &url,
        "CREATE TABLE pgbench_accounts (aid INTEGER PRIMARY KEY, bid INTEGER NOT NULL, \
         abalance INTEGER NOT NULL, filler CHAR(84))",
    )
    .unwrap();
    let load = "BEGIN; \
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) \
        INSERT INTO pgbench_accounts SELECT i, (i - 1) / 100000 + 1, 0, printf('%-84s', i) FROM n; \
        COMMIT";
    psql(&url, load).unwrap_or_else(|e| panic!("{e}\n{}", up.logs(&dir)));
    let expect = "1000000|500000500000|10|84000000";
    let check =
        "SELECT count(*), sum(aid), count(DISTINCT bid), sum(length(filler)) FROM pgbench_accounts";
    assert_eq!(psql(&url, check).unwrap(), expect);
    let s = status(&dir);
    assert!(
        s["protection_groups"].as_u64() >= Some(2),
        "about 130 MB does not fit one 64Mi PG: {s}"
    );

    assert!(ok(logdb(&dir, &["down"])).contains("stopped"));
    assert!(up.wait_exit().success());
    drop(up);
    let _up = Up::start(&dir, &[]);
    assert_eq!(psql(&url, check).unwrap(), expect);
    assert_eq!(
        psql(
            &url,
            "SELECT abalance, bid, trim(filler) FROM pgbench_accounts WHERE aid = 765432"
        )
        .unwrap(),
        "0|8|765432"
    );
}

#[test]
fn clear_errors_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let bins = bin_dir();
    let bins = bins.to_str().unwrap();

    // An invalid manifest: the file, the field and why.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: logdb.io/v1alpha1\nkind: LogVolume\nmetadata:\n  name: shop\nspec:\n  pageSize: 3000\n",
    )
    .unwrap();
    let err = refused(logdb(
        &dir,
        &["up", bad.to_str().unwrap(), "--bin-dir", bins],
    ));
    assert!(
        err.contains(&format!(
            "{}: spec.pageSize: 3000 is not a power of two between 4096 and 65536",
            bad.display()
        )),
        "{err}"
    );

    // The writer's port taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = refused(logdb(&dir, &["up", "--port", &port, "--bin-dir", bins]));
    assert!(
        err.contains(&format!(
            "port {port} on 127.0.0.1 (the read-write PostgreSQL endpoint) is taken"
        )),
        "{err}"
    );

    // The binaries missing.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = refused(logdb(
        &dir,
        &["up", "--port", "0", "--bin-dir", empty.to_str().unwrap()],
    ));
    assert!(err.contains("binary logdb-storage not found"), "{err}");

    // The data dir now holds volume "demo": a manifest of another volume is refused.
    let other = tmp.path().join("other.yaml");
    std::fs::write(
        &other,
        "apiVersion: logdb.io/v1alpha1\nkind: LogVolume\nmetadata:\n  name: shop\n",
    )
    .unwrap();
    let err = refused(logdb(
        &dir,
        &["up", other.to_str().unwrap(), "--bin-dir", bins],
    ));
    assert!(err.contains("holds volume \"demo\", not \"shop\""), "{err}");
}
