//! The output path when a node stops reading (docs/PROTOCOL.md, "Flow
//! control"): over the soft limit, messages for it get Busy; a node whose
//! socket takes nothing for --node-timeout-ms is disconnected. Every Route
//! still gets exactly one verdict.

mod common;

use std::io::{ErrorKind, Read};

use common::*;
use imrouter::wire::{fb, ROUTE_FLAG_ACK};

/// Small buffers so the limits are reached quickly.
fn small_buffers(args: &mut imrouter::config::ServeArgs) {
    args.max_frame_bytes = 16 * 1024;
    args.out_buffer_bytes = 64 * 1024;
}

#[test]
fn a_node_that_stops_reading_makes_senders_get_busy_then_recovers() {
    let router = start_router_with(2, small_buffers);
    let addr = router.local_addr();
    let mut sender = Node::connect(addr, "sender");
    let mut slow = Node::connect(addr, "slow");
    slow.open_confirmed("slow-user", "phone");
    // Opened now, while the slow node still reads, so that the open is
    // known to be applied before the messages to "both-user" below.
    slow.open_confirmed("both-user", "phone");

    // The slow node reads nothing from here on. Send in windows, reading
    // every verdict, until the router starts answering Busy.
    let payload = vec![0x5A; 8 * 1024];
    let mut routed = Vec::new();
    let mut busy = 0;
    'send: for _ in 0..2_000 {
        let ids: Vec<u64> = (0..16)
            .map(|_| sender.route_to("slow-user", None, &payload, ROUTE_FLAG_ACK))
            .collect();
        for (id, verdict) in ids.iter().copied().zip(sender.expect_statuses(&ids)) {
            match verdict {
                (fb::Verdict::Routed, fb::Reason::None) => routed.push(id),
                (fb::Verdict::Busy, fb::Reason::DestinationBusy) => busy += 1,
                other => panic!("unexpected verdict {other:?}"),
            }
        }
        if busy > 0 {
            break 'send;
        }
    }
    assert!(busy > 0, "the router never reported the slow node as busy");

    // A recipient with a device on the slow node and one on a healthy node
    // still gets the message on the healthy one: one verdict each, Routed,
    // and Routed/Partial whenever the slow node is congested. (Congestion
    // comes and goes as the kernel's socket buffers absorb bytes, so send
    // until it is seen rather than assume it.)
    let mut healthy = Node::connect(addr, "healthy");
    healthy.open_confirmed("both-user", "desktop");
    let mut expected_at_slow = routed.clone();
    let mut partial = 0;
    for _ in 0..2_000 {
        let id = sender.route_to("both-user", None, &payload, ROUTE_FLAG_ACK);
        match sender.expect_status(id) {
            (fb::Verdict::Routed, fb::Reason::Partial) => partial += 1,
            (fb::Verdict::Routed, fb::Reason::None) => expected_at_slow.push(id),
            other => panic!("unexpected verdict {other:?}"),
        }
        assert_eq!(healthy.expect_deliver().0, id);
        if partial > 0 {
            break;
        }
    }
    assert!(partial > 0, "the congested node was never skipped");
    assert!(sender.ping(2).is_empty(), "one verdict per Route");

    // Everything that was queued for the slow node is delivered, in order,
    // and nothing else.
    for &id in &expected_at_slow {
        assert_eq!(slow.expect_deliver().0, id);
    }
    assert!(slow.ping(1).is_empty());

    // Once the node has read its backlog, messages are routed again.
    let id = sender.route_to("slow-user", None, b"better now?", ROUTE_FLAG_ACK);
    assert_eq!(
        sender.expect_status(id),
        (fb::Verdict::Routed, fb::Reason::None)
    );
    assert_eq!(slow.expect_deliver().0, id);
    assert_eq!(router.metrics().connections_slow, 0);
}

#[test]
fn a_node_that_never_reads_is_disconnected_and_others_keep_routing() {
    let router = start_router_with(2, |args| {
        small_buffers(args);
        // What catches a node that does not read: it read nothing for
        // --node-timeout-ms while bytes waited for it.
        args.heartbeat_ms = 50;
        args.reconnect_grace_ms = 0;
    });
    let addr = router.local_addr();

    // This node sends Routes to an offline user and never reads: the
    // Offline verdicts pile up in its output buffer until the hard limit,
    // where the router stops reading it; its writes block, and after
    // --node-timeout-ms without a byte read by it, the router closes it.
    let mut silent = Node::connect(addr, "silent");
    silent
        .wire
        .stream
        .set_write_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut write_failed = false;
    for _ in 0..2_000_000 {
        let frame = silent
            .encoder
            .route(&imrouter::wire::RouteFrame {
                message_id: 1,
                from_user: "s",
                from_device: "d",
                to_user: "nobody-home",
                to_device: None,
                flags: 0,
                payload: &[],
            })
            .to_vec();
        if std::io::Write::write_all(&mut silent.wire.stream, &frame).is_err() {
            write_failed = true;
            break;
        }
    }
    assert!(write_failed, "the router kept a node that never reads");

    // Its stream ends (with a close or a reset) after whatever was queued.
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match silent.wire.stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
            Err(error) => panic!("unexpected read error {error}"),
        }
    }
    assert_eq!(router.metrics().connections_slow, 1);
    assert_eq!(router.metrics().write_stalls, 1);

    // (Connected only now: a test node answers Pings only while it reads.)
    let mut good_sender = Node::connect(addr, "good-sender");
    let mut good_receiver = Node::connect(addr, "good-receiver");
    good_receiver.open_confirmed("good-user", "phone");
    let id = good_sender.route_to("good-user", None, b"unaffected", ROUTE_FLAG_ACK);
    assert_eq!(good_sender.expect_status(id).0, fb::Verdict::Routed);
    assert_eq!(good_receiver.expect_deliver().0, id);
}
