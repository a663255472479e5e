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
//!   `sessions_per_user_max` sessions) and its node's list (doubly linked),
//!   so purging a node costs time in proportion to that node's sessions only.
//! - Ids longer than their inline room live in `spill`, one heap block each.

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

/// One user with at least one session.
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
    node: NodeId,
    /// Neighbours on the node's list, or `NIL`.
    node_prev: u32,
    node_next: u32,
    platform: u8,
    /// The per-session sequence assigned when it was opened.
    seq: u64,
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
    /// Sessions in this table; opens beyond it are refused (`TableFull`).
    pub sessions_max: usize,
    /// Sessions of one user; opens beyond it are refused (`UserFull`).
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
    /// First session of each node in this table, indexed by `NodeId`.
    node_heads: Vec<u32>,
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
            node_heads: vec![NIL; limits.nodes_max],
            limits,
            evicted: Vec::new(),
            conflicts: Vec::with_capacity(limits.sessions_per_user_max),
        }
    }

    /// Sessions in the table.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Users with at least one session.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Registers `device` of `user` at `node`, as the login policy says.
    ///
    /// Under every policy but `AllowAll`, the same device on another node
    /// is moved here (`Replaced`; the caller kicks the previous node); on the
    /// same node it is refreshed. `SamePlatformKick` and `SingleSession`
    /// also remove the user's other sessions they conflict with, which
    /// [`Table::drain_evicted`] then lists. A refused open changes nothing.
    pub fn open(
        &mut self,
        user: &[u8],
        device: &[u8],
        platform: u8,
        node: NodeId,
        seq: u64,
    ) -> OpenOutcome {
        assert!(
            (node.0 as usize) < self.node_heads.len(),
            "node id out of range"
        );
        self.evicted.clear();
        let hash = self.hasher.hash_one(user);
        let Some(user_index) = self.find_user(hash, user) else {
            if self.sessions.len() >= self.limits.sessions_max {
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

        // One pass over the user's sessions: the one this open takes over
        // (if any), and the ones the policy makes it replace (kept in a
        // reused buffer: nothing is allocated or cleared per open).
        let policy = self.limits.login_policy;
        let mut same = None;
        let conflicts = &mut self.conflicts;
        conflicts.clear();
        let mut count = 0;
        let mut cursor = self.users.get(user_index).first_session;
        while cursor != NIL {
            let session = self.sessions.get(cursor);
            let same_device = session.device.bytes(&self.spill) == device;
            let takes_over = match policy {
                LoginPolicy::AllowAll => same_device && session.node == node,
                _ => same_device,
            };
            let conflicts_with_new = match policy {
                LoginPolicy::AllowAll | LoginPolicy::SameDeviceKick => false,
                LoginPolicy::SamePlatformKick => session.platform == platform,
                LoginPolicy::SingleSession => true,
            };
            if takes_over {
                same = Some(cursor);
            } else if conflicts_with_new {
                conflicts.push(cursor);
            }
            count += 1;
            cursor = session.user_next;
        }
        let conflict_count = conflicts.len();

        let outcome = match same {
            Some(index) => {
                let previous_node = self.sessions.get(index).node;
                let record = self.sessions.get_mut(index);
                record.platform = platform;
                record.seq = seq;
                if previous_node == node {
                    OpenOutcome::Refreshed
                } else {
                    self.unlink_from_node(index);
                    self.sessions.get_mut(index).node = node;
                    self.link_to_node(index);
                    OpenOutcome::Replaced { previous_node }
                }
            }
            None => {
                if count - conflict_count >= self.limits.sessions_per_user_max {
                    return OpenOutcome::UserFull;
                }
                if self.sessions.len() - conflict_count >= self.limits.sessions_max {
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
            let session = self.sessions.get(index);
            self.evicted.push(Evicted {
                node: session.node,
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
            let session = self.sessions.get(cursor);
            if session.device.bytes(&self.spill) == device {
                if session.node == node {
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

    /// The sessions of `user`, most recently opened first.
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

    /// Removes every session held by `node`; returns how many there were.
    pub fn purge_node(&mut self, node: NodeId) -> usize {
        let mut removed = 0;
        loop {
            let head = self.node_heads[node.0 as usize];
            if head == NIL {
                return removed;
            }
            self.remove_session(head);
            removed += 1;
        }
    }

    /// Removes the sessions of `node` for which `keep(user, device)` is
    /// false; returns how many. Walks the node's list only.
    pub fn retain_node(
        &mut self,
        node: NodeId,
        mut keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> usize {
        let mut doomed = Vec::new();
        let mut cursor = self.node_heads[node.0 as usize];
        while cursor != NIL {
            let session = self.sessions.get(cursor);
            let user = self.users.get(session.user).key.bytes(&self.spill);
            if !keep(user, session.device.bytes(&self.spill)) {
                doomed.push(cursor);
            }
            cursor = session.node_next;
        }
        for &index in &doomed {
            self.remove_session(index);
        }
        doomed.len()
    }

    /// Sessions `node` holds in this table. Walks the node's list.
    pub fn node_session_count(&self, node: NodeId) -> usize {
        let mut count = 0;
        let mut cursor = self.node_heads[node.0 as usize];
        while cursor != NIL {
            count += 1;
            cursor = self.sessions.get(cursor).node_next;
        }
        count
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
        let device = StoredId::new(device, &mut self.spill);
        let user_next = self.users.get(user_index).first_session;
        let session_index = self.sessions.insert(SessionRecord {
            device,
            user: user_index,
            user_next,
            node,
            node_prev: NIL,
            node_next: NIL,
            platform,
            seq,
        });
        self.users.get_mut(user_index).first_session = session_index;
        self.link_to_node(session_index);
    }

    /// Unlinks a session from both lists, frees it, and frees its user when
    /// that was the user's last session.
    fn remove_session(&mut self, session_index: u32) {
        self.unlink_from_node(session_index);
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

    fn link_to_node(&mut self, session_index: u32) {
        let node = self.sessions.get(session_index).node.0 as usize;
        let head = self.node_heads[node];
        if head != NIL {
            self.sessions.get_mut(head).node_prev = session_index;
        }
        let record = self.sessions.get_mut(session_index);
        record.node_prev = NIL;
        record.node_next = head;
        self.node_heads[node] = session_index;
    }

    fn unlink_from_node(&mut self, session_index: u32) {
        let SessionRecord {
            node,
            node_prev,
            node_next,
            ..
        } = *self.sessions.get(session_index);
        if node_prev == NIL {
            debug_assert_eq!(self.node_heads[node.0 as usize], session_index);
            self.node_heads[node.0 as usize] = node_next;
        } else {
            self.sessions.get_mut(node_prev).node_next = node_next;
        }
        if node_next != NIL {
            self.sessions.get_mut(node_next).node_prev = node_prev;
        }
    }
}

/// Iterator over one user's sessions.
pub struct Sessions<'a> {
    table: &'a Table,
    cursor: u32,
}

impl<'a> Iterator for Sessions<'a> {
    type Item = Session<'a>;

    fn next(&mut self) -> Option<Session<'a>> {
        if self.cursor == NIL {
            return None;
        }
        let record = self.table.sessions.get(self.cursor);
        self.cursor = record.user_next;
        Some(Session {
            node: record.node,
            device: record.device.bytes(&self.table.spill),
            platform: record.platform,
            seq: record.seq,
        })
    }
}

#[cfg(test)]
mod tests;
