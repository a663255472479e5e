//! One-to-one routing over real TCP.

mod common;

use common::*;
use imrouter::wire::{fb, ROUTE_FLAG_ACK};

#[test]
fn route_across_two_nodes() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut alice_node = Node::connect(addr, "node-a");
    let mut bob_node = Node::connect(addr, "node-b");
    bob_node.open_confirmed("bob", "phone");

    let id = alice_node.route_to("bob", None, b"hi bob", ROUTE_FLAG_ACK);
    assert_eq!(
        alice_node.expect_status(id),
        (fb::Verdict::Routed, fb::Reason::None)
    );
    let (message_id, to_user, devices, payload) = bob_node.expect_deliver();
    assert_eq!(
        (message_id, to_user.as_str(), payload.as_slice()),
        (id, "bob", &b"hi bob"[..])
    );
    assert_eq!(devices, ["phone"]);
}
