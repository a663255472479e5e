//! Bad input: each malformed or hostile frame gets an Error frame and a
//! close of that one connection, and other nodes keep routing meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;
use imrouter::wire::{fb, Encoder, HelloFrame, ROUTE_FLAG_ACK};

/// What a bad client sends, and the Error code it must get back.
struct Case {
    name: &'static str,
    /// Send a valid Hello (and read the Welcome) first.
    after_hello: bool,
    bytes: Vec<u8>,
    /// Half-close after sending, as a client that gives up would.
    then_shutdown: bool,
    expected: &'static [fb::ErrorCode],
}

fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn prefixed(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// A valid, size-prefixed flatbuffer whose root is a Status table, not an
/// Envelope.
fn foreign_flatbuffer(identifier: Option<&str>) -> Vec<u8> {
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let status = fb::Status::create(
        &mut builder,
        &fb::StatusArgs {
            message_id: 7,
            verdict: fb::Verdict::Offline,
            reason: fb::Reason::NoSession,
            ..Default::default()
        },
    );
    builder.finish_size_prefixed(status, identifier);
    builder.finished_data().to_vec()
}

fn cases() -> Vec<Case> {
    let mut encoder = Encoder::new();
    let over_limit = (64 * 1024 + 1u32).to_le_bytes().to_vec();
    let mut truncated = 100u32.to_le_bytes().to_vec();
    truncated.extend_from_slice(&[1; 10]);
    let bad_version = encoder
        .hello(&HelloFrame {
            protocol_version: 99,
            ..HelloFrame::new("bad", 1)
        })
        .to_vec();
    let no_such_shard = encoder
        .hello(&HelloFrame {
            shard: Some(9),
            ..HelloFrame::new("bad", 1)
        })
        .to_vec();
    let deliver = encoder
        .deliver(&imrouter::wire::DeliverFrame {
            message_id: 1,
            from_user: "a",
            from_device: "b",
            to_user: "c",
            devices: &[b"d"],
            flags: 0,
            payload: b"e",
            origin: 0,
        })
        .to_vec();
    vec![
        Case {
            name: "frame before Hello",
            after_hello: false,
            bytes: encoder.session_open("u", "d", fb::Platform::Web).to_vec(),
            then_shutdown: false,
            expected: &[fb::ErrorCode::HelloRequired],
        },
        Case {
            name: "unknown protocol version",
            after_hello: false,
            bytes: bad_version,
            then_shutdown: false,
            expected: &[fb::ErrorCode::UnsupportedVersion],
        },
        Case {
            name: "Hello asking for a shard that does not exist",
            after_hello: false,
            bytes: no_such_shard,
            then_shutdown: false,
            expected: &[fb::ErrorCode::NoSuchShard],
        },
        Case {
            name: "length prefix over the limit, before Hello",
            after_hello: false,
            bytes: over_limit.clone(),
            then_shutdown: false,
            expected: &[fb::ErrorCode::FrameTooLarge],
        },
        Case {
            name: "length prefix over the limit, after Hello",
            after_hello: true,
            bytes: over_limit,
            then_shutdown: false,
            expected: &[fb::ErrorCode::FrameTooLarge],
        },
        Case {
            name: "truncated frame",
            after_hello: true,
            bytes: truncated.clone(),
            then_shutdown: true,
            expected: &[fb::ErrorCode::Truncated],
        },
        Case {
            name: "truncated first frame",
            after_hello: false,
            bytes: truncated,
            then_shutdown: true,
            expected: &[fb::ErrorCode::Truncated],
        },
        Case {
            name: "random bytes",
            after_hello: false,
            bytes: random_bytes(4096, 0x1234_5678),
            then_shutdown: false,
            // The first four random bytes are a length over the limit.
            expected: &[fb::ErrorCode::FrameTooLarge],
        },
        Case {
            name: "random body behind a valid length",
            after_hello: true,
            bytes: prefixed(&random_bytes(300, 0x9abc_def0)),
            then_shutdown: false,
            expected: &[fb::ErrorCode::Malformed],
        },
        Case {
            name: "valid flatbuffer of another type",
            after_hello: true,
            bytes: foreign_flatbuffer(None),
            then_shutdown: false,
            expected: &[fb::ErrorCode::Malformed],
        },
        Case {
            name: "valid flatbuffer of another type carrying our identifier",
            after_hello: false,
            bytes: foreign_flatbuffer(Some("IMR1")),
            then_shutdown: false,
            // Either the verifier refuses it, or it reads as an envelope
            // that is not a Hello.
            expected: &[fb::ErrorCode::Malformed, fb::ErrorCode::HelloRequired],
        },
        Case {
            name: "a frame only the router sends",
            after_hello: true,
            bytes: deliver,
            then_shutdown: false,
            expected: &[fb::ErrorCode::UnexpectedFrame],
        },
        Case {
            name: "a second Hello",
            after_hello: true,
            bytes: hello_frame("bad", 1, None),
            then_shutdown: false,
            expected: &[fb::ErrorCode::UnexpectedFrame],
        },
        Case {
            name: "an empty user id",
            after_hello: true,
            bytes: encoder
                .session_open("", "phone", fb::Platform::Web)
                .to_vec(),
            then_shutdown: false,
            expected: &[fb::ErrorCode::InvalidField],
        },
    ]
}

#[test]
fn each_bad_input_gets_an_error_frame_and_a_close_while_others_keep_routing() {
    let router = start_router(2);
    let addr = router.local_addr();

    // Background traffic between two other nodes for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let background = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut sender = Node::connect(addr, "background-a");
            let mut receiver = Node::connect(addr, "background-b");
            receiver.open_confirmed("background-user", "phone");
            ready_tx.send(()).unwrap();
            let mut routed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = sender.route_to("background-user", None, b"steady", ROUTE_FLAG_ACK);
                assert_eq!(sender.expect_status(id).0, fb::Verdict::Routed);
                assert_eq!(receiver.expect_deliver().0, id);
                routed += 1;
            }
            routed
        })
    };
    ready_rx.recv().unwrap();

    let mut sender = Node::connect(addr, "good-a");
    let mut receiver = Node::connect(addr, "good-b");
    receiver.open_confirmed("good-user", "phone");

    for case in cases() {
        let mut bad = if case.after_hello {
            Node::connect(addr, "bad-node").wire
        } else {
            Wire::connect(addr)
        };
        bad.send(&case.bytes);
        if case.then_shutdown {
            bad.shutdown_write();
        }
        match bad.error_then_close() {
            Some((code, text)) => {
                assert!(
                    case.expected.contains(&code),
                    "{}: got {code:?} ({text})",
                    case.name
                );
                assert!(!text.is_empty(), "{}: the Error says why", case.name);
            }
            None => panic!("{}: closed without an Error frame", case.name),
        }

        let id = sender.route_to("good-user", None, case.name.as_bytes(), ROUTE_FLAG_ACK);
        assert_eq!(
            sender.expect_status(id).0,
            fb::Verdict::Routed,
            "after {}",
            case.name
        );
        let (message_id, _, _, payload) = receiver.expect_deliver();
        assert_eq!((message_id, payload.as_slice()), (id, case.name.as_bytes()));
    }

    stop.store(true, Ordering::Relaxed);
    let routed = background.join().expect("background traffic never failed");
    assert!(routed > 0);
    let metrics = router.metrics();
    assert_eq!(metrics.connections_refused, cases().len() as u64);
}

#[test]
fn wrong_or_missing_auth_token_is_refused() {
    let dir = std::env::temp_dir().join(format!("imrouter-token-{}", std::process::id()));
    std::fs::write(&dir, "s3cret\n").unwrap();
    let token_file = dir.clone();
    let router = start_router_with(1, move |args| args.auth_token_file = Some(token_file));
    let addr = router.local_addr();
    for token in [None, Some("wrong")] {
        let mut wire = Wire::connect(addr);
        let hello = Encoder::new()
            .hello(&HelloFrame {
                auth_token: token,
                ..HelloFrame::new("n", 1)
            })
            .to_vec();
        wire.send(&hello);
        let (code, _) = wire.error_then_close().expect("an Error frame");
        assert_eq!(code, fb::ErrorCode::Unauthorized);
    }
    let mut wire = Wire::connect(addr);
    let hello = Encoder::new()
        .hello(&HelloFrame {
            auth_token: Some("s3cret"),
            ..HelloFrame::new("n", 1)
        })
        .to_vec();
    wire.send(&hello);
    assert!(matches!(wire.recv(), Some(Frame::Welcome { .. })));
    std::fs::remove_file(dir).unwrap();
}

#[test]
fn a_connection_that_closes_without_a_word_costs_nothing() {
    let router = start_router(2);
    let addr = router.local_addr();
    for _ in 0..50 {
        drop(Wire::connect(addr));
    }
    let mut node = Node::connect(addr, "after");
    node.open_confirmed("u", "d");
}
