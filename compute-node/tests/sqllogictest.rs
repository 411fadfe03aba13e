//! SQLite's own sqllogictest files through the PostgreSQL wire: logdb's engine is SQLite, so every
//! answer must match what SQLite's runner recorded — a check of the wire layer (types, NULLs, text
//! formatting, errors) and of everything between it and SQLite, against a real writer shipping to
//! six storage nodes.
//!
//! The files are not part of this repository (their licence is the suite's): the test reads them
//! from the directory in `LOGDB_SQLLOGICTEST_DIR` (`.ci/run` points it at its copy and the test
//! then must find them), and says so and checks nothing when the variable is unset.

mod common;

use std::path::{Path, PathBuf};

use common::{Cluster, Writer};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

/// One PostgreSQL connection, answering as SQLite's runner formats values: NULL as `NULL`, an
/// empty string as `(empty)`, everything else as the server's text.
struct Wire {
    client: tokio_postgres::Client,
}

#[async_trait::async_trait]
impl AsyncDB for Wire {
    type Error = tokio_postgres::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Self::Error> {
        use tokio_postgres::SimpleQueryMessage as M;
        let mut rows = Vec::new();
        let mut columns = None;
        let mut count = 0;
        for message in self.client.simple_query(sql).await? {
            match message {
                M::RowDescription(cols) => columns = Some(cols.len()),
                M::Row(row) => rows.push(
                    (0..row.len())
                        .map(|i| match row.get(i) {
                            None => "NULL".to_string(),
                            Some("") => "(empty)".to_string(),
                            Some(v) => v.to_string(),
                        })
                        .collect(),
                ),
                M::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        Ok(match columns {
            Some(n) => DBOutput::Rows {
                types: vec![DefaultColumnType::Any; n],
                rows,
            },
            None => DBOutput::StatementComplete(count),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "logdb"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await
    }
}

/// A file as SQLite's runner conventions need it here: hash results past 8 values, compare
/// value by value, and no trailing comments on `skipif`/`onlyif` lines.
fn prepared(text: &str) -> String {
    let mut out = String::from("hash-threshold 8\ncontrol resultmode valuewise\n");
    for line in text.lines() {
        let conditional = line.starts_with("skipif ") || line.starts_with("onlyif ");
        match line.find('#') {
            Some(i) if conditional => out.push_str(line[..i].trim_end()),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![dir.join("select1.test")];
    let mut evidence: Vec<PathBuf> = std::fs::read_dir(dir.join("evidence"))
        .unwrap_or_else(|e| panic!("{}/evidence: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    evidence.sort();
    files.extend(evidence);
    for f in &files {
        assert!(f.is_file(), "{} is missing", f.display());
    }
    files
}

/// Drops every view and table (their indexes and triggers go with them): the next file starts
/// on an empty schema.
async fn empty_schema(client: &tokio_postgres::Client) {
    for kind in ["view", "table"] {
        let names: Vec<String> = client
            .query(
                "SELECT name FROM sqlite_master WHERE type = $1 AND name NOT LIKE 'sqlite_%'",
                &[&kind],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for name in names {
            client
                .batch_execute(&format!("DROP {kind} \"{name}\""))
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sqllogictest_files_pass_through_the_wire() {
    let Some(dir) = std::env::var_os("LOGDB_SQLLOGICTEST_DIR") else {
        eprintln!("LOGDB_SQLLOGICTEST_DIR is not set: SQLite's sqllogictest files not run");
        return;
    };
    let files = test_files(Path::new(&dir));
    assert!(files.len() >= 13, "{} files", files.len());
    let cluster = Cluster::start(1, 8192);
    let writer = Writer::start(&cluster.layout_path);
    let admin = writer.client().await;
    let mut failures = Vec::new();
    for file in &files {
        empty_schema(&admin).await;
        let script = prepared(&std::fs::read_to_string(file).unwrap());
        let port = writer.port;
        let mut runner = Runner::new(move || async move {
            let (client, conn) = tokio_postgres::connect(
                &format!(
                    "host=127.0.0.1 port={port} user=logdb password={} dbname=vol1",
                    common::PASSWORD
                ),
                tokio_postgres::NoTls,
            )
            .await?;
            tokio::spawn(conn);
            Ok(Wire { client })
        });
        runner.add_label("sqlite");
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if let Err(e) = runner.run_script_async(&script).await {
            failures.push(format!("{name}: {e}"));
        }
        eprintln!("sqllogictest {name}: done");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
