//! The LogVolume CRD: `crds/logvolume.yaml` is what `logdb crd` prints, and its CEL rules —
//! compiled and evaluated here with the Kubernetes CEL library (`kube-cel`, quantity and string
//! extensions included, schema defaults applied first like the API server) — accept the example
//! manifests and reject bad ones with clear messages, including changes to immutable fields.

use logdb_operator::crd;

fn manifest(yaml: &str) -> serde_json::Value {
    serde_yaml::from_str(yaml).expect("test manifest is YAML")
}

fn messages(object: &serde_json::Value, old: Option<&serde_json::Value>) -> Vec<String> {
    match kube_cel::validate(&crd::schema(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| e.to_string())
            .collect(),
    }
}

fn with_spec(spec: &str) -> serde_json::Value {
    manifest(&format!(
        "apiVersion: logdb.io/v1alpha1\nkind: LogVolume\nmetadata:\n  name: v\nspec:\n{spec}"
    ))
}

#[test]
fn the_checked_in_crd_is_current() {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/logvolume.yaml"
    ))
    .expect("crds/logvolume.yaml");
    assert!(
        file == crd::yaml(),
        "crds/logvolume.yaml is stale: run `cargo run -p logdb-operator --bin logdb -- crd > crds/logvolume.yaml`"
    );
}

#[test]
fn the_examples_pass_every_rule() {
    // Every example but local.yaml (sized for one machine: its 64Mi segments are below the
    // Kubernetes minimum, which the local-mode test covers).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "local.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let m = manifest(&text);
        assert_eq!(
            messages(&m, None),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
        let origin = path.display().to_string();
        logdb_operator::manifest::parse(&text, &origin, logdb_operator::spec::Target::Kubernetes)
            .unwrap();
        checked += 1;
    }
    assert!(checked >= 1);
    let local = manifest(include_str!("../../examples/local.yaml"));
    assert!(messages(&local, None)
        .iter()
        .any(|m| m.contains("segmentSize must be a quantity of at least 1Gi")));
    // A minimal manifest takes every default and passes.
    assert_eq!(
        messages(&with_spec("  replicas: 2\n"), None),
        Vec::<String>::new()
    );
}

#[test]
fn bad_manifests_are_rejected_with_the_rule_message() {
    let cases = [
        (
            "  pageSize: 5000\n",
            "pageSize must be a power of two from 4096 to 65536",
        ),
        ("  replicas: 16\n", "replicas must be between 0 and 15"),
        (
            "  segmentSize: 64Mi\n",
            "segmentSize must be a quantity of at least 1Gi",
        ),
        (
            "  segmentSize: lots\n",
            "segmentSize must be a quantity of at least 1Gi",
        ),
        (
            "  maxSize: 5Gi\n  segmentSize: 10Gi\n",
            "maxSize must be at least one segment",
        ),
        ("  retention: soon\n", "retention must be a duration"),
        (
            "  writeRate: fast\n",
            "writeRate must be a positive quantity",
        ),
        (
            "  writeRate: \"0\"\n",
            "writeRate must be a positive quantity",
        ),
        ("  zones: [a, b]\n", "zones must be exactly three distinct"),
        (
            "  zones: [a, b, a]\n",
            "zones must be exactly three distinct",
        ),
    ];
    for (spec, want) in cases {
        let got = messages(&with_spec(spec), None);
        assert!(got.iter().any(|m| m.contains(want)), "{spec:?}: {got:?}");
    }
}

#[test]
fn immutable_fields_cannot_change() {
    let old =
        with_spec("  pageSize: 8192\n  segmentSize: 10Gi\n  zones: [a, b, c]\n  replicas: 1\n");
    let grown =
        with_spec("  pageSize: 8192\n  segmentSize: 10Gi\n  zones: [a, b, c]\n  replicas: 3\n");
    assert_eq!(
        messages(&grown, Some(&old)),
        Vec::<String>::new(),
        "replicas may change"
    );
    for (spec, want) in [
        (
            "  pageSize: 16384\n  segmentSize: 10Gi\n  zones: [a, b, c]\n",
            "pageSize is immutable",
        ),
        (
            "  pageSize: 8192\n  segmentSize: 20Gi\n  zones: [a, b, c]\n",
            "segmentSize is immutable",
        ),
        (
            "  pageSize: 8192\n  segmentSize: 10Gi\n  zones: [a, b, d]\n",
            "zones are immutable",
        ),
        (
            "  pageSize: 8192\n  segmentSize: 10Gi\n  zones: [a, b, c]\n  writeRate: 1Mi\n",
            "writeRate can only be set when the LogVolume is created",
        ),
    ] {
        let got = messages(&with_spec(spec), Some(&old));
        assert!(got.iter().any(|m| m.contains(want)), "{spec:?}: {got:?}");
    }
    // Stated at creation, a write rate cannot change or go away.
    let rated = with_spec("  zones: [a, b, c]\n  writeRate: 1Mi\n");
    assert_eq!(
        messages(&rated, Some(&rated)),
        Vec::<String>::new(),
        "an unchanged rate passes"
    );
    let got = messages(
        &with_spec("  zones: [a, b, c]\n  writeRate: 2Mi\n"),
        Some(&rated),
    );
    assert!(
        got.iter().any(|m| m.contains("writeRate is immutable")),
        "{got:?}"
    );
    let got = messages(&with_spec("  zones: [a, b, c]\n"), Some(&rated));
    assert!(
        got.iter()
            .any(|m| m.contains("writeRate can only be set when")),
        "{got:?}"
    );
}
