//! What a member tells its shards, and when: [`Views`] turns a
//! [`Member`]'s state into a [`ClusterView`] each time something a shard
//! acts on changed (the map, the router's id, the slots released to it,
//! its fence), and only then. Sans-IO: the control-plane thread and the
//! simulation both call it after every step of the member.

use std::sync::Arc;

use super::map::{RouterId, SlotMap, SlotSet};
use super::member::Member;
use crate::core::slots::ClusterView;
use crate::time::Time;

/// See the module docs.
pub struct Views {
    /// The last view sent, and what it was made of.
    last: Option<ClusterView>,
    version: u64,
    /// The map as nodes see it (with routers that own nothing yet), and
    /// the member map's epoch and router count it was made from.
    listed: Option<(u64, usize, Arc<SlotMap>)>,
    /// The slots the map of the last view gave this router.
    mine: SlotSet,
}

impl Default for Views {
    fn default() -> Self {
        Views::new()
    }
}

impl Views {
    pub fn new() -> Views {
        Views {
            last: None,
            version: 0,
            listed: None,
            mine: SlotSet::empty(),
        }
    }

    /// The view to send now, if it differs from the last one sent.
    pub fn next(&mut self, member: &Member) -> Option<ClusterView> {
        let me: RouterId = member.id().unwrap_or(0);
        let fence = member.fence().unwrap_or(Time::ZERO);
        let map = self.listed_map(member);
        if let Some(last) = &self.last {
            let same_map = match (&last.map, &map) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same_map
                && last.me == me
                && last.fence == fence
                && self.version == member.version()
                && last.expected_nodes == member.most_nodes()
            {
                return None;
            }
        }
        self.version = member.version();
        let mine = match &map {
            Some(map) if me != 0 => map.slots_of(me),
            _ => SlotSet::empty(),
        };
        let same_router = self.last.as_ref().is_some_and(|last| last.me == me);
        let mut gained = mine.clone();
        if same_router {
            gained.subtract(&self.mine);
        }
        self.mine = mine;
        let released = member.released_slots();
        let released = match &self.last {
            Some(last) if *last.released == released => last.released.clone(),
            _ => Arc::new(released),
        };
        let view = ClusterView {
            map,
            me,
            released,
            gained: Arc::new(gained),
            fence,
            expected_nodes: member.most_nodes(),
        };
        self.last = Some(view.clone());
        Some(view)
    }

    /// The member's map listing every registered router, kept while
    /// neither changes.
    fn listed_map(&mut self, member: &Member) -> Option<Arc<SlotMap>> {
        let map = member.map()?;
        let routers = member.routers().count();
        if let Some((epoch, count, listed)) = &self.listed {
            if *epoch == map.epoch() && *count == routers {
                return Some(listed.clone());
            }
        }
        let listed = Arc::new(map.clone().listing(member.routers().cloned()));
        self.listed = Some((map.epoch(), routers, listed.clone()));
        Some(listed)
    }
}
