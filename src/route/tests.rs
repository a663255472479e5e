use std::collections::HashMap;

use super::*;
use crate::table::{LoginPolicy, TableLimits};

#[derive(Default)]
struct FakeNodes(HashMap<NodeId, Destination>);

impl Nodes for FakeNodes {
    fn destination(&mut self, node: NodeId) -> Destination {
        self.0.get(&node).copied().unwrap_or(Destination::Gone)
    }
}

#[derive(Default, Debug)]
struct Recorded {
    delivers: Vec<(NodeId, usize, Vec<Vec<u8>>, Plan)>,
    statuses: Vec<(u64, fb::Verdict, fb::Reason)>,
}

impl Effects for Recorded {
    fn deliver(
        &mut self,
        node: NodeId,
        shard: usize,
        _epoch: u32,
        _sender: Sender,
        _message: &Message<'_>,
        devices: &[&[u8]],
        plan: Plan,
    ) {
        let mut devices: Vec<Vec<u8>> = devices.iter().map(|d| d.to_vec()).collect();
        devices.sort();
        self.delivers.push((node, shard, devices, plan));
    }

    fn status(
        &mut self,
        _sender: Sender,
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
    ) {
        self.statuses.push((message_id, verdict, reason));
    }
}

const SENDER: Sender = Sender {
    shard: 0,
    node: NodeId(9),
    epoch: 1,
    stream: 1,
};

fn message(to_user: &'static str, to_device: Option<&'static str>, flags: u32) -> Message<'static> {
    Message {
        message_id: 42,
        from_user: "alice",
        from_device: "phone",
        to_user,
        to_device,
        flags,
        payload: b"hello",
    }
}

fn setup() -> (Table, FakeNodes) {
    let mut table = Table::new(TableLimits {
        sessions_max: 100,
        sessions_per_user_max: 8,
        nodes_max: 10,
        login_policy: LoginPolicy::SameDeviceKick,
    });
    table.open(b"bob", b"phone", 1, NodeId(1), 1);
    table.open(b"bob", b"desk", 2, NodeId(2), 2);
    table.open(b"bob", b"web", 3, NodeId(2), 3);
    let mut nodes = FakeNodes::default();
    nodes
        .0
        .insert(NodeId(1), Destination::Deliver { shard: 1, epoch: 1 });
    nodes
        .0
        .insert(NodeId(2), Destination::Deliver { shard: 0, epoch: 1 });
    (table, nodes)
}

const PLAN_2: Plan = Plan {
    fanout: 2,
    wants_ack: false,
    busy_seen: false,
};

#[test]
fn one_deliver_per_node_listing_its_devices() {
    let (table, mut nodes) = setup();
    let mut effects = Recorded::default();
    let outcome = route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("bob", None, 0),
    );
    assert_eq!(
        outcome,
        Outcome {
            delivers: 2,
            immediate: None
        }
    );
    effects.delivers.sort_by_key(|d| d.0);
    assert_eq!(
        effects.delivers,
        [
            (NodeId(1), 1, vec![b"phone".to_vec()], PLAN_2),
            (
                NodeId(2),
                0,
                vec![b"desk".to_vec(), b"web".to_vec()],
                PLAN_2
            ),
        ]
    );
    assert!(
        effects.statuses.is_empty(),
        "the destinations report, not the owner"
    );
}

#[test]
fn the_plan_carries_the_ack_flag() {
    let (table, mut nodes) = setup();
    let mut effects = Recorded::default();
    route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("bob", None, ROUTE_FLAG_ACK),
    );
    assert!(effects.delivers.iter().all(|d| d.3.wants_ack));
}

#[test]
fn to_device_reaches_only_that_device() {
    let (table, mut nodes) = setup();
    let mut effects = Recorded::default();
    route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("bob", Some("web"), 0),
    );
    let plan = Plan {
        fanout: 1,
        ..PLAN_2
    };
    assert_eq!(
        effects.delivers,
        [(NodeId(2), 0, vec![b"web".to_vec()], plan)]
    );
}

#[test]
fn offline_is_answered_at_once() {
    let (table, mut nodes) = setup();
    let mut effects = Recorded::default();
    route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("carol", None, 0),
    );
    route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("bob", Some("watch"), 0),
    );
    assert!(effects.delivers.is_empty());
    assert_eq!(
        effects.statuses,
        [
            (42, fb::Verdict::Offline, fb::Reason::NoSession),
            (42, fb::Verdict::Offline, fb::Reason::NoSuchDevice),
        ]
    );
}

#[test]
fn sessions_of_gone_nodes_count_as_offline() {
    let (table, _) = setup();
    let mut effects = Recorded::default();
    let outcome = route(
        &table,
        &mut FakeNodes::default(),
        &mut effects,
        SENDER,
        &message("bob", None, 0),
    );
    assert_eq!(
        outcome.immediate,
        Some((fb::Verdict::Offline, fb::Reason::NoSession))
    );
}

#[test]
fn congested_destinations_are_skipped_or_make_the_message_busy() {
    let (table, mut nodes) = setup();
    nodes.0.insert(NodeId(1), Destination::Busy);
    let mut effects = Recorded::default();
    route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("bob", None, ROUTE_FLAG_ACK),
    );
    let plan = Plan {
        fanout: 1,
        wants_ack: true,
        busy_seen: true,
    };
    assert_eq!(
        effects.delivers,
        [(NodeId(2), 0, vec![b"desk".to_vec(), b"web".to_vec()], plan)]
    );

    nodes.0.insert(NodeId(2), Destination::Busy);
    let mut effects = Recorded::default();
    route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("bob", None, 0),
    );
    assert!(effects.delivers.is_empty());
    assert_eq!(
        effects.statuses,
        [(42, fb::Verdict::Busy, fb::Reason::DestinationBusy)]
    );
}

#[test]
fn the_verdict_from_the_reports() {
    let plan = |fanout, wants_ack, busy_seen| Plan {
        fanout,
        wants_ack,
        busy_seen,
    };
    use fb::{Reason, Verdict};
    // Delivered without ACK: nothing to say.
    assert_eq!(verdict(plan(1, false, false), 1), None);
    assert_eq!(verdict(plan(3, false, true), 1), None);
    // Delivered with ACK.
    assert_eq!(
        verdict(plan(1, true, false), 1),
        Some((Verdict::Routed, Reason::None))
    );
    assert_eq!(
        verdict(plan(2, true, false), 2),
        Some((Verdict::Routed, Reason::None))
    );
    assert_eq!(
        verdict(plan(2, true, false), 1),
        Some((Verdict::Routed, Reason::Partial))
    );
    assert_eq!(
        verdict(plan(1, true, true), 1),
        Some((Verdict::Routed, Reason::Partial))
    );
    // Nobody took it: always said.
    assert_eq!(
        verdict(plan(2, false, false), 0),
        Some((Verdict::Offline, Reason::NodeGone))
    );
    assert_eq!(
        verdict(plan(1, false, true), 0),
        Some((Verdict::Busy, Reason::DestinationBusy))
    );
}

#[test]
fn only_the_reports_that_matter_are_sent() {
    let lone = Plan {
        fanout: 1,
        wants_ack: false,
        busy_seen: false,
    };
    assert!(!lone.must_report(true), "the common path reports nothing");
    assert!(lone.must_report(false));
    assert!(Plan {
        wants_ack: true,
        ..lone
    }
    .must_report(true));
    assert!(Plan { fanout: 2, ..lone }.must_report(true));
}
