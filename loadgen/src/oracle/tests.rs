use super::*;

const POPULATION: Population = Population {
    users: 10,
    devices_per_user: 2,
    nodes: 3,
    offline_users: 5,
};

fn params(ack: bool) -> CheckParams {
    CheckParams {
        population: POPULATION,
        ack,
        group_sizes: &[4],
        offline_ratio: 0.5,
        end_ns: 1_000_000,
    }
}

fn online(user: u32, to_device: u8) -> Sent {
    Sent {
        sent_ns: 100,
        user,
        offline: false,
        to_device,
        measured: true,
        fanout: false,
    }
}

fn deliver(seq: u64, node: u32, user: u32, devices: u64, at_ns: u64) -> Observed {
    Observed {
        id: message_id::new(0, seq),
        at_ns,
        kind: ObservedKind::Deliver {
            node,
            user: Some(user),
            devices,
            intact: true,
        },
    }
}

fn status(seq: u64, verdict: u8, reason: u16) -> Observed {
    Observed {
        id: message_id::new(0, seq),
        at_ns: 500,
        kind: ObservedKind::Verdict { verdict, reason },
    }
}

/// User 4's devices: d0 on node 1, d1 on node 2.
fn user_4_copies(seq: u64) -> Vec<Observed> {
    vec![deliver(seq, 1, 4, 0b01, 200), deliver(seq, 2, 4, 0b10, 210)]
}

fn run(ack: bool, sent: Vec<Sent>, observed: Vec<Observed>, timelines: &Timelines) -> Tally {
    check(&params(ack), &[sent], observed, timelines, &[])
}

#[test]
fn one_copy_per_node_is_a_clean_delivery() {
    let tally = run(
        false,
        vec![online(4, ALL_DEVICES)],
        user_4_copies(0),
        &Timelines::default(),
    );
    assert_eq!((tally.sent, tally.delivered, tally.measured_ok), (1, 1, 1));
    assert!(!tally.has_faults());
}

#[test]
fn a_missing_copy_is_lost_and_a_second_copy_is_duplicated() {
    let mut observed = user_4_copies(0);
    observed.pop();
    let tally = run(
        false,
        vec![online(4, ALL_DEVICES)],
        observed,
        &Timelines::default(),
    );
    assert_eq!(tally.lost, 1);

    let mut observed = user_4_copies(0);
    observed.push(deliver(0, 2, 4, 0b10, 300));
    let tally = run(
        false,
        vec![online(4, ALL_DEVICES)],
        observed,
        &Timelines::default(),
    );
    assert_eq!((tally.duplicated, tally.delivered), (1, 0));
}

#[test]
fn wrong_node_device_or_user_is_misrouted() {
    let timelines = Timelines::default();
    let tally = run(
        false,
        vec![online(4, 0)],
        vec![deliver(0, 2, 4, 0b01, 200)],
        &timelines,
    );
    assert_eq!(tally.misrouted, 1, "d0 of user 4 lives on node 1");
    let tally = run(
        false,
        vec![online(4, 1)],
        vec![deliver(0, 1, 4, 0b01, 200)],
        &timelines,
    );
    assert_eq!(tally.misrouted, 1, "to_device was d1");
    let tally = run(
        false,
        vec![online(4, 0)],
        vec![deliver(0, 1, 5, 0b01, 200)],
        &timelines,
    );
    assert_eq!(tally.misrouted, 1, "another user");
}

#[test]
fn offline_verdicts_are_checked_against_the_sessions() {
    let offline = Sent {
        offline: true,
        ..online(3, ALL_DEVICES)
    };
    let verdict_offline = status(0, verdict::OFFLINE, reason::NO_SESSION);
    let tally = run(
        false,
        vec![offline],
        vec![verdict_offline],
        &Timelines::default(),
    );
    assert_eq!((tally.offline, tally.has_faults()), (1, false));

    let tally = run(
        false,
        vec![online(4, ALL_DEVICES)],
        vec![verdict_offline],
        &Timelines::default(),
    );
    assert_eq!(tally.wrong_verdict, 1, "user 4 was online");

    let tally = run(false, vec![offline], vec![], &Timelines::default());
    assert_eq!(tally.lost, 1, "no verdict for an offline user");
}

#[test]
fn with_ack_every_message_needs_its_verdict() {
    let mut observed = user_4_copies(0);
    let tally = run(
        true,
        vec![online(4, ALL_DEVICES)],
        observed.clone(),
        &Timelines::default(),
    );
    assert_eq!(tally.lost, 1, "Routed missing");
    observed.push(status(0, verdict::ROUTED, reason::NONE));
    let tally = run(
        true,
        vec![online(4, ALL_DEVICES)],
        observed.clone(),
        &Timelines::default(),
    );
    assert_eq!((tally.delivered, tally.has_faults()), (1, false));
    observed.push(status(0, verdict::ROUTED, reason::NONE));
    let tally = run(
        true,
        vec![online(4, ALL_DEVICES)],
        observed,
        &Timelines::default(),
    );
    assert_eq!(tally.duplicated, 1);
}

#[test]
fn busy_and_partial_excuse_missing_copies() {
    let busy = status(0, verdict::BUSY, reason::DESTINATION_BUSY);
    let tally = run(
        false,
        vec![online(4, ALL_DEVICES)],
        vec![busy],
        &Timelines::default(),
    );
    assert_eq!((tally.busy, tally.has_faults()), (1, false));

    let mut observed = user_4_copies(0);
    observed.pop();
    observed.push(status(0, verdict::ROUTED, reason::PARTIAL));
    let tally = run(
        true,
        vec![online(4, ALL_DEVICES)],
        observed,
        &Timelines::default(),
    );
    assert_eq!((tally.delivered, tally.has_faults()), (1, false));
}

#[test]
fn presence_follows_confirmed_changes() {
    // Session 8 (user 4, d0) closes: sent at 1000, confirmed at 2000;
    // reopens: sent at 5000, confirmed at 6000.
    let session = POPULATION.session_index(4, 0);
    let timelines = Timelines::new([
        SessionChange {
            session,
            open: false,
            sent_ns: 1000,
            confirmed_ns: 2000,
        },
        SessionChange {
            session,
            open: true,
            sent_ns: 5000,
            confirmed_ns: 6000,
        },
    ]);
    assert_eq!(timelines.presence(session, 100, 900), Presence::Present);
    assert_eq!(timelines.presence(session, 100, 1500), Presence::Either);
    assert_eq!(timelines.presence(session, 2500, 4000), Presence::Absent);
    assert_eq!(timelines.presence(session, 2500, 5500), Presence::Either);
    assert_eq!(timelines.presence(session, 7000, 8000), Presence::Present);
    assert_eq!(timelines.presence(session + 1, 0, 10), Presence::Present);
}

#[test]
fn churn_deliveries_are_judged_by_the_timeline() {
    let session = POPULATION.session_index(4, 0);
    let closed_early = Timelines::new([SessionChange {
        session,
        open: false,
        sent_ns: 10,
        confirmed_ns: 50,
    }]);
    // Sent at 100, after the close was confirmed: a Deliver is misrouted,
    // and Offline is right.
    let tally = run(
        false,
        vec![online(4, 0)],
        vec![deliver(0, 1, 4, 0b01, 200)],
        &closed_early,
    );
    assert_eq!(tally.misrouted, 1);
    let verdict_offline = status(0, verdict::OFFLINE, reason::NO_SESSION);
    let tally = run(
        false,
        vec![online(4, 0)],
        vec![verdict_offline],
        &closed_early,
    );
    assert_eq!((tally.offline, tally.has_faults()), (1, false));

    // A close racing the message: either outcome is right.
    let racing = Timelines::new([SessionChange {
        session,
        open: false,
        sent_ns: 150,
        confirmed_ns: 400,
    }]);
    let tally = run(
        false,
        vec![online(4, 0)],
        vec![deliver(0, 1, 4, 0b01, 200)],
        &racing,
    );
    assert!(!tally.has_faults());
    let tally = run(false, vec![online(4, 0)], vec![verdict_offline], &racing);
    assert!(!tally.has_faults());
}

#[test]
fn observations_nobody_sent_are_counted() {
    let stray = deliver(7, 1, 4, 0b01, 200);
    let tally = run(
        false,
        vec![online(4, 0)],
        vec![deliver(0, 1, 4, 0b01, 200), stray],
        &Timelines::default(),
    );
    assert_eq!((tally.delivered, tally.unknown), (1, 1));
}

fn fanout_sent() -> Sent {
    Sent {
        fanout: true,
        ..online(0, ALL_DEVICES)
    }
}

fn fanout_copy(node: u32, ok: bool) -> Observed {
    Observed {
        id: message_id::new(0, 0),
        at_ns: 300,
        kind: ObservedKind::FanoutDeliver {
            node,
            ok,
            intact: true,
        },
    }
}

fn fanout_verdict(ok: bool) -> Observed {
    Observed {
        id: message_id::new(0, 0),
        at_ns: 400,
        kind: ObservedKind::FanoutVerdict { ok },
    }
}

/// Fanout: one right copy per destination node and one right Status is
/// a delivery; a missing node is lost, a second copy duplicated, a wrong
/// list misrouted.
#[test]
fn fanouts_need_one_right_copy_per_destination_node() {
    let group = crate::workload::Group::of(message_id::new(0, 0), &POPULATION, &[4], 0.5);
    assert_eq!((group.size, group.offline), (4, 2));
    let nodes: Vec<u32> = group
        .destination_nodes(&POPULATION)
        .iter()
        .enumerate()
        .filter(|(_, &hit)| hit)
        .map(|(n, _)| n as u32)
        .collect();
    assert_eq!(nodes, [0, 1, 2], "4 users x 2 devices reach all 3 nodes");
    let good: Vec<Observed> = nodes
        .iter()
        .map(|&n| fanout_copy(n, true))
        .chain([fanout_verdict(true)])
        .collect();
    let tally = run(
        false,
        vec![fanout_sent()],
        good.clone(),
        &Timelines::default(),
    );
    assert_eq!(
        (tally.delivered, tally.has_faults()),
        (1, false),
        "{tally:?}"
    );

    let missing = good[1..].to_vec();
    assert_eq!(
        run(false, vec![fanout_sent()], missing, &Timelines::default()).lost,
        1
    );
    let mut twice = good.clone();
    twice.push(fanout_copy(0, true));
    assert_eq!(
        run(false, vec![fanout_sent()], twice, &Timelines::default()).duplicated,
        1
    );
    let mut wrong = good.clone();
    wrong[0] = fanout_copy(0, false);
    assert_eq!(
        run(false, vec![fanout_sent()], wrong, &Timelines::default()).misrouted,
        1
    );
    let mut bad_status = good;
    bad_status[3] = fanout_verdict(false);
    assert_eq!(
        run(
            false,
            vec![fanout_sent()],
            bad_status,
            &Timelines::default()
        )
        .wrong_verdict,
        1
    );
}

#[test]
fn node_gone_is_right_only_when_the_sessions_may_have_gone() {
    // User 4, device 0 (node 1): a parked message answered NodeGone.
    let gone = vec![status(0, verdict::OFFLINE, reason::NODE_GONE)];
    let tally = run(
        false,
        vec![online(4, 0)],
        gone.clone(),
        &Timelines::default(),
    );
    assert_eq!(tally.wrong_verdict, 1, "the session never went away");
    // Node 1 lost its connection at 150 and its sessions were purged.
    let session = POPULATION.session_index(4, 0);
    let purged = Timelines::new([
        SessionChange {
            session,
            open: false,
            sent_ns: 150,
            confirmed_ns: 900,
        },
        SessionChange {
            session,
            open: true,
            sent_ns: 950,
            confirmed_ns: 990,
        },
    ]);
    let tally = run(false, vec![online(4, 0)], gone, &purged);
    assert_eq!((tally.offline, tally.lost, tally.wrong_verdict), (1, 0, 0));
}

#[test]
fn no_outcome_right_before_the_senders_connection_failed_is_link_failed() {
    let sent = vec![online(4, 0)];
    let tally = check(
        &params(false),
        std::slice::from_ref(&sent),
        vec![],
        &Timelines::default(),
        &[vec![300]],
    );
    assert_eq!((tally.link_failed, tally.lost), (1, 0));
    assert!(!tally.has_faults());
    // A failure long after the message does not excuse it.
    let late = 100 + LINK_FAILURE_WINDOW_NS + 1;
    let tally = check(
        &params(false),
        &[sent],
        vec![],
        &Timelines::default(),
        &[vec![late]],
    );
    assert_eq!((tally.link_failed, tally.lost), (0, 1));
}
