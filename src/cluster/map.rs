//! The slot map: which router, and which of its shards, owns each of the
//! 16,384 slots, at which epoch.
//!
//! Routers are named in the map by their [`RouterId`], the id of the etcd
//! lease they registered under: a router process that lost its lease (a
//! crash, a pause past the TTL) registers again under a new id, so an old
//! map can never make a new process serve slots it was not given.
//!
//! The map is written to etcd by the controller only (see
//! [`super::member`] and [`super::plan`]) and sent to nodes in Welcome and on every change.
//! In etcd it is stored as text, one line per router and per slot range,
//! so that `etcdctl get` shows it readably:
//!
//! ```text
//! imrouter-slot-map 1
//! epoch 7
//! router 1a2b3c r1 10.0.0.1:7800 2
//! router 4d5e6f r2 10.0.0.2:7800 2
//! slots 0-4095 1a2b3c 0
//! slots 4096-8191 1a2b3c 1
//! slots 8192-12287 4d5e6f 0
//! slots 12288-16383 4d5e6f 1
//! ```
//!
//! (ids in hex; every slot listed exactly once; a router listed only if it
//! owns a slot or is about to.)

use std::fmt::Write as _;

use crate::limits::{ROUTER_ADDR_MAX, ROUTER_NAME_MAX, SHARDS_MAX, SLOT_COUNT};

/// A router's identity in the cluster: its etcd lease id. A single router
/// (no cluster) is router 1.
pub type RouterId = u64;

/// The id of a router that runs alone, without etcd.
pub const SINGLE_ROUTER: RouterId = 1;

/// A router as the map lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterInfo {
    pub id: RouterId,
    /// Its `--name` (for operators: `imrouter cluster status`).
    pub name: String,
    /// Where nodes connect to it (`--advertise`).
    pub addr: String,
    /// Its shard count (the slots it owns are spread over them).
    pub shards: u16,
}

/// The owner of one slot: an index into [`SlotMap::routers`] and a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub router: u16,
    pub shard: u16,
}

/// A contiguous range of slots with one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRange {
    pub first: u16,
    pub last: u16,
    pub router: RouterId,
    pub shard: u16,
}

impl SlotRange {
    /// The contiguous runs of per-slot owners `(router, shard)`, given in
    /// slot order from slot 0.
    pub fn runs(owners: impl Iterator<Item = (RouterId, u16)>) -> Vec<SlotRange> {
        let mut ranges: Vec<SlotRange> = Vec::new();
        for (slot, (router, shard)) in owners.enumerate() {
            match ranges.last_mut() {
                Some(range) if range.router == router && range.shard == shard => {
                    range.last = slot as u16;
                }
                _ => ranges.push(SlotRange {
                    first: slot as u16,
                    last: slot as u16,
                    router,
                    shard,
                }),
            }
        }
        ranges
    }
}

/// Which router and shard owns every slot, at an epoch. Every slot has
/// exactly one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    epoch: u64,
    routers: Vec<RouterInfo>,
    owners: Vec<Owner>,
    /// `owners` as contiguous ranges (what Welcomes and SlotMap frames
    /// carry), computed once: a map is sent far more often than made.
    ranges: Vec<SlotRange>,
}

/// Why a map was refused (from etcd or a router's frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    Syntax {
        line: usize,
        text: String,
    },
    /// A slot listed twice, or not at all.
    Slots(String),
    Router(String),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::Syntax { line, text } => write!(f, "slot map line {line}: {text}"),
            MapError::Slots(text) => write!(f, "slot map: {text}"),
            MapError::Router(text) => write!(f, "slot map: {text}"),
        }
    }
}

impl std::error::Error for MapError {}

const HEADER: &str = "imrouter-slot-map 1";

impl SlotMap {
    /// A router alone: every slot is its own, spread over its shards as a
    /// single router always has (`placement::shard_for_slot`). Epoch 1.
    pub fn single(router: RouterInfo) -> SlotMap {
        let shards = router.shards as usize;
        let owners = (0..SLOT_COUNT)
            .map(|slot| Owner {
                router: 0,
                shard: crate::placement::shard_for_slot(slot, shards) as u16,
            })
            .collect();
        SlotMap {
            epoch: 1,
            routers: vec![router],
            owners,
            ranges: Vec::new(),
        }
        .with_ranges()
    }

    /// A map from its ranges, which must cover every slot exactly once and
    /// name only `routers` (each at most once) and their shards. Routers
    /// that own nothing are dropped.
    pub fn from_ranges(
        epoch: u64,
        routers: Vec<RouterInfo>,
        ranges: &[SlotRange],
    ) -> Result<SlotMap, MapError> {
        for (at, router) in routers.iter().enumerate() {
            if routers[..at].iter().any(|other| other.id == router.id) {
                return Err(MapError::Router(format!(
                    "router {:x} listed twice",
                    router.id
                )));
            }
            check_router(router)?;
        }
        if routers.len() > u16::MAX as usize {
            return Err(MapError::Router("too many routers".into()));
        }
        // Check the ranges in slot order (they cost their count, not the
        // slots': a map is parsed from every Welcome and SlotMap frame).
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable_by_key(|range| range.first);
        let mut next = 0u32;
        for range in &sorted {
            if range.first > range.last || range.last >= SLOT_COUNT {
                return Err(MapError::Slots(format!(
                    "bad range {}-{}",
                    range.first, range.last
                )));
            }
            let Some(index) = routers.iter().position(|r| r.id == range.router) else {
                return Err(MapError::Router(format!(
                    "slots {}-{} name router {:x}, which is not listed",
                    range.first, range.last, range.router
                )));
            };
            if range.shard >= routers[index].shards {
                return Err(MapError::Router(format!(
                    "slots {}-{} name shard {} of router {:x}, which has {}",
                    range.first, range.last, range.shard, range.router, routers[index].shards
                )));
            }
            match u32::from(range.first).cmp(&next) {
                std::cmp::Ordering::Less => {
                    return Err(MapError::Slots(format!(
                        "slot {} listed twice",
                        range.first.max(next.saturating_sub(1) as u16)
                    )))
                }
                std::cmp::Ordering::Greater => {
                    return Err(MapError::Slots(format!("slot {next} has no owner")))
                }
                std::cmp::Ordering::Equal => next = u32::from(range.last) + 1,
            }
        }
        if next != u32::from(SLOT_COUNT) {
            return Err(MapError::Slots(format!("slot {next} has no owner")));
        }
        // Routers that own nothing are dropped.
        let owning: Vec<RouterInfo> = routers
            .into_iter()
            .filter(|router| sorted.iter().any(|range| range.router == router.id))
            .collect();
        let mut owners = Vec::with_capacity(SLOT_COUNT as usize);
        let mut merged: Vec<SlotRange> = Vec::with_capacity(sorted.len());
        for range in &sorted {
            let index = owning
                .iter()
                .position(|r| r.id == range.router)
                .expect("an owning router") as u16;
            let owner = Owner {
                router: index,
                shard: range.shard,
            };
            owners.resize(usize::from(range.last) + 1, owner);
            match merged.last_mut() {
                Some(last) if last.router == range.router && last.shard == range.shard => {
                    last.last = range.last;
                }
                _ => merged.push(*range),
            }
        }
        Ok(SlotMap {
            epoch,
            routers: owning,
            owners,
            ranges: merged,
        })
    }

    fn with_ranges(mut self) -> SlotMap {
        self.ranges = SlotRange::runs(
            self.owners
                .iter()
                .map(|owner| (self.routers[owner.router as usize].id, owner.shard)),
        );
        self
    }

    /// The map a SlotMap table carries (in a Welcome or a frame of its
    /// own), and the slot ranges its sender asks to be resynced.
    pub fn from_wire(
        table: crate::wire::fb::SlotMap<'_>,
    ) -> Result<(SlotMap, Vec<(u16, u16)>), MapError> {
        let mut routers = Vec::new();
        for entry in table.routers().iter().flatten() {
            routers.push(RouterInfo {
                id: entry.id(),
                name: entry.name().unwrap_or_default().to_owned(),
                addr: entry.addr().unwrap_or_default().to_owned(),
                shards: entry.shards(),
            });
        }
        let (Some(starts), Some(owners), Some(shards)) = (
            table.range_starts(),
            table.range_routers(),
            table.range_shards(),
        ) else {
            return Err(MapError::Slots("no ranges".into()));
        };
        if starts.len() != owners.len() || starts.len() != shards.len() || starts.is_empty() {
            return Err(MapError::Slots("range vectors of different lengths".into()));
        }
        let mut ranges = Vec::with_capacity(starts.len());
        for i in 0..starts.len() {
            let first = starts.get(i);
            let end = if i + 1 < starts.len() {
                starts.get(i + 1)
            } else {
                SLOT_COUNT
            };
            if end <= first {
                return Err(MapError::Slots(format!("range {i} is empty")));
            }
            let Some(router) = routers.get(owners.get(i) as usize) else {
                return Err(MapError::Router(format!("range {i} names no router")));
            };
            ranges.push(SlotRange {
                first,
                last: end - 1,
                router: router.id,
                shard: shards.get(i),
            });
        }
        let map = SlotMap::from_ranges(table.epoch(), routers.clone(), &ranges)?.listing(routers);
        let mut resync = Vec::new();
        if let Some(flat) = table.resync() {
            if flat.len() % 2 != 0 {
                return Err(MapError::Slots("resync has an odd length".into()));
            }
            for i in (0..flat.len()).step_by(2) {
                let (first, last) = (flat.get(i), flat.get(i + 1));
                if first > last || last >= SLOT_COUNT {
                    return Err(MapError::Slots(format!("bad resync range {first}-{last}")));
                }
                resync.push((first, last));
            }
        }
        Ok((map, resync))
    }

    /// The same map, also listing `routers` that own nothing yet (a router
    /// that joined: nodes connect to it before it is given slots).
    pub fn listing(mut self, routers: impl IntoIterator<Item = RouterInfo>) -> SlotMap {
        for router in routers {
            let listed = self.routers.iter().any(|r| r.id == router.id);
            if !listed && check_router(&router).is_ok() && self.routers.len() < u16::MAX as usize {
                self.routers.push(router);
            }
        }
        self
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn routers(&self) -> &[RouterInfo] {
        &self.routers
    }

    pub fn router(&self, id: RouterId) -> Option<&RouterInfo> {
        self.routers.iter().find(|router| router.id == id)
    }

    /// The router and shard that own `slot`.
    #[inline]
    pub fn owner(&self, slot: u16) -> (&RouterInfo, u16) {
        let owner = self.owners[slot as usize];
        (&self.routers[owner.router as usize], owner.shard)
    }

    /// The id of the router that owns `slot`.
    #[inline]
    pub fn owner_id(&self, slot: u16) -> RouterId {
        self.routers[self.owners[slot as usize].router as usize].id
    }

    /// Contiguous ranges, in slot order.
    pub fn ranges(&self) -> &[SlotRange] {
        &self.ranges
    }

    /// How many slots each router owns, in `routers()` order.
    pub fn slots_per_router(&self) -> Vec<usize> {
        let mut counts = vec![0; self.routers.len()];
        for owner in &self.owners {
            counts[owner.router as usize] += 1;
        }
        counts
    }

    /// The slots `router` owns, as a bitmap of `SLOT_COUNT` bits.
    pub fn slots_of(&self, router: RouterId) -> SlotSet {
        let mut set = SlotSet::empty();
        if let Some(index) = self.routers.iter().position(|r| r.id == router) {
            for (slot, owner) in self.owners.iter().enumerate() {
                if owner.router as usize == index {
                    set.insert(slot as u16);
                }
            }
        }
        set
    }

    /// The slots whose owner (router or shard) differs between the two maps.
    pub fn moved_slots(&self, newer: &SlotMap) -> SlotSet {
        let mut set = SlotSet::empty();
        for slot in 0..SLOT_COUNT {
            let (a, a_shard) = self.owner(slot);
            let (b, b_shard) = newer.owner(slot);
            if a.id != b.id || a_shard != b_shard {
                set.insert(slot);
            }
        }
        set
    }

    /// The text stored in etcd (see the module doc).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(64 * (self.routers.len() + 8));
        let _ = writeln!(text, "{HEADER}");
        let _ = writeln!(text, "epoch {}", self.epoch);
        for router in &self.routers {
            let _ = writeln!(
                text,
                "router {:x} {} {} {}",
                router.id, router.name, router.addr, router.shards
            );
        }
        for range in self.ranges() {
            let _ = writeln!(
                text,
                "slots {}-{} {:x} {}",
                range.first, range.last, range.router, range.shard
            );
        }
        text
    }

    /// Parses what [`SlotMap::encode`] wrote; refuses anything else.
    pub fn decode(text: &str) -> Result<SlotMap, MapError> {
        let mut lines = text.lines().enumerate().map(|(at, line)| (at + 1, line));
        let syntax = |line: usize, text: &str| MapError::Syntax {
            line,
            text: text.to_string(),
        };
        match lines.next() {
            Some((_, line)) if line == HEADER => {}
            _ => return Err(syntax(1, "not an imrouter slot map (version 1)")),
        }
        let epoch = match lines.next() {
            Some((at, line)) => line
                .strip_prefix("epoch ")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| syntax(at, "expected `epoch N`"))?,
            None => return Err(syntax(2, "expected `epoch N`")),
        };
        let mut routers = Vec::new();
        let mut ranges = Vec::new();
        for (at, line) in lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["router", id, name, addr, shards] => {
                    let id = u64::from_str_radix(id, 16)
                        .map_err(|_| syntax(at, "router id is not hex"))?;
                    let shards = shards
                        .parse::<u16>()
                        .map_err(|_| syntax(at, "shard count is not a number"))?;
                    routers.push(RouterInfo {
                        id,
                        name: name.to_string(),
                        addr: addr.to_string(),
                        shards,
                    });
                }
                ["slots", span, router, shard] => {
                    let (first, last) = span
                        .split_once('-')
                        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
                        .ok_or_else(|| syntax(at, "expected `slots FIRST-LAST ROUTER SHARD`"))?;
                    let router = u64::from_str_radix(router, 16)
                        .map_err(|_| syntax(at, "router id is not hex"))?;
                    let shard = shard
                        .parse::<u16>()
                        .map_err(|_| syntax(at, "shard is not a number"))?;
                    ranges.push(SlotRange {
                        first,
                        last,
                        router,
                        shard,
                    });
                }
                [""] => {}
                _ => return Err(syntax(at, "expected a `router` or a `slots` line")),
            }
        }
        SlotMap::from_ranges(epoch, routers, &ranges)
    }
}

fn check_router(router: &RouterInfo) -> Result<(), MapError> {
    let word = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
    };
    if !word(&router.name, ROUTER_NAME_MAX) {
        return Err(MapError::Router(format!(
            "router {:x}: name must be 1 to {ROUTER_NAME_MAX} printable characters without spaces",
            router.id
        )));
    }
    if !word(&router.addr, ROUTER_ADDR_MAX) {
        return Err(MapError::Router(format!(
            "router {:x}: address must be 1 to {ROUTER_ADDR_MAX} printable characters without spaces",
            router.id
        )));
    }
    if router.shards == 0 || router.shards as usize > SHARDS_MAX {
        return Err(MapError::Router(format!(
            "router {:x}: {} shards (1 to {SHARDS_MAX})",
            router.id, router.shards
        )));
    }
    Ok(())
}

/// A set of slots (a bitmap of `SLOT_COUNT` bits, 2 KiB).
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet {
    words: Box<[u64; SLOT_COUNT as usize / 64]>,
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotSet({} slots: {:?})", self.len(), self.spans())
    }
}

impl SlotSet {
    pub fn empty() -> SlotSet {
        SlotSet {
            words: Box::new([0; SLOT_COUNT as usize / 64]),
        }
    }

    pub fn full() -> SlotSet {
        SlotSet {
            words: Box::new([u64::MAX; SLOT_COUNT as usize / 64]),
        }
    }

    pub fn from_spans(spans: &[(u16, u16)]) -> SlotSet {
        let mut set = SlotSet::empty();
        for &(first, last) in spans {
            for slot in first..=last.min(SLOT_COUNT - 1) {
                set.insert(slot);
            }
        }
        set
    }

    #[inline]
    pub fn contains(&self, slot: u16) -> bool {
        self.words[slot as usize / 64] & (1 << (slot % 64)) != 0
    }

    pub fn insert(&mut self, slot: u16) {
        self.words[slot as usize / 64] |= 1 << (slot % 64);
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    pub fn union_with(&mut self, other: &SlotSet) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a |= b;
        }
    }

    /// Whether the two sets have a slot in common.
    pub fn intersects(&self, other: &SlotSet) -> bool {
        self.words
            .iter()
            .zip(other.words.iter())
            .any(|(a, b)| a & b != 0)
    }

    /// Every slot (without allocating).
    pub fn fill_all(&mut self) {
        self.words.fill(u64::MAX);
    }

    /// Empties the set (without allocating).
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Becomes a copy of `other` (without allocating).
    pub fn copy_from(&mut self, other: &SlotSet) {
        self.words.copy_from_slice(&other.words[..]);
    }

    pub fn intersect_with(&mut self, other: &SlotSet) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a &= b;
        }
    }

    pub fn subtract(&mut self, other: &SlotSet) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a &= !b;
        }
    }

    /// The slots in the set, in order (skipping empty words).
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.words
            .iter()
            .enumerate()
            .filter(|(_, &word)| word != 0)
            .flat_map(|(at, &word)| {
                let mut rest = word;
                std::iter::from_fn(move || {
                    (rest != 0).then(|| {
                        let bit = rest.trailing_zeros();
                        rest &= rest - 1;
                        (at * 64) as u16 + bit as u16
                    })
                })
            })
    }

    /// The set as inclusive `(first, last)` spans, in order.
    pub fn spans(&self) -> Vec<(u16, u16)> {
        let mut spans: Vec<(u16, u16)> = Vec::new();
        for slot in self.iter() {
            match spans.last_mut() {
                Some((_, last)) if *last + 1 == slot => *last = slot,
                _ => spans.push((slot, slot)),
            }
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn router(id: RouterId, shards: u16) -> RouterInfo {
        RouterInfo {
            id,
            name: format!("r{id}"),
            addr: format!("127.0.0.{id}:7800"),
            shards,
        }
    }

    #[test]
    fn a_single_router_map_places_slots_as_a_router_alone_does() {
        let map = SlotMap::single(router(SINGLE_ROUTER, 3));
        for slot in [0, 1, 5461, 5462, 10922, 10923, 16383] {
            let (owner, shard) = map.owner(slot);
            assert_eq!(owner.id, SINGLE_ROUTER);
            assert_eq!(
                shard as usize,
                crate::placement::shard_for_slot(slot, 3),
                "slot {slot}"
            );
        }
        assert_eq!(map.ranges().len(), 3);
    }

    #[test]
    fn a_map_goes_through_its_text_unchanged() {
        let routers = vec![router(0x1a2b, 2), router(0x4d5e, 1)];
        let ranges = [
            SlotRange {
                first: 0,
                last: 99,
                router: 0x4d5e,
                shard: 0,
            },
            SlotRange {
                first: 100,
                last: 8000,
                router: 0x1a2b,
                shard: 1,
            },
            SlotRange {
                first: 8001,
                last: 16383,
                router: 0x1a2b,
                shard: 0,
            },
        ];
        let map = SlotMap::from_ranges(7, routers, &ranges).unwrap();
        let text = map.encode();
        assert!(text.contains("slots 100-8000 1a2b 1\n"), "{text}");
        let again = SlotMap::decode(&text).unwrap();
        assert_eq!(again, map);
        assert_eq!(again.epoch(), 7);
        assert_eq!(again.ranges(), ranges);
        assert_eq!(again.slots_per_router(), vec![16384 - 100, 100]);
    }

    #[test]
    fn maps_that_do_not_cover_every_slot_once_are_refused() {
        let routers = || vec![router(1, 1), router(2, 2)];
        let range = |first, last, router, shard| SlotRange {
            first,
            last,
            router,
            shard,
        };
        let refused = |ranges: &[SlotRange]| SlotMap::from_ranges(1, routers(), ranges).is_err();
        assert!(refused(&[range(0, 16382, 1, 0)]), "a slot missing");
        assert!(
            refused(&[range(0, 16383, 1, 0), range(5, 5, 2, 0)]),
            "twice"
        );
        assert!(refused(&[range(0, 16383, 3, 0)]), "unknown router");
        assert!(refused(&[range(0, 16383, 1, 1)]), "no such shard");
        assert!(refused(&[range(0, 16384, 1, 0)]), "past the end");
        assert!(refused(&[range(9, 8, 1, 0), range(0, 16383, 2, 0)]));
        assert!(!refused(&[range(0, 10, 2, 1), range(11, 16383, 1, 0)]));
        // A router that owns nothing is dropped.
        let map = SlotMap::from_ranges(1, routers(), &[range(0, 16383, 2, 1)]).unwrap();
        assert_eq!(map.routers().len(), 1);
        assert_eq!(map.owner_id(77), 2);
    }

    #[test]
    fn bad_text_is_refused_with_its_line() {
        let good = SlotMap::single(router(5, 2)).encode();
        assert!(SlotMap::decode(&good).is_ok());
        for (bad, line) in [
            (
                good.replace("imrouter-slot-map 1", "imrouter-slot-map 2"),
                1,
            ),
            (good.replace("epoch 1", "epoch x"), 2),
            (good.replace("router 5 ", "router zz "), 3),
            (good.replace("slots 0-8191 5 0", "slots 0-8191"), 4),
            (format!("{good}garbage\n"), 6),
        ] {
            match SlotMap::decode(&bad) {
                Err(MapError::Syntax { line: at, .. }) => assert_eq!(at, line, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let spaced = good.replace(" r5 ", " r 5 ");
        assert!(SlotMap::decode(&spaced).is_err());
    }

    #[test]
    fn moved_slots_are_those_whose_router_or_shard_changed() {
        let a = SlotMap::single(router(1, 2));
        let b = SlotMap::from_ranges(
            2,
            vec![router(1, 2), router(2, 1)],
            &[
                SlotRange {
                    first: 0,
                    last: 8191,
                    router: 1,
                    shard: 0,
                },
                SlotRange {
                    first: 8192,
                    last: 8199,
                    router: 2,
                    shard: 0,
                },
                SlotRange {
                    first: 8200,
                    last: 16383,
                    router: 1,
                    shard: 0,
                },
            ],
        )
        .unwrap();
        let moved = a.moved_slots(&b);
        assert_eq!(moved.spans(), vec![(8192, 16383)]);
        assert_eq!(b.slots_of(2).spans(), vec![(8192, 8199)]);
    }

    #[test]
    fn slot_sets() {
        let mut set = SlotSet::from_spans(&[(0, 3), (10, 10), (16380, 16383)]);
        assert_eq!(set.len(), 9);
        assert!(set.contains(10) && !set.contains(11));
        set.subtract(&SlotSet::from_spans(&[(2, 10)]));
        assert_eq!(set.spans(), vec![(0, 1), (16380, 16383)]);
        set.union_with(&SlotSet::from_spans(&[(2, 2)]));
        assert_eq!(set.spans(), vec![(0, 2), (16380, 16383)]);
        assert_eq!(SlotSet::full().len(), 16384);
        assert!(SlotSet::empty().is_empty());
    }
}
