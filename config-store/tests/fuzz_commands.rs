//! What every config store request becomes — a command its state machine validates and
//! applies — under arbitrary input (proptest): names of any shape, sizes and page sizes at
//! their extremes, zones, pools, epochs, in any order. Applying never panics, refuses what is
//! invalid with a message, never lets a volume's epoch go back, and is deterministic (two
//! members applying the same log reach the same state, as raft needs).

use logdb_config_store::command::Command;
use logdb_config_store::model::VolumeSpec;
use logdb_config_store::state::State;
use logdb_types::Epoch;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        // Names that collide, so commands meet existing nodes and volumes.
        prop::sample::select(vec!["a1", "a2", "b1", "b2", "c1", "c2", "v", "w"])
            .prop_map(String::from),
        // And anything at all.
        ".{0,80}",
    ]
}

fn big() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(1 << 30),
        Just(10 << 30),
        any::<u64>()
    ]
}

fn spec() -> impl Strategy<Value = VolumeSpec> {
    (
        prop_oneof![Just(8192u32), Just(0), Just(512), any::<u32>()],
        big(),
        big(),
        prop_oneof![Just(1u32), Just(0), any::<u32>()],
        big(),
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "c", "d", ""]).prop_map(String::from),
            0..5,
        ),
        prop_oneof![Just(String::new()), name()],
    )
        .prop_map(
            |(page_size, segment_size, max_size, replicas, retention_secs, zones, pool)| {
                VolumeSpec {
                    page_size,
                    segment_size,
                    max_size,
                    replicas,
                    retention_secs,
                    zones,
                    pool,
                }
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (
            name(),
            prop::sample::select(vec!["a", "b", "c", ""]),
            name(),
            big(),
            big(),
            prop_oneof![Just(String::new()), name()]
        )
            .prop_map(|(id, zone, address, capacity_bytes, now_ms, pool)| {
                Command::RegisterNode {
                    id,
                    zone: zone.into(),
                    address,
                    capacity_bytes,
                    now_ms,
                    pool,
                }
            }),
        (name(), big()).prop_map(|(id, now_ms)| Command::Heartbeat { id, now_ms }),
        (name(), spec(), big()).prop_map(|(name, spec, now_ms)| Command::CreateVolume {
            name,
            spec,
            now_ms
        }),
        name().prop_map(|name| Command::DeleteVolume { name }),
        (
            name(),
            name(),
            prop_oneof![Just(0u64), Just(1), any::<u64>()]
        )
            .prop_map(|(volume, writer, e)| Command::AcquireTicket {
                volume,
                writer,
                known_epoch: Epoch(e)
            }),
        (name(), big(), big()).prop_map(|(volume, used_bytes, now_ms)| Command::ReportUsage {
            volume,
            used_bytes,
            now_ms
        }),
        (name(), name(), name(), name()).prop_map(
            |(volume, id, pg_address, replication_address)| {
                Command::RegisterCompute {
                    volume,
                    id,
                    pg_address,
                    replication_address,
                }
            }
        ),
        (name(), prop::option::of(name()))
            .prop_map(|(volume, target)| Command::Failover { volume, target }),
        (
            name(),
            any::<u32>(),
            name(),
            prop::option::of(name()),
            big()
        )
            .prop_map(
                |(volume, pg, old_node, new_node, now_ms)| Command::ReplaceMember {
                    volume,
                    pg,
                    old_node,
                    new_node,
                    now_ms
                }
            ),
    ]
}

/// Six healthy nodes in three zones, so a valid CreateVolume can succeed.
fn seeded() -> State {
    let mut s = State::default();
    for zone in ["a", "b", "c"] {
        for n in 1..=2 {
            s.apply(Command::RegisterNode {
                id: format!("{zone}{n}"),
                zone: zone.into(),
                address: format!("10.0.0.{n}:7600"),
                capacity_bytes: 1 << 40,
                now_ms: 1_000,
                pool: String::new(),
            })
            .unwrap();
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_command_sequence_is_validated_never_panics_and_is_deterministic(
        cmds in prop::collection::vec(command(), 1..40)
    ) {
        let mut a = seeded();
        let mut b = seeded();
        for cmd in cmds {
            let before: Vec<(String, Epoch)> =
                a.volumes.iter().map(|(k, v)| (k.clone(), v.epoch)).collect();
            let ra = a.apply(cmd.clone());
            let rb = b.apply(cmd);
            prop_assert_eq!(&ra, &rb, "two members answered the same command differently");
            if let Err(e) = &ra {
                prop_assert!(!e.to_string().is_empty());
            }
            for (name, epoch) in before {
                if let Some(v) = a.volumes.get(&name) {
                    prop_assert!(v.epoch >= epoch, "volume {}'s epoch went back", name);
                }
            }
        }
        prop_assert_eq!(&a, &b);
    }
}

#[test]
fn the_seeded_state_takes_a_valid_volume_so_the_sequences_reach_real_ones() {
    let mut s = seeded();
    s.apply(Command::CreateVolume {
        name: "v".into(),
        spec: VolumeSpec {
            page_size: 8192,
            segment_size: 10 << 30,
            max_size: 128 << 40,
            replicas: 1,
            retention_secs: 3600,
            zones: vec!["a".into(), "b".into(), "c".into()],
            pool: String::new(),
        },
        now_ms: 1_000,
    })
    .unwrap();
    let t = s
        .apply(Command::AcquireTicket {
            volume: "v".into(),
            writer: "w".into(),
            known_epoch: Epoch(0),
        })
        .unwrap();
    assert!(matches!(t, logdb_config_store::Response::Ticket { epoch, .. } if epoch > Epoch(0)));
}
