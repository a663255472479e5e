use std::collections::HashMap;

use super::*;
use crate::table::TableLimits;

#[derive(Default)]
struct FakeNodes(HashMap<NodeId, Destination>);

impl Nodes for FakeNodes {
    fn destination(&mut self, node: NodeId) -> Destination {
        self.0.get(&node).copied().unwrap_or(Destination::Gone)
    }
}

#[derive(Default, Debug)]
struct Recorded {
    delivers: Vec<(NodeId, usize, Vec<Vec<u8>>)>,
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
    ) {
        let mut devices: Vec<Vec<u8>> = devices.iter().map(|d| d.to_vec()).collect();
        devices.sort();
        self.delivers.push((node, shard, devices));
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
    assert_eq!(outcome.verdict, fb::Verdict::Routed);
    assert_eq!(outcome.delivers, 2);
    effects.delivers.sort();
    assert_eq!(
        effects.delivers,
        [
            (NodeId(1), 1, vec![b"phone".to_vec()]),
            (NodeId(2), 0, vec![b"desk".to_vec(), b"web".to_vec()]),
        ]
    );
    assert!(effects.statuses.is_empty(), "no ACK flag: no Routed status");
}

#[test]
fn ack_flag_asks_for_the_routed_verdict() {
    let (table, mut nodes) = setup();
    let mut effects = Recorded::default();
    route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("bob", None, ROUTE_FLAG_ACK),
    );
    assert_eq!(
        effects.statuses,
        [(42, fb::Verdict::Routed, fb::Reason::None)]
    );
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
    assert_eq!(effects.delivers, [(NodeId(2), 0, vec![b"web".to_vec()])]);
}

#[test]
fn offline_is_always_reported() {
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
    let mut nodes = FakeNodes::default();
    let mut effects = Recorded::default();
    let outcome = route(
        &table,
        &mut nodes,
        &mut effects,
        SENDER,
        &message("bob", None, 0),
    );
    assert_eq!(
        (outcome.verdict, outcome.reason),
        (fb::Verdict::Offline, fb::Reason::NoSession)
    );
}

#[test]
fn congested_destinations_give_busy_or_partially_busy() {
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
    assert_eq!(
        effects.statuses,
        [(42, fb::Verdict::Routed, fb::Reason::PartiallyBusy)]
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
