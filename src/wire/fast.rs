//! A fast path through verification for the frames that make up nearly all
//! traffic: `Route`, `SessionOpen` and `SessionClose`.
//!
//! The flatbuffers verifier is generic: every field check goes through
//! `Result`s carrying error traces, which costs about 1,600 instructions on a
//! 100-byte SessionOpen and more than half of the router's instructions per
//! session operation (BENCHMARKS.md, callgrind). This module performs the
//! *same checks*, in the same order of ideas, for these three body types
//! only, with `Option` and no traces:
//!
//! - every position read is aligned for its type (relative to the frame's
//!   first byte, as flatbuffers does) and lies inside the frame;
//! - table vtables are found through their signed offset, have an even
//!   length and lie inside the frame; fields are found through the vtable;
//! - strings are UTF-8 and NUL-terminated, vectors lie inside the frame;
//! - required fields are present, the union key and value come together;
//! - the *apparent size* (bytes visited) is counted exactly as flatbuffers
//!   counts it and bounded by the same limit.
//!
//! It answers `true` only for frames the flatbuffers verifier (with the
//! router's options) also accepts; for anything else, including every
//! invalid frame and every other body type, it answers `false` and the
//! caller runs the flatbuffers verifier, which then gives the precise error.
//! The tests below check that claim by differential fuzzing against the
//! flatbuffers verifier.

use super::fb;
use crate::limits::FRAME_PREFIX_BYTES;

/// Vtable offsets of the fields checked here (from the generated code).
/// Every field of these tables must be checked: a field added to the
/// schema must be added here (a test compares with the generated offsets).
mod vt {
    pub const ENVELOPE_BODY_TYPE: usize = 4;
    pub const ENVELOPE_BODY: usize = 6;
    pub const ROUTE_MESSAGE_ID: usize = 4;
    pub const ROUTE_FROM_USER: usize = 6;
    pub const ROUTE_FROM_DEVICE: usize = 8;
    pub const ROUTE_TO_USER: usize = 10;
    pub const ROUTE_TO_DEVICE: usize = 12;
    pub const ROUTE_FLAGS: usize = 14;
    pub const ROUTE_PAYLOAD: usize = 16;
    pub const SESSION_USER: usize = 4;
    pub const SESSION_DEVICE: usize = 6;
    pub const SESSION_OPEN_PLATFORM: usize = 8;
    pub const SESSION_OPEN_SEQ: usize = 10;
    pub const SESSION_CLOSE_SEQ: usize = 8;
}

struct Table {
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

struct Walk<'b> {
    buf: &'b [u8],
    apparent: usize,
    apparent_max: usize,
}

impl Walk<'_> {
    /// `range_in_buffer`: inside the frame, counted in the apparent size.
    #[inline(always)]
    fn range(&mut self, pos: usize, size: usize) -> Option<()> {
        if pos.saturating_add(size) > self.buf.len() {
            return None;
        }
        self.apparent += size;
        (self.apparent <= self.apparent_max).then_some(())
    }

    /// An aligned scalar of `size` bytes (alignment = size for 1, 2, 4, 8).
    #[inline(always)]
    fn scalar(&mut self, pos: usize, size: usize) -> Option<()> {
        if pos % size != 0 {
            return None;
        }
        self.range(pos, size)
    }

    #[inline(always)]
    fn u16_at(&mut self, pos: usize) -> Option<usize> {
        self.scalar(pos, 2)?;
        Some(u16::from_le_bytes([self.buf[pos], self.buf[pos + 1]]) as usize)
    }

    #[inline(always)]
    fn u32_at(&mut self, pos: usize) -> Option<usize> {
        self.scalar(pos, 4)?;
        let bytes = self.buf[pos..pos + 4].try_into().expect("4 bytes");
        Some(u32::from_le_bytes(bytes) as usize)
    }

    /// `visit_table` (depth and table counts are trivially within the
    /// limits here: two tables, two levels).
    #[inline(always)]
    fn table(&mut self, pos: usize) -> Option<Table> {
        self.scalar(pos, 4)?;
        let bytes = self.buf[pos..pos + 4].try_into().expect("4 bytes");
        let soffset = i32::from_le_bytes(bytes);
        let vtable = if soffset > 0 {
            pos.checked_sub(soffset.unsigned_abs() as usize)?
        } else {
            pos.checked_add(soffset.unsigned_abs() as usize)?
        };
        if vtable >= self.buf.len() {
            return None;
        }
        let vtable_len = self.u16_at(vtable)?;
        if vtable.saturating_add(vtable_len) % 2 != 0 {
            return None;
        }
        self.range(vtable, vtable_len)?;
        Some(Table {
            pos,
            vtable,
            vtable_len,
        })
    }

    /// `TableVerifier::deref`: the field's position, if present.
    #[inline(always)]
    fn field(&mut self, table: &Table, field: usize) -> Option<Option<usize>> {
        if field < table.vtable_len {
            let offset = self.u16_at(table.vtable.saturating_add(field))?;
            if offset > 0 {
                return Some(Some(table.pos.saturating_add(offset)));
            }
        }
        Some(None)
    }

    /// A `ForwardsUOffset` at `pos`: where it points.
    #[inline(always)]
    fn follow(&mut self, pos: usize) -> Option<usize> {
        Some(self.u32_at(pos)?.saturating_add(pos))
    }

    /// `verify_vector_range::<u8>` at `pos`.
    #[inline(always)]
    fn byte_vector(&mut self, pos: usize) -> Option<std::ops::Range<usize>> {
        let len = self.u32_at(pos)?;
        let start = pos.saturating_add(4);
        self.range(start, len)?;
        Some(start..start + len)
    }

    /// A `ForwardsUOffset<&str>` field at `pos`: UTF-8 and NUL-terminated.
    #[inline(always)]
    fn string(&mut self, pos: usize) -> Option<()> {
        let target = self.follow(pos)?;
        let range = self.byte_vector(target)?;
        if self.buf.get(range.end) != Some(&0) {
            return None;
        }
        std::str::from_utf8(&self.buf[range]).ok().map(|_| ())
    }

    /// An optional field of a table, checked with `check` when present.
    #[inline(always)]
    fn optional(
        &mut self,
        table: &Table,
        field: usize,
        check: impl FnOnce(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        match self.field(table, field)? {
            Some(pos) => check(self, pos),
            None => Some(()),
        }
    }

    #[inline(always)]
    fn required(
        &mut self,
        table: &Table,
        field: usize,
        check: impl FnOnce(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        let pos = self.field(table, field)??;
        check(self, pos)
    }

    fn route(&mut self, pos: usize) -> Option<()> {
        let table = self.table(pos)?;
        self.optional(&table, vt::ROUTE_MESSAGE_ID, |w, p| w.scalar(p, 8))?;
        self.optional(&table, vt::ROUTE_FROM_USER, Self::string)?;
        self.optional(&table, vt::ROUTE_FROM_DEVICE, Self::string)?;
        self.required(&table, vt::ROUTE_TO_USER, Self::string)?;
        self.optional(&table, vt::ROUTE_TO_DEVICE, Self::string)?;
        self.optional(&table, vt::ROUTE_FLAGS, |w, p| w.scalar(p, 4))?;
        self.optional(&table, vt::ROUTE_PAYLOAD, |w, p| {
            let target = w.follow(p)?;
            w.byte_vector(target).map(|_| ())
        })
    }

    fn session(&mut self, pos: usize, open: bool) -> Option<()> {
        let table = self.table(pos)?;
        self.required(&table, vt::SESSION_USER, Self::string)?;
        self.required(&table, vt::SESSION_DEVICE, Self::string)?;
        if open {
            self.optional(&table, vt::SESSION_OPEN_PLATFORM, |w, p| w.scalar(p, 1))?;
            self.optional(&table, vt::SESSION_OPEN_SEQ, |w, p| w.scalar(p, 8))
        } else {
            self.optional(&table, vt::SESSION_CLOSE_SEQ, |w, p| w.scalar(p, 8))
        }
    }
}

/// Whether `frame` (length prefix included, identifier already checked) is
/// a valid Envelope holding a Route, SessionOpen or SessionClose, by the
/// flatbuffers verifier's rules with `apparent_max` as its
/// `max_apparent_size`. `false` means "not known valid": verify it the
/// general way.
#[inline]
pub(super) fn verify_common(frame: &[u8], apparent_max: usize) -> bool {
    let mut walk = Walk {
        buf: frame,
        apparent: 0,
        apparent_max,
    };
    (|| {
        let envelope = walk.follow(FRAME_PREFIX_BYTES)?;
        let envelope = walk.table(envelope)?;
        // flatbuffers looks the value up first, then the key.
        let body = walk.field(&envelope, vt::ENVELOPE_BODY)??;
        let key = walk.field(&envelope, vt::ENVELOPE_BODY_TYPE)??;
        walk.scalar(key, 1)?;
        let body = walk.follow(body)?;
        match fb::Body(walk.buf[key]) {
            fb::Body::Route => walk.route(body),
            fb::Body::SessionOpen => walk.session(body, true),
            fb::Body::SessionClose => walk.session(body, false),
            _ => None,
        }
    })()
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Encoder, RouteFrame, Verifier};

    /// A small deterministic generator (xorshift64*), so that failures
    /// reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn samples() -> Vec<Vec<u8>> {
        let mut encoder = Encoder::new();
        let mut frames = Vec::new();
        for payload in [&b""[..], b"x", &[7u8; 100][..]] {
            for to_device in [None, Some("phone")] {
                for from in ["", "alice"] {
                    frames.push(
                        encoder
                            .route(&RouteFrame {
                                message_id: 42,
                                from_user: from,
                                from_device: "d",
                                to_user: "bob",
                                to_device,
                                flags: 1,
                                payload,
                            })
                            .to_vec(),
                    );
                }
            }
        }
        for platform in [fb::Platform::Other, fb::Platform::Web] {
            frames.push(encoder.session_open("user-1", "phone", platform).to_vec());
        }
        frames.push(
            encoder
                .session_open("ü", "dévice", fb::Platform::Pad)
                .to_vec(),
        );
        frames.push(
            encoder
                .session_open_seq("user-2", "phone", fb::Platform::Web, 77)
                .to_vec(),
        );
        frames.push(encoder.session_close("user-1", "phone").to_vec());
        frames.push(encoder.session_close_seq("user-1", "phone", 77).to_vec());
        // A Route laid out by the flatbuffers builder (the encoder writes
        // Routes by hand), as a node in another language would build it.
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let to_user = Some(builder.create_string("carol"));
        let payload = Some(builder.create_vector(&[1u8, 2, 3, 4, 5]));
        let route = fb::Route::create(
            &mut builder,
            &fb::RouteArgs {
                message_id: 7,
                to_user,
                payload,
                ..Default::default()
            },
        );
        let envelope = fb::Envelope::create(
            &mut builder,
            &fb::EnvelopeArgs {
                body_type: fb::Body::Route,
                body: Some(route.as_union_value()),
            },
        );
        builder.finish_size_prefixed(envelope, Some("IMR1"));
        frames.push(builder.finished_data().to_vec());
        frames
    }

    /// What the flatbuffers verifier says, with the router's options.
    fn reference(verifier: &Verifier, frame: &[u8]) -> bool {
        verifier.verify_generic(frame).is_ok()
    }

    fn common(frame: &[u8], limit: u32) -> Option<bool> {
        let body = crate::wire::check(frame, u32::MAX);
        if body != crate::wire::Check::Complete(frame.len())
            || frame.len() < 12
            || !fb::envelope_size_prefixed_buffer_has_identifier(frame)
        {
            return None;
        }
        Some(verify_common(frame, Verifier::apparent_max(limit)))
    }

    /// The offsets above are the generated ones, and the last field of each
    /// table is the last one checked here.
    #[test]
    fn vtable_offsets_match_the_schema() {
        assert_eq!(vt::ENVELOPE_BODY, fb::Envelope::VT_BODY as usize);
        assert_eq!(vt::ROUTE_PAYLOAD, fb::Route::VT_PAYLOAD as usize);
        assert_eq!(vt::SESSION_OPEN_SEQ, fb::SessionOpen::VT_SEQ as usize);
        assert_eq!(vt::SESSION_CLOSE_SEQ, fb::SessionClose::VT_SEQ as usize);
        // A table built with every field present has a vtable that ends
        // with the last field checked here (vtable length = 4 + 2 x fields).
        let mut encoder = Encoder::new();
        for (frame, last) in [
            (
                encoder
                    .session_open_seq("u", "d", fb::Platform::Web, 1)
                    .to_vec(),
                vt::SESSION_OPEN_SEQ,
            ),
            (
                encoder.session_close_seq("u", "d", 1).to_vec(),
                vt::SESSION_CLOSE_SEQ,
            ),
        ] {
            let envelope = Verifier::new(1024).verify_generic(&frame).unwrap();
            let table = envelope.body().unwrap();
            let vtable = table.vtable();
            assert_eq!(
                vtable.num_bytes(),
                last + 2,
                "a field the fast path does not check"
            );
        }
    }

    /// Wraps `body` in an Envelope (every field set) and finishes the frame.
    fn finish(
        mut builder: flatbuffers::FlatBufferBuilder<'_>,
        body_type: fb::Body,
        body: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
    ) -> Vec<u8> {
        // An exhaustive literal, no `..Default::default()`: a field added to
        // Envelope in the schema stops this from compiling.
        let envelope = fb::Envelope::create(
            &mut builder,
            &fb::EnvelopeArgs {
                body_type,
                body: Some(body),
            },
        );
        builder.finish_size_prefixed(envelope, Some("IMR1"));
        builder.finished_data().to_vec()
    }

    /// Every table the fast path walks, built with every field set (and
    /// every scalar written, defaults included). The `*Args` literals are
    /// exhaustive: a field added to one of these tables in the schema
    /// breaks this build, and the vtable check below catches a field the
    /// fast path's offsets do not reach.
    fn every_field_set() -> Vec<(fb::Body, Vec<u8>, usize)> {
        let mut frames = Vec::new();

        let mut b = flatbuffers::FlatBufferBuilder::new();
        b.force_defaults(true);
        let args = fb::RouteArgs {
            message_id: 1,
            from_user: Some(b.create_string("alice")),
            from_device: Some(b.create_string("phone")),
            to_user: Some(b.create_string("bob")),
            to_device: Some(b.create_string("web")),
            flags: 3,
            payload: Some(b.create_vector(&[1u8, 2, 3])),
        };
        let body = fb::Route::create(&mut b, &args).as_union_value();
        frames.push((
            fb::Body::Route,
            finish(b, fb::Body::Route, body),
            vt::ROUTE_PAYLOAD,
        ));

        let mut b = flatbuffers::FlatBufferBuilder::new();
        b.force_defaults(true);
        let args = fb::SessionOpenArgs {
            user: Some(b.create_string("alice")),
            device: Some(b.create_string("phone")),
            platform: fb::Platform::Web,
            seq: 9,
        };
        let body = fb::SessionOpen::create(&mut b, &args).as_union_value();
        frames.push((
            fb::Body::SessionOpen,
            finish(b, fb::Body::SessionOpen, body),
            vt::SESSION_OPEN_SEQ,
        ));

        let mut b = flatbuffers::FlatBufferBuilder::new();
        b.force_defaults(true);
        let args = fb::SessionCloseArgs {
            user: Some(b.create_string("alice")),
            device: Some(b.create_string("phone")),
            seq: 9,
        };
        let body = fb::SessionClose::create(&mut b, &args).as_union_value();
        frames.push((
            fb::Body::SessionClose,
            finish(b, fb::Body::SessionClose, body),
            vt::SESSION_CLOSE_SEQ,
        ));
        frames
    }

    /// The fast path checks every field of every table it walks: with all
    /// of them set, each vtable ends at the last offset it checks, and the
    /// frame takes the fast path.
    #[test]
    fn every_field_of_every_walked_table_is_checked() {
        let verifier = Verifier::new(1024);
        for (body_type, frame, last) in every_field_set() {
            let envelope = verifier.verify_generic(&frame).expect("valid");
            assert_eq!(envelope.body_type(), body_type);
            let envelope_fields = envelope._tab.vtable().num_bytes();
            assert_eq!(
                envelope_fields,
                vt::ENVELOPE_BODY + 2,
                "Envelope has a field the fast path does not check"
            );
            let body = envelope.body().expect("a body");
            assert_eq!(
                body.vtable().num_bytes(),
                last + 2,
                "{body_type:?} has a field the fast path does not check"
            );
            assert_eq!(common(&frame, 1024), Some(true), "{body_type:?}");
        }
    }

    /// A random valid Route, SessionOpen or SessionClose, laid out by the
    /// flatbuffers builder in a random order, with each optional field
    /// present or not and scalars written or not.
    fn random_frame(rng: &mut Rng) -> Vec<u8> {
        const TEXT: [&str; 6] = ["", "a", "user-42", "ü", "dévice-✓", "0123456789abcdef"];
        let mut b = flatbuffers::FlatBufferBuilder::new();
        b.force_defaults(rng.below(2) == 0);
        fn text<'b>(
            b: &mut flatbuffers::FlatBufferBuilder<'b>,
            rng: &mut Rng,
        ) -> flatbuffers::WIPOffset<&'b str> {
            let base = TEXT[rng.below(TEXT.len())];
            b.create_string(&base.repeat(1 + rng.below(3)))
        }
        match rng.below(3) {
            0 => {
                // Strings and the payload created in a random order.
                let mut made: [Option<_>; 4] = [None; 4];
                for at in [3, 1, 0, 2].into_iter().cycle().skip(rng.below(4)).take(4) {
                    if at == 2 || rng.below(3) != 0 {
                        made[at] = Some(text(&mut b, rng));
                    }
                }
                let payload = (rng.below(3) != 0).then(|| {
                    let bytes: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
                    b.create_vector(&bytes)
                });
                let args = fb::RouteArgs {
                    message_id: rng.next() >> rng.below(64),
                    from_user: made[0],
                    from_device: made[1],
                    to_user: made[2],
                    to_device: made[3],
                    flags: rng.below(4) as u32,
                    payload,
                };
                let body = fb::Route::create(&mut b, &args).as_union_value();
                finish(b, fb::Body::Route, body)
            }
            1 => {
                let device = text(&mut b, rng);
                let user = text(&mut b, rng);
                let args = fb::SessionOpenArgs {
                    user: Some(user),
                    device: Some(device),
                    platform: fb::Platform(rng.below(5) as u8),
                    seq: rng.next() >> rng.below(64),
                };
                let body = fb::SessionOpen::create(&mut b, &args).as_union_value();
                finish(b, fb::Body::SessionOpen, body)
            }
            _ => {
                let user = text(&mut b, rng);
                let device = text(&mut b, rng);
                let args = fb::SessionCloseArgs {
                    user: Some(user),
                    device: Some(device),
                    seq: rng.next() >> rng.below(64),
                };
                let body = fb::SessionClose::create(&mut b, &args).as_union_value();
                finish(b, fb::Body::SessionClose, body)
            }
        }
    }

    /// Differential testing on random frames: valid ones laid out at
    /// random (both accept), and random bytes behind a valid prefix and
    /// identifier (whatever the fast path accepts, flatbuffers accepts).
    #[test]
    fn the_fast_path_agrees_with_the_flatbuffers_verifier_on_random_frames() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let limit = 1024;
        let verifier = Verifier::new(limit);
        for _ in 0..20_000 {
            let frame = random_frame(&mut rng);
            assert!(reference(&verifier, &frame), "{frame:?}");
            assert_eq!(common(&frame, limit), Some(true), "{frame:?}");
        }
        // (Random bytes almost never make a valid frame: this part checks
        // that the fast path neither panics nor accepts one by mistake;
        // the corruption test above has both outcomes by the thousand.)
        for _ in 0..200_000 {
            let len = 8 + rng.below(120);
            let mut frame = vec![0u8; FRAME_PREFIX_BYTES + len];
            frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
            for byte in &mut frame[4..] {
                // Mostly small numbers, as offsets and lengths are.
                *byte = if rng.below(2) == 0 {
                    rng.below(16) as u8
                } else {
                    rng.next() as u8
                };
            }
            frame[8..12].copy_from_slice(b"IMR1");
            if common(&frame, limit) == Some(true) {
                assert!(
                    reference(&verifier, &frame),
                    "fast path accepted what flatbuffers refuses: {frame:?}"
                );
            }
        }
    }

    #[test]
    fn every_encoded_common_frame_takes_the_fast_path() {
        let verifier = Verifier::new(1024);
        for frame in samples() {
            assert!(reference(&verifier, &frame));
            assert_eq!(common(&frame, 1024), Some(true), "{frame:?}");
        }
        let other = Encoder::new().ping(1).to_vec();
        assert_eq!(
            common(&other, 1024),
            Some(false),
            "other bodies go the general way"
        );
    }

    /// Differential fuzzing: random corruptions of valid frames are judged
    /// the same by the fast path and by the flatbuffers verifier, for every
    /// frame the fast path covers.
    #[test]
    fn the_fast_path_agrees_with_the_flatbuffers_verifier_on_corrupt_frames() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let limit = 256;
        let verifier = Verifier::new(limit);
        let (mut fast_accepted, mut rejected) = (0, 0);
        let mut frames = samples();
        let mut random = Rng(0x51ed_270b_27e3_2f03);
        frames.extend(every_field_set().into_iter().map(|(_, frame, _)| frame));
        frames.extend((0..40).map(|_| random_frame(&mut random)));
        for frame in frames {
            for _ in 0..20_000 {
                let mut bad = frame.clone();
                for _ in 0..1 + rng.below(3) {
                    let at = FRAME_PREFIX_BYTES + rng.below(bad.len() - FRAME_PREFIX_BYTES);
                    bad[at] = match rng.below(4) {
                        0 => 0,
                        1 => 0xff,
                        2 => bad[at].wrapping_add(1 + rng.below(8) as u8),
                        _ => rng.next() as u8,
                    };
                }
                if rng.below(8) == 0 {
                    let len =
                        FRAME_PREFIX_BYTES + 8 + rng.below(bad.len() - FRAME_PREFIX_BYTES - 7);
                    bad.truncate(len);
                    let body = (len - FRAME_PREFIX_BYTES) as u32;
                    bad[..4].copy_from_slice(&body.to_le_bytes());
                }
                let Some(fast) = common(&bad, limit) else {
                    continue;
                };
                let generic = reference(&verifier, &bad);
                if fast {
                    assert!(
                        generic,
                        "fast path accepted what flatbuffers refuses: {bad:?}"
                    );
                    fast_accepted += 1;
                } else {
                    rejected += 1;
                    if generic {
                        // Accepted by flatbuffers: must be a body the fast
                        // path does not cover.
                        let body = Verifier::new(limit).verify(&bad).unwrap().body_type();
                        assert!(
                            ![
                                fb::Body::Route,
                                fb::Body::SessionOpen,
                                fb::Body::SessionClose
                            ]
                            .contains(&body),
                            "fast path refused a valid {body:?}: {bad:?}"
                        );
                    }
                }
            }
        }
        // Both outcomes were exercised.
        assert!(
            fast_accepted > 1000 && rejected > 1000,
            "{fast_accepted} {rejected}"
        );
    }

    #[test]
    fn the_apparent_size_limit_is_the_same() {
        let mut encoder = Encoder::new();
        let payload = [1u8; 200];
        let frame = encoder
            .route(&RouteFrame {
                message_id: 1,
                from_user: "a",
                from_device: "b",
                to_user: "c",
                to_device: None,
                flags: 0,
                payload: &payload,
            })
            .to_vec();
        // Find the smallest limit each accepts at: they must be equal.
        let smallest = |accepts: &dyn Fn(usize) -> bool| (0..4096).find(|&max| accepts(max));
        let fast = smallest(&|max| verify_common(&frame, max));
        let generic = smallest(&|max| {
            let options = flatbuffers::VerifierOptions {
                max_apparent_size: max,
                ..Verifier::new(1 << 20).options().clone()
            };
            fb::size_prefixed_root_as_envelope_with_opts(&options, &frame).is_ok()
        });
        assert!(fast.is_some());
        assert_eq!(fast, generic);
    }
}
