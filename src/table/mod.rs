//! The location table: which sessions the users of one shard have, and where.
//!
//! Each shard owns one `Table` with the users whose slot maps to it. It is
//! plain data with no I/O, clocks or executor types: the shard feeds it
//! session opens and closes, routing reads it, and a node's departure purges
//! that node's sessions.
//!
//! # Layout
//!
//! Memory per session is the figure that decides how many users one router
//! holds, so the layout is chosen for it (about 84 bytes for a user with one
//! session and an id of up to 23 bytes, see BENCHMARKS.md):
//!
//! - `index`: a hashbrown `HashTable<u32>` of user record indexes, hashed by
//!   the user id with ahash. It stores 4 bytes per user, not a second copy of
//!   the key; lookups compare against the key in the user record.
//! - `users`: a slab of [`UserRecord`]s, the user id stored inline when it
//!   fits in 23 bytes and the head of the user's session chain.
//! - `sessions`: a slab of [`SessionRecord`]s, each on two intrusive lists:
//!   its user's chain (singly linked; a user has at most
//!   `sessions_per_user_max` live sessions) and its *handle*'s list (doubly
//!   linked).
//! - Ids longer than their inline room live in `spill`, one heap block each.
//!
//! # Handles: sessions that die at once and go away in slices
//!
//! A session does not name its node directly but a *handle*: a small
//! record saying which node it is and whether it is live. Each node has one
//! live handle that new sessions join (two during a snapshot, below).
//! When a node's sessions die (it left, or a new process of it connected),
//! [`Table::retire_node`] marks its handles dead, in O(1): from then on
//! its sessions are invisible to every lookup, and [`Table::purge_step`]
//! removes them a slice at a time, so a node with 300,000 sessions never
//! stalls its shard.
//!
//! A snapshot (SessionSync) works the same way: [`Table::begin_snapshot`]
//! gives the node a fresh handle that every session the snapshot lists
//! (and every open during it) moves to, and [`Table::end_snapshot`]
//! retires the node's older handles, which hold exactly the sessions the
//! snapshot did not list: no set of keys is built, nothing is walked.

mod slab;
mod stored_id;
pub mod topics;

use hashbrown::HashTable;

use slab::Slab;
use stored_id::{Spill, StoredId};

/// A router-wide dense index of a node name, assigned by the node directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// User ids up to this many bytes are stored inline.
pub const USER_INLINE_BYTES: usize = 23;

/// Device ids up to this many bytes are stored inline.
pub const DEVICE_INLINE_BYTES: usize = 15;

/// End of an intrusive list.
const NIL: u32 = u32::MAX;

/// One user with at least one session (live or dead).
#[derive(Clone, Copy)]
struct UserRecord {
    key: StoredId<USER_INLINE_BYTES>,
    /// First session in the user's chain; never `NIL` while the user exists.
    first_session: u32,
}

/// One session: a device of a user, connected through a node.
#[derive(Clone, Copy)]
struct SessionRecord {
    device: StoredId<DEVICE_INLINE_BYTES>,
    /// The owning user record.
    user: u32,
    /// Next session of the same user, or `NIL`.
    user_next: u32,
    /// The handle (node) it belongs to.
    handle: u32,
    /// Neighbours on the handle's list, or `NIL`.
    node_prev: u32,
    node_next: u32,
    platform: u8,
    /// The per-session sequence assigned when it was opened.
    seq: u64,
}

/// A node's sessions of one generation (see the module docs).
#[derive(Clone, Copy)]
struct HandleRecord {
    node: NodeId,
    /// Its sessions are routed to; a dead handle's are being purged.
    live: bool,
    /// First session on the handle's list, or `NIL`.
    head: u32,
    /// Sessions on the list.
    count: u32,
}

/// A node's live handles.
#[derive(Clone, Default)]
struct NodeHandles {
    /// Where the node's new sessions go; `NIL` before its first.
    write: u32,
    /// During a snapshot: the handles of the sessions not listed yet.
    older: Vec<u32>,
}

/// One session of a user, as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session<'a> {
    pub node: NodeId,
    pub device: &'a [u8],
    /// The wire `Platform` value.
    pub platform: u8,
    pub seq: u64,
}

/// What [`Table::open`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenOutcome {
    /// A new session.
    Added,
    /// The same node opened the same device again; platform and sequence
    /// were updated.
    Refreshed,
    /// The device had a session on another node, which the new one replaced.
    Replaced { previous_node: NodeId },
    /// The user already has `sessions_per_user_max` sessions; nothing changed.
    UserFull,
    /// The table holds `sessions_max` sessions; nothing changed.
    TableFull,
}

impl OpenOutcome {
    /// Whether the table holds the session afterwards.
    pub fn holds(self) -> bool {
        matches!(
            self,
            OpenOutcome::Added | OpenOutcome::Refreshed | OpenOutcome::Replaced { .. }
        )
    }
}

/// What [`Table::close`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    Removed,
    /// No session of that user and device.
    NotFound,
    /// The session belongs to another node (it replaced the one being
    /// closed), so it was left alone.
    HeldByOtherNode,
    /// The node opened the session again with a larger `seq` after the one
    /// this close names; it was left alone.
    Stale,
}

/// Which sessions a new session of the same user replaces (OpenIM's
/// multi-terminal rules, XMPP's resource conflict). Every replaced session
/// is removed and reported by [`Table::drain_evicted`] so that its node can
/// be sent a Kick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LoginPolicy {
    /// Nothing is replaced: each (device, node) pair is its own session, so
    /// a device id connected through two nodes receives on both.
    AllowAll,
    /// One session per device id: the same device opened through another
    /// node moves there (the old node is kicked).
    #[default]
    SameDeviceKick,
    /// As `SameDeviceKick`, and one session per platform class: a new
    /// session replaces the user's other sessions of the same platform.
    SamePlatformKick,
    /// One session per user: a new session replaces all the others.
    SingleSession,
}

/// A session removed by the login policy when another one opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub node: NodeId,
    pub device: Box<[u8]>,
}

/// Sizes a table is allowed to grow to, and its login policy.
#[derive(Debug, Clone, Copy)]
pub struct TableLimits {
    /// Live sessions in this table; opens beyond it are refused (`TableFull`).
    pub sessions_max: usize,
    /// Live sessions of one user; opens beyond it are refused (`UserFull`).
    pub sessions_per_user_max: usize,
    /// Node ids are below this.
    pub nodes_max: usize,
    pub login_policy: LoginPolicy,
}

/// The location table of one shard. See the module docs for the layout.
pub struct Table {
    index: HashTable<u32>,
    hasher: ahash::RandomState,
    users: Slab<UserRecord>,
    sessions: Slab<SessionRecord>,
    spill: Spill,
    handles: Vec<HandleRecord>,
    free_handles: Vec<u32>,
    /// Each node's live handles, indexed by `NodeId`.
    nodes: Vec<NodeHandles>,
    /// Dead handles whose sessions are still to be purged, oldest first.
    dead: std::collections::VecDeque<u32>,
    /// Sessions on dead handles.
    dead_sessions: usize,
    limits: TableLimits,
    /// Sessions the last `open` removed under the login policy.
    evicted: Vec<Evicted>,
    /// Scratch for `open`: the sessions the login policy replaces.
    conflicts: Vec<u32>,
}

impl Table {
    pub fn new(limits: TableLimits) -> Self {
        assert!(limits.sessions_per_user_max > 0);
        Table {
            index: HashTable::new(),
            hasher: ahash::RandomState::new(),
            users: Slab::new(),
            sessions: Slab::new(),
            spill: Spill::default(),
            handles: Vec::new(),
            free_handles: Vec::new(),
            nodes: vec![
                NodeHandles {
                    write: NIL,
                    older: Vec::new()
                };
                limits.nodes_max
            ],
            dead: std::collections::VecDeque::new(),
            dead_sessions: 0,
            limits,
            evicted: Vec::new(),
            conflicts: Vec::with_capacity(limits.sessions_per_user_max),
        }
    }

    /// Live sessions in the table.
    /// Changes the session limits (a reload): they bound new opens only;
    /// sessions beyond a lowered limit stay until they close.
    pub fn set_session_limits(&mut self, sessions_max: usize, sessions_per_user_max: usize) {
        assert!(sessions_per_user_max > 0);
        self.limits.sessions_max = sessions_max;
        self.limits.sessions_per_user_max = sessions_per_user_max;
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len() - self.dead_sessions
    }

    /// Sessions of departed nodes not purged yet.
    pub fn dead_session_count(&self) -> usize {
        self.dead_sessions
    }

    /// Users with at least one session (live or not yet purged).
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    #[inline]
    fn is_live(&self, session: &SessionRecord) -> bool {
        self.handles[session.handle as usize].live
    }

    #[inline]
    fn node_of(&self, session: &SessionRecord) -> NodeId {
        self.handles[session.handle as usize].node
    }

    /// The handle `node`'s new sessions go to, created on first use.
    fn write_handle(&mut self, node: NodeId) -> u32 {
        let write = self.nodes[node.0 as usize].write;
        if write != NIL {
            return write;
        }
        let handle = self.new_handle(node);
        self.nodes[node.0 as usize].write = handle;
        handle
    }

    fn new_handle(&mut self, node: NodeId) -> u32 {
        let record = HandleRecord {
            node,
            live: true,
            head: NIL,
            count: 0,
        };
        match self.free_handles.pop() {
            Some(handle) => {
                self.handles[handle as usize] = record;
                handle
            }
            None => {
                self.handles.push(record);
                u32::try_from(self.handles.len() - 1).expect("handle index fits u32")
            }
        }
    }

    /// Registers `device` of `user` at `node`, as the login policy says.
    ///
    /// Under every policy but `AllowAll`, the same device on another node
    /// is moved here (`Replaced`; the caller kicks the previous node); on the
    /// same node it is refreshed. `SamePlatformKick` and `SingleSession`
    /// also remove the user's other sessions they conflict with, which
    /// [`Table::drain_evicted`] then lists. A refused open changes nothing.
    /// The session joins the node's current handle (during a snapshot: it
    /// counts as listed).
    pub fn open(
        &mut self,
        user: &[u8],
        device: &[u8],
        platform: u8,
        node: NodeId,
        seq: u64,
    ) -> OpenOutcome {
        assert!((node.0 as usize) < self.nodes.len(), "node id out of range");
        self.evicted.clear();
        let hash = self.hasher.hash_one(user);
        let Some(user_index) = self.find_user(hash, user) else {
            if self.session_count() >= self.limits.sessions_max {
                return OpenOutcome::TableFull;
            }
            let key = StoredId::new(user, &mut self.spill);
            let user_index = self.users.insert(UserRecord {
                key,
                first_session: NIL,
            });
            let (users, spill, hasher) = (&self.users, &self.spill, &self.hasher);
            self.index.insert_unique(hash, user_index, |&i| {
                hasher.hash_one(users.get(i).key.bytes(spill))
            });
            self.add_session(user_index, device, platform, node, seq);
            return OpenOutcome::Added;
        };

        // One pass over the user's live sessions: the one this open takes
        // over (if any), and the ones the policy makes it replace (kept in
        // a reused buffer: nothing is allocated or cleared per open).
        let policy = self.limits.login_policy;
        let mut same = None;
        let mut conflicts = std::mem::take(&mut self.conflicts);
        conflicts.clear();
        let mut count = 0;
        let mut cursor = self.users.get(user_index).first_session;
        while cursor != NIL {
            let index = cursor;
            let session = *self.sessions.get(index);
            cursor = session.user_next;
            if !self.is_live(&session) {
                continue;
            }
            let same_device = session.device.bytes(&self.spill) == device;
            let takes_over = match policy {
                LoginPolicy::AllowAll => same_device && self.node_of(&session) == node,
                _ => same_device,
            };
            let conflicts_with_new = match policy {
                LoginPolicy::AllowAll | LoginPolicy::SameDeviceKick => false,
                LoginPolicy::SamePlatformKick => session.platform == platform,
                LoginPolicy::SingleSession => true,
            };
            if takes_over {
                same = Some(index);
            } else if conflicts_with_new {
                conflicts.push(index);
            }
            count += 1;
        }
        let conflict_count = conflicts.len();
        self.conflicts = conflicts;

        let outcome = match same {
            Some(index) => {
                let previous_node = self.node_of(self.sessions.get(index));
                let record = self.sessions.get_mut(index);
                record.platform = platform;
                record.seq = seq;
                let write = self.write_handle(node);
                if self.sessions.get(index).handle != write {
                    // Another node's, or this node's older handle during a
                    // snapshot: it moves to the node's current one.
                    self.unlink_from_handle(index);
                    self.sessions.get_mut(index).handle = write;
                    self.link_to_handle(index);
                }
                if previous_node == node {
                    OpenOutcome::Refreshed
                } else {
                    OpenOutcome::Replaced { previous_node }
                }
            }
            None => {
                if count - conflict_count >= self.limits.sessions_per_user_max {
                    return OpenOutcome::UserFull;
                }
                if self.session_count() - conflict_count >= self.limits.sessions_max {
                    return OpenOutcome::TableFull;
                }
                self.add_session(user_index, device, platform, node, seq);
                OpenOutcome::Added
            }
        };
        // Removed after the new session is in place, so the user record
        // (and the collected indexes) stay valid.
        for i in 0..conflict_count {
            let index = self.conflicts[i];
            let session = *self.sessions.get(index);
            self.evicted.push(Evicted {
                node: self.node_of(&session),
                device: session.device.bytes(&self.spill).into(),
            });
            self.remove_session(index);
        }
        outcome
    }

    /// The sessions the last [`Table::open`] removed under the login
    /// policy (empty for `AllowAll` and `SameDeviceKick`).
    pub fn drain_evicted(&mut self) -> std::vec::Drain<'_, Evicted> {
        self.evicted.drain(..)
    }

    /// Removes the session of `device` of `user` if `node` holds it and,
    /// when `seq` is not 0, it was opened with `seq` or earlier (a close
    /// that arrives after a newer open of the same device is stale).
    pub fn close(&mut self, user: &[u8], device: &[u8], node: NodeId, seq: u64) -> CloseOutcome {
        let hash = self.hasher.hash_one(user);
        let Some(user_index) = self.find_user(hash, user) else {
            return CloseOutcome::NotFound;
        };
        let mut held_elsewhere = false;
        let mut cursor = self.users.get(user_index).first_session;
        while cursor != NIL {
            let session = *self.sessions.get(cursor);
            if self.is_live(&session) && session.device.bytes(&self.spill) == device {
                if self.node_of(&session) == node {
                    if seq != 0 && session.seq > seq {
                        return CloseOutcome::Stale;
                    }
                    self.remove_session(cursor);
                    return CloseOutcome::Removed;
                }
                // Under AllowAll the same device may also be on `node`.
                held_elsewhere = true;
            }
            cursor = session.user_next;
        }
        if held_elsewhere {
            CloseOutcome::HeldByOtherNode
        } else {
            CloseOutcome::NotFound
        }
    }

    /// The live sessions of `user`, most recently opened first.
    pub fn sessions<'a>(&'a self, user: &[u8]) -> Sessions<'a> {
        let hash = self.hasher.hash_one(user);
        let cursor = match self.find_user(hash, user) {
            Some(user_index) => self.users.get(user_index).first_session,
            None => NIL,
        };
        Sessions {
            table: self,
            cursor,
        }
    }

    /// Makes every session of `node` dead at once (see the module docs);
    /// [`Table::purge_step`] removes them later. Returns how many died.
    pub fn retire_node(&mut self, node: NodeId) -> usize {
        let handles = std::mem::take(&mut self.nodes[node.0 as usize]);
        let mut retired = 0;
        for handle in handles
            .older
            .into_iter()
            .chain((handles.write != NIL).then_some(handles.write))
        {
            retired += self.retire_handle(handle);
        }
        self.nodes[node.0 as usize].write = NIL;
        retired
    }

    fn retire_handle(&mut self, handle: u32) -> usize {
        let record = &mut self.handles[handle as usize];
        debug_assert!(record.live);
        record.live = false;
        let count = record.count as usize;
        self.dead_sessions += count;
        self.dead.push_back(handle);
        count
    }

    /// Whether dead sessions wait to be purged.
    pub fn has_dead(&self) -> bool {
        !self.dead.is_empty()
    }

    /// Removes up to `max` dead sessions; returns how many it removed.
    pub fn purge_step(&mut self, max: usize) -> usize {
        let mut removed = 0;
        while removed < max {
            let Some(&handle) = self.dead.front() else {
                break;
            };
            let head = self.handles[handle as usize].head;
            if head == NIL {
                self.dead.pop_front();
                self.free_handles.push(handle);
                continue;
            }
            self.remove_session(head);
            self.dead_sessions -= 1;
            removed += 1;
        }
        removed
    }

    /// Removes every session of `node` now; returns how many there were.
    pub fn purge_node(&mut self, node: NodeId) -> usize {
        let retired = self.retire_node(node);
        while self.purge_step(usize::MAX) > 0 {}
        retired
    }

    /// Starts a snapshot of `node`'s sessions: from now on, what it opens
    /// (the snapshot's sessions and any SessionOpen) is *listed*. A
    /// snapshot started before and not ended is forgotten: its sessions
    /// are unlisted again.
    pub fn begin_snapshot(&mut self, node: NodeId) {
        let write = self.nodes[node.0 as usize].write;
        if write != NIL {
            self.nodes[node.0 as usize].older.push(write);
        }
        let handle = self.new_handle(node);
        self.nodes[node.0 as usize].write = handle;
    }

    /// Ends `node`'s snapshot: its sessions that were not listed die (and
    /// are purged later). Returns how many.
    pub fn end_snapshot(&mut self, node: NodeId) -> usize {
        let older = std::mem::take(&mut self.nodes[node.0 as usize].older);
        older
            .into_iter()
            .map(|handle| self.retire_handle(handle))
            .sum()
    }

    /// Ends `node`'s snapshot scoped to the users `in_scope` accepts (the
    /// slots a scoped SessionSync lists): its sessions of those users that
    /// the snapshot did not list die; its other sessions stay, listed or
    /// not. Returns how many died. Walks the node's unlisted sessions.
    pub fn end_snapshot_scoped(
        &mut self,
        node: NodeId,
        mut in_scope: impl FnMut(&[u8]) -> bool,
    ) -> usize {
        let older = std::mem::take(&mut self.nodes[node.0 as usize].older);
        let write = self.write_handle(node);
        for &handle in &older {
            let mut cursor = self.handles[handle as usize].head;
            while cursor != NIL {
                let session = *self.sessions.get(cursor);
                let user = self.users.get(session.user).key.bytes(&self.spill);
                if !in_scope(user) {
                    self.unlink_from_handle(cursor);
                    self.sessions.get_mut(cursor).handle = write;
                    self.link_to_handle(cursor);
                }
                cursor = session.node_next;
            }
        }
        older
            .into_iter()
            .map(|handle| self.retire_handle(handle))
            .sum()
    }

    /// Removes every session, live or dead, of the users `remove` selects
    /// (the users of slots this shard no longer owns); returns how many
    /// live sessions went. Walks every user.
    pub fn remove_users(&mut self, mut remove: impl FnMut(&[u8]) -> bool) -> usize {
        let chosen: Vec<u32> = self
            .index
            .iter()
            .copied()
            .filter(|&user| remove(self.users.get(user).key.bytes(&self.spill)))
            .collect();
        let mut removed = 0;
        for user in chosen {
            // `remove_session` frees the user with its last session.
            loop {
                let first = self.users.get(user).first_session;
                let session = *self.sessions.get(first);
                let last = session.user_next == NIL;
                if self.is_live(&session) {
                    removed += 1;
                } else {
                    self.dead_sessions -= 1;
                }
                self.remove_session(first);
                if last {
                    break;
                }
            }
        }
        removed
    }

    /// Live sessions `node` holds in this table.
    pub fn node_session_count(&self, node: NodeId) -> usize {
        let handles = &self.nodes[node.0 as usize];
        handles
            .older
            .iter()
            .chain((handles.write != NIL).then_some(&handles.write))
            .map(|&handle| self.handles[handle as usize].count as usize)
            .sum()
    }

    fn find_user(&self, hash: u64, user: &[u8]) -> Option<u32> {
        let (users, spill) = (&self.users, &self.spill);
        self.index
            .find(hash, |&i| users.get(i).key.bytes(spill) == user)
            .copied()
    }

    fn add_session(
        &mut self,
        user_index: u32,
        device: &[u8],
        platform: u8,
        node: NodeId,
        seq: u64,
    ) {
        let handle = self.write_handle(node);
        let device = StoredId::new(device, &mut self.spill);
        let user_next = self.users.get(user_index).first_session;
        let session_index = self.sessions.insert(SessionRecord {
            device,
            user: user_index,
            user_next,
            handle,
            node_prev: NIL,
            node_next: NIL,
            platform,
            seq,
        });
        self.users.get_mut(user_index).first_session = session_index;
        self.link_to_handle(session_index);
    }

    /// Unlinks a session from both lists, frees it, and frees its user when
    /// that was the user's last session.
    fn remove_session(&mut self, session_index: u32) {
        self.unlink_from_handle(session_index);
        let session = self.sessions.remove(session_index);
        session.device.free(&mut self.spill);

        let user_index = session.user;
        let user = self.users.get_mut(user_index);
        if user.first_session == session_index {
            user.first_session = session.user_next;
        } else {
            let mut cursor = user.first_session;
            loop {
                assert!(cursor != NIL, "session missing from its user's chain");
                let record = self.sessions.get_mut(cursor);
                if record.user_next == session_index {
                    record.user_next = session.user_next;
                    break;
                }
                cursor = record.user_next;
            }
        }
        if self.users.get(user_index).first_session == NIL {
            self.remove_user(user_index);
        }
    }

    fn remove_user(&mut self, user_index: u32) {
        let record = *self.users.get(user_index);
        let hash = self.hasher.hash_one(record.key.bytes(&self.spill));
        match self.index.find_entry(hash, |&i| i == user_index) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => panic!("user record missing from the index"),
        }
        record.key.free(&mut self.spill);
        self.users.remove(user_index);
    }

    fn link_to_handle(&mut self, session_index: u32) {
        let handle = self.sessions.get(session_index).handle as usize;
        let head = self.handles[handle].head;
        if head != NIL {
            self.sessions.get_mut(head).node_prev = session_index;
        }
        let record = self.sessions.get_mut(session_index);
        record.node_prev = NIL;
        record.node_next = head;
        self.handles[handle].head = session_index;
        self.handles[handle].count += 1;
    }

    fn unlink_from_handle(&mut self, session_index: u32) {
        let SessionRecord {
            handle,
            node_prev,
            node_next,
            ..
        } = *self.sessions.get(session_index);
        let handle = handle as usize;
        if node_prev == NIL {
            debug_assert_eq!(self.handles[handle].head, session_index);
            self.handles[handle].head = node_next;
        } else {
            self.sessions.get_mut(node_prev).node_next = node_next;
        }
        if node_next != NIL {
            self.sessions.get_mut(node_next).node_prev = node_prev;
        }
        self.handles[handle].count -= 1;
    }

    /// Gives memory back after a burst: the user index shrinks to what it
    /// holds, the slabs give back their free slots at the end (all of them
    /// once empty), and so does the store of long ids. Records keep their
    /// places. Costs a pass over the index and the free lists: for
    /// [`Table::wants_shrink`], not for every operation.
    pub fn shrink(&mut self) {
        let (users, spill, hasher) = (&self.users, &self.spill, &self.hasher);
        self.index
            .shrink_to_fit(|&i| hasher.hash_one(users.get(i).key.bytes(spill)));
        self.users.shrink();
        self.sessions.shrink();
        self.spill.shrink();
        self.evicted.shrink_to_fit();
        self.conflicts.shrink_to_fit();
    }

    /// Whether most of the table's memory holds nothing (fewer than a
    /// quarter of its session slots are used, and it is not tiny): worth a
    /// [`Table::shrink`].
    pub fn wants_shrink(&self) -> bool {
        const SLOTS_KEPT: usize = 1024;
        let slots = self.sessions.slots().max(self.users.slots());
        slots > SLOTS_KEPT && self.sessions.len() * 4 < slots
    }
}

/// Iterator over one user's live sessions.
pub struct Sessions<'a> {
    table: &'a Table,
    cursor: u32,
}

impl<'a> Iterator for Sessions<'a> {
    type Item = Session<'a>;

    fn next(&mut self) -> Option<Session<'a>> {
        while self.cursor != NIL {
            let record = self.table.sessions.get(self.cursor);
            self.cursor = record.user_next;
            let handle = &self.table.handles[record.handle as usize];
            if !handle.live {
                continue;
            }
            return Some(Session {
                node: handle.node,
                device: record.device.bytes(&self.table.spill),
                platform: record.platform,
                seq: record.seq,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests;
