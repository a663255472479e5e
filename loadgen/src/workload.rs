//! The simulated population: users, devices, which node hosts each
//! session, how recipients are picked, and what a message's payload holds.
//!
//! Everything here is deterministic given a seed, so a run can be replayed
//! and the oracle can recompute where every session lives.

use std::sync::Arc;

/// Bytes of every payload's header: the time the message was due, then its
/// message id (NATS has no message id field, so it travels in the payload
/// for both targets).
pub const PAYLOAD_HEADER_BYTES: usize = 16;

/// Online users are `u` + 15 digits: 16-byte ids, as in the memory target.
pub fn user_id(user: u32) -> [u8; 16] {
    id_with_prefix(b'u', user)
}

/// Users that never have a session (messages to them must come back
/// Offline).
pub fn offline_user_id(user: u32) -> [u8; 16] {
    id_with_prefix(b'x', user)
}

fn id_with_prefix(prefix: u8, number: u32) -> [u8; 16] {
    let mut id = [b'0'; 16];
    id[0] = prefix;
    let mut n = number;
    for slot in id[1..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    id
}

/// The recipients of a Fanout, derived from its message id alone, so that
/// every node can recompute them: `size` online users from `start` and
/// `offline` never-online users from `offline_start` (both wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub start: u32,
    pub size: u32,
    pub offline_start: u32,
    pub offline: u32,
}

impl Group {
    /// The group of Fanout `id`: a size picked from `sizes`, and
    /// `offline_ratio` of that many offline members on top.
    pub fn of(id: u64, population: &Population, sizes: &[u32], offline_ratio: f64) -> Group {
        let mut h = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let size = sizes[(h % sizes.len() as u64) as usize].min(population.users);
        let offline =
            ((f64::from(size) * offline_ratio).round() as u32).min(population.offline_users);
        Group {
            start: ((h >> 8) % u64::from(population.users)) as u32,
            size,
            offline_start: ((h >> 36) % u64::from(population.offline_users)) as u32,
            offline,
        }
    }

    /// The online members, as user indexes.
    pub fn members(self, population: &Population) -> impl Iterator<Item = u32> {
        let users = population.users;
        (0..self.size).map(move |k| (self.start + k) % users)
    }

    /// The offline members, as offline-user indexes.
    pub fn offline_members(self, population: &Population) -> impl Iterator<Item = u32> {
        let offline_users = population.offline_users;
        (0..self.offline).map(move |k| (self.offline_start + k) % offline_users)
    }

    /// The devices of online members that node `node` hosts: (user, device
    /// mask), by user.
    pub fn hosted_on(self, population: &Population, node: u32) -> Vec<(u32, u64)> {
        let mut hosted: Vec<(u32, u64)> = self
            .members(population)
            .filter_map(|user| {
                let mask = (0..population.devices_per_user)
                    .filter(|&device| population.node_of(user, device) == node)
                    .fold(0u64, |mask, device| mask | 1 << device);
                (mask != 0).then_some((user, mask))
            })
            .collect();
        hosted.sort_unstable();
        hosted
    }

    /// Which nodes host at least one device of an online member.
    pub fn destination_nodes(self, population: &Population) -> Vec<bool> {
        let mut hit = vec![false; population.nodes as usize];
        let mut left = population.nodes;
        'members: for user in self.members(population) {
            for device in 0..population.devices_per_user {
                let node = population.node_of(user, device) as usize;
                if !hit[node] {
                    hit[node] = true;
                    left -= 1;
                    if left == 0 {
                        break 'members;
                    }
                }
            }
        }
        hit
    }
}

/// Device `d` of a user is called `d<d>`.
pub fn device_id(device: u8) -> String {
    format!("d{device}")
}

/// Reads a device id back; `None` for an id the generator never uses.
pub fn parse_device_id(id: &str) -> Option<u8> {
    id.strip_prefix('d')?.parse().ok()
}

/// Reads an online user id back to its index (`None` for any other id).
pub fn parse_user_id(id: &[u8]) -> Option<u32> {
    if id.len() != 16 || id[0] != b'u' {
        return None;
    }
    id[1..].iter().try_fold(0u32, |value, &digit| {
        digit
            .is_ascii_digit()
            .then(|| value.checked_mul(10)?.checked_add(u32::from(digit - b'0')))
            .flatten()
    })
}

/// Who exists and where their sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Population {
    pub users: u32,
    pub devices_per_user: u8,
    pub nodes: u32,
    /// Users with no session, the targets of `--offline-ratio`.
    pub offline_users: u32,
}

impl Population {
    /// The node hosting device `device` of `user`: devices of one user sit
    /// on consecutive nodes, so a user with several devices is reached
    /// through several nodes (one Deliver per node).
    #[inline]
    pub fn node_of(&self, user: u32, device: u8) -> u32 {
        ((user as u64 + device as u64) % self.nodes as u64) as u32
    }

    /// A global index of each session, for the oracle.
    #[inline]
    pub fn session_index(&self, user: u32, device: u8) -> u64 {
        user as u64 * self.devices_per_user as u64 + device as u64
    }

    /// The sessions `node` hosts, as (user, device).
    pub fn sessions_of(&self, node: u32) -> impl Iterator<Item = (u32, u8)> + '_ {
        (0..self.devices_per_user).flat_map(move |device| {
            let first = (node + self.nodes - device as u32 % self.nodes) % self.nodes;
            (first..self.users)
                .step_by(self.nodes as usize)
                .map(move |user| (user, device))
        })
    }

    /// How many distinct nodes host `user`'s devices in `mask`: the Deliver
    /// frames a message to those devices causes. Called for every message,
    /// so it allocates nothing: devices sit on consecutive nodes, so the
    /// count is the number of distinct `device mod nodes` values.
    pub fn node_count(&self, user: u32, mask: u64) -> u32 {
        let _ = user;
        if self.nodes >= 64 || mask.count_ones() <= 1 {
            // Distinct devices are on distinct nodes when there are at
            // least as many nodes as devices (at most 63).
            return mask.count_ones().min(self.nodes);
        }
        let mut nodes_hit = 0u64;
        for device in 0..self.devices_per_user {
            if mask & (1 << device) != 0 {
                nodes_hit |= 1 << (u32::from(device) % self.nodes);
            }
        }
        nodes_hit.count_ones()
    }
}

/// xoshiro256++: fast, and good enough for workload choices.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 to spread the seed over the state.
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How recipients are drawn from the online users.
#[derive(Debug, Clone)]
pub enum Recipients {
    Uniform {
        users: u32,
    },
    /// Zipf over user ranks: user 0 is the most popular. The cumulative
    /// distribution is computed once and shared by every generator thread.
    Zipf {
        cdf: Arc<[f64]>,
    },
}

impl Recipients {
    pub fn zipf(users: u32, exponent: f64) -> Self {
        let mut cdf = Vec::with_capacity(users as usize);
        let mut total = 0.0;
        for rank in 1..=users {
            total += 1.0 / (rank as f64).powf(exponent);
            cdf.push(total);
        }
        for value in &mut cdf {
            *value /= total;
        }
        Recipients::Zipf { cdf: cdf.into() }
    }

    #[inline]
    pub fn pick(&self, rng: &mut Rng) -> u32 {
        match self {
            Recipients::Uniform { users } => rng.below(*users as u64) as u32,
            Recipients::Zipf { cdf } => {
                let u = rng.unit();
                cdf.partition_point(|&p| p < u).min(cdf.len() - 1) as u32
            }
        }
    }
}

/// Writes a payload of `len` bytes: the header, then bytes derived from
/// the message id, so that the receiver can tell a corrupted payload.
pub fn fill_payload(payload: &mut Vec<u8>, len: usize, due_ns: u64, message_id: u64) {
    payload.clear();
    payload.extend_from_slice(&due_ns.to_le_bytes());
    payload.extend_from_slice(&message_id.to_le_bytes());
    let seed = message_id as u8;
    payload.extend((PAYLOAD_HEADER_BYTES..len).map(|i| seed.wrapping_add(i as u8)));
}

/// A delivered message `id`'s payload: when it was due, and whether it is
/// intact (its header names `id` and its filler is right); `(0, false)`
/// when corrupted.
pub fn delivered_payload(id: u64, payload: &[u8]) -> (u64, bool) {
    match read_payload(payload) {
        Some((due_ns, payload_id)) => (due_ns, payload_id == id),
        None => (0, false),
    }
}

/// Bit `d` for device id `d` (below 63), bit 63 for anything else.
pub fn device_bit(device: &str) -> u64 {
    match parse_device_id(device) {
        Some(d) if d < 63 => 1 << d,
        _ => 1 << 63,
    }
}

/// Reads a payload's header and checks its filler; `None` when corrupted.
pub fn read_payload(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() < PAYLOAD_HEADER_BYTES {
        return None;
    }
    let due_ns = u64::from_le_bytes(payload[..8].try_into().ok()?);
    let message_id = u64::from_le_bytes(payload[8..16].try_into().ok()?);
    let seed = message_id as u8;
    let intact = payload[PAYLOAD_HEADER_BYTES..]
        .iter()
        .enumerate()
        .all(|(i, &byte)| byte == seed.wrapping_add((i + PAYLOAD_HEADER_BYTES) as u8));
    intact.then_some((due_ns, message_id))
}

/// Message ids: the sending node in the top bits, its sequence below, and
/// bit 63 for the generator's own probes (section "Confirming an open" of
/// docs/PROTOCOL.md).
pub mod message_id {
    pub const PROBE: u64 = 1 << 63;
    const SEQ_BITS: u32 = 40;

    pub fn new(node: u32, seq: u64) -> u64 {
        debug_assert!(seq < 1 << SEQ_BITS);
        (node as u64) << SEQ_BITS | seq
    }

    pub fn node(id: u64) -> u32 {
        ((id & !PROBE) >> SEQ_BITS) as u32
    }

    pub fn seq(id: u64) -> u64 {
        id & ((1 << SEQ_BITS) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_bytes_and_read_back() {
        assert_eq!(&user_id(42), b"u000000000000042");
        assert_eq!(parse_user_id(&user_id(1_234_567)), Some(1_234_567));
        assert_eq!(parse_user_id(&offline_user_id(3)), None);
        assert_eq!(parse_user_id(b"u00000000000004x"), None);
        assert_eq!(parse_user_id(b"u999999999999999"), None, "over u32");
        assert_eq!(parse_device_id(&device_id(7)), Some(7));
    }

    #[test]
    fn every_session_has_exactly_one_host() {
        let population = Population {
            users: 103,
            devices_per_user: 3,
            nodes: 4,
            offline_users: 0,
        };
        let mut seen = std::collections::HashSet::new();
        for node in 0..4 {
            for (user, device) in population.sessions_of(node) {
                assert_eq!(population.node_of(user, device), node);
                assert!(seen.insert((user, device)));
            }
        }
        assert_eq!(seen.len(), 103 * 3);
    }

    #[test]
    fn node_count_matches_a_direct_count() {
        for nodes in [1, 2, 3, 5, 64, 100] {
            let population = Population {
                users: 50,
                devices_per_user: 7,
                nodes,
                offline_users: 0,
            };
            for user in 0..50 {
                for mask in [1u64, 0b11, 0b101, 0b111_1111, 0b100_0010] {
                    let mut hosts: Vec<u32> = (0..7)
                        .filter(|d| mask & (1 << d) != 0)
                        .map(|d| population.node_of(user, d))
                        .collect();
                    hosts.sort_unstable();
                    hosts.dedup();
                    assert_eq!(population.node_count(user, mask), hosts.len() as u32);
                }
            }
        }
    }

    #[test]
    fn payloads_detect_corruption() {
        let mut payload = Vec::new();
        fill_payload(&mut payload, 64, 99, 12345);
        assert_eq!(read_payload(&payload), Some((99, 12345)));
        payload[40] ^= 1;
        assert_eq!(read_payload(&payload), None);
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let recipients = Recipients::zipf(1000, 1.0);
        let mut rng = Rng::new(1);
        let hits = (0..100_000)
            .filter(|_| recipients.pick(&mut rng) == 0)
            .count();
        // P(rank 1) = 1 / H(1000) ~ 0.1336.
        assert!((12_000..15_000).contains(&hits), "{hits}");
    }

    #[test]
    fn message_ids_split_back() {
        let id = message_id::new(77, 123_456_789);
        assert_eq!(
            (message_id::node(id), message_id::seq(id)),
            (77, 123_456_789)
        );
        assert_eq!(message_id::node(id | message_id::PROBE), 77);
    }
}
