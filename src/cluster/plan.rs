//! The controller's decisions about the slot map, as pure functions of the
//! current map and the live routers: the first map, the map after routers
//! died (their slots spread over the survivors), and one step of
//! rebalancing or draining (a small batch of slots moved, one epoch per
//! batch). Nothing here knows about etcd or time; [`super::member`] calls
//! it when it is the controller, and writes the result with a transaction
//! that fails if the map or the leadership changed underneath.

use super::map::{RouterId, RouterInfo, SlotMap, SlotRange};
use crate::limits::SLOT_COUNT;

/// The first map: the slots split evenly over every shard of every router,
/// in contiguous ranges, routers in id order.
pub fn initial(routers: &[RouterInfo]) -> SlotMap {
    let mut routers = routers.to_vec();
    routers.sort_by_key(|router| router.id);
    let shards: Vec<(RouterId, u16)> = routers
        .iter()
        .flat_map(|router| (0..router.shards).map(move |shard| (router.id, shard)))
        .collect();
    let total = shards.len();
    let ranges: Vec<SlotRange> = shards
        .iter()
        .enumerate()
        .map(|(at, &(router, shard))| SlotRange {
            first: (at * SLOT_COUNT as usize / total) as u16,
            last: ((at + 1) * SLOT_COUNT as usize / total - 1) as u16,
            router,
            shard,
        })
        .collect();
    SlotMap::from_ranges(1, routers, &ranges).expect("an even split covers every slot")
}

/// Slots each (router, shard) owns in `owners`.
struct Load {
    routers: Vec<RouterInfo>,
    /// Per router (same order): slots per shard.
    shards: Vec<Vec<usize>>,
}

impl Load {
    fn new(routers: &[RouterInfo], owners: &[(RouterId, u16)]) -> Load {
        let mut shards: Vec<Vec<usize>> = routers
            .iter()
            .map(|router| vec![0; router.shards as usize])
            .collect();
        for &(router, shard) in owners {
            if let Some(at) = routers.iter().position(|r| r.id == router) {
                shards[at][shard as usize] += 1;
            }
        }
        Load {
            routers: routers.to_vec(),
            shards,
        }
    }

    fn of_router(&self, at: usize) -> usize {
        self.shards[at].iter().sum()
    }

    /// The least loaded router among those whose index is `eligible` (by
    /// slots per shard, so a router with more shards takes more), and its
    /// least loaded shard.
    fn lightest(&self, eligible: impl Fn(usize) -> bool) -> Option<(usize, u16)> {
        let at = (0..self.routers.len())
            .filter(|&at| eligible(at))
            .min_by(|&a, &b| {
                // of_router(a) / shards(a) < of_router(b) / shards(b)
                let left = self.of_router(a) * self.routers[b].shards as usize;
                let right = self.of_router(b) * self.routers[a].shards as usize;
                left.cmp(&right)
                    .then(self.routers[a].id.cmp(&self.routers[b].id))
            })?;
        let shard = (0..self.routers[at].shards)
            .min_by_key(|&shard| self.shards[at][shard as usize])
            .expect("a router has a shard");
        Some((at, shard))
    }
}

fn owners_of(map: &SlotMap) -> Vec<(RouterId, u16)> {
    (0..SLOT_COUNT)
        .map(|slot| {
            let (router, shard) = map.owner(slot);
            (router.id, shard)
        })
        .collect()
}

/// Builds the map of `epoch` from per-slot owners.
fn build(epoch: u64, routers: Vec<RouterInfo>, owners: &[(RouterId, u16)]) -> SlotMap {
    let ranges = SlotRange::runs(owners.iter().copied());
    SlotMap::from_ranges(epoch, routers, &ranges).expect("every slot has a live owner")
}

/// Slots are handed out in chunks of this many contiguous slots (or what
/// is left), so that maps stay short.
const CHUNK: usize = 64;

/// The map after the routers not in `live` died: each of their slots goes
/// to a survivor, the least loaded first, in contiguous chunks; the
/// survivors keep what they had. `None` if no slot changes (or nobody is
/// live).
pub fn without_dead(map: &SlotMap, live: &[RouterInfo]) -> Option<SlotMap> {
    if live.is_empty() {
        return None;
    }
    let alive = |id: RouterId| live.iter().any(|router| router.id == id);
    let mut owners = owners_of(map);
    if owners.iter().all(|&(router, _)| alive(router)) {
        return None;
    }
    let mut routers = live.to_vec();
    routers.sort_by_key(|router| router.id);
    let mut load = Load::new(&routers, &owners);
    let mut slot = 0;
    while slot < owners.len() {
        if alive(owners[slot].0) {
            slot += 1;
            continue;
        }
        let (at, shard) = load.lightest(|_| true).expect("someone is live");
        let heir = (routers[at].id, shard);
        let mut given = 0;
        while slot < owners.len() && given < CHUNK && !alive(owners[slot].0) {
            owners[slot] = heir;
            load.shards[at][shard as usize] += 1;
            slot += 1;
            given += 1;
        }
    }
    Some(build(map.epoch() + 1, routers, &owners))
}

/// One step of rebalancing: moves at most `batch` slots from the routers
/// with more than their share to those with less, among `live` routers
/// for which `may_receive` holds (a new router receives once every live
/// node is connected to it). A router in `draining` gets nothing and gives
/// everything away. `None` when there is nothing to move.
pub fn rebalance_step(
    map: &SlotMap,
    live: &[RouterInfo],
    draining: &[RouterId],
    may_receive: impl Fn(RouterId) -> bool,
    batch: usize,
) -> Option<SlotMap> {
    let receives = |router: &RouterInfo| !draining.contains(&router.id) && may_receive(router.id);
    let mut routers = live.to_vec();
    // The routers of the map stay listed (they own slots) even when dead;
    // a dead router's slots are `without_dead`'s job, not ours.
    for router in map.routers() {
        if !routers.iter().any(|r| r.id == router.id) {
            routers.push(router.clone());
        }
    }
    routers.sort_by_key(|router| router.id);
    let mut owners = owners_of(map);
    let mut load = Load::new(&routers, &owners);
    let takers: Vec<usize> = (0..routers.len())
        .filter(|&at| receives(&routers[at]) && live.iter().any(|r| r.id == routers[at].id))
        .collect();
    if takers.is_empty() {
        return None;
    }
    let live_at = |at: usize| live.iter().any(|r| r.id == routers[at].id);
    let draining_at = |at: usize| draining.contains(&routers[at].id) && live_at(at);
    // Routers that neither take nor drain (dead ones, new ones not ready)
    // keep what they have.
    let frozen: usize = (0..routers.len())
        .filter(|&at| !takers.contains(&at) && !draining_at(at))
        .map(|at| load.of_router(at))
        .sum();
    let taker_shards: usize = takers.iter().map(|&at| routers[at].shards as usize).sum();
    let shared = SLOT_COUNT as usize - frozen;
    // Each taker's fair share of what is not frozen, by its shards; a
    // draining router's share is 0.
    let share = |load: &Load, at: usize| -> usize {
        if takers.contains(&at) {
            (shared * routers[at].shards as usize).div_ceil(taker_shards)
        } else if draining_at(at) {
            0
        } else {
            load.of_router(at)
        }
    };
    let mut moved = 0;
    while moved < batch {
        // The most loaded router above its share gives...
        let Some(giver) = (0..routers.len())
            .filter(|&at| load.of_router(at) > share(&load, at))
            .max_by_key(|&at| {
                (
                    load.of_router(at) - share(&load, at),
                    std::cmp::Reverse(routers[at].id),
                )
            })
        else {
            break;
        };
        // ...to the least loaded taker below its share.
        // (Never the giver: it is above its share.)
        let Some((taker, shard)) =
            load.lightest(|at| takers.contains(&at) && load.of_router(at) < share(&load, at))
        else {
            break;
        };
        // Take a chunk from the end of the giver's most loaded shard.
        let giver_id = routers[giver].id;
        let giver_shard = (0..routers[giver].shards)
            .max_by_key(|&s| load.shards[giver][s as usize])
            .expect("a shard");
        let room = (share(&load, taker) - load.of_router(taker))
            .min(load.of_router(giver) - share(&load, giver))
            .min(batch - moved)
            .min(CHUNK);
        let mut given = 0;
        for slot in (0..owners.len()).rev() {
            if given == room {
                break;
            }
            if owners[slot] == (giver_id, giver_shard) {
                owners[slot] = (routers[taker].id, shard);
                load.shards[giver][giver_shard as usize] -= 1;
                load.shards[taker][shard as usize] += 1;
                given += 1;
            }
        }
        if given == 0 {
            break;
        }
        moved += given;
    }
    (moved > 0).then(|| build(map.epoch() + 1, routers, &owners))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(id: RouterId, shards: u16) -> RouterInfo {
        RouterInfo {
            id,
            name: format!("r{id}"),
            addr: format!("127.0.0.{id}:7800"),
            shards,
        }
    }

    fn per_router(map: &SlotMap) -> Vec<(RouterId, usize)> {
        map.routers()
            .iter()
            .map(|r| r.id)
            .zip(map.slots_per_router())
            .collect()
    }

    #[test]
    fn the_first_map_is_even_over_shards() {
        let map = initial(&[router(3, 1), router(1, 2)]);
        assert_eq!(map.epoch(), 1);
        assert_eq!(per_router(&map), vec![(1, 10922), (3, 5462)]);
        assert_eq!(map.ranges().len(), 3);
    }

    #[test]
    fn a_dead_routers_slots_go_to_the_survivors_and_nothing_else_moves() {
        let live = [router(1, 1), router(2, 1), router(3, 1)];
        let map = initial(&live);
        let after = without_dead(&map, &live[..2]).expect("slots move");
        assert_eq!(after.epoch(), 2);
        assert_eq!(after.routers().len(), 2);
        let moved = map.moved_slots(&after);
        assert_eq!(moved, map.slots_of(3), "only the dead router's slots move");
        let counts = after.slots_per_router();
        assert!(counts[0].abs_diff(counts[1]) <= CHUNK, "{counts:?}");
        assert!(
            without_dead(&after, &live[..2]).is_none(),
            "nothing left to do"
        );
        assert!(without_dead(&after, &[]).is_none());
    }

    #[test]
    fn rebalancing_moves_small_batches_until_even() {
        let one = [router(1, 2)];
        let mut map = initial(&one);
        let live = [router(1, 2), router(2, 2), router(3, 1)];
        // Router 3 is not ready yet: only router 2 receives.
        let step = rebalance_step(&map, &live, &[], |id| id != 3, 500).unwrap();
        assert_eq!(map.moved_slots(&step).len(), 500);
        assert_eq!(step.slots_of(3).len(), 0);
        let mut steps = 0;
        while let Some(next) = rebalance_step(&map, &live, &[], |_| true, 500) {
            assert_eq!(next.epoch(), map.epoch() + 1);
            assert!(map.moved_slots(&next).len() <= 500);
            map = next;
            steps += 1;
            assert!(steps < 100, "rebalancing does not end");
        }
        let counts = per_router(&map);
        // Shares by shards: 2/5, 2/5, 1/5 of 16,384.
        assert_eq!(counts.len(), 3);
        for ((_, count), share) in counts.iter().zip([6554, 6554, 3277]) {
            assert!(count.abs_diff(share) <= 2, "{counts:?}");
        }
        assert!(map.ranges().len() < 400, "{} ranges", map.ranges().len());
    }

    #[test]
    fn a_draining_router_gives_everything_away() {
        let live = [router(1, 1), router(2, 1), router(3, 1)];
        let mut map = initial(&live);
        let mut steps = 0;
        while let Some(next) = rebalance_step(&map, &live, &[2], |_| true, 1000) {
            map = next;
            steps += 1;
            assert!(steps < 100);
        }
        assert!(map.router(2).is_none(), "{:?}", per_router(&map));
        let counts = map.slots_per_router();
        assert!(counts[0].abs_diff(counts[1]) <= 2, "{counts:?}");
    }

    /// Random cluster histories: routers die, join and drain; every plan
    /// keeps each slot with exactly one live owner (dead routers' slots
    /// move, and only those), each step moves at most a batch, and
    /// rebalancing ends.
    #[test]
    fn random_histories_keep_every_slot_owned_and_end_balanced() {
        for seed in 0..30 {
            let mut rng = crate::sim::Rng::new(seed);
            let mut next_id = 1;
            let mut live: Vec<RouterInfo> = Vec::new();
            for _ in 0..1 + rng.below(4) {
                live.push(router(next_id, 1 + rng.below(4) as u16));
                next_id += 1;
            }
            let mut map = initial(&live);
            for _ in 0..20 {
                match rng.below(3) {
                    0 if live.len() > 1 => {
                        let dead = live.remove(rng.below(live.len() as u64) as usize);
                        match without_dead(&map, &live) {
                            Some(after) => {
                                let moved = map.moved_slots(&after);
                                assert_eq!(moved, map.slots_of(dead.id), "seed {seed}");
                                map = after;
                            }
                            // It had drained.
                            None => assert!(map.slots_of(dead.id).is_empty(), "seed {seed}"),
                        }
                    }
                    1 if live.len() < 6 => {
                        live.push(router(next_id, 1 + rng.below(4) as u16));
                        next_id += 1;
                    }
                    _ => {}
                }
                let draining: Vec<RouterId> = if live.len() > 1 && rng.below(4) == 0 {
                    vec![live[rng.below(live.len() as u64) as usize].id]
                } else {
                    vec![]
                };
                let batch = 200 + rng.below(2000) as usize;
                let mut steps = 0;
                while let Some(next) = rebalance_step(&map, &live, &draining, |_| true, batch) {
                    assert!(map.moved_slots(&next).len() <= batch, "seed {seed}");
                    assert_eq!(next.epoch(), map.epoch() + 1);
                    map = next;
                    steps += 1;
                    assert!(steps <= 16384 / batch + 50, "seed {seed}: no end");
                }
                for router in map.routers() {
                    assert!(live.iter().any(|r| r.id == router.id), "seed {seed}");
                    assert!(!draining.contains(&router.id), "seed {seed}");
                }
                let shards: usize = live
                    .iter()
                    .filter(|r| !draining.contains(&r.id))
                    .map(|r| r.shards as usize)
                    .sum();
                for (router, count) in map.routers().iter().zip(map.slots_per_router()) {
                    let share = 16384 * router.shards as usize / shards;
                    assert!(
                        count.abs_diff(share) <= live.len() + 1,
                        "seed {seed}: {count} slots for a share of {share}"
                    );
                }
            }
        }
    }
}
