use std::collections::BTreeMap;

use super::*;

fn table() -> Table {
    Table::new(TableLimits {
        sessions_max: 1000,
        sessions_per_user_max: 4,
        nodes_max: 8,
        login_policy: LoginPolicy::SameDeviceKick,
    })
}

fn devices_of(table: &Table, user: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut devices: Vec<_> = table
        .sessions(user)
        .map(|s| (s.node.0, s.device.to_vec()))
        .collect();
    devices.sort();
    devices
}

#[test]
fn open_then_lookup_then_close() {
    let mut t = table();
    assert_eq!(
        t.open(b"alice", b"phone", 1, NodeId(1), 1),
        OpenOutcome::Added
    );
    assert_eq!(
        t.open(b"alice", b"desk", 2, NodeId(2), 2),
        OpenOutcome::Added
    );
    assert_eq!(
        devices_of(&t, b"alice"),
        [(1, b"phone".to_vec()), (2, b"desk".to_vec())]
    );
    assert_eq!(t.session_count(), 2);
    assert_eq!(t.user_count(), 1);

    assert_eq!(
        t.close(b"alice", b"phone", NodeId(1), 0),
        CloseOutcome::Removed
    );
    assert_eq!(devices_of(&t, b"alice"), [(2, b"desk".to_vec())]);
    assert_eq!(
        t.close(b"alice", b"desk", NodeId(2), 0),
        CloseOutcome::Removed
    );
    assert_eq!(t.sessions(b"alice").count(), 0);
    assert_eq!(t.user_count(), 0);
    assert_eq!(
        t.close(b"alice", b"desk", NodeId(2), 0),
        CloseOutcome::NotFound
    );
}

#[test]
fn same_device_on_another_node_replaces_it() {
    let mut t = table();
    t.open(b"bob", b"phone", 1, NodeId(1), 1);
    assert_eq!(
        t.open(b"bob", b"phone", 1, NodeId(3), 2),
        OpenOutcome::Replaced {
            previous_node: NodeId(1)
        }
    );
    assert_eq!(devices_of(&t, b"bob"), [(3, b"phone".to_vec())]);
    // The old node's late close must not remove the new session.
    assert_eq!(
        t.close(b"bob", b"phone", NodeId(1), 0),
        CloseOutcome::HeldByOtherNode
    );
    assert_eq!(t.node_session_count(NodeId(1)), 0);
    assert_eq!(t.node_session_count(NodeId(3)), 1);
    // Reopening on the same node refreshes.
    assert_eq!(
        t.open(b"bob", b"phone", 2, NodeId(3), 3),
        OpenOutcome::Refreshed
    );
    let session = t.sessions(b"bob").next().unwrap();
    assert_eq!((session.platform, session.seq), (2, 3));
}

#[test]
fn purge_removes_only_that_nodes_sessions() {
    let mut t = table();
    for i in 0..50u32 {
        let user = format!("user-{i}");
        t.open(user.as_bytes(), b"a", 0, NodeId(i % 3), u64::from(i));
        t.open(user.as_bytes(), b"b", 0, NodeId((i + 1) % 3), u64::from(i));
    }
    assert_eq!(t.session_count(), 100);
    let on_node_1 = t.node_session_count(NodeId(1));
    assert_eq!(t.purge_node(NodeId(1)), on_node_1);
    assert_eq!(t.session_count(), 100 - on_node_1);
    for i in 0..50u32 {
        let user = format!("user-{i}");
        assert!(t.sessions(user.as_bytes()).all(|s| s.node != NodeId(1)));
    }
    assert_eq!(t.purge_node(NodeId(1)), 0);
    t.purge_node(NodeId(0));
    t.purge_node(NodeId(2));
    assert_eq!(t.session_count(), 0);
    assert_eq!(t.user_count(), 0);
}

#[test]
fn limits_refuse_without_changing_anything() {
    let mut t = Table::new(TableLimits {
        sessions_max: 5,
        sessions_per_user_max: 2,
        nodes_max: 2,
        login_policy: LoginPolicy::SameDeviceKick,
    });
    assert_eq!(t.open(b"u", b"1", 0, NodeId(0), 0), OpenOutcome::Added);
    assert_eq!(t.open(b"u", b"2", 0, NodeId(0), 0), OpenOutcome::Added);
    assert_eq!(t.open(b"u", b"3", 0, NodeId(0), 0), OpenOutcome::UserFull);
    // Replacing an existing device is not a new session, so it is allowed.
    assert!(matches!(
        t.open(b"u", b"2", 0, NodeId(1), 0),
        OpenOutcome::Replaced { .. }
    ));
    t.open(b"v", b"1", 0, NodeId(0), 0);
    t.open(b"v", b"2", 0, NodeId(0), 0);
    t.open(b"w", b"1", 0, NodeId(0), 0);
    assert_eq!(t.session_count(), 5);
    assert_eq!(t.open(b"x", b"1", 0, NodeId(0), 0), OpenOutcome::TableFull);
    assert_eq!(t.open(b"w", b"2", 0, NodeId(0), 0), OpenOutcome::TableFull);
    assert_eq!(t.session_count(), 5);
    assert_eq!(t.sessions(b"x").count(), 0);
}

#[test]
fn long_ids_round_trip() {
    let mut t = table();
    let user = vec![b'u'; 255];
    let device = vec![b'd'; 128];
    t.open(&user, &device, 0, NodeId(0), 0);
    t.open(&user, b"short", 0, NodeId(0), 0);
    assert_eq!(
        devices_of(&t, &user),
        [(0, device.clone()), (0, b"short".to_vec())]
    );
    assert_eq!(t.close(&user, &device, NodeId(0), 0), CloseOutcome::Removed);
    t.purge_node(NodeId(0));
    assert_eq!(t.user_count(), 0);
}

/// A tiny deterministic generator, so the model test needs no dependency.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random opens, closes and purges against a `BTreeMap` model.
#[test]
fn matches_a_simple_model_under_random_operations() {
    let mut t = Table::new(TableLimits {
        sessions_max: 10_000,
        sessions_per_user_max: 3,
        nodes_max: 5,
        login_policy: LoginPolicy::SameDeviceKick,
    });
    // (user, device) -> node
    let mut model: BTreeMap<(Vec<u8>, Vec<u8>), u32> = BTreeMap::new();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for step in 0..20_000u64 {
        let user = if rng.below(10) == 0 {
            format!("a-rather-long-user-identifier-{}", rng.below(50)).into_bytes()
        } else {
            format!("u{}", rng.below(200)).into_bytes()
        };
        let device = format!("d{}", rng.below(4)).into_bytes();
        let node = rng.below(5) as u32;
        match rng.below(10) {
            0..=5 => {
                let count = model.keys().filter(|(u, _)| *u == user).count();
                let key = (user.clone(), device.clone());
                let expected = match model.get(&key) {
                    Some(&held) if held == node => OpenOutcome::Refreshed,
                    Some(&held) => OpenOutcome::Replaced {
                        previous_node: NodeId(held),
                    },
                    None if count >= 3 => OpenOutcome::UserFull,
                    None => OpenOutcome::Added,
                };
                assert_eq!(t.open(&user, &device, 0, NodeId(node), step), expected);
                if expected != OpenOutcome::UserFull {
                    model.insert(key, node);
                }
            }
            6..=8 => {
                let key = (user.clone(), device.clone());
                let expected = match model.get(&key) {
                    Some(&held) if held == node => CloseOutcome::Removed,
                    Some(_) => CloseOutcome::HeldByOtherNode,
                    None => CloseOutcome::NotFound,
                };
                assert_eq!(t.close(&user, &device, NodeId(node), 0), expected);
                if expected == CloseOutcome::Removed {
                    model.remove(&key);
                }
            }
            _ => {
                let expected = model.values().filter(|&&held| held == node).count();
                assert_eq!(t.purge_node(NodeId(node)), expected);
                model.retain(|_, held| *held != node);
            }
        }
        assert_eq!(t.session_count(), model.len());
    }
    for ((user, device), node) in &model {
        assert!(t
            .sessions(user)
            .any(|s| s.device == device.as_slice() && s.node == NodeId(*node)));
    }
    let users: std::collections::BTreeSet<_> = model.keys().map(|(u, _)| u.clone()).collect();
    assert_eq!(t.user_count(), users.len());
}

fn table_with(policy: LoginPolicy) -> Table {
    Table::new(TableLimits {
        sessions_max: 1000,
        sessions_per_user_max: 4,
        nodes_max: 8,
        login_policy: policy,
    })
}

fn evicted(t: &mut Table) -> Vec<(u32, Vec<u8>)> {
    let mut out: Vec<_> = t
        .drain_evicted()
        .map(|e| (e.node.0, e.device.to_vec()))
        .collect();
    out.sort();
    out
}

const MOBILE: u8 = 1;
const DESKTOP: u8 = 2;

#[test]
fn allow_all_keeps_the_same_device_on_two_nodes() {
    let mut t = table_with(LoginPolicy::AllowAll);
    assert_eq!(
        t.open(b"u", b"phone", MOBILE, NodeId(1), 1),
        OpenOutcome::Added
    );
    assert_eq!(
        t.open(b"u", b"phone", MOBILE, NodeId(2), 2),
        OpenOutcome::Added
    );
    assert_eq!(
        t.open(b"u", b"phone", MOBILE, NodeId(2), 3),
        OpenOutcome::Refreshed
    );
    assert!(evicted(&mut t).is_empty());
    assert_eq!(
        devices_of(&t, b"u"),
        [(1, b"phone".to_vec()), (2, b"phone".to_vec())]
    );
    // Each node closes its own.
    assert_eq!(t.close(b"u", b"phone", NodeId(1), 0), CloseOutcome::Removed);
    assert_eq!(devices_of(&t, b"u"), [(2, b"phone".to_vec())]);
    assert_eq!(
        t.close(b"u", b"phone", NodeId(1), 0),
        CloseOutcome::HeldByOtherNode
    );
}

#[test]
fn same_platform_kick_replaces_only_the_same_platform() {
    let mut t = table_with(LoginPolicy::SamePlatformKick);
    t.open(b"u", b"phone-a", MOBILE, NodeId(1), 1);
    t.open(b"u", b"laptop", DESKTOP, NodeId(1), 2);
    assert!(evicted(&mut t).is_empty());
    assert_eq!(
        t.open(b"u", b"phone-b", MOBILE, NodeId(2), 3),
        OpenOutcome::Added
    );
    assert_eq!(evicted(&mut t), [(1, b"phone-a".to_vec())]);
    assert_eq!(
        devices_of(&t, b"u"),
        [(1, b"laptop".to_vec()), (2, b"phone-b".to_vec())]
    );
    // The same device moving keeps the same-device rule.
    assert_eq!(
        t.open(b"u", b"laptop", DESKTOP, NodeId(3), 4),
        OpenOutcome::Replaced {
            previous_node: NodeId(1)
        }
    );
    assert!(evicted(&mut t).is_empty());
}

#[test]
fn single_session_replaces_every_other_session() {
    let mut t = table_with(LoginPolicy::SingleSession);
    t.open(b"u", b"a", MOBILE, NodeId(1), 1);
    assert_eq!(
        t.open(b"u", b"b", DESKTOP, NodeId(2), 2),
        OpenOutcome::Added
    );
    assert_eq!(evicted(&mut t), [(1, b"a".to_vec())]);
    assert_eq!(
        t.open(b"u", b"c", DESKTOP, NodeId(2), 3),
        OpenOutcome::Added
    );
    assert_eq!(evicted(&mut t), [(2, b"b".to_vec())]);
    assert_eq!(devices_of(&t, b"u"), [(2, b"c".to_vec())]);
    assert_eq!(t.session_count(), 1);
    assert_eq!(t.user_count(), 1);
    // Refreshing the one session evicts nothing.
    assert_eq!(
        t.open(b"u", b"c", DESKTOP, NodeId(2), 4),
        OpenOutcome::Refreshed
    );
    assert!(evicted(&mut t).is_empty());
}

#[test]
fn a_full_user_under_single_session_still_switches_devices() {
    // With room for one session per user, single-session replaces rather
    // than refusing; same-device-kick refuses.
    let limits = |policy| TableLimits {
        sessions_max: 10,
        sessions_per_user_max: 1,
        nodes_max: 4,
        login_policy: policy,
    };
    let mut t = Table::new(limits(LoginPolicy::SingleSession));
    t.open(b"u", b"a", MOBILE, NodeId(1), 1);
    assert_eq!(t.open(b"u", b"b", MOBILE, NodeId(1), 2), OpenOutcome::Added);
    assert_eq!(evicted(&mut t), [(1, b"a".to_vec())]);
    let mut t = Table::new(limits(LoginPolicy::SameDeviceKick));
    t.open(b"u", b"a", MOBILE, NodeId(1), 1);
    assert_eq!(
        t.open(b"u", b"b", MOBILE, NodeId(1), 2),
        OpenOutcome::UserFull
    );
    assert!(evicted(&mut t).is_empty());
}

#[test]
fn purging_a_node_after_evictions_leaves_a_consistent_table() {
    let mut t = table_with(LoginPolicy::SamePlatformKick);
    for i in 0..50u32 {
        let user = format!("user-{}", i % 7);
        let device = format!("d{}", i % 5);
        t.open(
            user.as_bytes(),
            device.as_bytes(),
            (i % 3) as u8,
            NodeId(i % 4),
            u64::from(i),
        );
        let _ = evicted(&mut t);
    }
    let total: usize = (0..4).map(|n| t.node_session_count(NodeId(n))).sum();
    assert_eq!(total, t.session_count());
    for node in 0..4 {
        t.purge_node(NodeId(node));
    }
    assert_eq!(t.session_count(), 0);
    assert_eq!(t.user_count(), 0);
}

#[test]
fn a_close_naming_an_older_open_is_stale() {
    let mut t = table();
    t.open(b"u", b"phone", MOBILE, NodeId(1), 5);
    assert_eq!(t.close(b"u", b"phone", NodeId(1), 4), CloseOutcome::Stale);
    assert_eq!(t.session_count(), 1);
    assert_eq!(t.close(b"u", b"phone", NodeId(1), 5), CloseOutcome::Removed);
    t.open(b"u", b"phone", MOBILE, NodeId(1), 6);
    assert_eq!(t.close(b"u", b"phone", NodeId(1), 0), CloseOutcome::Removed);
}
