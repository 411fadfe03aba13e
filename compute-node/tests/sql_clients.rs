//! The writer as PostgreSQL clients see it, with real processes: psql and tokio-postgres against
//! `logdb-compute`, which ships to six real storage nodes. SQL round trips (simple and extended
//! query, `$1` parameters, transactions), SQLSTATE codes for bad SQL and constraint violations,
//! password authentication, and a restarted writer that reads everything back.

mod common;

use common::{Cluster, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_a_driver_round_trip_with_sqlstates() {
    let cluster = Cluster::start(2, 512);
    let mut writer = Writer::start(&cluster.layout_path);

    assert_eq!(writer.psql("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL UNIQUE, balance INTEGER NOT NULL)").unwrap(), "");
    writer
        .psql("INSERT INTO accounts VALUES (1, 'ada', 100), (2, 'bob', 50)")
        .unwrap();
    assert_eq!(
        writer
            .psql("SELECT owner, balance FROM accounts ORDER BY id")
            .unwrap(),
        "ada|100\nbob|50\n"
    );
    let err = writer.psql("SELEC 1").unwrap_err();
    assert!(err.contains("syntax error"), "{err}");

    let client = writer.client().await;
    // Extended query with $n parameters, typed by the client.
    let stmt = client
        .prepare_typed(
            "INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, $3)",
            &[
                tokio_postgres::types::Type::INT8,
                tokio_postgres::types::Type::TEXT,
                tokio_postgres::types::Type::INT8,
            ],
        )
        .await
        .unwrap();
    for i in 3..53i64 {
        assert_eq!(
            client
                .execute(&stmt, &[&i, &format!("user{i}"), &(i * 10)])
                .await
                .unwrap(),
            1
        );
    }
    let rows = client
        .query(
            "SELECT id, owner, balance FROM accounts WHERE id = $1",
            &[&"7"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].get::<_, i64>(0),
            rows[0].get::<_, String>(1),
            rows[0].get::<_, i64>(2)
        ),
        (7, "user7".to_string(), 70)
    );

    // Transactions: commit and rollback.
    client.batch_execute("BEGIN; UPDATE accounts SET balance = balance - 30 WHERE id = 1; UPDATE accounts SET balance = balance + 30 WHERE id = 2; COMMIT").await.unwrap();
    client
        .batch_execute("BEGIN; DELETE FROM accounts; ROLLBACK")
        .await
        .unwrap();
    // Expressions without a declared type reach typed drivers as text (count(...) as bigint).
    let total: i64 = client
        .query_one("SELECT sum(balance) FROM accounts", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    assert_eq!(total, 150 + (3..53).map(|i| i * 10).sum::<i64>());

    // SQLSTATEs, and the session stays usable after each error.
    let cases = [
        ("SELEC 1", "42601"),
        ("INSERT INTO accounts VALUES (1, 'dup', 0)", "23505"),
        ("INSERT INTO accounts VALUES (99, NULL, 0)", "23502"),
        ("SELECT * FROM nope", "42P01"),
        ("SELECT nope FROM accounts", "42703"),
    ];
    for (sql, code) in cases {
        let err = client.batch_execute(sql).await.unwrap_err();
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{sql}: {err:?}"));
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
        let n: i64 = client
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 52, "session usable after {sql}");
    }

    // Wrong password is refused.
    let bad = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=logdb password=wrong dbname=vol1",
            writer.port
        ),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(bad.is_err(), "a wrong password must be refused");

    // The writer dies; a new one reads everything back from storage.
    drop(client);
    writer.kill9();
    let writer = Writer::start(&cluster.layout_path);
    assert_eq!(
        writer
            .psql("SELECT count(*), sum(balance) FROM accounts")
            .unwrap(),
        format!("52|{total}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_could_break_durability_or_leave_the_volume_are_refused() {
    let cluster = Cluster::start(1, 512);
    let mut writer = Writer::start(&cluster.layout_path);
    let c = writer.client().await;
    c.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX tv ON t(v)")
        .await
        .unwrap();
    let refused = [
        (
            "PRAGMA synchronous=OFF",
            "PRAGMA synchronous = OFF is not allowed",
        ),
        (
            "pragma Synchronous = 0",
            "PRAGMA synchronous = 0 is not allowed",
        ),
        (
            "/* quiet */ PRAGMA main.journal_mode = OFF",
            "PRAGMA journal_mode = OFF",
        ),
        (
            "PRAGMA locking_mode=EXCLUSIVE",
            "PRAGMA locking_mode = EXCLUSIVE",
        ),
        (
            "PRAGMA writable_schema=ON",
            "PRAGMA writable_schema is not allowed",
        ),
        (
            "PRAGMA temp_store_directory='/tmp'",
            "PRAGMA temp_store_directory is not allowed",
        ),
        ("PRAGMA mmap_size=268435456", "PRAGMA mmap_size = 268435456"),
        ("PRAGMA cache_size=-1000000", "PRAGMA cache_size = -1000000"),
        (
            "SELECT 1; PRAGMA synchronous=OFF",
            "PRAGMA synchronous = OFF",
        ),
        (
            "ATTACH 'other.db' AS o",
            "ATTACH \"other.db\" is not allowed",
        ),
        (
            "attach 'file:/tmp/x.db?vfs=unix' as o",
            "ATTACH \"file:/tmp/x.db?vfs=unix\"",
        ),
        (
            "VACUUM INTO '/tmp/logdb-copy.db'",
            "VACUUM INTO is not allowed",
        ),
        (
            "-- copy\nvacuum main\ninto 'file:/tmp/c.db'",
            "VACUUM INTO is not allowed",
        ),
        (
            "SELECT load_extension('/tmp/evil.so')",
            "load_extension() is not allowed",
        ),
        // A file named by an expression reaches the authorizer without its name.
        (
            "ATTACH 'file:/tmp/x.db?vfs=unix' || '' AS o",
            "ATTACH of a file named by an expression",
        ),
    ];
    for (sql, want) in refused {
        let err = c.batch_execute(sql).await.unwrap_err();
        let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().code(), "42501", "{sql}: {}", db.message());
        assert!(db.message().contains(want), "{sql}: {}", db.message());
    }
    // Through psql too (its own path: the simple query protocol), with the same message.
    let err = writer.psql("PRAGMA synchronous=OFF").unwrap_err();
    assert!(
        err.contains("PRAGMA synchronous = OFF is not allowed"),
        "{err}"
    );

    // Reporting pragmas, session settings and reads of the settings keep working.
    for sql in [
        "PRAGMA table_info(t)",
        "PRAGMA index_list(t)",
        "PRAGMA foreign_keys = ON",
        "PRAGMA integrity_check",
        "PRAGMA user_version = 3",
        "PRAGMA synchronous",
        "SELECT name FROM pragma_table_info('t')",
        "VACUUM",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let rows = c.simple_query("PRAGMA user_version").await.unwrap();
    let v = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(v.as_deref(), Some("3"));

    // The durability check: a session that asked for synchronous=OFF commits durably anyway —
    // its refused batch ran nothing, and what it commits after survives a kill -9.
    let err = c
        .batch_execute("PRAGMA synchronous=OFF; CREATE TABLE lost (x)")
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    c.batch_execute("CREATE TABLE kept (x); INSERT INTO kept VALUES (1)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    drop(c);
    writer.kill9();
    let writer = Writer::start(&cluster.layout_path);
    let c = writer.client().await;
    let names: Vec<String> = c
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["kept", "t"]);
    let n: i64 = c
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
