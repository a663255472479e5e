//! The connections of one shard: their state, output stream, liveness and
//! budgets. Plain data changed through `&mut self`; what happens around a
//! connection (reports, NodeEvents) is decided by the shard core.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use crate::limits::{
    FANOUTS_IN_FLIGHT_MAX, FANOUT_BYTES_IN_FLIGHT_MAX, FANOUT_RECIPIENTS_IN_FLIGHT_MAX,
    LOCATES_IN_FLIGHT_MAX, OUT_BUFFER_HARD_FACTOR, PENDING_REPORTS_MAX,
    SYNC_SESSIONS_IN_FLIGHT_MAX,
};
use crate::table::NodeId;
use crate::time::Time;
use crate::wire::fb;

use super::batch::CreditKind;
use super::directory::Directory;
use super::stream::{BufferPool, OutputStream};

/// A connection's handle: its slot and the slot's generation, so that a
/// handle kept after the connection is gone never reaches its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// Its slot: unique among the connections registered at one time, so
    /// a driver may index a table of its own with it.
    pub fn slot(self) -> usize {
        self.index as usize
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Reading and writing.
    Open,
    /// The socket is gone; frames are parked for a resuming connection of
    /// the same node process until `until`.
    Suspended { until: Time },
    /// Ending for good: nothing more is queued. The socket writes what is
    /// queued, then the farewell, then closes. With `acks`, Ack frames
    /// are still read until then (a node that said Goodbye acknowledges
    /// what it reads).
    Closing,
}

/// Why a connection is ending, for the NodeEvent if it was the node's
/// last, and the log.
pub type LeaveReason = fb::LeftReason;

/// A copy of a fanned-out frame (Broadcast, Publish) waiting for room in a
/// congested connection, so that neither the connection is dropped nor
/// the copy lost: its sender's budget stays spent until it is queued.
pub struct Held {
    pub frame: Rc<[u8]>,
    /// The request it belongs to, in the shard's `held` table; `None` for
    /// a NodeEvent (the router's own, nobody to report to).
    pub token: Option<u64>,
}

/// Work a connection's requests caused that is not finished yet, bounded
/// per connection (`limits`): past a bound the connection's reader
/// pauses, so a sender that asks for a lot of fan-out work is slowed,
/// not the nodes it sends to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Locates not answered yet.
    pub locates: u32,
    /// Recipients of Fanouts whose Delivers are not all queued yet.
    pub fanout_recipients: u64,
    /// Those Fanouts.
    pub fanouts: u32,
    /// Bytes of Broadcast and Publish frames whose copies are not all
    /// queued yet.
    pub fan_out_bytes: u64,
    /// Snapshot sessions not applied yet.
    pub sync_sessions: u64,
}

impl Budget {
    /// Whether the connection's reader must wait for its work to finish.
    pub fn exhausted(&self) -> bool {
        self.locates >= LOCATES_IN_FLIGHT_MAX
            || self.fanout_recipients >= FANOUT_RECIPIENTS_IN_FLIGHT_MAX
            || self.fanouts >= FANOUTS_IN_FLIGHT_MAX
            || self.fan_out_bytes >= FANOUT_BYTES_IN_FLIGHT_MAX
            || self.sync_sessions >= SYNC_SESSIONS_IN_FLIGHT_MAX
    }

    pub fn give_back(&mut self, kind: CreditKind, units: u64) {
        let counter = match kind {
            CreditKind::FanOutBytes => &mut self.fan_out_bytes,
            CreditKind::SyncSessions => &mut self.sync_sessions,
        };
        assert!(*counter >= units, "budget given back twice");
        *counter -= units;
    }
}

/// One node connection (one registration in the directory).
pub struct Conn {
    pub node: NodeId,
    /// The epoch of the node's sessions this connection belongs to.
    pub epoch: u32,
    /// Its registration in the directory.
    pub ticket: u64,
    pub name: Box<str>,
    pub incarnation: u64,
    pub peer: Option<SocketAddr>,
    pub state: LinkState,
    /// The driver holds a socket for it (from the Hello until the driver
    /// reports the socket released).
    pub has_socket: bool,
    pub stream: OutputStream,
    /// Its bit is set in the directory (over the soft limit).
    pub congested: bool,
    /// The first reason given for its end.
    leave_reason: Option<LeaveReason>,
    /// Messages sent on this connection to several destinations whose
    /// parts have not all reported: token -> (parts missing, parts queued).
    pub pending_reports: HashMap<u64, (u8, u8), ahash::RandomState>,
    /// A partial frame read, waiting for the rest.
    pub carry: Vec<u8>,
    pub budget: Budget,
    /// Fanned-out copies waiting for room, in order.
    pub held: VecDeque<Held>,
    pub held_bytes: usize,
    /// Bytes of NodeEvents among `held_bytes` (bounded by the soft limit).
    pub held_event_bytes: usize,
    /// The park filled up while suspended.
    pub park_overflowed: bool,
    /// The node said Goodbye: only its Acks are still read.
    pub after_goodbye: bool,
    /// It left the directory (it is closing, or gone).
    pub detached: bool,
    /// A suspension given up (its park filled up, or a newer process
    /// replaced it): it is never resumed.
    pub given_up: bool,
    /// Liveness, see `ShardCore::tick`.
    pub last_heard: Time,
    /// When the last Pong came (for `/nodez`).
    pub last_pong: Option<Time>,
    pub heard_since_tick: bool,
    pub queued_at_tick: u64,
    pub written_at_tick: u64,
    pub acked_at_tick: u64,
    /// Since when the writer made no progress with bytes waiting, or no
    /// Ack came with bytes unacknowledged.
    pub stalled_since: Option<Time>,
    pub unacked_since: Option<Time>,
    /// The reader waits for the router (backpressure or budget), so the
    /// node's silence does not count.
    pub read_paused: bool,
    pub ping_nonce: u64,
    /// The driver should look at this connection (output or state).
    pub wake_pending: bool,
}

impl Conn {
    /// A fanned-out copy (or NodeEvent) for this connection must wait
    /// behind others held, or while its socket has `soft` bytes still to
    /// write.
    pub fn must_hold(&self, soft: usize) -> bool {
        !self.held.is_empty() || self.stream.unwritten_bytes() >= soft
    }

    /// Bytes held for the node (the output limits bound this).
    pub fn queued_bytes(&self) -> usize {
        self.stream.queued_bytes()
    }

    pub fn is_open(&self) -> bool {
        self.state == LinkState::Open
    }

    /// Whether frames may still be queued (open or suspended).
    pub fn accepts(&self) -> bool {
        self.state != LinkState::Closing
    }

    pub fn is_suspended(&self) -> bool {
        matches!(self.state, LinkState::Suspended { .. })
    }

    /// Whether an outcome of a frame queued now must wait (for an Ack, or
    /// for a resume).
    pub fn defers_reports(&self) -> bool {
        self.stream.acks() || self.is_suspended()
    }

    /// The park filled up: the suspension ends at once (at the shard's
    /// next timeout, which is now).
    fn park_full(&mut self) {
        self.park_overflowed = true;
        self.give_up();
    }

    /// Ends a suspension at once: it cannot be resumed any more (what it
    /// could not park is lost to it), and it ends at the shard's next
    /// timeout, which is now.
    pub fn give_up(&mut self) {
        self.given_up = true;
        self.state = LinkState::Suspended { until: Time::ZERO };
    }

    pub fn set_leave_reason(&mut self, reason: LeaveReason) {
        if self.leave_reason.is_none() {
            self.leave_reason = Some(reason);
        }
    }

    pub fn leave_reason(&self) -> LeaveReason {
        self.leave_reason.unwrap_or(fb::LeftReason::Closed)
    }

    /// Counts one part's report on a message sent to `fanout` parts.
    /// Returns how many parts were queued once all have reported, `None`
    /// before, and `Err` when `PENDING_REPORTS_MAX` messages are pending.
    #[allow(clippy::result_unit_err)]
    pub fn collect_report(
        &mut self,
        token: u64,
        fanout: u8,
        queued: bool,
    ) -> Result<Option<u8>, ()> {
        if fanout == 1 {
            return Ok(Some(u8::from(queued)));
        }
        // One lookup: the first report of a message inserts it, the last
        // removes it.
        let full = self.pending_reports.len() >= PENDING_REPORTS_MAX;
        match self.pending_reports.entry(token) {
            Entry::Vacant(_) if full => Err(()),
            Entry::Vacant(vacant) => {
                vacant.insert((fanout - 1, u8::from(queued)));
                Ok(None)
            }
            Entry::Occupied(mut occupied) => {
                let (missing, copies) = occupied.get_mut();
                *missing -= 1;
                *copies += u8::from(queued);
                if *missing > 0 {
                    return Ok(None);
                }
                Ok(Some(occupied.remove().1))
            }
        }
    }
}

/// What the limits of an output buffer are.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    /// Above it the connection is congested (`--out-buffer-bytes`).
    pub soft: usize,
    /// Above it the node's own reader pauses (it gets no more answers
    /// until it reads).
    pub hard: usize,
    /// What a suspended connection may hold (`--park-bytes-max`).
    pub park: usize,
}

impl OutputLimits {
    pub fn new(soft: usize, park: usize) -> Self {
        OutputLimits {
            soft,
            hard: soft * OUT_BUFFER_HARD_FACTOR,
            park,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing, or its park is full.
    Closed,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// The connections of one shard.
pub struct Conns {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Each node's connection on this shard (the one at the node's current
    /// registration), indexed by `NodeId`.
    by_node: Vec<Option<ConnId>>,
    count: usize,
    pub limits: OutputLimits,
    /// Connections the driver should look at, each once.
    wakes: Vec<ConnId>,
    /// A suspension began or ended early: the shard's next deadline may
    /// be sooner.
    pub deadlines_changed: bool,
}

impl Conns {
    pub fn new(nodes_max: usize, limits: OutputLimits) -> Self {
        Conns {
            slots: Vec::new(),
            free: Vec::new(),
            by_node: vec![None; nodes_max],
            count: 0,
            limits,
            wakes: Vec::new(),
            deadlines_changed: false,
        }
    }

    /// Connections registered (open, suspended or closing).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Registers a connection as `node`'s on this shard.
    pub fn insert(&mut self, conn: Conn) -> ConnId {
        let node = conn.node;
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                u32::try_from(self.slots.len() - 1).expect("connections fit u32")
            }
        };
        let slot = &mut self.slots[index as usize];
        debug_assert!(slot.conn.is_none());
        slot.conn = Some(conn);
        let id = ConnId {
            index,
            generation: slot.generation,
        };
        self.by_node[node.0 as usize] = Some(id);
        self.count += 1;
        id
    }

    /// Forgets a connection; returns it.
    pub fn remove(&mut self, id: ConnId) -> Conn {
        let slot = &mut self.slots[id.index as usize];
        assert_eq!(slot.generation, id.generation, "stale connection handle");
        let conn = slot.conn.take().expect("a live connection");
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        if self.by_node[conn.node.0 as usize] == Some(id) {
            self.by_node[conn.node.0 as usize] = None;
        }
        self.count -= 1;
        conn
    }

    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.slots.get(id.index as usize)?;
        (slot.generation == id.generation)
            .then_some(slot.conn.as_ref())
            .flatten()
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_mut()
    }

    /// `node`'s connection on this shard, whatever its state.
    pub fn of_node(&self, node: NodeId) -> Option<ConnId> {
        self.by_node[node.0 as usize]
    }

    /// `node`'s connection on this shard if it is the one at `epoch` and
    /// still takes frames (open or suspended).
    pub fn for_node(&self, node: NodeId, epoch: u32) -> Option<ConnId> {
        let id = self.by_node[node.0 as usize]?;
        let conn = self.get(id)?;
        (conn.epoch == epoch && conn.accepts()).then_some(id)
    }

    /// The connection a request of `sender` came in on, if it still takes
    /// frames: its node's connection here, at its epoch, on its stream
    /// (a resumed connection continues the stream; a newer stream of the
    /// same node is not it).
    pub fn for_sender(&self, sender: crate::route::Sender) -> Option<ConnId> {
        let id = self.for_node(sender.node, sender.epoch)?;
        let conn = self.get(id)?;
        (sender.stream == 0 || conn.stream.tag() == sender.stream).then_some(id)
    }

    /// The connection of `node` registered under `ticket`, if any.
    pub fn with_ticket(&self, node: NodeId, ticket: u64) -> Option<ConnId> {
        self.iter()
            .find(|(_, conn)| conn.node == node && conn.ticket == ticket)
            .map(|(id, _)| id)
    }

    /// Every connection, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            slot.conn.as_ref().map(|conn| {
                (
                    ConnId {
                        index: index as u32,
                        generation: slot.generation,
                    },
                    conn,
                )
            })
        })
    }

    /// Slots to visit with [`Conns::id_at`]: a way to act on every
    /// connection while changing them, without collecting their ids.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The connection in slot `index`, if any.
    pub fn id_at(&self, index: usize) -> Option<ConnId> {
        let slot = self.slots.get(index)?;
        slot.conn.as_ref().map(|_| ConnId {
            index: index as u32,
            generation: slot.generation,
        })
    }

    /// Gives work back to the budget of `sender`'s connection (if it is
    /// still here), waking its reader if that ends its pause.
    pub fn give_back(&mut self, sender: crate::route::Sender, give: impl FnOnce(&mut Budget)) {
        let Some(id) = self.for_sender(sender) else {
            return;
        };
        let conn = self.get_mut(id).expect("found");
        let was_exhausted = conn.budget.exhausted();
        give(&mut conn.budget);
        if was_exhausted && !conn.budget.exhausted() {
            self.wake(id);
        }
    }

    /// Asks the driver to look at `id` (its output or its state changed).
    pub fn wake(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            if !conn.wake_pending {
                conn.wake_pending = true;
                self.wakes.push(id);
            }
        }
    }

    /// The connections woken since the last call.
    pub fn take_wakes(&mut self, into: &mut Vec<ConnId>) {
        for id in self.wakes.drain(..) {
            let slot = &mut self.slots[id.index as usize];
            if slot.generation == id.generation {
                if let Some(conn) = slot.conn.as_mut() {
                    conn.wake_pending = false;
                    into.push(id);
                }
            }
        }
    }

    /// Queues a frame for `id`: a Deliver, a copy the router decided to
    /// send, or a control frame (Status, Kick, Pong, Ping, Located, an
    /// answer). Never refused for size while open (a Deliver's sender may
    /// already have its verdict; what bounds control frames is that the
    /// node's own reader pauses while its buffer is over the hard limit,
    /// `ShardCore::may_read`: a node that does not read what it asked for
    /// is not read from). Parked while suspended, within the park.
    pub fn push(
        &mut self,
        id: ConnId,
        pool: &mut BufferPool,
        directory: &Directory,
        shard: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), PushError> {
        let limits = self.limits;
        let conn = self.get_mut(id).ok_or(PushError::Closed)?;
        match conn.state {
            LinkState::Closing => return Err(PushError::Closed),
            LinkState::Suspended { .. } if conn.queued_bytes() >= limits.park => {
                conn.park_full();
                self.deadlines_changed = true;
                return Err(PushError::Closed);
            }
            _ => {}
        }
        self.append(id, pool, directory, shard, write);
        Ok(())
    }

    fn append(
        &mut self,
        id: ConnId,
        pool: &mut BufferPool,
        directory: &Directory,
        shard: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let limits = self.limits;
        let conn = self.get_mut(id).expect("checked by the caller");
        let was_idle = !conn.stream.has_unwritten();
        conn.stream.append_with(pool, write);
        if conn.is_suspended() {
            return; // Parked: bounded by the park, not congestion.
        }
        if conn.queued_bytes() > limits.soft && !conn.congested {
            conn.congested = true;
            directory.set_congested(conn.node, shard, true);
        }
        if was_idle {
            self.wake(id);
        }
    }

    /// Clears a connection's congestion once it has drained below half
    /// the soft limit; returns whether it is (now) uncongested.
    pub fn uncongest_if_drained(
        &mut self,
        id: ConnId,
        directory: &Directory,
        shard: usize,
    ) -> bool {
        let soft = self.limits.soft;
        let Some(conn) = self.get_mut(id) else {
            return false;
        };
        if conn.congested && conn.queued_bytes() < soft / 2 {
            conn.congested = false;
            directory.set_congested(conn.node, shard, false);
        }
        !conn.congested
    }

    /// The total of every connection's budget and held bytes, for metrics.
    pub fn held_bytes(&self) -> usize {
        self.iter().map(|(_, conn)| conn.held_bytes).sum()
    }
}

/// A fresh connection record.
#[allow(clippy::too_many_arguments)]
pub fn new_conn(
    node: NodeId,
    epoch: u32,
    ticket: u64,
    name: Box<str>,
    incarnation: u64,
    peer: Option<SocketAddr>,
    stream: OutputStream,
    now: Time,
) -> Conn {
    Conn {
        node,
        epoch,
        ticket,
        name,
        incarnation,
        peer,
        state: LinkState::Open,
        has_socket: true,
        stream,
        congested: false,
        leave_reason: None,
        pending_reports: HashMap::default(),
        carry: Vec::new(),
        budget: Budget::default(),
        held: VecDeque::new(),
        held_bytes: 0,
        held_event_bytes: 0,
        park_overflowed: false,
        after_goodbye: false,
        detached: false,
        given_up: false,
        last_heard: now,
        last_pong: None,
        heard_since_tick: true,
        // The first check after the Hello sets the baselines.
        queued_at_tick: u64::MAX,
        written_at_tick: 0,
        acked_at_tick: 0,
        stalled_since: None,
        unacked_since: None,
        read_paused: false,
        ping_nonce: 0,
        wake_pending: false,
    }
}
