//! Cluster semantics over real TCP: where users are (Locate).

mod common;

use common::*;
use imrouter::wire::fb;

fn session(node: &str, device: &str, platform: fb::Platform) -> (String, String, fb::Platform) {
    (node.to_string(), device.to_string(), platform)
}

/// Locate answers with every session of the user, on every node, whichever
/// shard owns the user and whichever shard the asking connection is on.
#[test]
fn locate_lists_every_session_of_a_user_across_nodes_and_shards() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut east = Node::connect(addr, "east");
    let mut west = Node::connect(addr, "west");
    let mut asking = Node::connect(addr, "asking");
    for shard in 0..2 {
        let user = user_on_shard("mona", shard, 2);
        east.open_as(&user, "phone", fb::Platform::Mobile);
        west.open_as(&user, "desktop", fb::Platform::Desktop);
        east.confirm_open(&user, "phone");
        west.confirm_open(&user, "desktop");
        assert_eq!(
            asking.locate(&user),
            [
                session("east", "phone", fb::Platform::Mobile),
                session("west", "desktop", fb::Platform::Desktop),
            ],
            "user {user} on shard {shard}"
        );
        assert_eq!(asking.locate(&format!("{user}-offline")), []);
    }
}

/// A node that leaves is not listed any more: Locate never reports a ghost
/// session.
#[test]
fn locate_forgets_a_node_that_left() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut staying = Node::connect(addr, "staying");
    let mut leaving = Node::connect(addr, "leaving");
    staying.open_confirmed("nina", "phone");
    leaving.open_confirmed("nina", "tablet");
    assert_eq!(staying.locate("nina").len(), 2);
    let before_close = leaving.goodbye("bye");
    assert!(before_close.is_empty(), "{before_close:?}");
    // The router notices the departure when the socket closes, which this
    // test cannot observe: ask until the answer changes (no sleeping).
    for _ in 0..100_000 {
        let sessions = staying.locate("nina");
        if sessions.len() == 1 {
            assert_eq!(
                sessions,
                [session("staying", "phone", fb::Platform::Mobile)]
            );
            return;
        }
        assert_eq!(sessions.len(), 2);
    }
    panic!("the departed node's session stayed listed");
}

/// A Locate with an empty user id is refused like any invalid field.
#[test]
fn locate_with_an_empty_user_is_refused() {
    let router = start_router(1);
    let mut node = Node::connect(router.local_addr(), "bad");
    let frame = node.encoder.locate(1, "").to_vec();
    node.wire.send(&frame);
    let (code, _) = node.wire.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::InvalidField);
}
