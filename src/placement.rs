//! Which shard owns a user: the user-to-shard function.
//!
//! Part of the protocol, because a shard-direct node computes it itself to
//! send each Route on the connection of the recipient's owner shard:
//!
//! ```text
//! slot  = xxh64(user id bytes, seed 0) mod 16384
//! shard = floor(slot * shard_count / 16384)
//! ```
//!
//! XXH64 is fixed by its specification and has implementations in every
//! language a node is written in, unlike ahash, whose output changes with
//! crate version and CPU features (ahash is the hasher *inside* a shard's
//! tables, where nothing outside the process sees it). Slots map to shards
//! in contiguous ranges, so slot `s` always lands on the same shard for a
//! given shard count. docs/PROTOCOL.md repeats the function with the test
//! vectors of this module's tests.

use crate::limits::SLOT_COUNT;

/// The slot of a user id: `xxh64(user, 0) % SLOT_COUNT`.
#[inline]
pub fn slot_for_user(user: &[u8]) -> u16 {
    (xxh64(user, 0) % u64::from(SLOT_COUNT)) as u16
}

/// The shard owning `slot` when the router runs `shard_count` shards.
#[inline]
pub fn shard_for_slot(slot: u16, shard_count: usize) -> usize {
    debug_assert!(slot < SLOT_COUNT);
    debug_assert!(shard_count > 0);
    slot as usize * shard_count / SLOT_COUNT as usize
}

/// The shard owning `user` when the router runs `shard_count` shards.
#[inline]
pub fn shard_for_user(user: &[u8], shard_count: usize) -> usize {
    shard_for_slot(slot_for_user(user), shard_count)
}

/// The first id `prefix-0`, `prefix-1`, ... that lands on `shard` of
/// `shard_count` (for tests and the load generator, which need a user on
/// each shard).
pub fn id_on_shard(prefix: &str, shard: usize, shard_count: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| shard_for_user(id.as_bytes(), shard_count) == shard)
        .expect("some id lands on every shard")
}

const PRIME_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME_5: u64 = 0x27D4_EB2F_1656_67C5;

/// XXH64 as specified in xxHash's `doc/xxhash_spec.md`.
pub fn xxh64(input: &[u8], seed: u64) -> u64 {
    let mut rest = input;
    let mut hash = if input.len() >= 32 {
        let mut lanes = [
            seed.wrapping_add(PRIME_1).wrapping_add(PRIME_2),
            seed.wrapping_add(PRIME_2),
            seed,
            seed.wrapping_sub(PRIME_1),
        ];
        while rest.len() >= 32 {
            for (lane, chunk) in lanes.iter_mut().zip(rest[..32].chunks_exact(8)) {
                *lane = round(*lane, read_u64(chunk));
            }
            rest = &rest[32..];
        }
        let mut hash = lanes[0]
            .rotate_left(1)
            .wrapping_add(lanes[1].rotate_left(7))
            .wrapping_add(lanes[2].rotate_left(12))
            .wrapping_add(lanes[3].rotate_left(18));
        for lane in lanes {
            hash = merge_round(hash, lane);
        }
        hash
    } else {
        seed.wrapping_add(PRIME_5)
    };
    hash = hash.wrapping_add(input.len() as u64);
    while rest.len() >= 8 {
        hash ^= round(0, read_u64(rest));
        hash = hash
            .rotate_left(27)
            .wrapping_mul(PRIME_1)
            .wrapping_add(PRIME_4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        let word = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        hash ^= u64::from(word).wrapping_mul(PRIME_1);
        hash = hash
            .rotate_left(23)
            .wrapping_mul(PRIME_2)
            .wrapping_add(PRIME_3);
        rest = &rest[4..];
    }
    for &byte in rest {
        hash ^= u64::from(byte).wrapping_mul(PRIME_5);
        hash = hash.rotate_left(11).wrapping_mul(PRIME_1);
    }
    avalanche(hash)
}

#[inline]
fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

#[inline]
fn round(accumulator: u64, input: u64) -> u64 {
    accumulator
        .wrapping_add(input.wrapping_mul(PRIME_2))
        .rotate_left(31)
        .wrapping_mul(PRIME_1)
}

#[inline]
fn merge_round(accumulator: u64, lane: u64) -> u64 {
    (accumulator ^ round(0, lane))
        .wrapping_mul(PRIME_1)
        .wrapping_add(PRIME_4)
}

#[inline]
fn avalanche(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(PRIME_2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(PRIME_3);
    hash ^ (hash >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (user id, xxh64, slot, owner shard for 1, 2, 3, 4 and 8 shards).
    /// Computed with the reference implementation (Python `xxhash` 3.x);
    /// docs/PROTOCOL.md lists the same table.
    const VECTORS: &[(&[u8], u64, u16, [usize; 5])] = &[
        (b"", 0xef46db3751d8e999, 10649, [0, 1, 1, 2, 5]),
        (b"a", 0xd24ec4f1a98c6e5b, 11867, [0, 1, 2, 2, 5]),
        (b"abc", 0x44bc2cf5ad770999, 2457, [0, 0, 0, 0, 1]),
        (b"alice", 0x73a3ea485f2e6049, 8265, [0, 1, 1, 2, 4]),
        (b"bob", 0x92878a3b42bad03b, 4155, [0, 0, 0, 1, 2]),
        (b"user-0", 0x7c1b2034a0684560, 1376, [0, 0, 0, 0, 0]),
        (b"user-1", 0xa173746b114c6be8, 11240, [0, 1, 2, 2, 5]),
        (b"user-42", 0x397e9d3a76af7c81, 15489, [0, 1, 2, 3, 7]),
        (
            b"0123456789abcdef",
            0x5c5b90c34e376d0b,
            11531,
            [0, 1, 2, 2, 5],
        ),
        (
            b"user:1000000@example.com/phone",
            0xb9775d5f17c869b2,
            10674,
            [0, 1, 1, 2, 5],
        ),
        ("用户".as_bytes(), 0xef42ebbe5188438a, 906, [0, 0, 0, 0, 0]),
        (&[b'x'; 100], 0x92f0de5a88a3c094, 148, [0, 0, 0, 0, 0]),
    ];

    #[test]
    fn slot_function_matches_the_published_test_vectors() {
        for &(user, hash, slot, shards) in VECTORS {
            assert_eq!(xxh64(user, 0), hash, "xxh64 of {user:?}");
            assert_eq!(slot_for_user(user), slot, "slot of {user:?}");
            for (shard_count, owner) in [1, 2, 3, 4, 8].into_iter().zip(shards) {
                assert_eq!(
                    shard_for_user(user, shard_count),
                    owner,
                    "{user:?} / {shard_count}"
                );
            }
        }
    }

    #[test]
    fn xxh64_with_seed_matches_reference() {
        // From xxHash's own sanity checks: XXH64("", PRIME32_1 = 0x9E3779B1).
        assert_eq!(xxh64(b"", 0x9E37_79B1), 0xAC75_FDA2_929B_17EF);
    }

    #[test]
    fn slots_cover_shards_in_contiguous_ranges() {
        for shard_count in 1..=crate::limits::SHARDS_MAX {
            let mut previous = 0;
            for slot in 0..SLOT_COUNT {
                let shard = shard_for_slot(slot, shard_count);
                assert!(shard < shard_count);
                assert!(shard == previous || shard == previous + 1);
                previous = shard;
            }
            assert_eq!(previous, shard_count - 1);
        }
    }

    #[test]
    fn users_spread_evenly_over_shards() {
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            counts[shard_for_user(format!("user-{i}").as_bytes(), 4)] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{counts:?}");
        }
    }
}
