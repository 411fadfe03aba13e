//! The objects a LogVolume becomes, as pure functions of its spec: compared with a golden file
//! (`LOGDB_UPDATE_GOLDEN=1` rewrites it after an intended change), and checked for what matters
//! — six zone-pinned storage sets, anti-affinity between the two of a zone, PVCs sized for a
//! segment, the compute set, services and budgets, every object owned by the LogVolume.

use logdb_operator::manifest;
use logdb_operator::objects::{desired, Desired, Settings};
use logdb_operator::spec::{LogVolume, Target};

fn example() -> LogVolume {
    let text = include_str!("../../examples/logvolume.yaml");
    let mut lv = manifest::parse(text, "example", Target::Kubernetes).unwrap();
    lv.metadata.namespace = Some("shop".into());
    lv.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
    lv
}

fn settings() -> Settings {
    Settings {
        image: "ghcr.io/logdb/logdb:0.1.0".into(),
        config_store: vec!["logdb-operator-0.logdb-operator.logdb-system.svc:7400".into()],
        storage_class: None,
        operator_namespace: "logdb-system".into(),
    }
}

fn render(pgs: u32) -> Desired {
    desired(&example(), &settings(), pgs).unwrap()
}

#[test]
fn matches_the_golden_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/orders.yaml");
    let got = render(1).to_yaml();
    if std::env::var_os("LOGDB_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &got).unwrap();
    }
    let want =
        std::fs::read_to_string(path).expect("golden file (LOGDB_UPDATE_GOLDEN=1 writes it)");
    assert!(
        got == want,
        "objects differ from {path}; LOGDB_UPDATE_GOLDEN=1 rewrites it after an intended change"
    );
}

#[test]
fn six_storage_sets_pinned_two_per_zone() {
    let d = render(3);
    assert_eq!(d.storage.len(), 6);
    let zones: Vec<String> = d
        .storage
        .iter()
        .map(|s| {
            let aff = s
                .spec
                .template
                .spec
                .as_ref()
                .unwrap()
                .affinity
                .as_ref()
                .unwrap();
            let term = &aff
                .node_affinity
                .as_ref()
                .unwrap()
                .required_during_scheduling_ignored_during_execution
                .as_ref()
                .unwrap()
                .node_selector_terms[0];
            let req = &term.match_expressions.as_ref().unwrap()[0];
            assert_eq!(req.key, "topology.kubernetes.io/zone");
            let anti = aff
                .pod_anti_affinity
                .as_ref()
                .unwrap()
                .required_during_scheduling_ignored_during_execution
                .as_ref()
                .unwrap();
            assert_eq!(anti[0].topology_key, "kubernetes.io/hostname");
            assert_eq!(
                anti[0].match_label_keys.as_deref(),
                Some(&["apps.kubernetes.io/pod-index".to_string()][..])
            );
            assert_eq!(s.spec.replicas, Some(3), "one pod per PG");
            let pvc = &s.spec.volume_claim_templates.as_ref().unwrap()[0];
            let size = &pvc
                .spec
                .as_ref()
                .unwrap()
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"];
            assert_eq!(
                size.0,
                ((10u64 << 30) + (10u64 << 30) / 4).to_string(),
                "a segment plus headroom"
            );
            req.values.as_ref().unwrap()[0].clone()
        })
        .collect();
    assert_eq!(
        zones,
        [
            "eu-west-1a",
            "eu-west-1a",
            "eu-west-1b",
            "eu-west-1b",
            "eu-west-1c",
            "eu-west-1c"
        ]
    );
    let names: Vec<&str> = d
        .storage
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "orders-storage-a1",
            "orders-storage-a2",
            "orders-storage-b1",
            "orders-storage-b2",
            "orders-storage-c1",
            "orders-storage-c2"
        ]
    );
}

#[test]
fn compute_services_budgets_and_owners() {
    let d = render(1);
    assert_eq!(
        d.compute.spec.replicas,
        Some(3),
        "the writer and two replicas"
    );
    let svc: Vec<&str> = d
        .services
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(
        svc,
        ["orders-storage", "orders-compute", "orders-rw", "orders-ro"]
    );
    let rw = d.services[2]
        .spec
        .as_ref()
        .unwrap()
        .selector
        .as_ref()
        .unwrap();
    assert_eq!(rw["logdb.io/role"], "writer");
    let ro = d.services[3]
        .spec
        .as_ref()
        .unwrap()
        .selector
        .as_ref()
        .unwrap();
    assert_eq!(ro["logdb.io/role"], "replica");
    assert_eq!(d.budgets.len(), 2);
    let yaml = d.to_yaml();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    assert_eq!(
        docs.len(),
        1 + 6 + 1 + 4 + 2 + 2,
        "config, storage, compute, services, budgets, policies"
    );
    for doc in &docs {
        let owner = &doc["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "LogVolume", "{doc:?}");
        assert_eq!(owner["controller"], true);
        assert_eq!(doc["metadata"]["namespace"], "shop");
    }
}

#[test]
fn an_invalid_spec_makes_no_objects() {
    let mut lv = example();
    lv.spec.page_size = 5000;
    let err = desired(&lv, &settings(), 1).unwrap_err();
    assert!(err.starts_with("spec.pageSize: 5000"), "{err}");
}

#[test]
fn network_policies_let_only_the_volumes_own_pods_reach_its_internal_ports() {
    let d = render(1);
    let v = serde_json::to_value(&d.policies).unwrap();
    let by_name = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["name"] == n)
            .unwrap()
            .clone()
    };
    // Who may reach `port` of the pods of `policy` (`None`: anyone).
    let sources = |policy: &serde_json::Value, port: i64| -> Option<Vec<String>> {
        let rule = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| {
                r["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port)
            })
            .unwrap_or_else(|| panic!("no rule for port {port}"));
        rule["from"].as_array().map(|from| {
            from.iter()
                .map(|peer| {
                    let pods = &peer["podSelector"]["matchLabels"];
                    let ns = peer["namespaceSelector"]["matchLabels"]
                        ["kubernetes.io/metadata.name"]
                        .as_str();
                    match ns {
                        Some(ns) => {
                            format!("{ns}/{}", pods["app.kubernetes.io/name"].as_str().unwrap())
                        }
                        None => format!(
                            "{}-{}",
                            pods["app.kubernetes.io/instance"].as_str().unwrap(),
                            pods["app.kubernetes.io/component"].as_str().unwrap()
                        ),
                    }
                })
                .collect()
        })
    };
    let storage = by_name("orders-storage");
    assert_eq!(
        storage["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "storage"
    );
    assert_eq!(
        storage["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    assert_eq!(
        sources(&storage, 7600),
        Some(vec![
            "orders-compute".into(),
            "orders-storage".into(),
            "logdb-system/logdb-operator".into()
        ])
    );
    assert_eq!(
        sources(&storage, 9600),
        None,
        "metrics: anyone (Prometheus)"
    );
    let compute = by_name("orders-compute");
    assert_eq!(
        sources(&compute, 5432),
        None,
        "clients reach the PostgreSQL port"
    );
    assert_eq!(
        sources(&compute, 7500),
        Some(vec![
            "orders-compute".into(),
            "logdb-system/logdb-operator".into()
        ]),
        "the record feed: only the volume's compute pods"
    );
    assert_eq!(d.policies.len(), 2);
}

#[test]
fn parts_get_their_peer_certificates_and_require_tls_refuses_plaintext_clients() {
    let d = render(1);
    let args = |c: &k8s_openapi::api::core::v1::Container| c.args.clone().unwrap_or_default();
    let compute = &d.compute.spec.template.spec.as_ref().unwrap().containers[0];
    let storage = &d.storage[0].spec.template.spec.as_ref().unwrap().containers[0];
    for (c, part) in [(compute, "compute"), (storage, "storage")] {
        let a = args(c);
        for flag in [
            "--peer-ca=/etc/logdb/peer/ca.crt".to_string(),
            format!("--peer-cert=/etc/logdb/peer/{part}.crt"),
            format!("--peer-key=/etc/logdb/peer/{part}.key"),
        ] {
            assert!(a.contains(&flag), "{part}: {a:?}");
        }
        assert!(!a.iter().any(|f| f == "--insecure"), "{part}: {a:?}");
        let mounts = c.volume_mounts.clone().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.name == "peer-tls" && m.read_only == Some(true)));
    }
    for (set, part) in d
        .storage
        .iter()
        .map(|s| (s, "storage"))
        .chain([(&d.compute, "compute")])
    {
        let volumes = set.spec.template.spec.as_ref().unwrap().volumes.clone();
        let secret = volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "peer-tls")
            .and_then(|v| v.secret)
            .unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("orders-peer-tls"));
        assert_eq!(secret.default_mode, Some(0o440));
        // Each part mounts its own key only.
        let keys: Vec<String> = secret.items.unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(
            keys,
            [
                "ca.crt".to_string(),
                format!("{part}.crt"),
                format!("{part}.key")
            ]
        );
    }
    assert!(
        !args(compute).iter().any(|f| f == "--require-tls"),
        "plaintext clients are let in by default"
    );
    let mut lv = example();
    lv.spec.require_tls = true;
    let d = desired(&lv, &settings(), 1).unwrap();
    let compute = &d.compute.spec.template.spec.as_ref().unwrap().containers[0];
    assert!(args(compute).iter().any(|f| f == "--require-tls"));
}
